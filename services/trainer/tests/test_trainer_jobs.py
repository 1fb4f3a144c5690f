"""Jobs that really run: a worker process trains the tiny model, or is cancelled, or fails."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.artifacts import MANIFEST_NAME, ArtifactStore
from ownchat_trainer.core import JobRequest, TrainerCore
from ownchat_trainer.hyperparameters import Hyperparameters
from ownchat_trainer.records import EventKind, Job, JobState, ModelKind

CoreFactory = Callable[..., TrainerCore]
WaitFor = Callable[[TrainerCore, str, Callable[[Job], bool], float], Job]


def test_a_job_trains_lowers_the_loss_and_registers_a_loadable_version(
    make_core: CoreFactory, artifacts: ArtifactStore, wait_for: WaitFor
) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest(
            "tiny-chat",
            "dsv_small",
            hyperparameters=Hyperparameters(max_steps=20, batch_size=4, learning_rate=3e-3),
            suffix="acme",
            seed=7,
        )
    )
    job = wait_for(core, job.id, lambda j: j.state.terminal, 120)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.model_version == "ft:tiny-chat:acme:1"
    assert job.device == "cpu"
    assert (job.steps_done, job.steps_total) == (20, 20)

    events, complete = core.wait_events(job.id, 0, timeout=0)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e.state for e in events if e.kind is EventKind.STATE]
    assert states == [
        JobState.VALIDATING,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    metrics = [e for e in events if e.kind is EventKind.METRICS]
    assert [m.step for m in metrics] == list(range(1, 21))
    assert all(
        m.total_steps == 20 and m.tokens_per_second and m.tokens_per_second > 0 for m in metrics
    )
    assert all(m.learning_rate is not None and m.eta_seconds is not None for m in metrics)
    losses = [m.loss for m in metrics if m.loss is not None]
    # A tiny random model on a repeated tiny set: the loss must clearly fall.
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0
    assert metrics[-1].validation_loss is not None
    assert [e.kind for e in events].count(EventKind.CHECKPOINT) == 1
    assert core.wait_events(job.id, events[-1].sequence, timeout=5) == ([], True)

    [checkpoint] = core.list_checkpoints(job.id)
    assert checkpoint.step == 20
    model = core.get_model(job.model_version)
    assert model.kind is ModelKind.FULL
    assert model.base_model == "tiny-chat"
    assert (model.job_id, model.dataset_version_id) == (job.id, "dsv_small")
    assert model.artifact == checkpoint.artifact
    assert set(model.metrics) == {"train_loss", "validation_loss"}
    assert model.metrics["validation_loss"] == metrics[-1].validation_loss

    directory = artifacts.path(model.artifact.digest)
    assert artifacts.verify_tree(model.artifact.digest) == []
    names = set(json.loads((directory / MANIFEST_NAME).read_text())["files"])
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template
    trained = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)
    base = AutoModelForCausalLM.from_pretrained(
        artifacts.path(core.get_model("tiny-chat").artifact.digest)
    )
    assert not torch.equal(
        trained.get_input_embeddings().weight, base.get_input_embeddings().weight
    )
    # The job's scratch checkpoints are gone once stored; its log stays.
    job_dir = artifacts.root.parent / "trainer" / "jobs" / job.id
    assert not (job_dir / "checkpoints").exists()
    assert (job_dir / "worker.log").is_file()


def test_cancel_ends_the_running_worker(make_core: CoreFactory, wait_for: WaitFor) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest("tiny-chat", "dsv_small", hyperparameters=Hyperparameters(max_steps=100_000))
    )
    # Cancel once the worker trains: it reports its device when it starts.
    wait_for(core, job.id, lambda j: j.device != "" or j.state.terminal, 120)
    cancelled = core.cancel_job(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.model_version == ""
    assert 0 <= cancelled.steps_done < 100_000
    events, _ = core.wait_events(job.id, 0, timeout=0)
    assert events[-1].state is JobState.CANCELLED
    assert all(m.id != "ft:tiny-chat::1" for m in core.list_models(50, 0))
    # The runner is free again: a queued job after it starts.
    follower = core.create_job(
        JobRequest("tiny-chat", "dsv_small", hyperparameters=Hyperparameters(max_steps=1))
    )
    wait_for(core, follower.id, lambda j: j.state is not JobState.QUEUED, 30)
    core.cancel_job(follower.id)


def test_a_failing_worker_fails_the_job_with_its_reason(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core()
    # Eight tokens hold no assistant turn of the tiny set: the worker refuses.
    job = core.create_job(
        JobRequest("tiny-chat", "dsv_small", hyperparameters=Hyperparameters(max_seq_length=8))
    )
    job = wait_for(core, job.id, lambda j: j.state.terminal, 120)
    assert job.state is JobState.FAILED
    assert "max_seq_length" in job.error
    events, _ = core.wait_events(job.id, 0, timeout=0)
    assert events[-1].state is JobState.FAILED and "max_seq_length" in events[-1].message
    assert core.list_checkpoints(job.id) == []

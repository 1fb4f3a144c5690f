"""Jobs that really run: a worker process trains the tiny model (full, LoRA, DPO, two
gloo processes), is paused and resumed, killed and resumed, cancelled, or fails; a
LoRA adapter is merged into a loadable full model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.artifacts import MANIFEST_NAME, ArtifactStore
from ownchat.errors import InvalidArgumentError
from ownchat_trainer.core import JobRequest, TrainerCore
from ownchat_trainer.hyperparameters import Hyperparameters
from ownchat_trainer.placement import Gpu, GpuSurvey
from ownchat_trainer.processes import processes_with_argument
from ownchat_trainer.records import EventKind, Job, JobEvent, JobState, ModelKind, TrainingMethod
from ownchat_trainer.runner import INTERRUPTED_BY_RESTART, MAX_RESTARTS, SPEC_NAME
from ownchat_trainer.sizing import training_bytes

CoreFactory = Callable[..., TrainerCore]
WaitFor = Callable[[TrainerCore, str, Callable[[Job], bool], float], Job]


def _wait_for_event(
    core: TrainerCore, job_id: str, match: Callable[[JobEvent], bool], timeout: float = 120
) -> JobEvent:
    """Waits until the job has an event that matches; returns the first one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events, complete = core.wait_events(job_id, 0, timeout=0)
        found = [e for e in events if match(e)]
        if found:
            return found[0]
        assert not complete, f"job ended first: {[e.message for e in events]}"
        time.sleep(0.05)
    raise AssertionError(f"no such event of {job_id} in {timeout} s")


def _wait_for_count(
    core: TrainerCore, job_id: str, match: Callable[[JobEvent], bool], count: int
) -> None:
    """Waits until the job has ``count`` events that match."""
    deadline = time.monotonic() + 120
    while sum(1 for e in _events(core, job_id) if match(e)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} such events"
        time.sleep(0.05)


def _events(core: TrainerCore, job_id: str) -> list[JobEvent]:
    return core.wait_events(job_id, 0, timeout=0)[0]


def _deleted(path: Path, timeout: float = 10) -> bool:
    """Whether a path is gone within a timeout (the runner deletes a succeeded job's
    checkpoints right after registering its model)."""
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()


def _workers(core: TrainerCore, job_id: str) -> list[int]:
    """The live processes of a job's worker."""
    spec = core._runner.checkpoints_dir(job_id).parent / SPEC_NAME
    return processes_with_argument(str(spec))


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
    assert _deleted(job_dir / "checkpoints")
    assert (job_dir / "worker.log").is_file()


def test_cancel_kills_the_running_worker_and_deletes_its_checkpoints(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest(
            "tiny-chat",
            "dsv_small",
            hyperparameters=Hyperparameters(max_steps=100_000, checkpoint_interval_steps=1),
        )
    )
    # Cancel once the worker has written a checkpoint.
    _wait_for_event(core, job.id, lambda e: e.kind is EventKind.CHECKPOINT)
    assert _workers(core, job.id)
    cancelled = core.cancel_job(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.model_version == ""
    assert 0 < cancelled.steps_done < 100_000
    assert not _workers(core, job.id)
    assert not core._runner.checkpoints_dir(job.id).exists()
    # What was stored of its checkpoints stays listed.
    assert core.list_checkpoints(job.id)
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


@pytest.mark.slow
def test_pause_checkpoints_and_resume_continues_from_there(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest(
            "tiny-chat",
            "dsv_small",
            hyperparameters=Hyperparameters(max_steps=40, batch_size=2, learning_rate=3e-3),
            suffix="paused",
        )
    )
    _wait_for_event(core, job.id, lambda e: e.kind is EventKind.METRICS and e.step >= 2)
    paused = core.pause_job(job.id)
    paused = wait_for(core, job.id, lambda j: j.state is not JobState.RUNNING, 60)
    assert paused.state is JobState.PAUSED, paused
    assert not _workers(core, job.id)
    step = paused.steps_done
    assert 2 <= step < 40
    # The pause saved a checkpoint of the step it stopped after, kept for the resume.
    assert [c.step for c in core.list_checkpoints(job.id)] == [step]
    assert (core._runner.checkpoints_dir(job.id) / f"step-{step}" / "COMPLETE").is_file()
    last = _events(core, job.id)[-1]
    assert last.state is JobState.PAUSED
    assert f"resumes from the checkpoint at step {step}" in last.message
    time.sleep(1.0)
    assert core.get_job(job.id).state is JobState.PAUSED  # nothing picks a paused job up

    assert core.resume_job(job.id).state is JobState.QUEUED
    done = wait_for(core, job.id, lambda j: j.state.terminal, 120)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.model_version == "ft:tiny-chat:paused:1"
    events = _events(core, job.id)
    assert f"resumed from the checkpoint at step {step}" in [e.message for e in events]
    states = [e.state for e in events if e.kind is EventKind.STATE]
    assert states == [
        JobState.VALIDATING,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.PAUSED,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    metrics = [e.step for e in events if e.kind is EventKind.METRICS]
    # Every step trained once: the resumed run starts after the paused one's checkpoint.
    assert metrics == list(range(1, 41))
    assert _deleted(core._runner.checkpoints_dir(job.id))


def _kill_worker(core: TrainerCore, job_id: str) -> None:
    workers = _workers(core, job_id)
    assert workers, "no worker to kill"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_last_checkpoint_and_succeeds(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest(
            "tiny-chat",
            "dsv_small",
            hyperparameters=Hyperparameters(
                max_steps=30, batch_size=2, checkpoint_interval_steps=3
            ),
        )
    )
    checkpoint = _wait_for_event(core, job.id, lambda e: e.kind is EventKind.CHECKPOINT)
    _kill_worker(core, job.id)
    requeued = _wait_for_event(
        core, job.id, lambda e: e.kind is EventKind.STATE and "SIGKILL" in e.message
    )
    assert requeued.state is JobState.QUEUED
    resumed_from = int(requeued.message.split("checkpoint at step ")[1].split()[0])
    assert resumed_from >= checkpoint.step
    assert f"restart 1 of at most {MAX_RESTARTS}" in requeued.message

    done = wait_for(core, job.id, lambda j: j.state.terminal, 180)
    assert done.state is JobState.SUCCEEDED, done.error
    assert (done.steps_done, done.steps_total) == (30, 30)
    events = _events(core, job.id)
    assert f"resumed from the checkpoint at step {resumed_from}" in [e.message for e in events]
    after = [
        e.step for e in events if e.kind is EventKind.METRICS and e.sequence > requeued.sequence
    ]
    assert after == list(range(resumed_from + 1, 31))
    assert _deleted(core._runner.checkpoints_dir(job.id))


@pytest.mark.slow
def test_a_job_failing_again_and_again_keeps_its_checkpoint(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest("tiny-chat", "dsv_small", hyperparameters=Hyperparameters(max_steps=100_000))
    )
    _wait_for_event(core, job.id, lambda e: e.kind is EventKind.METRICS)
    core.pause_job(job.id)
    step = wait_for(core, job.id, lambda j: j.state is JobState.PAUSED, 60).steps_done
    core.resume_job(job.id)
    resumed = f"resumed from the checkpoint at step {step}"
    # The worker dies each time before it gets past the pause's checkpoint.
    for attempt in range(1, MAX_RESTARTS + 2):
        _wait_for_count(core, job.id, lambda e: e.message == resumed, attempt)
        _kill_worker(core, job.id)
        _wait_for_count(
            core, job.id, lambda e: e.kind is EventKind.STATE and "SIGKILL" in e.message, attempt
        )
    failed = core.get_job(job.id)
    assert failed.state is JobState.FAILED
    assert f"{MAX_RESTARTS + 1} times in a row" in failed.error
    assert f"checkpoint at step {step}" in failed.error
    assert "SIGKILL" in _events(core, job.id)[-1].message
    # Kept: the checkpoint to resume from by hand, and its copy in the store.
    assert (core._runner.checkpoints_dir(job.id) / f"step-{step}" / "COMPLETE").is_file()
    assert [c.step for c in core.list_checkpoints(job.id)] == [step]


_SERVICE = """
import json, sys, time
from pathlib import Path
from ownchat.artifacts import Artifact, ArtifactStore
from ownchat_trainer.core import TrainerCore
from ownchat_trainer.datasets import DatasetInfo, StaticDatasets
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.runner import RunnerOptions
from ownchat_trainer.store import TrainerStore

config = json.loads(sys.argv[1])
state = Path(config["state"])
store = TrainerStore(state / "trainer.db")
artifacts = ArtifactStore(Path(config["artifacts"]))
registry = ModelRegistry(store, artifacts, [Path(config["models"])], state / "imports",
                         include_embedded=False)
train, validation = (Artifact(*split) for split in config["splits"])
datasets = StaticDatasets([DatasetInfo("dsv_small", "chat", train, validation, 16, 2)])
core = TrainerCore(store, registry, artifacts, datasets, jobs_dir=state / "jobs",
                   options=RunnerOptions(torch_threads=1))
core.start()
time.sleep(3600)
"""


@pytest.mark.slow
def test_a_killed_service_resumes_the_job_at_its_next_start(
    make_core: CoreFactory,
    wait_for: WaitFor,
    tmp_path: Path,
    model_root: Path,
    artifacts: ArtifactStore,
) -> None:
    viewer = make_core(start=False)
    job = viewer.create_job(
        JobRequest(
            "tiny-chat",
            "dsv_small",
            hyperparameters=Hyperparameters(
                max_steps=30, batch_size=2, checkpoint_interval_steps=2
            ),
            suffix="restarted",
        )
    )
    state = tmp_path / "home" / "trainer"
    config = {
        "state": str(state),
        "artifacts": str(artifacts.root),
        "models": str(model_root),
        "splits": [
            [job.train_split.digest, job.train_split.size_bytes],
            [job.validation_split.digest, job.validation_split.size_bytes],
        ],
    }
    service = subprocess.Popen([sys.executable, "-c", _SERVICE, json.dumps(config)])
    try:
        checkpoint = _wait_for_event(
            viewer, job.id, lambda e: e.kind is EventKind.CHECKPOINT, timeout=180
        )
        assert viewer.get_job(job.id).state is JobState.RUNNING
    finally:
        service.kill()
        service.wait()
    viewer.close()

    restarted = make_core()
    requeued = _wait_for_event(
        restarted, job.id, lambda e: e.message.startswith(INTERRUPTED_BY_RESTART)
    )
    resumed_from = int(requeued.message.split("checkpoint at step ")[1].split()[0])
    assert resumed_from >= checkpoint.step
    done = wait_for(restarted, job.id, lambda j: j.state.terminal, 180)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.model_version == "ft:tiny-chat:restarted:1"
    events = _events(restarted, job.id)
    assert f"resumed from the checkpoint at step {resumed_from}" in [e.message for e in events]
    # The worker the killed service left behind is gone: one worker wrote the last steps.
    after = [
        e.step for e in events if e.kind is EventKind.METRICS and e.sequence > requeued.sequence
    ]
    assert after == list(range(resumed_from + 1, 31))


@pytest.mark.slow
def test_a_lora_job_registers_an_adapter_that_merges_into_a_loadable_model(
    make_core: CoreFactory, artifacts: ArtifactStore, wait_for: WaitFor
) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest(
            "tiny-chat",
            "dsv_small",
            method=TrainingMethod.SFT_LORA,
            hyperparameters=Hyperparameters(max_steps=6, batch_size=4, lora_rank=4),
            suffix="lora",
        )
    )
    assert (job.hyperparameters.lora_rank, job.hyperparameters.lora_alpha) == (4, 8.0)
    job = wait_for(core, job.id, lambda j: j.state.terminal, 120)
    assert job.state is JobState.SUCCEEDED, job.error
    adapter = core.get_model(job.model_version)
    assert adapter.id == "ft:tiny-chat:lora:1"
    assert adapter.kind is ModelKind.LORA_ADAPTER
    assert (adapter.base_model, adapter.job_id, adapter.dataset_version_id) == (
        "tiny-chat",
        job.id,
        "dsv_small",
    )
    assert "train_loss" in adapter.metrics
    files = set(
        json.loads((artifacts.path(adapter.artifact.digest) / MANIFEST_NAME).read_text())["files"]
    )
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files

    merged = core.merge_adapter(adapter.id)
    assert merged.id == "ft:tiny-chat:lora:1:merged"
    assert merged.kind is ModelKind.FULL
    assert (merged.base_model, merged.job_id, merged.dataset_version_id) == (
        "tiny-chat",
        job.id,
        "dsv_small",
    )
    assert merged.metrics == adapter.metrics
    assert core.merge_adapter(adapter.id) == merged
    assert core.get_model(merged.id) == merged
    with pytest.raises(InvalidArgumentError):
        core.merge_adapter(merged.id)

    directory = artifacts.path(merged.artifact.digest)
    assert artifacts.verify_tree(merged.artifact.digest) == []
    assert (directory / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(directory).chat_template
    network = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)
    base = AutoModelForCausalLM.from_pretrained(
        artifacts.path(core.get_model("tiny-chat").artifact.digest)
    )
    changed = [
        name
        for name, weight in network.state_dict().items()
        if not torch.equal(weight, base.state_dict()[name])
    ]
    assert changed and all("proj" in name for name in changed)
    # A fine-tuned version is a base for a next job; the next version number follows.
    again = core.create_job(
        JobRequest(merged.id, "dsv_small", hyperparameters=Hyperparameters(max_steps=1)),
    )
    again = wait_for(core, again.id, lambda j: j.state.terminal, 120)
    assert again.state is JobState.SUCCEEDED, again.error
    assert again.model_version == "ft:tiny-chat::1"
    assert core.get_model(again.model_version).base_model == "tiny-chat"


def test_a_dpo_job_trains_an_adapter_on_preference_pairs(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core()
    job = core.create_job(
        JobRequest(
            "tiny-chat",
            "dsv_pairs",
            method=TrainingMethod.DPO,
            hyperparameters=Hyperparameters(max_steps=4, batch_size=3, learning_rate=1e-2),
            suffix="dpo",
        )
    )
    job = wait_for(core, job.id, lambda j: j.state.terminal, 120)
    assert job.state is JobState.SUCCEEDED, job.error
    model = core.get_model(job.model_version)
    assert model.kind is ModelKind.LORA_ADAPTER and model.id == "ft:tiny-chat:dpo:1"
    assert {"reward_accuracy", "reward_margin"} <= set(model.metrics)
    metrics = [e for e in _events(core, job.id) if e.kind is EventKind.METRICS]
    assert [m.step for m in metrics] == [1, 2, 3, 4]
    assert all("reward accuracy" in m.message for m in metrics)


@pytest.mark.slow
class TwoGpus:
    """A GpuProbe over two made-up GPUs of a size the test sets (none until then).

    The worker ranks then run on the CPU under torchrun: the service believes
    in the GPUs, the worker's torch sees none."""

    def __init__(self) -> None:
        self.total_bytes = 0

    def survey(self) -> GpuSurvey:
        size = self.total_bytes
        return GpuSurvey(
            tuple(Gpu(index, "test GPU", f"GPU-{index}", size, size) for index in (0, 1))
            if size
            else ()
        )


def test_a_job_no_gpu_could_hold_whole_is_sharded_over_two(
    make_core: CoreFactory, wait_for: WaitFor, model_root: Path, artifacts: ArtifactStore
) -> None:
    gpus = TwoGpus()
    core = make_core(start=False, gpus_per_job=2, gpu_probe=gpus)
    job = core.create_job(
        JobRequest("tiny-chat", "dsv_small", hyperparameters=Hyperparameters(max_steps=3))
    )
    h = job.hyperparameters

    def required(shards: int) -> int:
        return training_bytes(
            model_root / "tiny-chat",
            adapter=False,
            dpo=False,
            batch_size=h.batch_size,
            max_seq_length=h.max_seq_length,
            processes=2,
            shards=shards,
        )

    # Too small for a whole copy of the training state, large enough for half of it.
    assert required(2) < required(1)
    gpus.total_bytes = (required(1) + required(2)) // 2
    core.start()
    done = wait_for(core, job.id, lambda j: j.state.terminal, 240)
    assert done.state is JobState.SUCCEEDED, done.error
    running = [e.message for e in _events(core, job.id) if e.kind is EventKind.STATE]
    assert any(
        m.startswith("running on cuda:0,1 (2 processes); the training state is sharded")
        for m in running
    ), running
    started = [e.message for e in _events(core, job.id) if "sharded with FSDP" in e.message]
    assert started, "the worker did not shard the model"
    spec = json.loads((core._runner.checkpoints_dir(job.id).parent / SPEC_NAME).read_text())
    assert spec["strategy"] == "fsdp"
    model = core.get_model(done.model_version)
    assert model.kind is ModelKind.FULL
    trained = AutoModelForCausalLM.from_pretrained(
        artifacts.path(model.artifact.digest), use_safetensors=True
    )
    base = AutoModelForCausalLM.from_pretrained(model_root / "tiny-chat", use_safetensors=True)
    assert trained.state_dict().keys() == base.state_dict().keys()
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)


def test_two_cpu_processes_train_one_job_under_torchrun(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core(cpu_processes=2)
    job = core.create_job(
        JobRequest("tiny-chat", "dsv_small", hyperparameters=Hyperparameters(max_steps=3))
    )
    job = wait_for(core, job.id, lambda j: j.state.terminal, 240)
    assert job.state is JobState.SUCCEEDED, job.error
    assert any(
        "2 processes" in e.message for e in _events(core, job.id) if e.kind is EventKind.STATE
    )

    # Pausing reaches both ranks through torchrun; cancelling kills every process.
    long = core.create_job(
        JobRequest("tiny-chat", "dsv_small", hyperparameters=Hyperparameters(max_steps=1_000_000))
    )
    _wait_for_event(core, long.id, lambda e: e.kind is EventKind.METRICS, timeout=240)
    assert len(_workers(core, long.id)) == 3  # torchrun and its two ranks
    core.pause_job(long.id)
    paused = wait_for(core, long.id, lambda j: j.state is not JobState.RUNNING, 120)
    assert paused.state is JobState.PAUSED
    assert [c.step for c in core.list_checkpoints(long.id)] == [paused.steps_done]
    core.resume_job(long.id)
    _wait_for_event(core, long.id, lambda e: e.message.startswith("resumed from"), timeout=240)
    assert core.cancel_job(long.id).state is JobState.CANCELLED
    assert not _workers(core, long.id)

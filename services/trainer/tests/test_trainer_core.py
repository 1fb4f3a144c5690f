"""The core without running workers: checks at submission, idempotency, pausing,
resuming and cancelling jobs that are not running, what a restart does to
unfinished jobs, GPU placement decisions, and merge refusals."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ownchat.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from ownchat_trainer.core import JobRequest, TrainerCore
from ownchat_trainer.datasets import StaticDatasets
from ownchat_trainer.hyperparameters import Hyperparameters
from ownchat_trainer.placement import GIB, Gpu, GpuSurvey
from ownchat_trainer.records import EventKind, Job, JobState, ModelKind, TrainingMethod
from ownchat_trainer.runner import INTERRUPTED_BY_RESTART, SPEC_NAME

CoreFactory = Callable[..., TrainerCore]
WaitFor = Callable[[TrainerCore, str, Callable[[Job], bool], float], Job]


@pytest.fixture
def trainer_store_location(store_location: Path | str) -> Path | str:
    """The cores' store, on SQLite and on PostgreSQL."""
    return store_location


def _request(**changes: object) -> JobRequest:
    values: dict[str, object] = {
        "base_model": "tiny-chat",
        "dataset_version_id": "dsv_small",
        "hyperparameters": Hyperparameters(max_steps=3, batch_size=2),
    }
    values.update(changes)
    return JobRequest(**values)  # type: ignore[arg-type]


def test_a_valid_request_is_queued_with_resolved_hyperparameters(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    job = core.create_job(_request(hyperparameters=Hyperparameters(batch_size=5), suffix="acme-1"))
    assert job.id.startswith("job_")
    assert job.state is JobState.QUEUED
    assert job.method is TrainingMethod.SFT_FULL
    assert job.hyperparameters.max_steps == 4  # ceil(16 / 5) for one epoch
    assert job.hyperparameters.learning_rate == 5e-5
    assert job.hyperparameters.lora_rank == 0
    assert job.steps_total == 4
    events, complete = core.wait_events(job.id, 0, timeout=0)
    assert [(e.kind, e.state) for e in events] == [
        (EventKind.STATE, JobState.VALIDATING),
        # The dataset's lengths were not counted at upload: said once.
        (EventKind.MESSAGE, JobState.VALIDATING),
        (EventKind.STATE, JobState.QUEUED),
    ]
    assert "full fine-tuning, 4 steps of 5" in events[0].message
    assert not complete
    assert [j.id for j in core.list_jobs(10, 0)] == [job.id]


def test_unknown_base_model_is_not_found(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(NotFoundError) as caught:
        core.create_job(_request(base_model="no-such-model"))
    assert caught.value.resource_type == "base model"


def test_unknown_dataset_version_is_not_found(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(NotFoundError) as caught:
        core.create_job(_request(dataset_version_id="dsv_missing"))
    assert caught.value.resource_type == "dataset version"


def test_both_missing_are_named_in_one_error(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(NotFoundError) as caught:
        core.create_job(_request(base_model="nope", dataset_version_id="dsv_missing"))
    assert "nope" in caught.value.message and "dsv_missing" in caught.value.message


def test_bad_hyperparameters_are_invalid_with_every_field(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(
            _request(
                hyperparameters=Hyperparameters(learning_rate=0.0, batch_size=0, lora_rank=4),
                suffix="Bad Suffix!",
                dataset_version_id="dsv_missing",
            )
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "hyperparameters.learning_rate",
        "hyperparameters.batch_size",
        "hyperparameters.lora_rank",
        "suffix",
        # Reported with the rest, so one round trip shows every problem.
        "dataset_version_id",
    }
    assert core.list_jobs(10, 0) == []


def test_each_method_is_accepted_with_its_defaults(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    lora = core.create_job(_request(method=TrainingMethod.SFT_LORA))
    assert lora.method is TrainingMethod.SFT_LORA
    assert (lora.hyperparameters.lora_rank, lora.hyperparameters.lora_alpha) == (16, 32.0)
    assert lora.hyperparameters.learning_rate == 2e-4
    dpo = core.create_job(
        _request(
            method=TrainingMethod.DPO,
            dataset_version_id="dsv_pairs",
            hyperparameters=Hyperparameters(dpo_beta=0.2),
        )
    )
    assert dpo.method is TrainingMethod.DPO
    assert (dpo.hyperparameters.dpo_beta, dpo.hyperparameters.lora_rank) == (0.2, 16)
    assert dpo.hyperparameters.max_steps == 3  # 12 pairs, 4 a step
    events, _ = core.wait_events(dpo.id, 0, timeout=0)
    assert "DPO (beta 0.2, LoRA rank 16)" in events[0].message
    assert "12 training and 2 validation pairs" in events[0].message


@pytest.mark.parametrize(
    ("method", "dataset", "needs"),
    [
        (TrainingMethod.DPO, "dsv_small", "preference pairs"),
        (TrainingMethod.SFT_FULL, "dsv_pairs", "chat samples"),
        (TrainingMethod.SFT_LORA, "dsv_pairs", "chat samples"),
    ],
)
def test_the_dataset_must_hold_what_the_method_trains_on(
    make_core: CoreFactory, method: TrainingMethod, dataset: str, needs: str
) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(_request(method=method, dataset_version_id=dataset))
    [violation] = caught.value.violations
    assert violation.field == "dataset_version_id"
    assert (
        needs in violation.description and f"TRAINING_METHOD_{method.name}" in violation.description
    )


def test_an_evaluation_only_version_is_refused_naming_it(
    make_core: CoreFactory, datasets: StaticDatasets
) -> None:
    small = datasets("dsv_small")
    datasets.add(
        dataclasses.replace(
            small,
            id="dsv_held_out",
            train_split=small.validation_split,
            train_samples=0,
            validation_samples=18,
        )
    )
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(_request(dataset_version_id="dsv_held_out"))
    [violation] = caught.value.violations
    assert violation.field == "dataset_version_id"
    assert "dsv_held_out has no training samples" in violation.description
    assert "validation_fraction below 1" in violation.description
    assert core.list_jobs(10, 0) == []


def test_an_unknown_method_is_invalid(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(_request(method=None))
    assert [v.field for v in caught.value.violations] == ["method"]


def test_lora_and_dpo_values_out_of_range_are_invalid(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(
            _request(
                method=TrainingMethod.SFT_LORA,
                hyperparameters=Hyperparameters(lora_rank=0, lora_alpha=-1.0, dpo_beta=0.1),
            )
        )
    assert {v.field for v in caught.value.violations} == {
        "hyperparameters.lora_rank",
        "hyperparameters.lora_alpha",
        "hyperparameters.dpo_beta",
    }
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(
            _request(
                method=TrainingMethod.DPO,
                dataset_version_id="dsv_pairs",
                hyperparameters=Hyperparameters(dpo_beta=50.0, lora_rank=5000),
            )
        )
    assert {v.field for v in caught.value.violations} == {
        "hyperparameters.dpo_beta",
        "hyperparameters.lora_rank",
    }
    assert core.list_jobs(10, 0) == []


def test_max_seq_length_beyond_the_base_models_context_is_invalid(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(_request(hyperparameters=Hyperparameters(max_seq_length=1024)))
    [violation] = caught.value.violations
    assert violation.field == "hyperparameters.max_seq_length"
    assert "512 tokens" in violation.description


def _counted(
    datasets: StaticDatasets,
    version_id: str,
    tokenizer: str,
    histogram: list[tuple[int | None, int]],
) -> None:
    small = datasets("dsv_small")
    datasets.add(
        dataclasses.replace(
            small,
            id=version_id,
            tokenizer=tokenizer,
            tokens=1000,
            length_histogram=tuple(histogram),
        )
    )


HISTOGRAM = [(64, 8), (128, 4), (256, 0), (512, 0), (1024, 3), (2048, 1), (None, 0)]


def test_samples_too_long_for_the_job_are_refused_when_counted_with_its_tokenizer(
    make_core: CoreFactory, datasets: StaticDatasets
) -> None:
    _counted(datasets, "dsv_long", "tiny-chat", HISTOGRAM)
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(
            _request(
                dataset_version_id="dsv_long",
                hyperparameters=Hyperparameters(max_seq_length=256),
            )
        )
    [violation] = caught.value.violations
    assert violation.field == "dataset_version_id"
    assert "4 of its 16 samples have 256 tokens or more" in violation.description
    assert "context is 512 tokens" in violation.description
    # The default length, 512, is still too short for the 1024-2047 bucket.
    with pytest.raises(InvalidArgumentError):
        core.create_job(_request(dataset_version_id="dsv_long", hyperparameters=Hyperparameters()))
    assert core.list_jobs(10, 0) == []


def test_lengths_counted_otherwise_are_left_to_the_worker_with_a_note(
    make_core: CoreFactory, datasets: StaticDatasets
) -> None:
    _counted(datasets, "dsv_other", "some-other-model", HISTOGRAM)
    _counted(datasets, "dsv_straddles", "tiny-chat", [(64, 10), (128, 6), (None, 0)])
    _counted(datasets, "dsv_fits", "tiny-chat", [(64, 16), (None, 0)])
    core = make_core(start=False)

    def notes(version: str, max_seq_length: int) -> list[str]:
        job = core.create_job(
            _request(
                dataset_version_id=version,
                hyperparameters=Hyperparameters(max_steps=1, max_seq_length=max_seq_length),
            )
        )
        assert job.state is JobState.QUEUED
        events, _ = core.wait_events(job.id, 0, timeout=0)
        return [e.message for e in events if e.kind is EventKind.MESSAGE]

    [other] = notes("dsv_other", 256)
    assert "some-other-model's tokenizer, not tiny-chat's" in other
    assert "says when it starts how many it dropped" in other
    [straddles] = notes("dsv_straddles", 100)
    assert "up to 6 of the dataset's 16 samples may be longer than max_seq_length=100" in straddles
    assert notes("dsv_fits", 100) == []
    [uncounted] = notes("dsv_small", 100)
    assert "not counted" in uncounted


def test_suffix_rules(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    for bad in ("UPPER", "a" * 41, "under_score", "ft:x"):
        with pytest.raises(InvalidArgumentError):
            core.create_job(_request(suffix=bad))
    assert core.create_job(_request(suffix="a" * 40)).suffix == "a" * 40
    assert core.create_job(_request(suffix="")).suffix == ""


def test_same_idempotency_key_returns_the_first_job(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    first = core.create_job(_request(idempotency_key="retry-1", seed=1))
    again = core.create_job(_request(idempotency_key="retry-1", seed=2))
    other = core.create_job(_request(idempotency_key="retry-2"))
    assert again.id == first.id and again.seed == 1
    assert other.id != first.id
    assert len(core.list_jobs(10, 0)) == 2


def test_cancel_a_queued_job_and_what_cannot_be_cancelled(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    job = core.create_job(_request())
    cancelled = core.cancel_job(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert core.cancel_job(job.id).state is JobState.CANCELLED
    events, complete = core.wait_events(job.id, 0, timeout=0)
    assert events[-1].state is JobState.CANCELLED
    assert core.wait_events(job.id, events[-1].sequence, timeout=5) == ([], True)
    with pytest.raises(NotFoundError):
        core.cancel_job("job_missing")
    finished = core.create_job(_request())
    core._store.set_state(finished.id, JobState.FAILED, "failed", error="boom")
    with pytest.raises(FailedPreconditionError):
        core.cancel_job(finished.id)


def test_pause_and_resume_a_queued_job_and_what_cannot_be(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    job = core.create_job(_request())
    paused = core.pause_job(job.id)
    assert paused.state is JobState.PAUSED
    assert core.pause_job(job.id).state is JobState.PAUSED
    resumed = core.resume_job(job.id)
    assert resumed.state is JobState.QUEUED
    assert core.resume_job(job.id).state is JobState.QUEUED
    events, complete = core.wait_events(job.id, 0, timeout=0)
    assert [e.state for e in events if e.kind is EventKind.STATE][-3:] == [
        JobState.QUEUED,
        JobState.PAUSED,
        JobState.QUEUED,
    ]
    assert not complete
    with pytest.raises(NotFoundError):
        core.pause_job("job_missing")
    core.cancel_job(job.id)
    with pytest.raises(FailedPreconditionError):
        core.pause_job(job.id)
    with pytest.raises(FailedPreconditionError):
        core.resume_job(job.id)


def _fake_checkpoint(core: TrainerCore, job_id: str, step: int) -> Path:
    """A complete checkpoint's folder as the worker leaves it (contents do not matter here)."""
    folder = core._runner.checkpoints_dir(job_id) / f"step-{step}"
    (folder / "model").mkdir(parents=True)
    (folder / "COMPLETE").write_text("{}")
    return folder


def test_cancelling_a_paused_job_deletes_its_checkpoints(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    job = core.create_job(_request())
    core.pause_job(job.id)
    folder = _fake_checkpoint(core, job.id, 2)
    assert core.cancel_job(job.id).state is JobState.CANCELLED
    assert not folder.parent.exists()


def test_a_restart_queues_the_jobs_it_interrupted_to_resume(make_core: CoreFactory) -> None:
    first = make_core(start=False)
    queued = first.create_job(_request())
    running = first.create_job(_request())
    first._store.set_state(running.id, JobState.RUNNING, "running")
    _fake_checkpoint(first, running.id, 3)
    (first._runner.checkpoints_dir(running.id) / "step-5").mkdir()  # incomplete: ignored
    fresh = first.create_job(_request())
    first._store.set_state(fresh.id, JobState.RUNNING, "running")
    paused = first.create_job(_request())
    first.pause_job(paused.id)
    done = first.create_job(_request())
    first.cancel_job(done.id)
    first.close()
    # A worker the killed service left behind, still running on the job's spec.
    spec = first._runner.checkpoints_dir(running.id).parent / SPEC_NAME
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(spec)],
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while str(spec).encode() not in Path(f"/proc/{stray.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the stray did not start"
        time.sleep(0.01)

    # Not started: only the recovery runs, no worker.
    second = make_core(start=False)
    try:
        second._runner.recover()
        assert stray.wait(timeout=10) == -signal.SIGKILL
    finally:
        stray.kill()
    resumed = second.get_job(running.id)
    assert resumed.state is JobState.QUEUED and resumed.steps_done == 3
    events, _ = second.wait_events(running.id, 0, timeout=0)
    assert events[-1].message.startswith(INTERRUPTED_BY_RESTART)
    assert "resumes from the checkpoint at step 3" in events[-1].message
    again = second.get_job(fresh.id)
    assert again.state is JobState.QUEUED and again.steps_done == 0
    events, _ = second.wait_events(fresh.id, 0, timeout=0)
    assert "from the beginning" in events[-1].message
    assert second.get_job(queued.id).state is JobState.QUEUED
    assert second.get_job(paused.id).state is JobState.PAUSED
    assert second.get_job(done.id).state is JobState.CANCELLED


@dataclasses.dataclass
class FakeGpus:
    """A GpuProbe over made-up devices."""

    gpus: tuple[Gpu, ...]

    def survey(self) -> GpuSurvey:
        return GpuSurvey(self.gpus)


def _gpu(total_gib: float, free_gib: float) -> Gpu:
    return Gpu(0, "test GPU", "GPU-0", int(total_gib * GIB), int(free_gib * GIB))


def test_a_job_no_gpu_could_hold_fails_with_the_reason(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core(gpu_probe=FakeGpus((_gpu(0.5, 0.5),)))
    job = core.create_job(_request())
    failed = wait_for(core, job.id, lambda j: j.state.terminal, 60)
    assert failed.state is JobState.FAILED
    assert "does not fit this machine's GPUs" in failed.error and "0.5 GiB" in failed.error


def test_a_job_waits_in_the_queue_while_the_gpus_are_busy(
    make_core: CoreFactory, wait_for: WaitFor
) -> None:
    core = make_core(gpu_probe=FakeGpus((_gpu(80, 0.1),)))
    job = core.create_job(_request())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events, _ = core.wait_events(job.id, 0, timeout=0)
        if any("waiting for a GPU" in e.message for e in events):
            break
        time.sleep(0.1)
    time.sleep(1.0)  # several more placement passes (every 0.2 s)
    events, _ = core.wait_events(job.id, 0, timeout=0)
    assert [e.message for e in events].count(
        next(e.message for e in events if "waiting for a GPU" in e.message)
    ) == 1
    assert core.get_job(job.id).state is JobState.QUEUED
    assert core.cancel_job(job.id).state is JobState.CANCELLED


def test_only_an_adapter_merges_and_an_adapter_is_not_a_base(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.merge_adapter("tiny-chat")
    assert [v.field for v in caught.value.violations] == ["model_id"]
    with pytest.raises(NotFoundError):
        core.merge_adapter("ft:tiny-chat::9")
    source = core.create_job(_request())
    adapter, _ = core._store.register_version(
        source,
        "tiny-chat",
        core.get_model("tiny-chat").artifact,
        {},
        "{model}",
        kind=ModelKind.LORA_ADAPTER,
        base_model="tiny-chat",
    )
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(_request(base_model=adapter.id))
    [violation] = caught.value.violations
    assert violation.field == "base_model" and "merge" in violation.description

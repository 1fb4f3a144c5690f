"""The core without running workers: checks at submission, idempotency, queued
cancellation, and what a restart does to unfinished jobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ownchat.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from ownchat_trainer.core import JobRequest, TrainerCore
from ownchat_trainer.hyperparameters import Hyperparameters
from ownchat_trainer.records import EventKind, JobState, TrainingMethod
from ownchat_trainer.runner import INTERRUPTED_BY_RESTART

CoreFactory = Callable[..., TrainerCore]


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
    assert job.hyperparameters.max_steps == 4  # ceil(16 / 5) for one epoch
    assert job.hyperparameters.learning_rate == 5e-5
    assert job.steps_total == 4
    events, complete = core.wait_events(job.id, 0, timeout=0)
    assert [(e.kind, e.state) for e in events] == [
        (EventKind.STATE, JobState.VALIDATING),
        (EventKind.STATE, JobState.QUEUED),
    ]
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


@pytest.mark.parametrize("method", [TrainingMethod.SFT_LORA, TrainingMethod.DPO, None])
def test_methods_other_than_full_fine_tuning_are_refused(
    make_core: CoreFactory, method: TrainingMethod | None
) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(_request(method=method))
    [violation] = caught.value.violations
    assert violation.field == "method"
    if method is not None:
        assert "later" in violation.description


def test_suffix_rules(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    for bad in ("UPPER", "a" * 41, "under_score", "ft:x"):
        with pytest.raises(InvalidArgumentError):
            core.create_job(_request(suffix=bad))
    assert core.create_job(_request(suffix="a" * 40)).suffix == "a" * 40
    assert core.create_job(_request(suffix="")).suffix == ""


def test_preference_data_cannot_train_sft(make_core: CoreFactory) -> None:
    core = make_core(start=False)
    with pytest.raises(InvalidArgumentError) as caught:
        core.create_job(_request(dataset_version_id="dsv_pairs"))
    assert [v.field for v in caught.value.violations] == ["dataset_version_id"]


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


def test_a_restart_fails_the_jobs_it_interrupted(make_core: CoreFactory) -> None:
    first = make_core(start=False)
    queued = first.create_job(_request())
    running = first.create_job(_request())
    first._store.set_state(running.id, JobState.RUNNING, "running")
    done = first.create_job(_request())
    first.cancel_job(done.id)
    first.close()

    second = make_core(start=True)
    for job_id in (queued.id, running.id):
        job = second.get_job(job_id)
        assert job.state is JobState.FAILED
        assert job.error == INTERRUPTED_BY_RESTART
        events, _ = second.wait_events(job_id, 0, timeout=0)
        assert events[-1].message == INTERRUPTED_BY_RESTART
    assert second.get_job(done.id).state is JobState.CANCELLED

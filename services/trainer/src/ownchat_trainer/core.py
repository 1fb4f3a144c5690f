"""The trainer's core: accepting jobs, reporting on them, and the model registry.

Knows nothing of gRPC. A request is checked completely at submission, every
problem reported at once; a job that passes is stored with its resolved
hyperparameters and queued, and the runner trains it in a worker process.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from ownchat.artifacts import ArtifactStore
from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from ownchat_trainer.datasets import DatasetInfo, DatasetLookup
from ownchat_trainer.hyperparameters import (
    Hyperparameters,
    ResolvedHyperparameters,
    check_full,
    resolve_full,
)
from ownchat_trainer.records import (
    Checkpoint,
    EventKind,
    Job,
    JobEvent,
    JobState,
    Model,
    ModelKind,
    NewEvent,
    TrainingMethod,
)
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.runner import JobRunner
from ownchat_trainer.store import TrainerStore

SUFFIX = re.compile(r"[a-z0-9-]{0,40}")
MAX_IDEMPOTENCY_KEY = 256
# How long CancelTrainingJob waits for a running worker to be gone; below a
# client's default 30 s deadline.
CANCEL_WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class JobRequest:
    """A request for a training job; ``method`` None means a method this trainer does not know."""

    base_model: str
    dataset_version_id: str
    method: TrainingMethod | None = TrainingMethod.SFT_FULL
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    seed: int = 0
    suffix: str = ""
    idempotency_key: str = ""


def _new_job_id() -> str:
    return f"job_{secrets.token_hex(10)}"


class TrainerCore:
    """Jobs, their events and checkpoints, and the models they produce."""

    def __init__(
        self,
        store: TrainerStore,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        datasets: DatasetLookup,
        jobs_dir: Path,
        torch_threads: int | None = None,
        cancel_grace_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._artifacts = artifacts
        self._datasets = datasets
        self._runner = JobRunner(
            store, registry, artifacts, jobs_dir, torch_threads, cancel_grace_seconds
        )
        self._started = False

    def start(self) -> None:
        """Fails jobs a previous run left unfinished, then starts running queued jobs."""
        self._runner.recover()
        self._runner.start()
        self._started = True

    def close(self) -> None:
        """Stops the running job (it fails as interrupted) and closes the store."""
        if self._started:
            self._runner.stop()
        self._store.close()

    # Jobs.

    def create_job(self, request: JobRequest) -> Job:
        """Checks a request and queues it; a known idempotency key returns its first job."""
        if request.idempotency_key:
            existing = self._store.job_by_idempotency_key(request.idempotency_key)
            if existing is not None:
                return existing
        dataset, resolved = self._validate(request)
        now = time.time()
        job = Job(
            id=_new_job_id(),
            base_model=request.base_model,
            dataset_version_id=request.dataset_version_id,
            method=TrainingMethod.SFT_FULL,
            hyperparameters=resolved,
            seed=request.seed,
            suffix=request.suffix,
            state=JobState.VALIDATING,
            steps_done=0,
            steps_total=resolved.max_steps,
            error="",
            model_version="",
            create_time=now,
            update_time=now,
            device="",
            train_split=dataset.train_split,
            validation_split=dataset.validation_split,
        )
        stored = self._store.add_job(
            job,
            request.idempotency_key,
            [
                NewEvent(
                    EventKind.STATE,
                    f"validated: {dataset.train_samples} training and "
                    f"{dataset.validation_samples} validation samples, "
                    f"{resolved.max_steps} steps",
                )
            ],
        )
        if stored.id != job.id:  # the same key won a race
            return stored
        queued = self._store.set_state(job.id, JobState.QUEUED, "queued")
        if self._started:
            # The first use of a base model imports it; start now, while the job waits.
            self._registry.prefetch(request.base_model)
            self._runner.wake()
        return queued

    def _validate(self, request: JobRequest) -> tuple[DatasetInfo, ResolvedHyperparameters]:
        violations: list[FieldViolation] = []
        if not request.base_model:
            violations.append(FieldViolation("base_model", "required"))
        if not request.dataset_version_id:
            violations.append(FieldViolation("dataset_version_id", "required"))
        if request.method is None:
            violations.append(FieldViolation("method", "not a known training method"))
        elif request.method is not TrainingMethod.SFT_FULL:
            violations.append(
                FieldViolation(
                    "method",
                    f"TRAINING_METHOD_{request.method.name} comes in a later release; "
                    "use TRAINING_METHOD_SFT_FULL",
                )
            )
        violations += check_full(request.hyperparameters)
        if not SUFFIX.fullmatch(request.suffix):
            violations.append(
                FieldViolation("suffix", "at most 40 of lowercase letters, digits and '-'")
            )
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            violations.append(
                FieldViolation("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters")
            )

        missing: list[NotFoundError] = []
        if request.base_model:
            model = self._store.get_model(request.base_model)
            if model is None and not self._registry.known(request.base_model):
                missing.append(NotFoundError("base model", request.base_model))
            elif model is not None and model.kind not in (ModelKind.BASE, ModelKind.FULL):
                violations.append(
                    FieldViolation("base_model", "an adapter cannot be fine-tuned further yet")
                )
        dataset: DatasetInfo | None = None
        if request.dataset_version_id:
            try:
                dataset = self._datasets(request.dataset_version_id)
            except NotFoundError:
                missing.append(NotFoundError("dataset version", request.dataset_version_id))
        if dataset is not None and dataset.kind != "chat":
            violations.append(
                FieldViolation(
                    "dataset_version_id",
                    f"holds {dataset.kind} samples; supervised fine-tuning needs chat samples",
                )
            )

        if violations:
            violations += [
                FieldViolation(
                    "base_model" if m.resource_type == "base model" else "dataset_version_id",
                    m.message,
                )
                for m in missing
            ]
            raise InvalidArgumentError("invalid training job request", violations)
        if missing:
            error = missing[0]
            if len(missing) > 1:
                error.message = "; ".join(m.message for m in missing)
            raise error
        assert dataset is not None
        for split in (dataset.train_split, dataset.validation_split):
            try:
                self._artifacts.path(split.digest)
            except NotFoundError:
                raise FailedPreconditionError(
                    f"dataset version {dataset.id!r}: split {split.digest} is not in this "
                    "trainer's artifact store"
                ) from None
        return dataset, resolve_full(request.hyperparameters, dataset.train_samples)

    def get_job(self, job_id: str) -> Job:
        return self._store.get_job(job_id)

    def list_jobs(self, limit: int, offset: int) -> list[Job]:
        """Jobs, newest first."""
        return self._store.list_jobs(limit, offset)

    def cancel_job(self, job_id: str) -> Job:
        """Cancels a job that has not ended; waits for a running worker to be gone.

        Cancelling a cancelled job returns it; a job that ended otherwise cannot be.
        """
        job = self._store.get_job(job_id)
        if job.state is JobState.CANCELLED:
            return job
        if job.state.terminal:
            raise FailedPreconditionError(
                f"job {job_id!r} has already ended ({job.state.value}); it cannot be cancelled"
            )
        job = self._runner.cancel(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while not job.state.terminal and (left := deadline - time.monotonic()) > 0:
            since = self._store.change_count()
            job = self._store.get_job(job_id)
            if not job.state.terminal:
                self._store.wait_for_change(since, min(left, 1.0))
                job = self._store.get_job(job_id)
        return job

    def wait_events(
        self, job_id: str, after_sequence: int, timeout: float
    ) -> tuple[list[JobEvent], bool]:
        """Events after a sequence number, waiting up to ``timeout`` for new ones.

        Returns the events and whether the stream is complete: the job has ended
        and every one of its events is at or before ``after_sequence``.
        """
        since = self._store.change_count()
        # The state is read before the events: a terminal state's own event is
        # written with it, so nothing can follow the events read here.
        job = self._store.get_job(job_id)
        events = self._store.events_after(job_id, after_sequence)
        if events:
            return events, False
        if job.state.terminal:
            return [], True
        self._store.wait_for_change(since, timeout)
        return [], False

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """A job's checkpoints, oldest first."""
        self._store.get_job(job_id)
        return self._store.list_checkpoints(job_id)

    # Models.

    def get_model(self, model_id: str) -> Model:
        """A registered model; a base model is imported on first use."""
        return self._registry.get(model_id)

    def list_models(self, limit: int, offset: int) -> list[Model]:
        """The registry, newest first."""
        return self._registry.list(limit, offset)

    def block_models_trained_on(self, dataset_version_ids: list[str], reason: str) -> list[str]:
        """Blocks every model trained on these dataset versions (deploy refuses them)."""
        if not reason.strip():
            raise InvalidArgumentError(
                "a block needs a reason", [FieldViolation("reason", "required")]
            )
        return self._store.block_models_trained_on(dataset_version_ids, reason)

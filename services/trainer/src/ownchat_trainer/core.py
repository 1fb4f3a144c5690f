"""The trainer's core: accepting jobs, steering and reporting on them, and the model registry.

Knows nothing of gRPC. A request is checked completely at submission, every
problem reported at once: an unknown base model, a dataset version that does
not exist or holds the wrong kind of samples for the method, hyperparameters
out of range, samples longer than the job's max_seq_length (when the dataset's
lengths were counted with the base model's tokenizer). A job that passes is
stored with its resolved hyperparameters and queued, and the runner trains it
in a worker process.

A job's states: VALIDATING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED |
CANCELLED; QUEUED or RUNNING -> PAUSED -> QUEUED on resume; a job whose worker
died, or whose trainer stopped, goes back to QUEUED and resumes from its
newest checkpoint.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
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
    check,
    resolve,
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
from ownchat_trainer.runner import JobRunner, RunnerOptions
from ownchat_trainer.store import TrainerStore

SUFFIX = re.compile(r"[a-z0-9-]{0,40}")
MAX_IDEMPOTENCY_KEY = 256
# How long CancelTrainingJob and PauseTrainingJob wait for a running worker to
# be gone; below a client's default 30 s deadline.
CANCEL_WAIT_SECONDS = 15.0
PAUSE_WAIT_SECONDS = 15.0


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


def _describe(method: TrainingMethod, h: ResolvedHyperparameters) -> str:
    what = {
        TrainingMethod.SFT_FULL: "full fine-tuning",
        TrainingMethod.SFT_LORA: "LoRA fine-tuning",
        TrainingMethod.DPO: "DPO",
    }[method]
    if method is TrainingMethod.DPO:
        what += f" (beta {h.dpo_beta:g}, " + (
            f"LoRA rank {h.lora_rank})" if h.lora_rank else "every weight)"
        )
    elif h.lora_rank:
        what += f" (rank {h.lora_rank}, alpha {h.lora_alpha:g})"
    return f"{what}, {h.max_steps} steps of {h.batch_size}, learning rate {h.learning_rate:g}"


def _dataset_violations(dataset: DatasetInfo, method: TrainingMethod) -> list[FieldViolation]:
    if dataset.kind != method.dataset_kind:
        needs = "preference pairs" if method is TrainingMethod.DPO else "chat samples"
        return [
            FieldViolation(
                "dataset_version_id",
                f"holds {dataset.kind} samples; TRAINING_METHOD_{method.name} needs {needs}",
            )
        ]
    if dataset.train_samples < 1:
        # An evaluation-only version (uploaded with validation_fraction 1) lands here.
        return [
            FieldViolation(
                "dataset_version_id",
                f"dataset version {dataset.id} has no training samples (its "
                f"{dataset.validation_samples} samples are all held out for validation); "
                "upload the data again with a validation_fraction below 1 to train on it",
            )
        ]
    return []


def _length_check(
    dataset: DatasetInfo, root_base: str, max_seq_length: int, context: int | None
) -> list[str]:
    """Refuses samples too long for the job when their lengths were counted with the
    job's own tokenizer; otherwise returns what the job's events should say about lengths."""
    unknown = (
        "samples longer than max_seq_length are cut to it, and the worker says when it "
        "starts how many it dropped"
    )
    if not dataset.tokenizer or not dataset.length_histogram:
        return [f"the dataset's sample lengths were not counted at upload; {unknown}"]
    if dataset.tokenizer != root_base:
        return [
            f"the dataset's sample lengths were counted with {dataset.tokenizer}'s tokenizer, "
            f"not {root_base}'s; {unknown}"
        ]
    surely, possibly = dataset.samples_over(max_seq_length)
    total = sum(samples for _, samples in dataset.length_histogram)
    if surely:
        # Every sample fits below the bound of the last bucket holding any.
        fits = [bound for bound, samples in dataset.length_histogram if samples]
        enough = fits[-1] if fits and fits[-1] is not None else None
        advice = "raise hyperparameters.max_seq_length"
        if enough is not None and (context is None or enough <= context):
            advice += f" (to {enough}, every sample fits)"
        elif context is not None:
            advice += f" (the base model's context is {context} tokens)"
        advice += " or upload the data again with a length limit"
        raise InvalidArgumentError(
            "samples too long for the job",
            [
                FieldViolation(
                    "dataset_version_id",
                    f"{surely} of its {total} samples have {max_seq_length} tokens or more "
                    f"with {root_base}'s tokenizer, more than max_seq_length={max_seq_length} "
                    f"allows: {advice}",
                )
            ],
        )
    if possibly:
        return [
            f"up to {possibly} of the dataset's {total} samples may be longer than "
            f"max_seq_length={max_seq_length} tokens; {unknown}"
        ]
    return []


class TrainerCore:
    """Jobs, their events and checkpoints, and the models they produce."""

    def __init__(
        self,
        store: TrainerStore,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        datasets: DatasetLookup,
        jobs_dir: Path,
        options: RunnerOptions | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._artifacts = artifacts
        self._datasets = datasets
        self._runner = JobRunner(store, registry, artifacts, jobs_dir, options or RunnerOptions())
        self._started = False

    def start(self) -> None:
        """Re-queues jobs a previous run left running, then starts running queued jobs."""
        self._runner.recover()
        self._runner.start()
        self._started = True

    def close(self) -> None:
        """Stops the running job (it checkpoints and is queued again) and closes the store."""
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
        dataset, resolved, notes = self._validate(request)
        assert request.method is not None
        now = time.time()
        job = Job(
            id=_new_job_id(),
            base_model=request.base_model,
            dataset_version_id=request.dataset_version_id,
            method=request.method,
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
                    f"validated: {_describe(request.method, resolved)} on "
                    f"{dataset.train_samples} training and {dataset.validation_samples} "
                    f"validation {'pairs' if request.method is TrainingMethod.DPO else 'samples'}",
                ),
                *(NewEvent(EventKind.MESSAGE, note) for note in notes),
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

    def _validate(
        self, request: JobRequest
    ) -> tuple[DatasetInfo, ResolvedHyperparameters, list[str]]:
        """The dataset, the resolved hyperparameters and notes for the job's events."""
        violations: list[FieldViolation] = []
        if not request.base_model:
            violations.append(FieldViolation("base_model", "required"))
        if not request.dataset_version_id:
            violations.append(FieldViolation("dataset_version_id", "required"))
        if request.method is None:
            violations.append(FieldViolation("method", "not a known training method"))
        violations += check(request.hyperparameters, request.method)
        if not SUFFIX.fullmatch(request.suffix):
            violations.append(
                FieldViolation("suffix", "at most 40 of lowercase letters, digits and '-'")
            )
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            violations.append(
                FieldViolation("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters")
            )

        missing: list[NotFoundError] = []
        root = request.base_model
        context: int | None = None
        if request.base_model:
            model = self._store.get_model(request.base_model)
            if model is None and not self._registry.known(request.base_model):
                missing.append(NotFoundError("base model", request.base_model))
            elif model is not None and model.kind is ModelKind.LORA_ADAPTER:
                violations.append(
                    FieldViolation(
                        "base_model",
                        "a LoRA adapter cannot be fine-tuned further; merge it into a full "
                        "version first (MergeAdapter) and fine-tune that",
                    )
                )
            else:
                root = self._registry.root_base(model) if model is not None else root
                context = self._registry.context_length(request.base_model)
        requested_length = request.hyperparameters.max_seq_length
        if context is not None and requested_length is not None and requested_length > context:
            violations.append(
                FieldViolation(
                    "hyperparameters.max_seq_length",
                    f"the base model's context is {context} tokens",
                )
            )
        dataset: DatasetInfo | None = None
        if request.dataset_version_id:
            try:
                dataset = self._datasets(request.dataset_version_id)
            except NotFoundError:
                missing.append(NotFoundError("dataset version", request.dataset_version_id))
        if dataset is not None and request.method is not None:
            violations += _dataset_violations(dataset, request.method)

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
        assert dataset is not None and request.method is not None
        for split in (dataset.train_split, dataset.validation_split):
            try:
                self._artifacts.path(split.digest)
            except NotFoundError:
                raise FailedPreconditionError(
                    f"dataset version {dataset.id!r}: split {split.digest} is not in this "
                    "trainer's artifact store"
                ) from None
        resolved = resolve(request.hyperparameters, request.method, dataset.train_samples, context)
        notes = _length_check(dataset, root, resolved.max_seq_length, context)
        return dataset, resolved, notes

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
        self._runner.cancel(job_id)
        return self._wait_until(job_id, lambda j: j.state.terminal, CANCEL_WAIT_SECONDS)

    def pause_job(self, job_id: str) -> Job:
        """Pauses a job: a queued one at once, a running one once its worker has saved a
        checkpoint (waited for up to 15 s; until then the job is still RUNNING).

        Pausing a paused job returns it; a job that ended cannot be.
        """
        job = self._store.get_job(job_id)
        if job.state is JobState.PAUSED:
            return job
        if job.state.terminal:
            raise FailedPreconditionError(
                f"job {job_id!r} has already ended ({job.state.value}); it cannot be paused"
            )
        job = self._runner.pause(job_id)
        return self._wait_until(
            job_id, lambda j: j.state is not JobState.RUNNING, PAUSE_WAIT_SECONDS
        )

    def resume_job(self, job_id: str) -> Job:
        """Queues a paused job again; it continues from its newest checkpoint.

        Resuming a job that is queued or running returns it; a job that ended cannot be.
        """
        job = self._store.get_job(job_id)
        if job.state.terminal:
            raise FailedPreconditionError(
                f"job {job_id!r} has already ended ({job.state.value}); it cannot be resumed"
            )
        return self._runner.resume(job_id)

    def _wait_until(self, job_id: str, done: Callable[[Job], bool], seconds: float) -> Job:
        deadline = time.monotonic() + seconds
        job = self._store.get_job(job_id)
        while not done(job) and (left := deadline - time.monotonic()) > 0:
            since = self._store.change_count()
            job = self._store.get_job(job_id)
            if not done(job):
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

    def merge_adapter(self, model_id: str) -> Model:
        """Merges a LoRA adapter version into its base as a new full version,
        ``<adapter id>:merged``; merging again returns that version."""
        return self._registry.merge_adapter(model_id)

    def block_models_trained_on(self, dataset_version_ids: list[str], reason: str) -> list[str]:
        """Blocks every model trained on these dataset versions (deploy refuses them)."""
        if not reason.strip():
            raise InvalidArgumentError(
                "a block needs a reason", [FieldViolation("reason", "required")]
            )
        return self._store.block_models_trained_on(dataset_version_ids, reason)

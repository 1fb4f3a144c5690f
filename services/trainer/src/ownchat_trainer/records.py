"""The trainer's domain records: jobs, their events and checkpoints, registered models."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ownchat.artifacts import Artifact
from ownchat_trainer.hyperparameters import ResolvedHyperparameters, TrainingMethod

__all__ = [
    "Checkpoint",
    "EventKind",
    "Job",
    "JobEvent",
    "JobState",
    "Model",
    "ModelKind",
    "NewEvent",
    "TrainingMethod",
]


class JobState(Enum):
    """Where a job is in its life."""

    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended for good."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EventKind(Enum):
    """What a job event reports."""

    MESSAGE = "message"
    METRICS = "metrics"
    STATE = "state"
    CHECKPOINT = "checkpoint"


class ModelKind(Enum):
    """What a registered model is."""

    BASE = "base"
    FULL = "full"
    LORA_ADAPTER = "lora_adapter"


@dataclass(frozen=True)
class Job:
    """A training job as stored."""

    id: str
    base_model: str
    dataset_version_id: str
    method: TrainingMethod
    hyperparameters: ResolvedHyperparameters
    seed: int
    suffix: str
    state: JobState
    steps_done: int
    steps_total: int
    error: str
    model_version: str
    create_time: float
    update_time: float
    device: str
    train_split: Artifact
    validation_split: Artifact
    # Unexpected worker deaths in a row without a newer checkpoint, and the
    # checkpoint step the job last resumed from after one (-1: none yet).
    restarts: int = 0
    restart_step: int = -1

    @property
    def trains_adapter(self) -> bool:
        """Whether the job trains a LoRA adapter rather than every weight."""
        return self.hyperparameters.lora_rank > 0


@dataclass(frozen=True)
class JobEvent:
    """One event of a job; ``sequence`` counts from 1 per job."""

    sequence: int
    create_time: float
    kind: EventKind
    message: str
    state: JobState
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    validation_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class NewEvent:
    """An event to append; the store numbers and stamps it."""

    kind: EventKind
    message: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    validation_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A stored checkpoint of a job."""

    job_id: str
    step: int
    loss: float | None
    validation_loss: float | None
    artifact: Artifact
    create_time: float


@dataclass(frozen=True)
class Model:
    """A model in the registry: a base model or a fine-tuned version.

    ``base_model`` is the lineage: for a base model itself; for a full version
    the base model its line of fine-tuning started from; for a LoRA adapter
    the model whose weights it applies to (a base model or a full version).
    """

    id: str
    kind: ModelKind
    base_model: str
    artifact: Artifact
    create_time: float
    suffix: str = ""
    job_id: str = ""
    dataset_version_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    blocked_reason: str = ""

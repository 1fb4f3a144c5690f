"""OpenAI's wire types of the Files and fine-tuning APIs, field for field as the
``openai`` package (``openai.types.file_object``, ``openai.types.fine_tuning``)
declares them, and the job request the gateway accepts.

Request fields ownchat cannot honour are refused rather than ignored when
ignoring them would change what the caller gets (``integrations``,
``validation_file``, ``method.type`` ``reinforcement``); ``metadata`` is accepted
and not kept (every job reads back with ``metadata: null``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]
# What ownchat's OpenAI-compatible file purposes are: only fine-tuning data.
FINE_TUNE_PURPOSE = "fine-tune"


class FileObject(BaseModel):
    """OpenAI's ``file``: here, a dataset version of the data service."""

    id: str
    bytes: int = Field(description="The size of the uploaded file.")
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    """A page of files (``GET /v1/files``)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class FileDeleted(BaseModel):
    """The answer OpenAI gives to a deletion (never sent: versions are immutable)."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class HyperparametersIn(BaseModel):
    """Hyperparameters as a job request gives them; "auto" leaves them to the trainer."""

    model_config = ConfigDict(extra="ignore")

    batch_size: Auto | int | None = Field(default=None, description="Samples per step.")
    learning_rate_multiplier: Auto | float | None = Field(
        default=None, description="A factor on the trainer's default learning rate."
    )
    n_epochs: Auto | int | None = Field(default=None, description="Passes over the file.")
    beta: Auto | float | None = Field(default=None, description="DPO's beta (dpo only).")


class MethodConfig(BaseModel):
    """``method.supervised`` or ``method.dpo``."""

    model_config = ConfigDict(extra="ignore")

    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    """The fine-tuning method of a job request."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodConfig | None = None
    dpo: MethodConfig | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobCreate(BaseModel):
    """The body of ``POST /v1/fine_tuning/jobs``."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="A base model or a full fine-tuned version.")
    training_file: str = Field(min_length=1, description="A file id (dataset version).")
    hyperparameters: HyperparametersIn | None = Field(
        default=None, description="Deprecated by OpenAI in favour of method.*.hyperparameters."
    )
    method: MethodIn | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    suffix: str | None = Field(default=None, max_length=64)
    validation_file: str | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    """The hyperparameters a job runs with, resolved (no "auto" once created)."""

    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | float | None = None


class DpoHyperparameters(Hyperparameters):
    """DPO's hyperparameters."""

    beta: Auto | float | None = None


class SupervisedMethod(BaseModel):
    """``method.supervised`` of a job."""

    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    """``method.dpo`` of a job."""

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    """The method a job uses."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJob(BaseModel):
    """OpenAI's ``fine_tuning.job``: here, a training job of the trainer."""

    id: str
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal[
        "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"
    ]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None


class FineTuningJobList(BaseModel):
    """A page of jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    """OpenAI's ``fine_tuning.job.event``."""

    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] | None = None


class FineTuningJobEventList(BaseModel):
    """A page of a job's events, newest first."""

    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    """A checkpoint's metrics (only the losses are measured here)."""

    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    """OpenAI's ``fine_tuning.job.checkpoint``."""

    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    """A page of a job's checkpoints, newest first."""

    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool

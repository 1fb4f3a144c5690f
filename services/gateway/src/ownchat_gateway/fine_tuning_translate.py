"""Between OpenAI's file and fine-tuning objects and the data and trainer services' messages.

- A file is a dataset version; its id is the version's id as is (``dsv_...``),
  so the ids the CLI prints work in the API and the other way round.
- A job is a training job (``job_...``). ``supervised`` is full supervised
  fine-tuning, ``dpo`` is DPO (a LoRA adapter, the trainer's default for DPO).
  ``learning_rate_multiplier`` scales the trainer's default learning rate of
  the method (:data:`BASE_LEARNING_RATES`), and is reported back the same way.
- Event and checkpoint ids are ``ftevent-<job id>-<sequence>`` and
  ``ftckpt-<job id>-<step>``: the cursors of their lists.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

from ownchat.data.v1 import data_pb2
from ownchat.trainer.v1 import trainer_pb2
from ownchat_gateway.errors import GatewayError, invalid_request
from ownchat_gateway.fine_tuning_protocol import (
    CheckpointMetrics,
    DpoHyperparameters,
    DpoMethod,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Hyperparameters,
    HyperparametersIn,
    JobError,
    Method,
    SupervisedMethod,
)

# The trainer's default learning rates (ownchat_trainer.hyperparameters), which
# OpenAI's learning_rate_multiplier scales: by method, and for DPO by whether a
# LoRA adapter is trained (the default) or every weight.
BASE_LEARNING_RATES: dict[tuple[trainer_pb2.TrainingMethod.ValueType, bool], float] = {
    (trainer_pb2.TRAINING_METHOD_SFT_FULL, False): 5e-5,
    (trainer_pb2.TRAINING_METHOD_SFT_LORA, True): 2e-4,
    (trainer_pb2.TRAINING_METHOD_DPO, True): 5e-5,
    (trainer_pb2.TRAINING_METHOD_DPO, False): 5e-6,
}
STATUSES: dict[trainer_pb2.JobState.ValueType, str] = {
    trainer_pb2.JOB_STATE_VALIDATING: "validating_files",
    trainer_pb2.JOB_STATE_QUEUED: "queued",
    trainer_pb2.JOB_STATE_RUNNING: "running",
    trainer_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    trainer_pb2.JOB_STATE_FAILED: "failed",
    trainer_pb2.JOB_STATE_CANCELLED: "cancelled",
    # Newer than the openai package's enum, which lists the other six; OpenAI
    # answers "paused" for a paused job (jobs.pause / jobs.resume).
    trainer_pb2.JOB_STATE_PAUSED: "paused",
}
_ENDED = frozenset(
    {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}
)
# Jobs have no owner here; OpenAI's field is required.
ORGANIZATION_ID = "ownchat"
# The trainer's alphabet and length for a suffix (ownchat_trainer.core.SUFFIX).
_NOT_IN_SUFFIX = re.compile(r"[^a-z0-9-]+")
MAX_SUFFIX = 40
MAX_IDEMPOTENCY_KEY = 256
# Trainer field paths as OpenAI names them.
_TRAINER_PARAMS = {
    "base_model": "model",
    "dataset_version_id": "training_file",
    "method": "method.type",
    "idempotency_key": "Idempotency-Key",
    "hyperparameters.epochs": "hyperparameters.n_epochs",
    "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier",
    "hyperparameters.dpo_beta": "hyperparameters.beta",
}
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"


def _seconds(stamp: Any) -> int:
    return int(stamp.seconds)


# Files.


def file_object(version: data_pb2.DatasetVersion) -> FileObject:
    """The file a dataset version is; an erased one (its files deleted) is in error."""
    details = None
    if version.erased_by:
        details = (
            f"its stored data was deleted by erasure {version.erased_by}; "
            "it can no longer be read or trained on"
        )
    return FileObject(
        id=version.id,
        bytes=version.source.size_bytes,
        created_at=_seconds(version.create_time),
        filename=version.source_file_name or version.id,
        status="error" if version.erased_by else "processed",
        status_details=details,
    )


def openai_line(line: str, kind: data_pb2.SampleKind.ValueType) -> str:
    """One stored sample as a line of OpenAI's training file format.

    Chat samples become ``{"messages": [...]}``, preference pairs OpenAI's
    ``input`` / ``preferred_output`` / ``non_preferred_output``; other samples
    (document text) are given as stored.
    """
    sample = json.loads(line)
    value: dict[str, Any]
    if kind == data_pb2.SAMPLE_KIND_PREFERENCE:
        value = {
            "input": {"messages": sample["prompt"]},
            "preferred_output": [{"role": "assistant", "content": sample["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": sample["rejected"]}],
        }
    elif kind == data_pb2.SAMPLE_KIND_CHAT:
        value = {"messages": sample["messages"]}
    else:
        return line
    return json.dumps(value, ensure_ascii=False)


class LineSplitter:
    """Whole lines out of chunks that may cut a line anywhere."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> Iterator[str]:
        """The lines the chunk completes."""
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield line.decode("utf-8")

    def finish(self) -> Iterator[str]:
        """The last line, when the data did not end with a newline."""
        if self._rest.strip():
            yield self._rest.decode("utf-8")
        self._rest = b""


# Jobs: the request.


def _chosen(
    method: str, top: HyperparametersIn | None, own: HyperparametersIn | None
) -> HyperparametersIn:
    """The method's own hyperparameters, each falling back to the deprecated top-level one."""
    merged: dict[str, Any] = {}
    for source in (top, own):
        if source is not None:
            merged.update(source.model_dump(exclude_none=True))
    if method != "dpo" and "beta" in merged:
        raise invalid_request(
            "beta applies only to the dpo method", param="method.supervised.hyperparameters.beta"
        )
    return HyperparametersIn(**merged)


def _given(value: Any) -> Any:
    return None if value in (None, "auto") else value


def training_request(
    body: FineTuningJobCreate, idempotency_key: str, caller: str
) -> trainer_pb2.CreateTrainingJobRequest:
    """The trainer's request for an OpenAI job request; 400 for what cannot be honoured.

    ``caller`` (the API key's id) scopes the idempotency key, so that two callers
    choosing the same key do not receive each other's job.
    """
    if body.validation_file:
        raise invalid_request(
            "validation_file is not supported: a job validates on its training file's own "
            "validation split (files uploaded here train on every line)",
            param="validation_file",
        )
    if body.integrations:
        raise invalid_request("integrations are not supported", param="integrations")
    method_type = body.method.type if body.method else "supervised"
    if method_type == "reinforcement":
        raise invalid_request(
            "the reinforcement method is not supported; use supervised or dpo",
            param="method.type",
        )
    own = None
    if body.method is not None:
        config = body.method.dpo if method_type == "dpo" else body.method.supervised
        own = config.hyperparameters if config is not None else None
    chosen = _chosen(method_type, body.hyperparameters, own)
    method = (
        trainer_pb2.TRAINING_METHOD_DPO
        if method_type == "dpo"
        else trainer_pb2.TRAINING_METHOD_SFT_FULL
    )
    hyperparameters = trainer_pb2.Hyperparameters()
    n_epochs = _given(chosen.n_epochs)
    if n_epochs is not None:
        hyperparameters.epochs = float(n_epochs)
    batch_size = _given(chosen.batch_size)
    if batch_size is not None:
        hyperparameters.batch_size = batch_size
    multiplier = _given(chosen.learning_rate_multiplier)
    if multiplier is not None:
        if multiplier <= 0:
            raise invalid_request(
                "learning_rate_multiplier must be above 0",
                param="hyperparameters.learning_rate_multiplier",
            )
        # DPO jobs made here train a LoRA adapter (the trainer's default for DPO).
        adapter = method == trainer_pb2.TRAINING_METHOD_DPO
        hyperparameters.learning_rate = multiplier * BASE_LEARNING_RATES[(method, adapter)]
    beta = _given(chosen.beta)
    if beta is not None:
        hyperparameters.dpo_beta = beta
    return trainer_pb2.CreateTrainingJobRequest(
        base_model=body.model,
        dataset_version_id=body.training_file,
        method=method,
        hyperparameters=hyperparameters,
        # OpenAI picks a seed when none is given, and reports it.
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        suffix=trainer_suffix(body.suffix or ""),
        idempotency_key=scoped_idempotency_key(idempotency_key, caller),
    )


def trainer_suffix(suffix: str) -> str:
    """A suffix in the trainer's alphabet: lowercase letters, digits and ``-``, at most 40."""
    return _NOT_IN_SUFFIX.sub("-", suffix.lower()).strip("-")[:MAX_SUFFIX].strip("-")


def scoped_idempotency_key(key: str, caller: str) -> str:
    """The trainer's idempotency key for a caller's ``Idempotency-Key`` (empty: none)."""
    if not key:
        return ""
    scoped = f"{caller}:{key}"
    if len(scoped) > MAX_IDEMPOTENCY_KEY:
        scoped = f"{caller}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return scoped[:MAX_IDEMPOTENCY_KEY]


def openai_param(field_path: str) -> str:
    """The OpenAI parameter a trainer field path stands for."""
    return _TRAINER_PARAMS.get(field_path, field_path)


# Jobs: the answers.


def _multiplier(job: trainer_pb2.TrainingJob) -> float | None:
    values = job.hyperparameters
    if not values.HasField("learning_rate"):
        return None
    adapter = values.HasField("lora_rank") and values.lora_rank > 0
    base = BASE_LEARNING_RATES.get((job.method, adapter))
    if base is None:
        return None
    return float(f"{values.learning_rate / base:.6g}")


def _epochs(values: trainer_pb2.Hyperparameters) -> int | float | None:
    if not values.HasField("epochs"):
        return None
    return int(values.epochs) if values.epochs.is_integer() else values.epochs


def job_object(job: trainer_pb2.TrainingJob) -> FineTuningJob:
    """The ``fine_tuning.job`` a training job is."""
    values = job.hyperparameters
    common = Hyperparameters(
        batch_size=values.batch_size if values.HasField("batch_size") else None,
        learning_rate_multiplier=_multiplier(job),
        n_epochs=_epochs(values),
    )
    if job.method == trainer_pb2.TRAINING_METHOD_DPO:
        method = Method(
            type="dpo",
            dpo=DpoMethod(
                hyperparameters=DpoHyperparameters(
                    **common.model_dump(),
                    beta=values.dpo_beta if values.HasField("dpo_beta") else None,
                )
            ),
        )
    else:
        method = Method(type="supervised", supervised=SupervisedMethod(hyperparameters=common))
    ended = job.state in _ENDED
    failed = job.state == trainer_pb2.JOB_STATE_FAILED
    return FineTuningJob(
        id=job.id,
        created_at=_seconds(job.create_time),
        error=JobError(code="training_failed", message=job.error or "the job failed")
        if failed
        else None,
        fine_tuned_model=job.model_version or None,
        finished_at=_seconds(job.update_time) if ended else None,
        hyperparameters=common,
        model=job.base_model,
        organization_id=ORGANIZATION_ID,
        result_files=[],
        seed=job.seed,
        status=STATUSES.get(job.state, "queued"),  # type: ignore[arg-type]
        training_file=job.dataset_version_id,
        method=method,
    )


def event_object(job_id: str, event: trainer_pb2.JobEvent) -> FineTuningJobEvent:
    """The ``fine_tuning.job.event`` of a job event; a metrics event carries its numbers."""
    data: dict[str, Any] | None = None
    if event.kind == trainer_pb2.EVENT_KIND_METRICS:
        data = {"step": event.step, "total_steps": event.total_steps}
        for name, key in (
            ("loss", "train_loss"),
            ("validation_loss", "valid_loss"),
            ("learning_rate", "learning_rate"),
            ("tokens_per_second", "tokens_per_second"),
            ("eta_seconds", "eta_seconds"),
        ):
            if event.HasField(name):  # type: ignore[arg-type]
                data[key] = getattr(event, name)
    failed = (
        event.kind == trainer_pb2.EVENT_KIND_STATE and event.state == trainer_pb2.JOB_STATE_FAILED
    )
    return FineTuningJobEvent(
        id=f"{EVENT_PREFIX}{job_id}-{event.sequence}",
        created_at=_seconds(event.create_time),
        level="error" if failed else "info",
        message=event.message,
        data=data,
        type="metrics" if event.kind == trainer_pb2.EVENT_KIND_METRICS else "message",
    )


def checkpoint_object(
    job: trainer_pb2.TrainingJob, checkpoint: trainer_pb2.Checkpoint
) -> FineTuningJobCheckpoint:
    """The ``fine_tuning.job.checkpoint`` of a checkpoint.

    The last checkpoint of a job that succeeded is its registered model version,
    named as such; earlier ones are not registered models, so their name
    (``<job id>:ckpt-step-<step>``) identifies them but cannot be served.
    """
    final = (
        job.state == trainer_pb2.JOB_STATE_SUCCEEDED
        and job.model_version
        and checkpoint.step >= job.progress.total
    )
    name = job.model_version if final else f"{job.id}:ckpt-step-{checkpoint.step}"
    return FineTuningJobCheckpoint(
        id=f"{CHECKPOINT_PREFIX}{job.id}-{checkpoint.step}",
        created_at=_seconds(checkpoint.create_time),
        fine_tuned_model_checkpoint=name,
        fine_tuning_job_id=job.id,
        metrics=CheckpointMetrics(
            step=float(checkpoint.step),
            train_loss=checkpoint.loss if checkpoint.HasField("loss") else None,
            valid_loss=checkpoint.validation_loss
            if checkpoint.HasField("validation_loss")
            else None,
        ),
        step_number=checkpoint.step,
    )


def cursor_number(cursor: str | None, prefix: str, job_id: str, param: str) -> int | None:
    """The sequence or step an event or checkpoint id names; 400 for another job's id."""
    if cursor is None:
        return None
    head = f"{prefix}{job_id}-"
    number = cursor[len(head) :]
    if not cursor.startswith(head) or not number.isdigit():
        raise invalid_request(f"{param} is not an id of this job's list: {cursor!r}", param=param)
    return int(number)


def not_configured(what: str) -> GatewayError:
    """503 when the gateway was started without a client of the service."""
    return GatewayError(
        503,
        f"the {what} service is not configured in this gateway",
        "server_error",
        code="unavailable",
    )

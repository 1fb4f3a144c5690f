"""TrainerService over gRPC: protobuf in, plain Python to the core, protobuf out."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from ownchat.common.v1 import common_pb2
from ownchat.paging import next_page_token, page_window
from ownchat.timestamps import to_timestamp
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from ownchat_trainer.core import JobRequest, TrainerCore
from ownchat_trainer.hyperparameters import Hyperparameters
from ownchat_trainer.records import (
    Checkpoint,
    EventKind,
    Job,
    JobEvent,
    JobState,
    Model,
    ModelKind,
    TrainingMethod,
)

# How often a waiting event stream checks that its client is still there.
STREAM_POLL_SECONDS = 1.0

_METHODS = {
    trainer_pb2.TRAINING_METHOD_UNSPECIFIED: TrainingMethod.SFT_FULL,
    trainer_pb2.TRAINING_METHOD_SFT_FULL: TrainingMethod.SFT_FULL,
    trainer_pb2.TRAINING_METHOD_SFT_LORA: TrainingMethod.SFT_LORA,
    trainer_pb2.TRAINING_METHOD_DPO: TrainingMethod.DPO,
}
_METHODS_OUT = {
    TrainingMethod.SFT_FULL: trainer_pb2.TRAINING_METHOD_SFT_FULL,
    TrainingMethod.SFT_LORA: trainer_pb2.TRAINING_METHOD_SFT_LORA,
    TrainingMethod.DPO: trainer_pb2.TRAINING_METHOD_DPO,
}
_STATES = {
    JobState.VALIDATING: trainer_pb2.JOB_STATE_VALIDATING,
    JobState.QUEUED: trainer_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: trainer_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: trainer_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: trainer_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: trainer_pb2.JOB_STATE_CANCELLED,
    JobState.PAUSED: trainer_pb2.JOB_STATE_PAUSED,
}
_EVENT_KINDS = {
    EventKind.MESSAGE: trainer_pb2.EVENT_KIND_MESSAGE,
    EventKind.METRICS: trainer_pb2.EVENT_KIND_METRICS,
    EventKind.STATE: trainer_pb2.EVENT_KIND_STATE,
    EventKind.CHECKPOINT: trainer_pb2.EVENT_KIND_CHECKPOINT,
}
_MODEL_KINDS = {
    ModelKind.BASE: trainer_pb2.MODEL_KIND_BASE,
    ModelKind.FULL: trainer_pb2.MODEL_KIND_FULL,
    ModelKind.LORA_ADAPTER: trainer_pb2.MODEL_KIND_LORA_ADAPTER,
}
_HYPERPARAMETER_FIELDS = (
    "epochs",
    "max_steps",
    "learning_rate",
    "batch_size",
    "max_seq_length",
    "warmup_ratio",
    "lora_rank",
    "lora_alpha",
    "checkpoint_interval_steps",
    "eval_interval_steps",
    "dpo_beta",
)


def hyperparameters_from_proto(message: trainer_pb2.Hyperparameters) -> Hyperparameters:
    """The set fields of a request's hyperparameters."""
    return Hyperparameters(
        **{
            name: getattr(message, name)
            for name in _HYPERPARAMETER_FIELDS
            if message.HasField(name)  # type: ignore[arg-type]
        }
    )


def _hyperparameters_to_proto(values: Hyperparameters) -> trainer_pb2.Hyperparameters:
    return trainer_pb2.Hyperparameters(**values.to_dict())


def job_to_proto(job: Job) -> trainer_pb2.TrainingJob:
    return trainer_pb2.TrainingJob(
        id=job.id,
        base_model=job.base_model,
        dataset_version_id=job.dataset_version_id,
        method=_METHODS_OUT[job.method],
        hyperparameters=_hyperparameters_to_proto(job.hyperparameters.as_requested()),
        seed=job.seed,
        suffix=job.suffix,
        state=_STATES[job.state],
        progress=common_pb2.Progress(completed=job.steps_done, total=job.steps_total, unit="steps"),
        error=job.error,
        model_version=job.model_version,
        create_time=to_timestamp(job.create_time),
        update_time=to_timestamp(job.update_time),
        device=job.device,
    )


def event_to_proto(event: JobEvent) -> trainer_pb2.JobEvent:
    message = trainer_pb2.JobEvent(
        sequence=event.sequence,
        create_time=to_timestamp(event.create_time),
        kind=_EVENT_KINDS[event.kind],
        message=event.message,
        step=event.step,
        total_steps=event.total_steps,
        state=_STATES[event.state],
    )
    for name in ("loss", "validation_loss", "learning_rate", "tokens_per_second", "eta_seconds"):
        value = getattr(event, name)
        if value is not None:
            setattr(message, name, value)
    return message


def _artifact(digest: str, size_bytes: int) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(digest=digest, size_bytes=size_bytes)


def checkpoint_to_proto(checkpoint: Checkpoint) -> trainer_pb2.Checkpoint:
    message = trainer_pb2.Checkpoint(
        step=checkpoint.step,
        artifact=_artifact(checkpoint.artifact.digest, checkpoint.artifact.size_bytes),
        create_time=to_timestamp(checkpoint.create_time),
    )
    if checkpoint.loss is not None:
        message.loss = checkpoint.loss
    if checkpoint.validation_loss is not None:
        message.validation_loss = checkpoint.validation_loss
    return message


def model_to_proto(model: Model) -> trainer_pb2.Model:
    return trainer_pb2.Model(
        id=model.id,
        kind=_MODEL_KINDS[model.kind],
        base_model=model.base_model,
        artifact=_artifact(model.artifact.digest, model.artifact.size_bytes),
        job_id=model.job_id,
        dataset_version_id=model.dataset_version_id,
        metrics=model.metrics,
        create_time=to_timestamp(model.create_time),
        blocked_reason=model.blocked_reason,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Translates TrainerService calls for :class:`TrainerCore`."""

    def __init__(self, core: TrainerCore) -> None:
        self._core = core

    def CreateTrainingJob(
        self, request: trainer_pb2.CreateTrainingJobRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CreateTrainingJobResponse:
        job = self._core.create_job(
            JobRequest(
                base_model=request.base_model,
                dataset_version_id=request.dataset_version_id,
                method=_METHODS.get(request.method),
                hyperparameters=hyperparameters_from_proto(request.hyperparameters),
                seed=request.seed,
                suffix=request.suffix,
                idempotency_key=request.idempotency_key,
            )
        )
        return trainer_pb2.CreateTrainingJobResponse(job=job_to_proto(job))

    def GetTrainingJob(
        self, request: trainer_pb2.GetTrainingJobRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetTrainingJobResponse:
        return trainer_pb2.GetTrainingJobResponse(
            job=job_to_proto(self._core.get_job(request.job_id))
        )

    def ListTrainingJobs(
        self, request: trainer_pb2.ListTrainingJobsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListTrainingJobsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        jobs = self._core.list_jobs(limit, offset)
        return trainer_pb2.ListTrainingJobsResponse(
            jobs=[job_to_proto(job) for job in jobs],
            next_page_token=next_page_token(limit, offset, len(jobs)),
        )

    def CancelTrainingJob(
        self, request: trainer_pb2.CancelTrainingJobRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CancelTrainingJobResponse:
        return trainer_pb2.CancelTrainingJobResponse(
            job=job_to_proto(self._core.cancel_job(request.job_id))
        )

    def PauseTrainingJob(
        self, request: trainer_pb2.PauseTrainingJobRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.PauseTrainingJobResponse:
        return trainer_pb2.PauseTrainingJobResponse(
            job=job_to_proto(self._core.pause_job(request.job_id))
        )

    def ResumeTrainingJob(
        self, request: trainer_pb2.ResumeTrainingJobRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ResumeTrainingJobResponse:
        return trainer_pb2.ResumeTrainingJobResponse(
            job=job_to_proto(self._core.resume_job(request.job_id))
        )

    def StreamTrainingJobEvents(
        self, request: trainer_pb2.StreamTrainingJobEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.StreamTrainingJobEventsResponse]:
        after = max(request.after_sequence, 0)
        # Fails with NOT_FOUND before the stream sends anything.
        self._core.get_job(request.job_id)
        while context.is_active():
            events, complete = self._core.wait_events(request.job_id, after, STREAM_POLL_SECONDS)
            for event in events:
                yield trainer_pb2.StreamTrainingJobEventsResponse(event=event_to_proto(event))
                after = event.sequence
            if complete:
                return

    def ListCheckpoints(
        self, request: trainer_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListCheckpointsResponse:
        checkpoints = self._core.list_checkpoints(request.job_id)
        return trainer_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(c) for c in checkpoints]
        )

    def GetModel(
        self, request: trainer_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetModelResponse:
        return trainer_pb2.GetModelResponse(
            model=model_to_proto(self._core.get_model(request.model_id))
        )

    def ListModels(
        self, request: trainer_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListModelsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        models = self._core.list_models(limit, offset)
        return trainer_pb2.ListModelsResponse(
            models=[model_to_proto(m) for m in models],
            next_page_token=next_page_token(limit, offset, len(models)),
        )

    def MergeAdapter(
        self, request: trainer_pb2.MergeAdapterRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.MergeAdapterResponse:
        return trainer_pb2.MergeAdapterResponse(
            model=model_to_proto(self._core.merge_adapter(request.model_id))
        )

    def BlockModelsTrainedOn(
        self, request: trainer_pb2.BlockModelsTrainedOnRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.BlockModelsTrainedOnResponse:
        model_ids = self._core.block_models_trained_on(
            list(request.dataset_version_ids), request.reason
        )
        return trainer_pb2.BlockModelsTrainedOnResponse(model_ids=model_ids)

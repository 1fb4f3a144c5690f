"""Where the evaluator finds datasets (the data service over gRPC, then the
shared artifact store) and models' training curves (the trainer). Models are
found with ``ownchat.registry.ModelDirectories``."""

from __future__ import annotations

from pathlib import Path

import grpc

from ownchat.artifacts import ArtifactStore
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import remote_error
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from ownchat_evaluator.curves import LossCurve, LossPoint, base_model_curve, curve_from_points

# A finished job's events come back at once; a report must not hang on a trainer
# that stopped answering.
CURVE_TIMEOUT_SECONDS = 60.0


class ValidationSplits:
    """Resolves dataset version ids to their validation split files."""

    def __init__(self, client_settings: ClientSettings, token: str, artifacts: ArtifactStore):
        self._artifacts = artifacts
        self._data = data_pb2_grpc.DataServiceStub(
            open_channel(client_settings.data_address, client_settings, token)
        )

    def __call__(self, dataset_version_id: str) -> Path:
        """The validation split file of a dataset version."""
        try:
            response = self._data.GetDatasetVersion(
                data_pb2.GetDatasetVersionRequest(dataset_version_id=dataset_version_id)
            )
        except grpc.RpcError as error:
            raise remote_error(error, "data") from None
        return self._artifacts.path(response.dataset_version.validation_split.digest)


class TrainingCurves:
    """Resolves model ids to their training loss curves, from the trainer's job events.

    The model version's lineage names the job that trained it (a merged
    adapter keeps its adapter's job); a base model has no job and no curve.
    """

    def __init__(self, client_settings: ClientSettings, token: str) -> None:
        self._settings = client_settings
        self._token = token
        self._stub: trainer_pb2_grpc.TrainerServiceStub | None = None

    def __call__(self, model_id: str) -> LossCurve:
        """The model's curve; NOT_FOUND, UNAVAILABLE... as the trainer says."""
        if self._stub is None:
            channel = open_channel(self._settings.trainer_address, self._settings, self._token)
            self._stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        try:
            model = self._stub.GetModel(
                trainer_pb2.GetModelRequest(model_id=model_id), timeout=CURVE_TIMEOUT_SECONDS
            ).model
            if model.kind == trainer_pb2.MODEL_KIND_BASE:
                return base_model_curve(model_id)
            if not model.job_id:
                return LossCurve(
                    model_id, note=f"{model_id} was registered without a training job."
                )
            events = self._stub.StreamTrainingJobEvents(
                trainer_pb2.StreamTrainingJobEventsRequest(job_id=model.job_id),
                timeout=CURVE_TIMEOUT_SECONDS,
            )
            points = [
                LossPoint(
                    step=response.event.step,
                    loss=response.event.loss if response.event.HasField("loss") else None,
                    validation_loss=response.event.validation_loss
                    if response.event.HasField("validation_loss")
                    else None,
                )
                for response in events
                if response.event.kind == trainer_pb2.EVENT_KIND_METRICS
            ]
        except grpc.RpcError as error:
            raise remote_error(error, "trainer") from None
        return curve_from_points(model_id, model.job_id, points)

"""Where the evaluator finds models and datasets: the trainer's registry and
the data service, over gRPC, then the shared artifact store."""

from __future__ import annotations

from pathlib import Path

import grpc

from ownchat.artifacts import ArtifactStore
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import remote_error
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc


class RemoteLookups:
    """Resolves model ids and dataset version ids to local artifact paths."""

    def __init__(self, client_settings: ClientSettings, token: str, artifacts: ArtifactStore):
        self._artifacts = artifacts
        self._trainer = trainer_pb2_grpc.TrainerServiceStub(
            open_channel(client_settings.trainer_address, client_settings, token)
        )
        self._data = data_pb2_grpc.DataServiceStub(
            open_channel(client_settings.data_address, client_settings, token)
        )

    def model_dir(self, model_id: str) -> Path:
        """The checkpoint directory of a registered model."""
        try:
            response = self._trainer.GetModel(
                trainer_pb2.GetModelRequest(model_id=model_id), timeout=600
            )
        except grpc.RpcError as error:
            raise remote_error(error, "trainer") from None
        return self._artifacts.path(response.model.artifact.digest)

    def validation_split(self, dataset_version_id: str) -> Path:
        """The validation split file of a dataset version."""
        try:
            response = self._data.GetDatasetVersion(
                data_pb2.GetDatasetVersionRequest(dataset_version_id=dataset_version_id)
            )
        except grpc.RpcError as error:
            raise remote_error(error, "data") from None
        return self._artifacts.path(response.dataset_version.validation_split.digest)

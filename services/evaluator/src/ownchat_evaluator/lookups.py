"""Where the evaluator finds datasets: the data service over gRPC, then the
shared artifact store. Models are found with ``ownchat.registry.ModelDirectories``."""

from __future__ import annotations

from pathlib import Path

import grpc

from ownchat.artifacts import ArtifactStore
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import remote_error


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

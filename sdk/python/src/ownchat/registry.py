"""Finding a registered model's checkpoint directory, for services that read models.

The trainer owns the registry; a model's files are an immutable directory in
the shared artifact store, found by the digest the trainer records.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ownchat.artifacts import ArtifactStore
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.errors import remote_error
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc

# The first look-up of a base model may import it (tens of seconds on a CPU).
MODEL_LOOKUP_TIMEOUT_SECONDS = 600.0


class ModelDirectories:
    """Resolves model ids to local checkpoint directories through the trainer."""

    def __init__(self, settings: ClientSettings, token: str, artifacts: ArtifactStore) -> None:
        self._settings = settings
        self._token = token
        self._artifacts = artifacts
        self._stub: trainer_pb2_grpc.TrainerServiceStub | None = None

    def __call__(self, model_id: str) -> Path:
        """The directory of a model; NOT_FOUND, UNAVAILABLE... as the trainer says."""
        if self._stub is None:
            channel = open_channel(self._settings.trainer_address, self._settings, self._token)
            self._stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        try:
            response = self._stub.GetModel(
                trainer_pb2.GetModelRequest(model_id=model_id),
                timeout=MODEL_LOOKUP_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            raise remote_error(error, "trainer") from None
        return self._artifacts.path(response.model.artifact.digest)


class ModelBlocker:
    """Blocks, in the trainer's registry, the models trained on given dataset versions."""

    def __init__(self, settings: ClientSettings, token: str) -> None:
        self._settings = settings
        self._token = token

    def __call__(self, dataset_version_ids: list[str], reason: str) -> list[str]:
        """The blocked models' ids; UNAVAILABLE when the trainer cannot be reached."""
        channel = open_channel(self._settings.trainer_address, self._settings, self._token)
        try:
            response = trainer_pb2_grpc.TrainerServiceStub(channel).BlockModelsTrainedOn(
                trainer_pb2.BlockModelsTrainedOnRequest(
                    dataset_version_ids=dataset_version_ids, reason=reason
                )
            )
        except grpc.RpcError as error:
            raise remote_error(error, "trainer") from None
        finally:
            channel.close()
        return list(response.model_ids)

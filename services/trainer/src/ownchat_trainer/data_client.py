"""The dataset lookup the running service uses: the data service's GetDatasetVersion."""

from __future__ import annotations

import grpc

from ownchat.artifacts import Artifact
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import (
    FailedPreconditionError,
    NotFoundError,
    PreconditionViolation,
    remote_error,
)
from ownchat_trainer.datasets import DatasetInfo

_KINDS = {
    data_pb2.SAMPLE_KIND_CHAT: "chat",
    data_pb2.SAMPLE_KIND_PREFERENCE: "preference",
    data_pb2.SAMPLE_KIND_TEXT: "text",
}


class DataServiceDatasets:
    """Looks dataset versions up in the data service over an authenticated channel."""

    def __init__(self, settings: ClientSettings, token: str) -> None:
        self._settings = settings
        self._token = token
        self._stub: data_pb2_grpc.DataServiceStub | None = None

    def _data(self) -> data_pb2_grpc.DataServiceStub:
        # Opened on first use: the trainer starts whether or not the data service is up.
        if self._stub is None:
            channel = open_channel(self._settings.data_address, self._settings, self._token)
            self._stub = data_pb2_grpc.DataServiceStub(channel)
        return self._stub

    def __call__(self, dataset_version_id: str) -> DatasetInfo:
        try:
            response = self._data().GetDatasetVersion(
                data_pb2.GetDatasetVersionRequest(dataset_version_id=dataset_version_id)
            )
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError("dataset version", dataset_version_id) from None
            raise remote_error(error, "data") from None
        version = response.dataset_version
        if version.erased_by:
            raise FailedPreconditionError(
                f"dataset version {dataset_version_id} was erased ({version.erased_by}); "
                "train on the version the erasure produced",
                [PreconditionViolation("ERASED", dataset_version_id, version.erased_by)],
            )
        return DatasetInfo(
            id=version.id,
            kind=_KINDS.get(version.kind, "unknown"),
            train_split=Artifact(version.train_split.digest, version.train_split.size_bytes),
            validation_split=Artifact(
                version.validation_split.digest, version.validation_split.size_bytes
            ),
            train_samples=version.stats.train_samples,
            validation_samples=version.stats.validation_samples,
            tokens=version.stats.tokens,
            tokenizer=version.stats.tokenizer,
            # The proto's open last bucket has bound 0.
            length_histogram=tuple(
                (bucket.below_tokens or None, bucket.samples)
                for bucket in version.stats.length_histogram
            ),
        )

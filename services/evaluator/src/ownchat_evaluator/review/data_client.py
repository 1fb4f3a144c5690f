"""The review queue's calls to the data service: reading a chat split to
sample from, and uploading exported feedback as a new dataset version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from ownchat.artifacts import ArtifactStore
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    PreconditionViolation,
    remote_error,
)
from ownchat_evaluator.review.core import FeedbackUpload, UploadedVersion

UPLOAD_CHUNK = 1024 * 1024
# Uploads stream and get no default deadline; the data service parses and
# sanitizes as they arrive, so allow for a large file.
UPLOAD_TIMEOUT_SECONDS = 600.0
_FORMATS = {
    "preference": data_pb2.SOURCE_FORMAT_PREFERENCE_JSONL,
    "chat": data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
}


def upload_requests(upload: FeedbackUpload) -> Iterator[data_pb2.UploadDatasetVersionRequest]:
    """The header, then the file in chunks."""
    header = data_pb2.UploadHeader(
        dataset_name=upload.dataset_name,
        file_name=upload.file_name,
        format=_FORMATS[upload.kind],
        # A record the data service refuses is a bug here: fail loudly.
        bad_record_policy=data_pb2.BAD_RECORD_POLICY_REJECT_ALL,
    )
    if upload.validation_fraction is not None:
        header.validation_fraction = upload.validation_fraction
    yield data_pb2.UploadDatasetVersionRequest(header=header)
    for start in range(0, len(upload.body), UPLOAD_CHUNK):
        yield data_pb2.UploadDatasetVersionRequest(chunk=upload.body[start : start + UPLOAD_CHUNK])


class DataServiceFeedback:
    """The data service as the review queue needs it."""

    def __init__(self, client_settings: ClientSettings, token: str, artifacts: ArtifactStore):
        self._artifacts = artifacts
        self._data = data_pb2_grpc.DataServiceStub(
            open_channel(client_settings.data_address, client_settings, token)
        )

    def chat_split(self, dataset_version_id: str, validation: bool) -> Path:
        """The local file of one split of a chat dataset version."""
        try:
            version = self._data.GetDatasetVersion(
                data_pb2.GetDatasetVersionRequest(dataset_version_id=dataset_version_id)
            ).dataset_version
        except grpc.RpcError as error:
            raise remote_error(error, "data") from None
        if version.kind != data_pb2.SAMPLE_KIND_CHAT:
            kind = data_pb2.SampleKind.Name(version.kind).removeprefix("SAMPLE_KIND_").lower()
            raise InvalidArgumentError(
                "only chat dataset versions can be sampled",
                [
                    FieldViolation(
                        "dataset_version_id", f"{dataset_version_id} holds {kind} samples"
                    )
                ],
            )
        if version.erased_by:
            raise FailedPreconditionError(
                f"dataset version {dataset_version_id!r} was erased",
                [
                    PreconditionViolation(
                        "ERASED", f"dataset_versions/{dataset_version_id}", version.erased_by
                    )
                ],
            )
        split = version.validation_split if validation else version.train_split
        return self._artifacts.path(split.digest)

    def upload(self, upload: FeedbackUpload) -> UploadedVersion:
        """Stores a file as a new version of a dataset."""
        try:
            response = self._data.UploadDatasetVersion(
                upload_requests(upload), timeout=UPLOAD_TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            raise remote_error(error, "data") from None
        version = response.dataset_version
        return UploadedVersion(version.id, version.stats.samples)

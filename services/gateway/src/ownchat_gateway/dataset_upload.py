"""One uploaded file passed on to the data service while it arrives.

A file uploaded through ``POST /v1/files`` becomes a version of the dataset
named after its file name (``support-chats.jsonl`` → ``support-chats``), so
that uploading a file again under the same name adds a version to the same
dataset. The whole file is the version's training split (OpenAI trains on all
of a training file), and the data service sanitizes it as it does every upload.

Its format is told from its first line: OpenAI's preference (DPO) lines carry
``preferred_output``, anything else is read as chat JSONL (``messages``), whose
parser then names the line that is neither.
"""

from __future__ import annotations

import asyncio
import json
import re

import grpc

from ownchat.data.v1 import data_pb2
from ownchat_gateway.upstream import DataUpstream, UploadCall

# Bytes per upload message, as the CLI sends them.
UPLOAD_CHUNK_BYTES = 1024 * 1024
# The format is told from the first line, or from this much when no line ends sooner.
SNIFF_BYTES = 64 * 1024
MAX_DATASET_NAME = 64
DEFAULT_DATASET_NAME = "upload"
_NOT_IN_NAME = re.compile(r"[^a-z0-9_-]+")


def dataset_name_for(filename: str) -> str:
    """The dataset a file goes to: its name without the extension, in the data
    service's alphabet (lowercase letters, digits, ``-`` and ``_``)."""
    stem = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    name = _NOT_IN_NAME.sub("-", stem.lower()).strip("-_")[:MAX_DATASET_NAME].strip("-_")
    return name or DEFAULT_DATASET_NAME


def source_format(head: bytes) -> data_pb2.SourceFormat.ValueType:
    """The format of a fine-tuning file, from its first bytes."""
    line = head.lstrip().split(b"\n", 1)[0]
    try:
        first = json.loads(line)
    except ValueError:
        # A first line longer than SNIFF_BYTES: look for the preference keys in it.
        first = None
    if isinstance(first, dict):
        preference = "preferred_output" in first or "non_preferred_output" in first
    else:
        preference = b'"preferred_output"' in line
    if preference:
        return data_pb2.SOURCE_FORMAT_PREFERENCE_JSONL
    return data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL


class DatasetUpload:
    """Streams one file to the data service's ``UploadDatasetVersion``.

    Nothing is sent until the first line has arrived (it decides the header's
    format). Writes wait for the data service to take the bytes, so a slow
    service slows the upload rather than filling memory. When the data service
    refuses the file part-way, the rest is read and dropped; :meth:`finish`
    raises its error.
    """

    def __init__(
        self, data: DataUpstream, filename: str, request_id: str, timeout_seconds: float
    ) -> None:
        self.filename = filename
        self._data = data
        self._request_id = request_id
        self._timeout = timeout_seconds
        self._call: UploadCall | None = None
        self._pending = bytearray()
        self._failed = False

    async def write(self, data: bytes) -> None:
        """Adds the next bytes of the file."""
        if self._failed:
            return
        self._pending += data
        if self._call is None:
            if b"\n" not in self._pending and len(self._pending) < SNIFF_BYTES:
                return
            await self._start()
        if len(self._pending) >= UPLOAD_CHUNK_BYTES:
            await self._flush()

    async def finish(self) -> data_pb2.DatasetVersion:
        """Sends what is left and waits for the stored version.

        Raises the data service's error (``grpc.RpcError``) when it refused the file.
        """
        if self._call is None:
            await self._start()
        await self._flush()
        call = self._call
        assert call is not None
        if not self._failed:
            try:
                await call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError):
                pass  # the call's own status says why
        response: data_pb2.UploadDatasetVersionResponse = await call
        return response.dataset_version

    def cancel(self) -> None:
        """Abandons the upload: the data service stores nothing."""
        if self._call is not None:
            self._call.cancel()

    async def _start(self) -> None:
        header = data_pb2.UploadHeader(
            dataset_name=dataset_name_for(self.filename),
            file_name=self.filename,
            format=source_format(bytes(self._pending[:SNIFF_BYTES])),
            validation_fraction=0.0,
        )
        self._call = self._data.upload_dataset_version(self._request_id, self._timeout)
        await self._send(data_pb2.UploadDatasetVersionRequest(header=header))

    async def _flush(self) -> None:
        while self._pending and not self._failed:
            chunk = bytes(self._pending[:UPLOAD_CHUNK_BYTES])
            del self._pending[:UPLOAD_CHUNK_BYTES]
            await self._send(data_pb2.UploadDatasetVersionRequest(chunk=chunk))
        if self._failed:
            self._pending.clear()

    async def _send(self, message: data_pb2.UploadDatasetVersionRequest) -> None:
        assert self._call is not None
        try:
            await self._call.write(message)
        except (grpc.RpcError, asyncio.InvalidStateError):
            # The data service ended the call (a bad record, a limit): its status,
            # awaited in finish(), tells why.
            self._failed = True

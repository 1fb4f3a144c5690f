"""OpenAI's Files API over the data service: a file is a dataset version.

``POST /v1/files`` (multipart, as ``openai``'s ``files.create`` sends it, purpose
``fine-tune`` only) streams the file to the data service while it arrives (see
:mod:`ownchat_gateway.dataset_upload`), under its own body limit
(``max_file_bytes``). The answer comes once the data service has parsed,
sanitized and stored it, so a file is ``processed`` from the start; a file the
data service refuses (a malformed line, no usable conversation) is answered 400
with the line it names, and nothing is stored. A version whose data an erasure
deleted reads back with status ``error``.

``GET /v1/files`` lists every dataset version, ``GET /v1/files/{id}`` one,
``GET /v1/files/{id}/content`` its samples as the data service keeps them
(sanitized, deduplicated) in OpenAI's training file format.
``DELETE /v1/files/{id}`` is refused: versions are immutable, and removing
data is an erasure (``ownchat data erase``), which keeps an audit record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Literal

import grpc
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from grpc import aio

from ownchat.data.v1 import data_pb2
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import GatewayContext, context_of
from ownchat_gateway.dataset_upload import DatasetUpload
from ownchat_gateway.errors import GatewayError, from_rpc_error, invalid_request
from ownchat_gateway.fine_tuning_protocol import (
    FINE_TUNE_PURPOSE,
    FileDeleted,
    FileList,
    FileObject,
)
from ownchat_gateway.fine_tuning_translate import (
    LineSplitter,
    file_object,
    not_configured,
    openai_line,
)
from ownchat_gateway.middleware import BodyLimitRule, request_id_of
from ownchat_gateway.multipart import (
    MAX_FIELD_BYTES,
    MalformedMultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
)
from ownchat_gateway.upstream import DataUpstream

FILE_FIELD = "file"
DEFAULT_FILENAME = "upload.jsonl"
MAX_FILES_LIMIT = 10_000
# The cursor of OpenAI's lists: the id of the last object of the previous page.
AfterQuery = Annotated[str | None, Query(description="The last id of the previous page.")]

# What files.create sends, for the OpenAPI document (the body is read by hand).
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": [FINE_TUNE_PURPOSE]},
                    },
                }
            }
        },
    }
}


def files_body_limit(settings: GatewaySettings) -> BodyLimitRule:
    """``max_file_bytes`` for uploads, ``max_body_bytes`` for every other path."""

    def limit(path: str) -> int:
        return settings.max_file_bytes if path == "/files" else settings.max_body_bytes

    return limit


def data_of(context: GatewayContext) -> DataUpstream:
    """The data service's client; 503 when this gateway has none."""
    if context.data is None:
        raise not_configured("data")
    return context.data


def data_error(error: grpc.RpcError, request_id: str) -> GatewayError:
    """The answer for a failed data service call, in OpenAI's terms."""
    mapped = from_rpc_error(error, request_id, service="data")
    if error.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
        return replace(mapped, param="file_id")
    return mapped


def _upload_error(error: grpc.RpcError, request_id: str) -> GatewayError:
    mapped = from_rpc_error(error, request_id, service="data")
    code = error.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The data service's upload size limit: retrying cannot help, unlike a 429.
        return GatewayError(
            413, mapped.message, "invalid_request_error", code="file_too_large", param="file"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The data service names the line; the parameter at fault is the file.
        return replace(mapped, param=FILE_FIELD)
    return mapped


class _UploadForm:
    """What the multipart body held, read as it arrives."""

    def __init__(self, data: DataUpstream, request_id: str, timeout_seconds: float) -> None:
        self._data = data
        self._request_id = request_id
        self._timeout = timeout_seconds
        self.fields: dict[str, bytearray] = {}
        self.upload: DatasetUpload | None = None
        self.file_parts = 0
        self._field: bytearray | None = None
        self._in_file = False

    def purpose_error(self) -> GatewayError | None:
        """Why the purpose given is refused; None while it is fine or not yet known."""
        purpose = self.fields.get("purpose")
        if purpose is None:
            return None
        text = purpose.decode("utf-8", "replace")
        if text == FINE_TUNE_PURPOSE:
            return None
        return invalid_request(
            f"purpose {text!r} is not supported: this gateway keeps fine-tuning data only "
            f"(purpose {FINE_TUNE_PURPOSE!r})",
            param="purpose",
        )

    async def handle(self, event: PartStart | PartData | PartEnd) -> None:
        if isinstance(event, PartStart):
            if event.name == FILE_FIELD:
                self.file_parts += 1
                self._in_file = True
                # A purpose already refused: read the file and drop it.
                if self.file_parts == 1 and self.purpose_error() is None:
                    self.upload = DatasetUpload(
                        self._data,
                        event.filename or DEFAULT_FILENAME,
                        self._request_id,
                        self._timeout,
                    )
            else:
                self._field = self.fields.setdefault(event.name, bytearray())
        elif isinstance(event, PartData):
            if self._in_file:
                if self.upload is not None and self.file_parts == 1:
                    await self.upload.write(event.data)
            elif self._field is not None:
                self._field += event.data
                if len(self._field) > MAX_FIELD_BYTES:
                    raise invalid_request(f"a form field is longer than {MAX_FIELD_BYTES} bytes")
        else:
            self._in_file = False
            self._field = None


def add_file_routes(app: FastAPI) -> None:
    """Adds ``/files`` to the OpenAI-compatible app."""

    @app.post("/files", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
    async def create_file(request: Request) -> FileObject:
        """Uploads a fine-tuning file (chat or preference JSONL) as a dataset version."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        data = data_of(context)
        try:
            reader = MultipartReader(request.headers.get("content-type"))
        except MalformedMultipartError as error:
            raise invalid_request(str(error)) from None
        form = _UploadForm(data, request_id, context.settings.request_timeout_seconds)
        stored = False
        try:
            # The whole body is read even when the request is refused on the way,
            # so that the client hears the refusal rather than a broken pipe.
            async for chunk in request.stream():
                for event in reader.feed(chunk):
                    await form.handle(event)
            reader.finish()
            refused = form.purpose_error()
            if refused is not None:
                raise refused
            if "purpose" not in form.fields:
                raise invalid_request("Missing required parameter: 'purpose'.", param="purpose")
            if form.file_parts == 0 or form.upload is None:
                raise invalid_request("Missing required parameter: 'file'.", param=FILE_FIELD)
            if form.file_parts > 1:
                raise invalid_request("only one file may be uploaded at a time", param=FILE_FIELD)
            if any(name.startswith("expires_after") for name in form.fields):
                raise invalid_request(
                    "expires_after is not supported: files are kept until erased",
                    param="expires_after",
                )
            try:
                version = await form.upload.finish()
            except grpc.RpcError as error:
                raise _upload_error(error, request_id) from None
            stored = True
        except MalformedMultipartError as error:
            raise invalid_request(str(error)) from None
        finally:
            if form.upload is not None and not stored:
                # Refused, too large, or the client went away: nothing is stored.
                form.upload.cancel()
        return file_object(version)

    @app.get("/files", response_model=FileList)
    async def list_files(
        request: Request,
        after: AfterQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_FILES_LIMIT)] = MAX_FILES_LIMIT,
        order: Annotated[Literal["asc", "desc"], Query()] = "desc",
        purpose: Annotated[str | None, Query()] = None,
    ) -> FileList:
        """Every file (dataset version), newest first unless ``order=asc``."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        data = data_of(context)
        if purpose is not None and purpose != FINE_TUNE_PURPOSE:
            return FileList(data=[], has_more=False)
        try:
            versions = await data.list_dataset_versions(request_id)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id, service="data") from None
        versions.sort(
            key=lambda v: (v.create_time.seconds, v.create_time.nanos, v.id),
            reverse=order == "desc",
        )
        if after is not None:
            ids = [v.id for v in versions]
            versions = versions[ids.index(after) + 1 :] if after in ids else []
        page = [file_object(v) for v in versions[:limit]]
        return FileList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(versions) > limit,
        )

    @app.get("/files/{file_id}", response_model=FileObject)
    async def retrieve_file(file_id: str, request: Request) -> FileObject:
        """One file."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            version = await data_of(context).get_dataset_version(file_id, request_id)
        except grpc.RpcError as error:
            raise data_error(error, request_id) from None
        return file_object(version)

    @app.get(
        "/files/{file_id}/content",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def file_content(file_id: str, request: Request) -> Response:
        """The file's samples as JSON lines in OpenAI's training file format."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        data = data_of(context)
        try:
            version = await data.get_dataset_version(file_id, request_id)
        except grpc.RpcError as error:
            raise data_error(error, request_id) from None
        splits = [data_pb2.SPLIT_TRAIN]
        if version.stats.validation_samples:
            splits.append(data_pb2.SPLIT_VALIDATION)
        timeout = context.settings.request_timeout_seconds
        first_call = data.export_dataset_version(file_id, splits[0], request_id, timeout)
        try:
            # Read before answering, so that a refusal (an erased version) keeps its status.
            first = await first_call.read()
        except grpc.RpcError as error:
            first_call.cancel()
            raise data_error(error, request_id) from None

        async def lines() -> AsyncIterator[bytes]:
            calls = [first_call]
            try:
                splitter = LineSplitter()
                chunk = first
                call = first_call
                for index in range(len(splits)):
                    if index:
                        call = data.export_dataset_version(
                            file_id, splits[index], request_id, timeout
                        )
                        calls.append(call)
                        chunk = await call.read()
                    while chunk is not aio.EOF:
                        for line in splitter.feed(chunk.chunk):
                            yield (openai_line(line, version.kind) + "\n").encode()
                        chunk = await call.read()
                    for line in splitter.finish():
                        yield (openai_line(line, version.kind) + "\n").encode()
            finally:
                # A client that went away must not keep the download going.
                for call in calls:
                    call.cancel()

        filename = version.source_file_name or f"{file_id}.jsonl"
        return StreamingResponse(
            lines(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{_quoted(filename)}"'},
        )

    @app.delete("/files/{file_id}", response_model=FileDeleted)
    async def delete_file(file_id: str, request: Request) -> FileDeleted:
        """Refused: a dataset version is immutable; erasure is how data is removed."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            await data_of(context).get_dataset_version(file_id, request_id)
        except grpc.RpcError as error:
            raise data_error(error, request_id) from None
        raise invalid_request(
            f"files cannot be deleted: {file_id!r} is an immutable dataset version. To remove "
            "data, erase it (`ownchat data erase`): that makes a new version without it, "
            "deletes every stored file holding it and keeps an audit record.",
            param="file_id",
        )


def _quoted(filename: str) -> str:
    """A file name safe inside a quoted header parameter (headers are Latin-1)."""
    return "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )

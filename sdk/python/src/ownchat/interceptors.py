"""The one server interceptor of every ownchat server, threaded or asyncio.

For each call it checks the bearer token (health checks excepted), maps
domain errors to canonical status codes with ``google.rpc`` details, turns
anything unexpected into INTERNAL with a sanitized message, records Prometheus
metrics and logs the call with its request id.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
from grpc import aio
from grpc_status import rpc_status

from ownchat.auth import AUTHORIZATION_KEY, token_matches
from ownchat.errors import OwnchatError
from ownchat.metrics import RPC_DURATION, RPC_REQUESTS

logger = logging.getLogger("ownchat.rpc")

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
REQUEST_ID_KEY = "x-request-id"


def _metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


class _CallRecord:
    """Timing, status and identity of one call, for metrics and logs."""

    def __init__(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> None:
        self.method = method
        self.request_id = _metadata_value(metadata, REQUEST_ID_KEY) or uuid.uuid4().hex
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK

    def failed(self, error: BaseException) -> tuple[grpc.StatusCode, str]:
        """Picks the status for an exception and logs it."""
        if isinstance(error, OwnchatError):
            self.code = error.code
            return error.code, error.message
        self.code = grpc.StatusCode.INTERNAL
        logger.exception(
            "unexpected error", extra={"method": self.method, "request_id": self.request_id}
        )
        return self.code, f"internal error (request id {self.request_id})"

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        RPC_REQUESTS.labels(self.method, self.code.name).inc()
        RPC_DURATION.labels(self.method).observe(elapsed)
        logger.info(
            "rpc",
            extra={
                "method": self.method,
                "code": self.code.name,
                "duration_ms": round(elapsed * 1000, 2),
                "request_id": self.request_id,
            },
        )


def _rebuild(handler: grpc.RpcMethodHandler, wrap: Callable[[Any, bool], Any]) -> Any:
    """A handler like ``handler`` whose behaviour is wrapped; wrap(fn, streams)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, True),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ServerInterceptor(grpc.ServerInterceptor):
    """The interceptor for the threaded ``grpc.server``."""

    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        authorized = token_matches(_metadata_value(metadata, AUTHORIZATION_KEY), self._token)

        def wrap(behaviour: Callable[..., Any], streams: bool) -> Callable[..., Any]:
            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                record = _CallRecord(method, metadata)
                try:
                    if not authorized:
                        record.code = grpc.StatusCode.UNAUTHENTICATED
                        context.abort(record.code, "missing or wrong bearer token")
                    try:
                        return behaviour(request, context)
                    except OwnchatError as error:
                        record.failed(error)
                        context.abort_with_status(rpc_status.to_status(error.to_status()))
                    except Exception as error:  # noqa: BLE001 - the one place that maps these
                        if context.code() is not None:  # the servicer aborted on purpose
                            record.code = context.code()
                            raise
                        code, message = record.failed(error)
                        context.abort(code, message)
                finally:
                    record.finish()

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                record = _CallRecord(method, metadata)
                try:
                    if not authorized:
                        record.code = grpc.StatusCode.UNAUTHENTICATED
                        context.abort(record.code, "missing or wrong bearer token")
                    try:
                        yield from behaviour(request, context)
                    except OwnchatError as error:
                        record.failed(error)
                        context.abort_with_status(rpc_status.to_status(error.to_status()))
                    except Exception as error:  # noqa: BLE001
                        if context.code() is not None:
                            record.code = context.code()
                            raise
                        code, message = record.failed(error)
                        context.abort(code, message)
                finally:
                    record.finish()

            return stream if streams else unary

        return _rebuild(handler, wrap)


class AsyncServerInterceptor(aio.ServerInterceptor):
    """The interceptor for ``grpc.aio`` servers."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler  # type: ignore[no-any-return]
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        authorized = token_matches(_metadata_value(metadata, AUTHORIZATION_KEY), self._token)

        def wrap(behaviour: Callable[..., Any], streams: bool) -> Callable[..., Any]:
            async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                record = _CallRecord(method, metadata)
                try:
                    if not authorized:
                        record.code = grpc.StatusCode.UNAUTHENTICATED
                        await context.abort(record.code, "missing or wrong bearer token")
                    try:
                        return await behaviour(request, context)
                    except OwnchatError as error:
                        record.failed(error)
                        await context.abort_with_status(rpc_status.to_status(error.to_status()))
                    except aio.AbortError:
                        record.code = context.code() or grpc.StatusCode.UNKNOWN
                        raise
                    except Exception as error:  # noqa: BLE001
                        code, message = record.failed(error)
                        await context.abort(code, message)
                finally:
                    record.finish()

            async def stream(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                record = _CallRecord(method, metadata)
                try:
                    if not authorized:
                        record.code = grpc.StatusCode.UNAUTHENTICATED
                        await context.abort(record.code, "missing or wrong bearer token")
                    try:
                        async for response in behaviour(request, context):
                            yield response
                    except OwnchatError as error:
                        record.failed(error)
                        await context.abort_with_status(rpc_status.to_status(error.to_status()))
                    except aio.AbortError:
                        record.code = context.code() or grpc.StatusCode.UNKNOWN
                        raise
                    except Exception as error:  # noqa: BLE001
                        code, message = record.failed(error)
                        await context.abort(code, message)
                finally:
                    record.finish()

            return stream if streams else unary

        return _rebuild(handler, wrap)  # type: ignore[no-any-return]

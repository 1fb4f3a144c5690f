"""The OpenAI-compatible FastAPI app, mounted by the BentoML service at ``/v1``.

``POST /v1/chat/completions`` (whole replies and server-sent events) and
``GET /v1/models``. Each request becomes a call to serving; every error, ours or
serving's, is answered in OpenAI's ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ownchat.serving.v1 import serving_pb2
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.errors import (
    GatewayError,
    bad_gateway,
    from_rpc_error,
    internal_error,
    invalid_request,
)
from ownchat_gateway.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    RequestIdMiddleware,
    error_response,
    request_id_of,
)
from ownchat_gateway.protocol import ChatCompletionRequest, ModelList
from ownchat_gateway.translate import (
    DONE_EVENT,
    IncompleteReplyError,
    ReplyBuilder,
    chunk_event,
    new_completion_id,
    now,
    sse_event,
    to_generate_request,
    to_model_list,
)
from ownchat_gateway.upstream import GenerateCall, ServingUpstream

logger = logging.getLogger("ownchat.gateway")

_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@dataclass
class GatewayContext:
    """What the routes need, made once per server process by the BentoML service."""

    settings: GatewaySettings
    token: str
    upstream: ServingUpstream


def _context(request: Request) -> GatewayContext:
    context: GatewayContext | None = getattr(request.app.state, "context", None)
    if context is None:
        raise GatewayError(503, "the gateway is starting", "server_error", code="unavailable")
    return context


def validation_error(error: RequestValidationError) -> GatewayError:
    """A 400 naming the first bad field by its OpenAI name (``messages.0.role``)."""
    problems = error.errors()
    if not problems:
        return invalid_request("invalid request body")
    first = problems[0]
    if first.get("type") == "json_invalid":
        return invalid_request("request body is not valid JSON")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value"))
    return invalid_request(f"{param}: {message}" if param else message, param=param)


def create_app(settings: GatewaySettings) -> FastAPI:
    """The app; ``app.state.context`` must be set before it takes requests."""
    app = FastAPI(
        title="ownchat gateway",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Starlette runs the last added outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        AuthMiddleware,
        token=lambda: context.token if (context := getattr(app.state, "context", None)) else None,
    )
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, error: GatewayError) -> Response:
        return error_response(error, request_id_of(request.scope))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        return error_response(validation_error(error), request_id_of(request.scope))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> Response:
        status = error.status_code
        mapped = GatewayError(
            status,
            str(error.detail),
            "invalid_request_error" if status < 500 else "server_error",
            code=_HTTP_ERROR_CODES.get(status),
            headers=dict(error.headers or {}),
        )
        return error_response(mapped, request_id_of(request.scope))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        request_id = request_id_of(request.scope)
        logger.error("unexpected error", exc_info=error, extra={"request_id": request_id})
        return error_response(internal_error(request_id), request_id)

    @app.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI's chat completions, whole or streamed."""
        context = _context(request)
        request_id = request_id_of(request.scope)
        call = context.upstream.generate(to_generate_request(body, request_id), request_id)
        builder = ReplyBuilder(
            new_completion_id(),
            now(),
            body.model,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )
        if body.stream:
            return await _stream(call, builder, request_id)
        started = time.perf_counter()
        try:
            async for response in call:
                builder.add(response)
            completion = builder.completion()
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id) from None
        except IncompleteReplyError:
            raise bad_gateway(request_id) from None
        finally:
            # A client that went away must not keep the engine generating.
            call.cancel()
        _log_reply(builder, request_id, started, stream=False)
        return JSONResponse(completion.model_dump())

    @app.get("/models", response_model=None)
    async def list_models(request: Request) -> ModelList:
        """The model versions live now."""
        context = _context(request)
        request_id = request_id_of(request.scope)
        try:
            deployments = await context.upstream.list_deployments(request_id)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id) from None
        return to_model_list(deployments)

    # BentoML hands the mounted app only the paths it has routes for; this keeps
    # every other /v1 path (and a wrong method) answered in OpenAI's shape.
    @app.api_route("/{path:path}", methods=_ALL_METHODS, include_in_schema=False)
    async def unknown_route(path: str, request: Request) -> Response:
        """404 for anything else under /v1, as OpenAI answers it."""
        raise GatewayError(
            404,
            f"Invalid URL ({request.method} /v1/{path})",
            "invalid_request_error",
            code="not_found",
        )

    return app


async def _stream(call: GenerateCall, builder: ReplyBuilder, request_id: str) -> Response:
    """Server-sent events of a reply.

    The first message from serving is awaited before answering, so that an
    error at the start (unknown model, bad argument) still gets its HTTP
    status; a later error can only be sent as an ``error`` event.
    """
    responses = call.__aiter__()
    started = time.perf_counter()
    try:
        first: serving_pb2.GenerateResponse = await anext(responses)
    except StopAsyncIteration:
        raise bad_gateway(request_id) from None
    except grpc.RpcError as error:
        raise from_rpc_error(error, request_id) from None

    async def events() -> AsyncIterator[str]:
        try:
            for chunk in builder.add(first):
                yield chunk_event(chunk, builder.include_usage)
            async for response in responses:
                for chunk in builder.add(response):
                    yield chunk_event(chunk, builder.include_usage)
            builder.check_finished()
            _log_reply(builder, request_id, started, stream=True)
        except grpc.RpcError as error:
            yield sse_event(from_rpc_error(error, request_id).body())
        except IncompleteReplyError:
            yield sse_event(bad_gateway(request_id).body())
        finally:
            # A client that went away must not keep the engine generating.
            call.cancel()
        yield DONE_EVENT

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _log_reply(builder: ReplyBuilder, request_id: str, started: float, *, stream: bool) -> None:
    usage = builder.usage
    logger.info(
        "chat completion",
        extra={
            "request_id": request_id,
            "model": builder.model,
            "stream": stream,
            "finish_reason": builder.finish_reason,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )

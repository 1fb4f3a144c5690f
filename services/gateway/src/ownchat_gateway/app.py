"""The OpenAI-compatible FastAPI app, mounted by the BentoML service at ``/v1``.

``POST /v1/chat/completions`` (whole replies and server-sent events) and
``GET /v1/models``. Each request becomes a call to serving; every error, ours or
serving's, is answered in OpenAI's ``{"error": {...}}`` shape. Callers present
the ownchat token or an API key with the chat scope (or admin).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ownchat.serving.v1 import serving_pb2
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import context_of
from ownchat_gateway.edge import add_not_found_route, new_app
from ownchat_gateway.errors import bad_gateway, from_rpc_error
from ownchat_gateway.keys import Scope
from ownchat_gateway.middleware import request_id_of
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
from ownchat_gateway.upstream import GenerateCall

logger = logging.getLogger("ownchat.gateway")


def required_scope(path: str) -> Scope:
    """Every path of the OpenAI-compatible API, unknown ones included, needs ``chat``."""
    return Scope.CHAT


def create_app(settings: GatewaySettings) -> FastAPI:
    """The app; ``app.state.context`` must be set before it takes requests."""
    app = new_app(settings, "ownchat gateway", required_scope)

    @app.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI's chat completions, whole or streamed."""
        context = context_of(request)
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
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            deployments = await context.upstream.list_deployments(request_id)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id) from None
        return to_model_list(deployments)

    add_not_found_route(app, "/v1")
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

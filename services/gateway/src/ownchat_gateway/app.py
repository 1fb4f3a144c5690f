"""The OpenAI-compatible FastAPI app, mounted by the BentoML service at ``/v1``.

``POST /v1/chat/completions`` (whole replies and server-sent events),
``POST /v1/completions`` (see :mod:`ownchat_gateway.completions`) and
``GET /v1/models``. Each request becomes a call to serving; every error, ours or
serving's, is answered in OpenAI's ``{"error": {...}}`` shape. Callers present
the ownchat token or an API key with the chat scope (or admin); keys are held
to their rate limits and token quotas, and CORS follows the settings.
"""

from __future__ import annotations

import logging
import time

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ownchat_gateway.completions import add_completion_routes
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import GatewayContext, context_of
from ownchat_gateway.edge import add_not_found_route, new_app
from ownchat_gateway.errors import from_rpc_error
from ownchat_gateway.feedback.routes import add_feedback_routes
from ownchat_gateway.files_api import add_file_routes, files_body_limit
from ownchat_gateway.fine_tuning_api import add_fine_tuning_routes, is_fine_tuning_path
from ownchat_gateway.keys import Scope
from ownchat_gateway.middleware import Metering, principal_of, report_usage, request_id_of
from ownchat_gateway.prompt_limits import check_chat_prompt
from ownchat_gateway.protocol import ChatCompletionRequest, ModelList
from ownchat_gateway.replies import Reply
from ownchat_gateway.translate import (
    ReplyBuilder,
    chunk_event,
    new_completion_id,
    now,
    to_generate_request,
    to_model_list,
)

logger = logging.getLogger("ownchat.gateway")


# The paths that generate, so spend the caller's tokens.
GENERATING_PATHS = frozenset({"/chat/completions", "/completions"})


def required_scope(path: str) -> Scope:
    """Every path of the OpenAI-compatible API, unknown ones included, needs ``chat``;
    the files and fine-tuning APIs need ``fine_tune``."""
    if is_fine_tuning_path(path):
        return Scope.FINE_TUNE
    return Scope.CHAT


def metering(path: str) -> Metering:
    """Every request counts against a key's requests; generating ones also against its tokens."""
    return Metering.TOKENS if path in GENERATING_PATHS else Metering.REQUESTS


def create_app(settings: GatewaySettings) -> FastAPI:
    """The app; ``app.state.context`` must be set before it takes requests."""
    app = new_app(
        settings,
        "ownchat gateway",
        required_scope,
        metering=metering,
        cors=True,
        body_limit=files_body_limit(settings),
    )

    @app.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI's chat completions, whole or streamed."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        check_chat_prompt(body.messages, context.settings)
        call = context.upstream.generate(to_generate_request(body, request_id), request_id)
        builder = ReplyBuilder(
            new_completion_id(),
            now(),
            body.model,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )

        def finished(started: float) -> None:
            _log_reply(builder, request_id, started, stream=body.stream)
            _capture(context, body, builder, request, request_id)

        reply = Reply(call, builder, request_id, finished)
        if body.stream:
            return await reply.stream(chunk_event)
        await reply.collect()
        return JSONResponse(builder.completion().model_dump())

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

    add_completion_routes(app)
    add_feedback_routes(app)
    add_file_routes(app)
    add_fine_tuning_routes(app)
    add_not_found_route(app, "/v1")
    return app


def _capture(
    context: GatewayContext,
    body: ChatCompletionRequest,
    builder: ReplyBuilder,
    request: Request,
    request_id: str,
) -> None:
    """Captures a whole reply for review when the request or the capture settings ask."""
    feedback = context.feedback
    if feedback is None or not feedback.settings().captures(body.store, builder.completion_id):
        return
    principal = principal_of(request.scope)
    feedback.capture_later(
        response_id=builder.completion_id,
        model_id=builder.model,
        key_id=principal.id if principal else "",
        messages=[(message.role, message.text()) for message in body.messages],
        reply=builder.text(),
        request_id=request_id,
    )


def _log_reply(builder: ReplyBuilder, request_id: str, started: float, *, stream: bool) -> None:
    usage = builder.usage
    if usage is not None:
        # The caller's token limits count the reply once it is whole.
        report_usage(usage.prompt_tokens, usage.completion_tokens)
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

"""``POST /v1/completions``: OpenAI's legacy text completions, whole or streamed.

One prompt (a string, or a list of one string), ``max_tokens`` (16 by
default, as OpenAI's), ``temperature``, ``top_p``, ``stop``, ``seed``,
``user`` and ``stream`` (server-sent events of ``text_completion`` chunks,
``stream_options.include_usage`` as for chat); ``n`` above 1, ``best_of``
above 1 and ``echo`` are refused with 400, and so is an empty prompt (serving
needs text to continue from). The prompt is sent to serving as it is, without
the chat template; serving's tokenizer adds its own special tokens (a BOS where
it has one).
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ownchat_gateway.context import context_of
from ownchat_gateway.errors import invalid_request
from ownchat_gateway.middleware import report_usage, request_id_of
from ownchat_gateway.prompt_limits import check_text_prompt
from ownchat_gateway.protocol import CompletionRequest
from ownchat_gateway.replies import Reply
from ownchat_gateway.translate import (
    TextReplyBuilder,
    new_completion_id,
    now,
    text_chunk_event,
    to_text_generate_request,
)

logger = logging.getLogger("ownchat.gateway")

PATH = "/completions"


def add_completion_routes(app: FastAPI) -> None:
    """Adds ``POST /completions`` to the OpenAI-compatible app (mounted at ``/v1``)."""

    @app.post(PATH, response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """OpenAI's text completions, whole or streamed."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        check_text_prompt(body.prompt_text(), context.settings)
        if not body.prompt_text():
            raise invalid_request("Invalid 'prompt': must not be empty.", "prompt")
        generate = to_text_generate_request(body, request_id)
        call = context.upstream.generate(generate, request_id)
        builder = TextReplyBuilder(
            new_completion_id("cmpl"),
            now(),
            body.model,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )

        def finished(started: float) -> None:
            _finished(builder, request_id, started, stream=body.stream)

        reply = Reply(call, builder, request_id, finished)
        if body.stream:
            return await reply.stream(text_chunk_event)
        await reply.collect()
        return JSONResponse(builder.completion().model_dump())


def _finished(builder: TextReplyBuilder, request_id: str, started: float, *, stream: bool) -> None:
    usage = builder.usage
    if usage is not None:
        report_usage(usage.prompt_tokens, usage.completion_tokens)
    logger.info(
        "text completion",
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

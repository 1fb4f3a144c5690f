"""One request's reply on a live engine: its slot, its deadline, the engine's steps.

The deadline is checked before each engine step and bounds each wait, and a
timer only ever surrounds the engine's own await, never a ``yield``: a reply
whose reader is slow still ends at its deadline, and the engine request is
freed before the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import replace

from ownchat.errors import FieldViolation, InvalidArgumentError, UnavailableError
from ownchat_serving.admission import Ticket
from ownchat_serving.engine import EngineRequestError, EngineUnavailableError
from ownchat_serving.engines import Engine
from ownchat_serving.generation import (
    FinishReason,
    GenerateChunk,
    GenerateInput,
    ResolvedSampling,
    check_prompt_fits,
)
from ownchat_serving.live import LiveEngine
from ownchat_serving.metrics import PROMPT_TOKENS, ReplyMeter

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


class DeadlineExceededError(Exception):
    """The caller's deadline passed before the reply was done; the engine request is freed."""


def remaining(deadline: float | None) -> float | None:
    """Seconds left before a ``time.monotonic()`` deadline, none below 0; None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def prompt_ids(engine: Engine, request: GenerateInput) -> list[int]:
    """The request's prompt as token ids: its raw prompt as it is, or its conversation
    through the chat template."""
    if not request.prompt:
        return engine.render(request.messages)
    ids = engine.tokenize(request.prompt)
    if not ids:
        # Nothing for the model to continue from (a tokenizer without a BOS).
        raise InvalidArgumentError(
            "the prompt has no tokens", [FieldViolation("prompt", "has no tokens once tokenized")]
        )
    return ids


async def stream_reply(
    live: LiveEngine,
    ticket: Ticket,
    request: GenerateInput,
    sampling: ResolvedSampling,
    arrived: float,
    engine_died: Callable[[LiveEngine], None],
) -> AsyncGenerator[GenerateChunk, None]:
    """Streams one admitted request's reply: waits for its slot, then relays the engine's steps.

    Raises DeadlineExceededError when the request's deadline passes (the
    engine request is freed first), UnavailableError when the engine stops
    under it (``engine_died`` is told when the engine is dead, not shut down).
    """
    engine = live.engine
    prompt = prompt_ids(engine, request)
    check_prompt_fits(len(prompt), engine.max_model_len, request.prompt_field)
    try:
        await ticket.wait(remaining(request.deadline))
    except TimeoutError:
        raise DeadlineExceededError(
            "the deadline passed while the request waited for the engine"
        ) from None
    # A dead engine fails its waiting requests; one started again meanwhile takes the rest.
    engine = live.engine
    # A reply may use what the context has left, no more.
    room = engine.max_model_len - len(prompt)
    sampling = replace(sampling, max_tokens=min(sampling.max_tokens, room))
    request_id = f"{request.request_id or 'gen'}-{uuid.uuid4().hex[:12]}"
    meter = ReplyMeter(arrived)
    finish: str | None = None
    PROMPT_TOKENS.inc(len(prompt))
    model_id = live.model_id
    try:
        steps = engine.stream(prompt, sampling, request_id, live.adapter)
        meter.submitted()
        async with aclosing(steps):
            while True:
                left = remaining(request.deadline)
                try:
                    if left is not None and left <= 0:
                        raise TimeoutError
                    # Around the engine's await only, never around a yield:
                    # the timer then cancels this reply's own step.
                    async with asyncio.timeout(left):
                        step = await anext(steps)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise DeadlineExceededError(
                        f"the deadline passed after {meter.tokens} tokens of the reply"
                    ) from None
                meter.step(step.new_tokens)
                if step.text:
                    yield GenerateChunk(text=step.text, model_id=model_id)
                if step.finish_reason is not None:
                    finish = step.finish_reason
    except EngineRequestError as error:
        raise InvalidArgumentError(
            f"the engine refused the request: {error}",
            [FieldViolation(request.prompt_field, str(error))],
        ) from error
    except EngineUnavailableError as error:
        if engine.dead:
            engine_died(live)
        raise UnavailableError(
            f"the engine of deployment {live.deployment.id} stopped during the reply: {error}"
        ) from error
    if finish not in _FINISH_REASONS:
        if engine.dead:
            engine_died(live)
        raise UnavailableError(f"the reply was cut off by the engine ({finish or 'no end'})")
    meter.finished()
    yield GenerateChunk(
        text="",
        model_id=model_id,
        finish_reason=_FINISH_REASONS[finish],
        prompt_tokens=len(prompt),
        completion_tokens=meter.tokens,
    )

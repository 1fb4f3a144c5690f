"""Overload and limits on a real engine (Transformers, the tiny model): the bounded queue,
RESOURCE_EXHAUSTED with retry advice, deadlines, the context limit, and the reply metrics.

The engine admits one reply at a time with two waiting. Slots are held
deterministically by replies whose reader pauses after the first chunk: a
reply keeps its slot until its stream ends.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
import tracemalloc
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.common.v1 import common_pb2
from ownchat.errors import InvalidArgumentError, ResourceExhaustedError
from ownchat.serving.v1 import serving_pb2
from ownchat_serving.core import DeploySpec, ServingLimits
from ownchat_serving.generation import ChatTurn, GenerateChunk, GenerateInput, Sampling
from ownchat_serving.metrics import (
    COMPLETION_TOKENS,
    ENGINE_TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    OUTPUT_TOKENS_PER_SECOND,
    REPLIES,
    TIME_TO_FIRST_TOKEN,
)
from ownchat_serving.replies import DeadlineExceededError
from ownchat_serving.store import EngineKind

# The conftest's Stack: a core, its store and registry, a stub, one event loop.
Stack = Any
METADATA = ((AUTHORIZATION_KEY, bearer("test-token")),)
HELLO = (ChatTurn("user", "Hello"),)
LIMITS = ServingLimits(max_running=1, max_waiting=2)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, servable_models: dict[int, Path], stack_factory: Any
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("overload")
    with stack_factory(root, {"tiny:1": servable_models[0]}, LIMITS) as stack:
        stack.run(stack.core.deploy(DeploySpec("tiny:1", EngineKind.TRANSFORMERS)))
        yield stack


def value(metric: Any, *labels: str) -> float:
    target = metric.labels(*labels) if labels else metric
    total: float = target._value.get() if hasattr(target, "_value") else target._sum.get()
    return total


def count(histogram: Any) -> float:
    """Observations of a histogram so far."""
    for sample in histogram.collect()[0].samples:
        if sample.name.endswith("_count"):
            observed: float = sample.value
            return observed
    return 0.0


def long_reply(**fields: Any) -> GenerateInput:
    return GenerateInput(HELLO, Sampling(temperature=0, max_tokens=400), **fields)


class Held:
    """Replies holding every slot and place of the queue until released."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._streams: list[AsyncGenerator[GenerateChunk, None]] = []
        self._waiting: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Held:
        admission = self._stack.core._main.admission  # type: ignore[union-attr]
        running: AsyncGenerator[GenerateChunk, None] = self._stack.core.generate(long_reply())
        self._streams.append(running)
        await anext(running)  # it holds the slot until its stream ends
        for _ in range(LIMITS.max_waiting):
            stream = self._stack.core.generate(long_reply())
            self._streams.append(stream)
            self._waiting.append(asyncio.create_task(anext(stream)))
        while admission.waiting < LIMITS.max_waiting:
            await asyncio.sleep(0.001)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._waiting:
            task.cancel()
        await asyncio.gather(*self._waiting, return_exceptions=True)
        for stream in self._streams:
            await stream.aclose()


def grpc_request(**sampling: Any) -> serving_pb2.GenerateRequest:
    return serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hello")],
        sampling=serving_pb2.SamplingParams(**sampling),
    )


async def call(stack: Stack, request: serving_pb2.GenerateRequest, **kwargs: Any) -> Any:
    """The call's responses, or its error."""
    try:
        return [r async for r in stack.stub.Generate(request, metadata=METADATA, **kwargs)]
    except aio.AioRpcError as error:
        return error


async def wait_idle(stack: Stack, seconds: float = 5.0) -> int:
    engine = stack.core.live_engine
    assert engine is not None
    deadline = time.monotonic() + seconds
    while engine.unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return engine.unfinished_requests()


def test_a_flood_past_the_queue_gets_resource_exhausted_with_retry_info(stack: Stack) -> None:
    refused_before = value(REPLIES, "tiny:1", "resource_exhausted")

    async def scenario() -> list[Any]:
        async with Held(stack):
            return await asyncio.gather(
                *(call(stack, grpc_request(max_tokens=4), timeout=30) for _ in range(64))
            )

    results = stack.run(scenario())
    assert all(isinstance(r, aio.AioRpcError) for r in results)
    assert {r.code() for r in results} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for error in results:
        status = rpc_status.from_call(error)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry)
        assert retry.retry_delay.ToMilliseconds() >= 500
        assert "retry in" in error.details()
    assert value(REPLIES, "tiny:1", "resource_exhausted") - refused_before == 64
    # Once the load is gone, the next request is served.
    final = stack.run(call(stack, grpc_request(temperature=0, max_tokens=3), timeout=30))[-1]
    assert final.usage.completion_tokens == 3


def test_memory_stays_bounded_under_a_flood(stack: Stack) -> None:
    """Refused requests hold nothing: the queue never grows past its bound, and
    what the process holds after thousands more refusals is what it held before."""
    admission = stack.core._main.admission  # type: ignore[union-attr]
    big = (ChatTurn("user", "Where is my order? " * 500),)

    async def refused() -> bool:
        try:
            await anext(stack.core.generate(GenerateInput(big)))
        except ResourceExhaustedError:
            return True
        return False

    async def scenario() -> tuple[int, int, int]:
        async with Held(stack):
            tracemalloc.start()
            try:
                held = []
                peak_waiting = 0
                # The same flood again and again: what is held after each must not grow.
                for _ in range(6):
                    outcomes = await asyncio.gather(*(refused() for _ in range(400)))
                    assert all(outcomes)
                    peak_waiting = max(peak_waiting, admission.waiting)
                    del outcomes
                    gc.collect()
                    held.append(tracemalloc.get_traced_memory()[0])
            finally:
                tracemalloc.stop()
            retained = held[-1] - held[1]
            return retained, peak_waiting, admission.running

    retained, peak_waiting, running = stack.run(scenario())
    assert peak_waiting == LIMITS.max_waiting and running == LIMITS.max_running
    assert retained < 256 * 1024, f"{retained} bytes more held after 1600 more refusals"
    assert (admission.running, admission.waiting) == (0, 0)


def test_a_deadline_while_waiting_frees_the_place(stack: Stack) -> None:
    admission = stack.core._main.admission  # type: ignore[union-attr]

    async def scenario() -> tuple[Any, Any, int]:
        # One place of the queue is left for the request with a deadline.
        running: AsyncGenerator[GenerateChunk, None] = stack.core.generate(long_reply())
        await anext(running)
        try:
            in_core = stack.core.generate(long_reply(deadline=time.monotonic() + 0.2))
            with pytest.raises(DeadlineExceededError) as core_error:
                await anext(in_core)
            waiting_after_core = admission.waiting
            error = await call(stack, grpc_request(max_tokens=4), timeout=0.3)
            return core_error.value, error, waiting_after_core
        finally:
            await running.aclose()

    core_error, error, waiting = stack.run(scenario())
    assert "waited" in str(core_error) and waiting == 0
    assert isinstance(error, aio.AioRpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (admission.running, admission.waiting) == (0, 0)


def test_a_deadline_while_decoding_aborts_the_engine_request(stack: Stack) -> None:
    engine = stack.core.live_engine
    assert engine is not None

    async def in_core() -> tuple[str, int]:
        with pytest.raises(DeadlineExceededError) as error:
            async for _ in stack.core.generate(
                GenerateInput(
                    HELLO,
                    Sampling(temperature=0, max_tokens=480),
                    deadline=time.monotonic() + 0.1,
                )
            ):
                # A slow reader: the deadline passes long before 480 tokens are read.
                await asyncio.sleep(0.05)
        # Freed when the error is raised, not later.
        return str(error.value), engine.unfinished_requests()

    message, unfinished = stack.run(in_core())
    assert unfinished == 0
    tokens = int(re.search(r"after (\d+) tokens", message).group(1))  # type: ignore[union-attr]
    assert tokens < 480

    generated_before = value(COMPLETION_TOKENS)
    deadlines_before = value(REPLIES, "tiny:1", "deadline_exceeded")
    error = stack.run(call(stack, grpc_request(temperature=0, max_tokens=480), timeout=0.15))
    assert isinstance(error, aio.AioRpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stack.run(wait_idle(stack)) == 0
    # Cut off well before its 480 tokens.
    assert value(COMPLETION_TOKENS) - generated_before < 480
    assert value(REPLIES, "tiny:1", "deadline_exceeded") - deadlines_before == 1


def test_a_prompt_longer_than_the_context_names_the_limit(stack: Stack) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        stack.run(anext(stack.core.generate(GenerateInput((ChatTurn("user", "hi " * 600),)))))
    assert "context is 512 tokens" in error.value.message
    (violation,) = error.value.violations
    assert violation.field == "messages" and "limit of 511 tokens" in violation.description

    request = serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi " * 600)]
    )
    failed = stack.run(call(stack, request, timeout=30))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "512 tokens" in failed.details()


def test_replies_feed_the_latency_metrics(stack: Stack) -> None:
    before = [count(TIME_TO_FIRST_TOKEN), count(INTER_TOKEN_LATENCY)]
    engine_before = (count(ENGINE_TIME_TO_FIRST_TOKEN), value(ENGINE_TIME_TO_FIRST_TOKEN))
    served_before = value(TIME_TO_FIRST_TOKEN)
    speeds, ok = count(OUTPUT_TOKENS_PER_SECOND), value(REPLIES, "tiny:1", "ok")
    responses = stack.run(call(stack, grpc_request(temperature=0, max_tokens=12), timeout=30))
    assert responses[-1].usage.completion_tokens == 12
    assert count(TIME_TO_FIRST_TOKEN) - before[0] == 1
    assert count(ENGINE_TIME_TO_FIRST_TOKEN) - engine_before[0] == 1
    # The engine's part is within the whole: the request was validated and rendered first.
    engine_part = value(ENGINE_TIME_TO_FIRST_TOKEN) - engine_before[1]
    assert 0 < engine_part < value(TIME_TO_FIRST_TOKEN) - served_before
    assert count(INTER_TOKEN_LATENCY) - before[1] >= 1
    assert count(OUTPUT_TOKENS_PER_SECOND) - speeds == 1
    assert value(REPLIES, "tiny:1", "ok") - ok == 1

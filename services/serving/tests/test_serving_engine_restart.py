"""A vLLM engine process killed mid-stream: the client gets UNAVAILABLE at once, health
turns NOT_SERVING, and the service starts the engine again for the same deployment.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc import aio
from process_tree import vllm_processes

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.common.v1 import common_pb2
from ownchat.serving.v1 import serving_pb2
from ownchat_serving.core import DeploySpec, ServingLimits
from ownchat_serving.engine import EngineOptions

pytestmark = pytest.mark.slow

# The conftest's Stack: a core, its store and registry, a stub, one event loop.
Stack = Any
METADATA = ((AUTHORIZATION_KEY, bearer("test-token")),)


def engine_core() -> psutil.Process:
    (process,) = [p for p in vllm_processes() if p.name().startswith("VLLM::EngineCor")]
    return process


@pytest.fixture
def stack(tmp_path: Path, servable_models: dict[int, Path], stack_factory: Any) -> Iterator[Stack]:
    options = EngineOptions(kv_cache_bytes=32 * 1024**2)
    limits = ServingLimits(watch_seconds=0.2, restart_backoff=(0.5, 2.0))
    with stack_factory(tmp_path, {"tiny:1": servable_models[0]}, limits, options) as stack:
        stack.run(stack.core.deploy(DeploySpec("tiny:1", deployed_by="alice")))
        yield stack
    deadline = time.monotonic() + 15
    while vllm_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vllm_processes() == []


def chat(max_tokens: int) -> serving_pb2.GenerateRequest:
    return serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hello")],
        sampling=serving_pb2.SamplingParams(temperature=0, max_tokens=max_tokens),
    )


def test_a_killed_engine_fails_its_streams_cleanly_and_comes_back(stack: Stack) -> None:
    health: list[bool] = []
    stack.core.on_serving_change = health.append
    first_engine = stack.core.live_engine
    killed = engine_core()

    async def kill_mid_stream() -> tuple[grpc.StatusCode, str, float, grpc.StatusCode]:
        calls = [stack.stub.Generate(chat(480), metadata=METADATA, timeout=120) for _ in range(3)]
        streams: list[AsyncIterator[serving_pb2.GenerateResponse]] = [
            call.__aiter__() for call in calls
        ]
        for stream in streams:
            await anext(stream)
        killed.send_signal(signal.SIGKILL)
        started = time.monotonic()
        codes, details = set(), ""
        for stream in streams:
            try:
                async for _ in stream:
                    pass
            except aio.AioRpcError as error:
                codes.add(error.code())
                details = error.details() or ""
        seconds = time.monotonic() - started
        # Until the engine is back, new requests are told to come back later.
        while stack.core.serving:
            await asyncio.sleep(0.05)
        try:
            async for _ in stack.stub.Generate(chat(4), metadata=METADATA, timeout=30):
                pass
            during = grpc.StatusCode.OK
        except aio.AioRpcError as error:
            during = error.code()
        (code,) = codes
        return code, details, seconds, during

    code, details, seconds, during = stack.run(kill_mid_stream())
    print(f"streams failed {seconds:.2f} s after the kill")
    assert code == grpc.StatusCode.UNAVAILABLE and "stopped during the reply" in details
    assert seconds < 10
    assert during == grpc.StatusCode.UNAVAILABLE
    assert health == [False]

    async def back() -> float:
        started = time.monotonic()
        while not stack.core.serving:
            assert time.monotonic() - started < 300, "the engine was not started again"
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    print(f"engine started again in {stack.run(back()):.1f} s")
    assert health == [False, True]
    assert stack.core.live_engine is not first_engine
    assert not killed.is_running() or killed.status() == psutil.STATUS_ZOMBIE

    async def after() -> list[serving_pb2.GenerateResponse]:
        return [r async for r in stack.stub.Generate(chat(5), metadata=METADATA, timeout=60)]

    responses = stack.run(after())
    assert responses[-1].usage.completion_tokens == 5 and responses[-1].model_id == "tiny:1"
    (deployment,) = stack.core.list_deployments(10, 0)
    assert deployment.restarts == 1 and deployment.deployed_by == "alice"
    # The dead engine's other processes are gone: only the new engine's remain.
    assert len(vllm_processes()) <= 2

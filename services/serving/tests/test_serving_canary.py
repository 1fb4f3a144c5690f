"""Canary deployments on real engines (Transformers, the tiny model): the split, its
stickiness, promotion and rollback without reloads, the history, a restart with
a canary live, and a load test of deploys and rollbacks under 16 open streams.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.common.v1 import common_pb2
from ownchat.errors import FailedPreconditionError, NotFoundError
from ownchat.serving.v1 import serving_pb2
from ownchat_serving.core import DeploySpec, ServingCore
from ownchat_serving.engine import EngineOptions
from ownchat_serving.generation import ChatTurn, GenerateInput, Sampling
from ownchat_serving.store import DeploymentState, EngineKind

# The conftest's Stack: a core, its store and registry, a stub, one event loop.
Stack = Any
METADATA = ((AUTHORIZATION_KEY, bearer("test-token")),)
TRANSFORMERS = EngineKind.TRANSFORMERS
LIVE, RETIRED = DeploymentState.LIVE, DeploymentState.RETIRED


@pytest.fixture
def stack(tmp_path: Path, servable_models: dict[int, Path], stack_factory: Any) -> Iterator[Stack]:
    models = {"tiny:1": servable_models[0], "tiny:2": servable_models[1]}
    with stack_factory(tmp_path, models) as stack:
        stack.run(stack.core.deploy(DeploySpec("tiny:1", TRANSFORMERS, deployed_by="alice")))
        yield stack


def deploy(stack: Stack, model_id: str, canary: int = 0, by: str = "bob") -> Any:
    return stack.run(stack.core.deploy(DeploySpec(model_id, TRANSFORMERS, canary, by)))


def ask(stack: Stack, conversation_id: str = "", *turns: str, model_id: str = "") -> str:
    async def model() -> str:
        texts = turns or ("Hello",)
        request = GenerateInput(
            [ChatTurn("user", text) for text in texts],
            Sampling(temperature=0, max_tokens=1),
            model_id=model_id,
            conversation_id=conversation_id,
        )
        chunks = [chunk async for chunk in stack.core.generate(request)]
        answered: str = chunks[-1].model_id
        return answered

    result: str = stack.run(model())
    return result


def history(stack: Stack) -> list[tuple[str, DeploymentState, int, int, str]]:
    return [
        (d.model_id, d.state, d.canary_percent, d.traffic_percent, d.deployed_by)
        for d in stack.core.list_deployments(50, 0)
    ]


def test_a_canary_takes_its_share_of_conversations_and_keeps_them(stack: Stack) -> None:
    main_engine = stack.core.live_engine
    canary = deploy(stack, "tiny:2", 30)
    assert (canary.state, canary.canary_percent, canary.traffic_percent) == (LIVE, 30, 30)
    assert stack.core.live_engine is main_engine  # the main one was not touched
    assert history(stack) == [
        ("tiny:2", LIVE, 30, 30, "bob"),
        ("tiny:1", LIVE, 0, 70, "alice"),
    ]

    async def listing() -> serving_pb2.ListDeploymentsResponse:
        request = serving_pb2.ListDeploymentsRequest()
        response: serving_pb2.ListDeploymentsResponse = await stack.stub.ListDeployments(
            request, metadata=METADATA
        )
        return response

    listed = stack.run(listing())
    assert [(d.model_id, d.traffic_percent, d.canary_percent) for d in listed.deployments] == [
        ("tiny:2", 30, 30),
        ("tiny:1", 70, 0),
    ]

    first = {f"c{i}": ask(stack, f"c{i}") for i in range(120)}
    share = Counter(first.values())["tiny:2"] / len(first)
    assert 0.15 <= share <= 0.45, share
    # Sticky: every conversation is answered by the same version again.
    assert {c: ask(stack, c) for c in list(first)[:40]} == dict(list(first.items())[:40])
    # Without an id, the first user message keeps a conversation together.
    opening = [f"My order {i} is late" for i in range(40)]
    by_opening = {text: ask(stack, "", text) for text in opening}
    assert {text: ask(stack, "", text, "Any news?") for text in opening} == by_opening
    assert set(by_opening.values()) == {"tiny:1", "tiny:2"}

    # A model id picks its version; an unknown one is named beside both live ones.
    assert ask(stack, "c0", model_id="tiny:2") == "tiny:2"
    assert ask(stack, "c0", model_id="tiny:1") == "tiny:1"
    with pytest.raises(NotFoundError) as error:
        ask(stack, model_id="tiny:9")
    assert "'tiny:1' and 'tiny:2 (canary)'" in error.value.message

    # A wider share keeps the canary's conversations and adds others, with no reload.
    canary_engine = stack.core.canary_engine
    wider = deploy(stack, "tiny:2", 60, by="carol")
    assert wider.canary_percent == 60 and stack.core.canary_engine is canary_engine
    on_canary = [c for c, model in first.items() if model == "tiny:2"]
    assert all(ask(stack, c) == "tiny:2" for c in on_canary)

    # Promotion: the canary's engine takes all traffic, the old main one drains and stops.
    promoted = deploy(stack, "tiny:2", by="dave")
    assert (promoted.traffic_percent, promoted.canary_percent) == (100, 0)
    assert stack.core.live_engine is canary_engine and stack.core.canary is None
    stack.run(stack.core.wait_retired())
    assert main_engine is not None and main_engine.unfinished_requests() == 0
    assert {ask(stack, c) for c in first} == {"tiny:2"}
    assert history(stack) == [
        ("tiny:2", LIVE, 0, 100, "dave"),
        ("tiny:2", RETIRED, 60, 0, "carol"),
        ("tiny:2", RETIRED, 30, 0, "bob"),
        ("tiny:1", RETIRED, 0, 0, "alice"),
    ]
    # The version before the promotion is the rollback target, not the canary rows.
    back = stack.run(stack.core.rollback("erin"))
    assert back.model_id == "tiny:1" and back.traffic_percent == 100


def test_rollback_ends_a_canary_without_a_reload(stack: Stack) -> None:
    main_engine = stack.core.live_engine
    deploy(stack, "tiny:2", 50)
    canary_engine = stack.core.canary_engine
    assert canary_engine is not None
    ended = stack.run(stack.core.rollback("carol"))
    assert ended.model_id == "tiny:1" and ended.traffic_percent == 100
    assert stack.core.live_engine is main_engine and stack.core.canary is None
    stack.run(stack.core.wait_retired())
    assert {ask(stack, f"c{i}") for i in range(30)} == {"tiny:1"}
    assert history(stack) == [
        ("tiny:1", LIVE, 0, 100, "carol"),
        ("tiny:2", RETIRED, 50, 0, "bob"),
        ("tiny:1", RETIRED, 0, 0, "alice"),
    ]
    # The canary never took all traffic: there is nothing to roll back to.
    with pytest.raises(FailedPreconditionError):
        stack.run(stack.core.rollback("carol"))


def test_a_full_deployment_replaces_main_and_canary(stack: Stack) -> None:
    deploy(stack, "tiny:2", 10)
    with pytest.raises(FailedPreconditionError) as error:
        deploy(stack, "tiny:1", 10)
    assert "main deployment already" in error.value.message
    # The same version on another engine may be a canary: the engines are compared.
    full = stack.run(stack.core.deploy(DeploySpec("tiny:1", EngineKind.TRANSFORMERS)))
    assert full.traffic_percent == 100 and stack.core.canary is None
    assert [(m, s) for m, s, *_ in history(stack)][:3] == [
        ("tiny:1", LIVE),
        ("tiny:2", RETIRED),
        ("tiny:1", RETIRED),
    ]


def test_a_restart_reloads_main_and_canary(stack: Stack) -> None:
    deploy(stack, "tiny:2", 40)
    split = {f"c{i}": ask(stack, f"c{i}") for i in range(40)}
    restarted = ServingCore(stack.store, stack.registry.artifacts, stack.registry, EngineOptions())

    async def after_restart() -> dict[str, str]:
        try:
            await restarted.restore()
            answers = {}
            for conversation in split:
                request = GenerateInput(
                    [ChatTurn("user", "Hello")],
                    Sampling(temperature=0, max_tokens=1),
                    conversation_id=conversation,
                )
                answers[conversation] = [c async for c in restarted.generate(request)][-1].model_id
            return answers
        finally:
            await restarted.close()

    assert stack.run(after_restart()) == split


def grpc_chat(conversation: str) -> serving_pb2.GenerateRequest:
    return serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hello")],
        sampling=serving_pb2.SamplingParams(temperature=0, max_tokens=8),
        conversation_id=conversation,
    )


class Clients:
    """16 clients, each keeping a Generate stream open at all times until stopped."""

    def __init__(self, stack: Stack, count: int = 16) -> None:
        self._stack = stack
        self._count = count
        self.failures: list[str] = []
        self.answered: Counter[str] = Counter()

    async def _client(self, number: int, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            request = grpc_chat(f"client{number}-{turn % 7}")
            try:
                call = self._stack.stub.Generate(request, metadata=METADATA, timeout=120)
                responses = [response async for response in call]
            except aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
                continue
            final = responses[-1]
            if final.finish_reason != serving_pb2.FINISH_REASON_LENGTH:
                self.failures.append(f"unfinished reply: {final}")
            self.answered[final.model_id] += 1

    async def during(self, changes: list[Callable[[], Awaitable[Any]]]) -> list[str]:
        """Runs the changes one after another while the clients talk; returns where
        traffic went after each."""
        stop = asyncio.Event()
        clients = [asyncio.create_task(self._client(n, stop)) for n in range(self._count)]
        steps = []
        try:
            await asyncio.sleep(0.5)
            for change in changes:
                deployment = await change()
                steps.append(f"{deployment.model_id}@{deployment.traffic_percent}")
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        await self._stack.core.wait_retired()
        return steps


@pytest.mark.slow
def test_deploys_and_rollbacks_under_16_open_streams_fail_no_request(stack: Stack) -> None:
    """16 clients keep a stream open at all times while versions come and go."""
    core = stack.core
    clients = Clients(stack)
    steps = stack.run(
        clients.during(
            [
                lambda: core.deploy(DeploySpec("tiny:2", TRANSFORMERS, 0, "bob")),
                lambda: core.rollback("carol"),
                lambda: core.deploy(DeploySpec("tiny:2", TRANSFORMERS, 25, "dave")),
                lambda: core.deploy(DeploySpec("tiny:2", TRANSFORMERS, 0, "dave")),
                lambda: core.rollback("erin"),
                lambda: core.deploy(DeploySpec("tiny:2", TRANSFORMERS, 50, "frank")),
                lambda: core.rollback("grace"),
            ]
        )
    )
    assert steps == [
        "tiny:2@100",
        "tiny:1@100",
        "tiny:2@25",
        "tiny:2@100",
        "tiny:1@100",
        "tiny:2@50",
        "tiny:1@100",
    ]
    assert clients.failures == []
    assert clients.answered["tiny:1"] > 16 and clients.answered["tiny:2"] > 16
    print(f"replies during the changes: {dict(clients.answered)}")


@pytest.mark.slow
def test_vllm_deploy_and_rollback_under_16_open_streams_fail_no_request(
    tmp_path: Path, servable_models: dict[int, Path], stack_factory: Any
) -> None:
    """The same on vLLM: a new version and a canary are each loaded beside the live
    engine; the replaced engines drain, then stop."""
    models = {"tiny:1": servable_models[0], "tiny:2": servable_models[1]}
    options = EngineOptions(kv_cache_bytes=32 * 1024**2)
    with stack_factory(tmp_path, models, None, options) as vllm:
        core = vllm.core
        vllm.run(core.deploy(DeploySpec("tiny:1", deployed_by="alice")))
        clients = Clients(vllm)
        started = time.perf_counter()
        steps = vllm.run(
            clients.during(
                [
                    lambda: core.deploy(DeploySpec("tiny:2", deployed_by="bob")),
                    lambda: core.deploy(DeploySpec("tiny:1", canary_percent=30)),
                    lambda: core.rollback("carol"),
                ]
            )
        )
        print(
            f"vLLM: {dict(clients.answered)} replies in {time.perf_counter() - started:.0f} s "
            "of changes"
        )
    assert steps == ["tiny:2@100", "tiny:1@30", "tiny:2@100"]
    assert clients.failures == []
    assert clients.answered["tiny:1"] > 16 and clients.answered["tiny:2"] > 16

"""Deployments and generation on a real vLLM engine (CPU) with the tiny model.

One engine is started for the module and reused; the tests that move traffic
(a failed load, a second version, a rollback) run last, in file order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from process_tree import vllm_processes

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.common.v1 import common_pb2
from ownchat.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from ownchat.interceptors import AsyncServerInterceptor
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat_serving.core import DeploySpec, ServingCore
from ownchat_serving.engine import EngineOptions, load_tokenizer
from ownchat_serving.generation import (
    ChatTurn,
    FinishReason,
    GenerateChunk,
    GenerateInput,
    ResolvedSampling,
    Sampling,
)
from ownchat_serving.servicer import ServingServicer
from ownchat_serving.store import DeploymentState, DeploymentStore

pytestmark = pytest.mark.slow

TOKEN = "test-token"
HELLO = (ChatTurn("system", "You are a helpful support assistant."), ChatTurn("user", "Hello"))


@dataclass
class Serving:
    """The module's core, its store and registry, and a gRPC server over them."""

    runner: asyncio.Runner
    core: ServingCore
    store: DeploymentStore
    registry: Any
    models: dict[int, Path]
    stub: serving_pb2_grpc.ServingServiceStub

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    def chunks(self, request: GenerateInput) -> list[GenerateChunk]:
        async def collect() -> list[GenerateChunk]:
            return [chunk async for chunk in self.core.generate(request)]

        result: list[GenerateChunk] = self.run(collect())
        return result

    def reference(self, max_tokens: int) -> str:
        """A non-streamed greedy reply to HELLO from the live engine."""
        engine = self.core.live_engine
        assert engine is not None
        sampling = ResolvedSampling(0.0, 1.0, max_tokens, (), None)
        step = self.run(engine.complete(engine.render(HELLO), sampling, f"ref-{time.time()}"))
        assert step.finish_reason == "length"
        text: str = step.text
        return text


@pytest.fixture(scope="module")
def serving(
    tmp_path_factory: pytest.TempPathFactory,
    servable_models: dict[int, Path],
    registry_class: Any,
) -> Iterator[Serving]:
    from ownchat.artifacts import ArtifactStore

    root = tmp_path_factory.mktemp("serving")
    artifacts = ArtifactStore(root / "artifacts")
    registry = registry_class(artifacts)
    registry.add("tiny:1", servable_models[0])
    registry.add("tiny:2", servable_models[1])
    store = DeploymentStore(root / "serving.db")
    options = EngineOptions(kv_cache_bytes=32 * 1024**2)  # max_model_len 2048, above the model's
    core = ServingCore(store, artifacts, registry, options, drain_seconds=5)

    with asyncio.Runner() as runner:

        async def start_server() -> tuple[aio.Server, aio.Channel]:
            server = aio.server(interceptors=[AsyncServerInterceptor(TOKEN)])
            serving_pb2_grpc.add_ServingServiceServicer_to_server(ServingServicer(core), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, aio.insecure_channel(f"127.0.0.1:{port}")

        server, channel = runner.run(start_server())
        started = time.perf_counter()
        runner.run(core.deploy(DeploySpec("tiny:1", deployed_by="alice")))
        print(f"deploy (load + warm-up) took {time.perf_counter() - started:.1f} s")
        try:
            yield Serving(
                runner,
                core,
                store,
                registry,
                servable_models,
                serving_pb2_grpc.ServingServiceStub(channel),
            )
        finally:
            runner.run(channel.close())
            runner.run(server.stop(None))
            runner.run(core.close())
            store.close()
    # Every engine's processes are gone once the core is closed.
    deadline = time.monotonic() + 10
    while vllm_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vllm_processes() == []


METADATA = ((AUTHORIZATION_KEY, bearer(TOKEN)),)


def proto_request(**sampling: Any) -> serving_pb2.GenerateRequest:
    return serving_pb2.GenerateRequest(
        messages=[
            common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=HELLO[0].content),
            common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=HELLO[1].content),
        ],
        sampling=serving_pb2.SamplingParams(**sampling),
    )


def test_deploy_goes_live(serving: Serving) -> None:
    live = serving.core.live
    assert live is not None and live.model_id == "tiny:1"
    assert live.state is DeploymentState.LIVE and live.deployed_by == "alice"
    assert serving.store.live() == live
    engine = serving.core.live_engine
    assert engine is not None
    # The configured 2048 is a ceiling; the tiny model's own context is 512.
    assert engine.max_model_len == 512
    # The warm-up left nothing running.
    assert engine.unfinished_requests() == 0


def test_streamed_deltas_add_up_to_the_greedy_reply(serving: Serving) -> None:
    chunks = serving.chunks(GenerateInput(HELLO, Sampling(temperature=0, max_tokens=24)))
    *deltas, final = chunks
    assert len(deltas) > 1
    assert all(chunk.text for chunk in deltas)
    assert all(chunk.finish_reason is None for chunk in deltas)
    assert final.text == "" and final.model_id == "tiny:1"
    assert "".join(chunk.text for chunk in deltas) == serving.reference(24)


def test_usage_counts_and_length_finish(serving: Serving) -> None:
    engine = serving.core.live_engine
    assert engine is not None
    prompt_tokens = len(engine.render(HELLO))
    final = serving.chunks(GenerateInput(HELLO, Sampling(temperature=0, max_tokens=7)))[-1]
    assert final.finish_reason is FinishReason.LENGTH
    assert final.prompt_tokens == prompt_tokens
    assert final.completion_tokens == 7


def test_a_stop_string_ends_the_reply(serving: Serving) -> None:
    reference = serving.reference(24)
    stop = reference[8:12]
    chunks = serving.chunks(GenerateInput(HELLO, Sampling(temperature=0, stop=(stop,))))
    text = "".join(chunk.text for chunk in chunks)
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert text == reference[: reference.index(stop)]


def test_sampling_with_a_seed_is_reproducible(serving: Serving) -> None:
    request = GenerateInput(HELLO, Sampling(temperature=1.0, top_p=0.9, max_tokens=16, seed=3))
    first = "".join(c.text for c in serving.chunks(request))
    second = "".join(c.text for c in serving.chunks(request))
    assert first == second


def test_max_tokens_is_capped_by_the_context_left(serving: Serving) -> None:
    final = serving.chunks(GenerateInput(HELLO, Sampling(temperature=0, max_tokens=5000)))[-1]
    assert final.finish_reason is FinishReason.LENGTH
    assert final.prompt_tokens + final.completion_tokens == 512


def test_a_prompt_longer_than_the_context_is_refused(serving: Serving) -> None:
    long = (ChatTurn("user", "Hello there " * 400),)
    with pytest.raises(InvalidArgumentError) as error:
        serving.chunks(GenerateInput(long))
    assert "512 tokens" in error.value.message


def test_a_raw_prompt_is_continued_without_the_chat_template(serving: Serving) -> None:
    engine = serving.core.live_engine
    assert engine is not None
    prompt = "Once upon a time, the router"
    ids = engine.tokenize(prompt)
    assert ids == load_tokenizer(serving.models[0])(prompt, add_special_tokens=True)["input_ids"]
    chunks = serving.chunks(
        GenerateInput(prompt=prompt, sampling=Sampling(temperature=0, max_tokens=12))
    )
    final = chunks[-1]
    assert final.prompt_tokens == len(ids) < len(engine.render((ChatTurn("user", prompt),)))
    assert (final.finish_reason, final.completion_tokens) == (FinishReason.LENGTH, 12)
    greedy = ResolvedSampling(0.0, 1.0, 12, (), None)
    reference = serving.run(engine.complete(ids, greedy, f"raw-{time.time()}"))
    assert "".join(chunk.text for chunk in chunks) == reference.text
    with pytest.raises(InvalidArgumentError) as error:
        serving.chunks(GenerateInput(prompt="Hello there " * 400))
    assert [v.field for v in error.value.violations] == ["prompt"]
    assert error.value.error_info is not None
    assert error.value.error_info.reason == "CONTEXT_LENGTH_EXCEEDED"


def test_another_model_id_is_not_found_and_names_the_live_one(serving: Serving) -> None:
    with pytest.raises(NotFoundError) as error:
        serving.chunks(GenerateInput(HELLO, model_id="tiny:9"))
    assert "tiny:9" in error.value.message and "tiny:1" in error.value.message
    ok = serving.chunks(GenerateInput(HELLO, Sampling(max_tokens=2), model_id="tiny:1"))
    assert ok[-1].model_id == "tiny:1"


def test_cancelling_a_reply_frees_its_request(serving: Serving) -> None:
    engine = serving.core.live_engine
    assert engine is not None

    async def scenario() -> int:
        received = asyncio.Event()

        async def consume() -> None:
            async for _ in serving.core.generate(
                GenerateInput(HELLO, Sampling(temperature=0, max_tokens=400))
            ):
                received.set()

        task = asyncio.create_task(consume())
        await received.wait()
        assert engine.unfinished_requests() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return engine.unfinished_requests()

    assert serving.run(scenario()) == 0


async def _wait_idle(serving: Serving, seconds: float = 5.0) -> int:
    engine = serving.core.live_engine
    assert engine is not None
    deadline = time.monotonic() + seconds
    while engine.unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return engine.unfinished_requests()


def test_grpc_stream_and_client_cancel(serving: Serving) -> None:
    async def scenario() -> tuple[list[serving_pb2.GenerateResponse], int]:
        responses = [
            response
            async for response in serving.stub.Generate(
                proto_request(temperature=0, max_tokens=6), metadata=METADATA
            )
        ]
        call = serving.stub.Generate(
            proto_request(temperature=0, max_tokens=400), metadata=METADATA
        )
        stream: AsyncIterator[serving_pb2.GenerateResponse] = call.__aiter__()
        await anext(stream)
        call.cancel()
        return responses, await _wait_idle(serving)

    responses, unfinished = serving.run(scenario())
    *deltas, final = responses
    assert final.finish_reason == serving_pb2.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 6 and final.usage.prompt_tokens > 0
    assert final.model_id == "tiny:1"
    assert "".join(r.text for r in deltas) == serving.reference(6)
    assert unfinished == 0


def test_grpc_deadline_aborts_the_request(serving: Serving) -> None:
    async def scenario() -> tuple[grpc.StatusCode, int]:
        call = serving.stub.Generate(
            proto_request(temperature=0, max_tokens=480), metadata=METADATA, timeout=0.3
        )
        try:
            async for _ in call:
                pass
        except aio.AioRpcError as error:
            return error.code(), await _wait_idle(serving)
        return grpc.StatusCode.OK, -1

    code, unfinished = serving.run(scenario())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert unfinished == 0


def test_grpc_errors_carry_their_codes(serving: Serving) -> None:
    async def code_of(request: serving_pb2.GenerateRequest, metadata: Any = METADATA) -> Any:
        try:
            async for _ in serving.stub.Generate(request, metadata=metadata):
                pass
        except aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    assert serving.run(code_of(proto_request(top_p=2.0))) == grpc.StatusCode.INVALID_ARGUMENT
    wrong_model = proto_request()
    wrong_model.model_id = "tiny:9"
    assert serving.run(code_of(wrong_model)) == grpc.StatusCode.NOT_FOUND
    assert serving.run(code_of(proto_request(), ())) == grpc.StatusCode.UNAUTHENTICATED


def test_a_model_that_fails_to_load_leaves_the_live_one_serving(
    serving: Serving, tmp_path: Path
) -> None:
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(serving.models[0], broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    serving.registry.add("broken:1", broken)
    with pytest.raises(FailedPreconditionError) as error:
        serving.run(serving.core.deploy(DeploySpec("broken:1", deployed_by="bob")))
    assert "could not be loaded" in error.value.message
    failed = serving.store.list(1, 0)[0]
    assert failed.model_id == "broken:1" and failed.state is DeploymentState.FAILED
    assert failed.error
    live = serving.core.live
    assert live is not None and live.model_id == "tiny:1"
    assert serving.chunks(GenerateInput(HELLO, Sampling(max_tokens=3)))[-1].completion_tokens == 3


def test_deploy_a_second_version_then_roll_back(serving: Serving) -> None:
    first_reply = serving.reference(16)
    first_engine = serving.core.live_engine

    async def deploy_second() -> list[GenerateChunk]:
        # The caller gives up early; the deployment goes on without it.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                serving.core.deploy(DeploySpec("tiny:2", deployed_by="bob")), timeout=0.5
            )
        with pytest.raises(FailedPreconditionError) as error:
            await serving.core.deploy(DeploySpec("tiny:2"))
        assert "still loading" in error.value.message
        # Meanwhile the first version keeps answering.
        during = [c async for c in serving.core.generate(GenerateInput(HELLO, Sampling()))]
        deadline = time.monotonic() + 180
        while (live := serving.core.live) is None or live.model_id != "tiny:2":
            assert time.monotonic() < deadline, "the second version never went live"
            await asyncio.sleep(0.2)
        await serving.core.wait_retired()
        return during

    during = serving.run(deploy_second())
    assert during[-1].model_id == "tiny:1"
    second = serving.core.live
    assert second is not None and second.state is DeploymentState.LIVE
    assert second.deployed_by == "bob"
    assert first_engine is not None and first_engine.unfinished_requests() == 0
    second_reply = serving.reference(16)
    assert second_reply != first_reply  # other weights answer
    with pytest.raises(NotFoundError) as error:
        serving.chunks(GenerateInput(HELLO, model_id="tiny:1"))
    assert "tiny:2" in error.value.message

    back = serving.run(serving.core.rollback("carol"))
    serving.run(serving.core.wait_retired())
    assert back.model_id == "tiny:1" and back.deployed_by == "carol"
    assert serving.reference(16) == first_reply

    history = serving.store.list(50, 0)
    assert [(d.model_id, d.state) for d in history] == [
        ("tiny:1", DeploymentState.LIVE),
        ("tiny:2", DeploymentState.RETIRED),
        ("broken:1", DeploymentState.FAILED),
        ("tiny:1", DeploymentState.RETIRED),
    ]
    # Only the live engine's processes remain: the engine core and its worker.
    assert len(vllm_processes()) <= 2


def test_replies_in_flight_end_when_their_engine_stops(serving: Serving) -> None:
    # Last in the module: it stops the live engine (the teardown's close is then a no-op).
    engine = serving.core.live_engine
    assert engine is not None

    async def scenario() -> None:
        stream = serving.core.generate(
            GenerateInput(HELLO, Sampling(temperature=0, max_tokens=480))
        )
        await anext(stream)
        await engine.shutdown()
        with pytest.raises(UnavailableError):
            async for _ in stream:
                pass

    serving.run(asyncio.wait_for(scenario(), timeout=30))

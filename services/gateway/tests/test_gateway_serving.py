"""The gateway in front of the real serving service: vLLM on a tiny random model.

Serving's own core and servicer run on a grpc.aio server in a thread (as
``python -m ownchat_serving`` wires them, with a local registry in place of the
trainer); the gateway's apps run in uvicorn; the official ``openai`` client
drives them. Checked here: token limits counted from serving's real usage, a
prompt over the model's context answered as ``context_length_exceeded``, and
``/v1/completions`` with ``completions.create``, whole and streamed, its raw
prompt read without the chat template.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from grpc import aio
from process_tree import vllm_processes
from starlette.applications import Starlette

from ownchat.artifacts import ArtifactStore
from ownchat.errors import NotFoundError
from ownchat.interceptors import AsyncServerInterceptor
from ownchat.serving.v1 import serving_pb2_grpc
from ownchat.testing import build_tiny_chat_model
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.keys import NewApiKey, Scope

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")
ContextFactory = Callable[..., GatewayContext]
Edge = Callable[[GatewayContext], Starlette]
Serve = Callable[[Starlette], AbstractContextManager[str]]

TOKEN = "gateway-serving-token"
MODEL = "tiny:1"
# Short, so that a prompt can exceed it while staying under the gateway's own limits.
MAX_MODEL_LEN = 256
# vLLM's CPU attention needs heads of 32 and up (ownchat.testing's tiny model has
# 16); untied embeddings vary a random model's replies (as serving's tests build it).
SERVABLE_CONFIG = {
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "tie_word_embeddings": False,
}


def _servable_model(directory: Path) -> Path:
    """The tiny chat model reshaped for vLLM's CPU backend; EOS is never its best token,
    so greedy replies run to max_tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_chat_model(directory, seed=0)
    config = LlamaConfig.from_pretrained(directory)
    for key, value in SERVABLE_CONFIG.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight[config.eos_token_id].zero_()
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


class _Loop:
    """An event loop running in a thread, for serving's grpc.aio server and engine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="serving", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        assert not self.thread.is_alive(), "serving's loop did not stop"
        self.loop.close()


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serving with the tiny model deployed; yields its address."""
    pytest.importorskip("ownchat_serving", reason="the serving service is not installed")
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from ownchat_serving.core import DeploySpec, ServingCore
    from ownchat_serving.engine import EngineOptions
    from ownchat_serving.resolver import ResolvedModel
    from ownchat_serving.servicer import ServingServicer
    from ownchat_serving.store import DeploymentStore

    root = tmp_path_factory.mktemp("serving")
    artifacts = ArtifactStore(root / "artifacts")
    digest = artifacts.put_tree(_servable_model(root / "model")).digest

    async def registry(model_id: str) -> ResolvedModel:
        if model_id != MODEL:
            raise NotFoundError("model", model_id)
        return ResolvedModel(model_id, digest)

    store = DeploymentStore(root / "serving.db")
    options = EngineOptions(max_model_len=MAX_MODEL_LEN, kv_cache_bytes=32 * 1024**2)
    loop = _Loop()

    async def start() -> tuple[ServingCore, aio.Server, int]:
        core = ServingCore(store, artifacts, registry, options, drain_seconds=2)
        server = aio.server(interceptors=[AsyncServerInterceptor(TOKEN)])
        serving_pb2_grpc.add_ServingServiceServicer_to_server(ServingServicer(core), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await core.deploy(DeploySpec(MODEL, deployed_by="test"))
        return core, server, port

    core, server, port = loop.run(start())
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loop.run(server.stop(None))
        loop.run(core.close())
        loop.stop()
        store.close()
    assert vllm_processes() == []


@pytest.fixture
def gateway(
    serving: str, context_factory: ContextFactory, edge: Edge, serve_app: Serve
) -> Iterator[tuple[str, GatewayContext]]:
    """The gateway's apps in uvicorn in front of serving; keys get 200 tokens a minute."""
    context = context_factory(serving_address=serving, token=TOKEN, default_tokens_per_minute=200)
    with serve_app(edge(context)) as url:
        yield url, context


def _client(url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)


def _remaining_tokens(url: str, secret: str) -> int:
    answer = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 200, answer.text
    return int(answer.headers["x-ratelimit-remaining-tokens"])


def test_gateway_counts_the_tokens_serving_reports(gateway: tuple[str, GatewayContext]) -> None:
    url, context = gateway
    secret = context.keys.create(NewApiKey(name="bot", scopes=(Scope.CHAT,))).secret
    client = _client(url, secret)
    assert _remaining_tokens(url, secret) == 200
    completion = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    used = completion.usage.total_tokens
    # The bucket refills at 200 a minute: a few tokens may be back already.
    assert 200 - used <= _remaining_tokens(url, secret) <= 200 - used + 2

    # A streamed reply counts too, though the client did not ask for its usage.
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    )
    assert len([c for c in stream if c.choices and c.choices[0].delta.content]) >= 1
    assert 200 - 2 * used <= _remaining_tokens(url, secret) <= 200 - 2 * used + 4


def test_gateway_refuses_generation_once_the_token_bucket_is_empty(
    gateway: tuple[str, GatewayContext],
) -> None:
    url, context = gateway
    created = context.keys.create(
        NewApiKey(name="small", scopes=(Scope.CHAT,), tokens_per_minute=20)
    )
    client = _client(url, created.secret)
    # The bucket is full, so the request goes; its reply costs more than the bucket.
    first = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hello there"}], max_tokens=16
    )
    assert first.usage is not None and first.usage.total_tokens > 20
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "again"}], max_tokens=4
        )
    error = caught.value
    assert error.code == "rate_limit_exceeded" and error.type == "tokens"
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-ratelimit-limit-tokens"] == "20"
    # Listing the models is no generation: still served.
    assert [m.id for m in client.models.list()] == [MODEL]


def test_gateway_prompt_over_the_context_is_context_length_exceeded(
    gateway: tuple[str, GatewayContext],
) -> None:
    url, context = gateway
    client = _client(url, TOKEN)
    long = " ".join(["refund window router firmware"] * 80)  # well over 256 tokens
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": long}],
                max_tokens=4,
                stream=stream,
            )
        assert caught.value.code == "context_length_exceeded"
        assert caught.value.param == "messages"
        assert f"context is {MAX_MODEL_LEN} tokens" in caught.value.message


def test_gateway_completions_through_serving(gateway: tuple[str, GatewayContext]) -> None:
    url, _ = gateway
    client = _client(url, TOKEN)
    completion = client.completions.create(
        model="default", prompt="Once upon a time", max_tokens=8, temperature=0
    )
    assert completion.object == "text_completion" and completion.model == MODEL
    assert completion.choices[0].finish_reason == "length" and completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    chunks = list(
        client.completions.create(
            model="default",
            prompt=["Once upon a time"],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == completion.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    # The prompt is read as it is: fewer tokens than the same text as a chat message.
    chat = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=1
    )
    assert chat.usage is not None
    assert 0 < completion.usage.prompt_tokens < chat.usage.prompt_tokens


def test_gateway_completion_prompt_over_the_context_is_context_length_exceeded(
    gateway: tuple[str, GatewayContext],
) -> None:
    url, _ = gateway
    client = _client(url, TOKEN)
    long = " ".join(["refund window router firmware"] * 80)  # well over 256 tokens
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="default", prompt=long, max_tokens=4, stream=stream)
        assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "prompt")
        assert f"context is {MAX_MODEL_LEN} tokens" in caught.value.message

"""Fixtures of the serving tests: tiny models vLLM's CPU backend accepts, in an artifact store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from ownchat.artifacts import ArtifactStore
from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.errors import NotFoundError
from ownchat.interceptors import AsyncServerInterceptor
from ownchat.serving.v1 import serving_pb2_grpc
from ownchat.testing import build_tiny_chat_model
from ownchat_serving.core import ServingCore, ServingLimits
from ownchat_serving.engine import EngineOptions
from ownchat_serving.resolver import ModelKind, ResolvedModel
from ownchat_serving.servicer import ServingServicer
from ownchat_serving.store import DeploymentStore

TOKEN = "test-token"
METADATA = ((AUTHORIZATION_KEY, bearer(TOKEN)),)

# vLLM's CPU attention supports head sizes of 32 and up; ownchat.testing's
# tiny model has 16, so its weights are rebuilt here with 2 heads of 32. Tied
# embeddings make a random model echo its last token forever; untied, its
# replies vary and differ between seeds.
SERVABLE_CONFIG = {
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "tie_word_embeddings": False,
}


def build_servable_model(directory: Path, seed: int) -> Path:
    """The tiny chat model, reshaped for vLLM's CPU backend; greedy never picks EOS."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_chat_model(directory, seed=seed)
    config = LlamaConfig.from_pretrained(directory)
    for key, value in SERVABLE_CONFIG.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A zero output row gives EOS a logit of 0, below the best of the other
        # random logits: greedy replies run to max_tokens, so tests decide how
        # they end.
        model.get_output_embeddings().weight[config.eos_token_id].zero_()
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


class LocalRegistry:
    """A model registry over a local artifact store, in place of the trainer."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        self.models: dict[str, ResolvedModel] = {}

    def add(
        self,
        model_id: str,
        directory: Path,
        kind: ModelKind = ModelKind.FULL,
        blocked_reason: str = "",
        base: str = "",
    ) -> ResolvedModel:
        """Registers a model; ``base`` names an adapter's base, registered before it."""
        digest = self.artifacts.put_tree(directory).digest
        base_digest = self.models[base].artifact_digest if base else ""
        resolved = ResolvedModel(model_id, digest, kind, blocked_reason, base, base_digest)
        self.models[model_id] = resolved
        return resolved

    async def __call__(self, model_id: str) -> ResolvedModel:
        if model_id not in self.models:
            raise NotFoundError("model", model_id)
        return self.models[model_id]


@pytest.fixture(scope="session")
def servable_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two versions of the tiny model (seeds 0 and 1): different weights, same tokenizer."""
    root = tmp_path_factory.mktemp("models")
    return {seed: build_servable_model(root / f"v{seed}", seed) for seed in (0, 1)}


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(ArtifactStore(tmp_path / "artifacts"))


@pytest.fixture(scope="session")
def registry_class() -> type[LocalRegistry]:
    """For module-scoped fixtures, which cannot use the per-test registry."""
    return LocalRegistry


@dataclass
class Stack:
    """A core over a local registry, served over gRPC on loopback, on one event loop."""

    runner: asyncio.Runner
    core: ServingCore
    store: DeploymentStore
    registry: LocalRegistry
    stub: serving_pb2_grpc.ServingServiceStub
    address: str

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)


@contextmanager
def serving_stack(
    root: Path,
    models: dict[str, Path],
    limits: ServingLimits | None = None,
    options: EngineOptions | None = None,
) -> Iterator[Stack]:
    """A core with ``models`` registered, its servicer on a free loopback port, and a stub."""
    artifacts = ArtifactStore(root / "artifacts")
    registry = LocalRegistry(artifacts)
    for model_id, directory in models.items():
        registry.add(model_id, directory)
    store = DeploymentStore(root / "serving.db")
    core = ServingCore(store, artifacts, registry, options or EngineOptions(), limits=limits)
    with asyncio.Runner() as runner:

        async def start() -> tuple[aio.Server, str, aio.Channel]:
            server = aio.server(interceptors=[AsyncServerInterceptor(TOKEN)])
            serving_pb2_grpc.add_ServingServiceServicer_to_server(ServingServicer(core), server)
            address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
            await server.start()
            return server, address, aio.insecure_channel(address)

        server, address, channel = runner.run(start())
        stub = serving_pb2_grpc.ServingServiceStub(channel)
        try:
            yield Stack(runner, core, store, registry, stub, address)
        finally:
            runner.run(channel.close())
            runner.run(server.stop(None))
            runner.run(core.close())
            store.close()


@pytest.fixture(scope="session")
def stack_factory() -> Any:
    """``serving_stack``, for test modules (which cannot import this conftest)."""
    return serving_stack

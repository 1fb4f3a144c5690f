"""Resolving model ids through a trainer's GetModel over grpc.aio, with its token."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from grpc import aio

from ownchat.common.v1 import common_pb2
from ownchat.config import ClientSettings
from ownchat.errors import NotFoundError, UnavailableError
from ownchat.interceptors import AsyncServerInterceptor
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from ownchat_serving.resolver import ModelKind
from ownchat_serving.trainer_resolver import TrainerResolver

TOKEN = "trainer-token"
DIGEST = "sha256:" + "a" * 64
BASE_DIGEST = "sha256:" + "b" * 64


class Registry(trainer_pb2_grpc.TrainerServiceServicer):
    """A trainer that knows a few models."""

    MODELS = {
        "ft:smollm2-135m-instruct:demo:1": trainer_pb2.Model(
            id="ft:smollm2-135m-instruct:demo:1",
            kind=trainer_pb2.MODEL_KIND_FULL,
            artifact=common_pb2.ArtifactRef(digest=DIGEST, size_bytes=10),
        ),
        "smollm2-135m-instruct": trainer_pb2.Model(
            id="smollm2-135m-instruct",
            kind=trainer_pb2.MODEL_KIND_BASE,
            artifact=common_pb2.ArtifactRef(digest=BASE_DIGEST),
        ),
        "ft:smollm2-135m-instruct:lora:1": trainer_pb2.Model(
            id="ft:smollm2-135m-instruct:lora:1",
            kind=trainer_pb2.MODEL_KIND_LORA_ADAPTER,
            base_model="smollm2-135m-instruct",
            artifact=common_pb2.ArtifactRef(digest=DIGEST),
        ),
        "erased": trainer_pb2.Model(
            id="erased",
            kind=trainer_pb2.MODEL_KIND_LORA_ADAPTER,
            artifact=common_pb2.ArtifactRef(digest=DIGEST),
            blocked_reason="data erased",
        ),
    }

    async def GetModel(
        self, request: trainer_pb2.GetModelRequest, context: Any
    ) -> trainer_pb2.GetModelResponse:
        if request.model_id not in self.MODELS:
            raise NotFoundError("model", request.model_id)
        return trainer_pb2.GetModelResponse(model=self.MODELS[request.model_id])


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def trainer_address(runner: asyncio.Runner) -> Iterator[str]:
    async def start() -> tuple[aio.Server, int]:
        server = aio.server(interceptors=[AsyncServerInterceptor(TOKEN)])
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(Registry(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = runner.run(start())
    yield f"127.0.0.1:{port}"
    runner.run(server.stop(None))


def resolver(address: str, token: str = TOKEN) -> TrainerResolver:
    return TrainerResolver(ClientSettings(trainer_address=address), token, timeout_seconds=5)


def test_a_model_resolves_to_its_digest(runner: asyncio.Runner, trainer_address: str) -> None:
    resolve = resolver(trainer_address)
    model = runner.run(resolve("ft:smollm2-135m-instruct:demo:1"))
    assert model.artifact_digest == DIGEST
    assert model.kind is ModelKind.FULL and model.blocked_reason == ""
    blocked = runner.run(resolve("erased"))
    assert blocked.blocked_reason == "data erased" and blocked.kind is ModelKind.LORA_ADAPTER
    adapter = runner.run(resolve("ft:smollm2-135m-instruct:lora:1"))
    assert adapter.kind is ModelKind.LORA_ADAPTER and adapter.artifact_digest == DIGEST
    assert adapter.base_model_id == "smollm2-135m-instruct"
    assert adapter.base_artifact_digest == BASE_DIGEST
    runner.run(resolve.close())


def test_an_unknown_model_is_not_found(runner: asyncio.Runner, trainer_address: str) -> None:
    resolve = resolver(trainer_address)
    with pytest.raises(NotFoundError) as error:
        runner.run(resolve("nope"))
    assert error.value.resource_name == "nope"
    runner.run(resolve.close())


def test_a_wrong_token_or_no_trainer_is_unavailable(
    runner: asyncio.Runner, trainer_address: str
) -> None:
    resolve = resolver(trainer_address, token="wrong")
    with pytest.raises(UnavailableError) as error:
        runner.run(resolve("erased"))
    assert "UNAUTHENTICATED" in error.value.message
    runner.run(resolve.close())

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"
    resolve = resolver(nobody)
    with pytest.raises(UnavailableError) as error:
        runner.run(resolve("erased"))
    assert nobody in error.value.message
    runner.run(resolve.close())

"""The server runtime over real sockets: auth, health, error mapping, reflection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from ownchat.auth import bearer, load_or_create_token
from ownchat.config import ServerSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    describe_rpc_error,
)
from ownchat.server import (
    ServiceSpec,
    mark_serving_async,
    start_async_server,
    start_threaded_server,
)
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc

DATA_SERVICE = data_pb2.DESCRIPTOR.services_by_name["DataService"].full_name
SERVING_SERVICE = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name


class ExampleDataServicer(data_pb2_grpc.DataServiceServicer):
    """Answers with each kind of error a core may raise."""

    def ListDatasets(self, request, context):  # type: ignore[no-untyped-def]
        if request.page_size == 7:
            raise InvalidArgumentError("bad page", [FieldViolation("page_size", "not 7")])
        if request.page_size == 8:
            raise ResourceExhaustedError("busy", retry_after_seconds=2)
        return data_pb2.ListDatasetsResponse(datasets=[data_pb2.Dataset(name="x")])

    def GetDatasetVersion(self, request, context):  # type: ignore[no-untyped-def]
        raise NotFoundError("dataset version", request.dataset_version_id)

    def PreviewDatasetVersion(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals /etc/passwd")

    def UploadDatasetVersion(self, request_iterator, context):  # type: ignore[no-untyped-def]
        chunks = [r.chunk for r in request_iterator if r.WhichOneof("payload") == "chunk"]
        if not chunks:
            raise InvalidArgumentError("empty", [FieldViolation("line 1", "no data")])
        return data_pb2.UploadDatasetVersionResponse(
            dataset_version=data_pb2.DatasetVersion(id=str(sum(len(c) for c in chunks)))
        )


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(home=tmp_path, port=0, reflection=True)


@pytest.fixture
def data_server(settings: ServerSettings) -> Iterator[tuple[str, str]]:
    spec = ServiceSpec(
        "data",
        [DATA_SERVICE],
        lambda server: data_pb2_grpc.add_DataServiceServicer_to_server(
            ExampleDataServicer(), server
        ),
    )
    running = start_threaded_server(spec, settings)
    yield f"127.0.0.1:{running.port}", load_or_create_token(settings.home)
    running.server.stop(0)


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", bearer(token))]


def test_health_answers_without_a_token(data_server: tuple[str, str]) -> None:
    address, _ = data_server
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", DATA_SERVICE):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("metadata", [[], [("authorization", "Bearer wrong")]])
def test_calls_without_the_token_are_unauthenticated(
    data_server: tuple[str, str], metadata: list[tuple[str, str]]
) -> None:
    address, _ = data_server
    with grpc.insecure_channel(address) as channel:
        stub = data_pb2_grpc.DataServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ListDatasets(data_pb2.ListDatasetsRequest(), metadata=metadata, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as error:
            stub.UploadDatasetVersion(iter([]), metadata=metadata, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_domain_errors_become_status_codes_with_details(data_server: tuple[str, str]) -> None:
    address, token = data_server
    with grpc.insecure_channel(address) as channel:
        stub = data_pb2_grpc.DataServiceStub(channel)
        assert (
            stub.ListDatasets(data_pb2.ListDatasetsRequest(), metadata=_auth(token), timeout=5)
            .datasets[0]
            .name
            == "x"
        )

        with pytest.raises(grpc.RpcError) as error:
            stub.ListDatasets(data_pb2.ListDatasetsRequest(page_size=7), metadata=_auth(token))
        description = describe_rpc_error(error.value)
        assert description.code == grpc.StatusCode.INVALID_ARGUMENT
        assert description.violations == [FieldViolation("page_size", "not 7")]

        with pytest.raises(grpc.RpcError) as error:
            stub.ListDatasets(data_pb2.ListDatasetsRequest(page_size=8), metadata=_auth(token))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(error.value)
        assert status is not None and status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)

        with pytest.raises(grpc.RpcError) as error:
            stub.GetDatasetVersion(
                data_pb2.GetDatasetVersionRequest(dataset_version_id="dsv_x"), metadata=_auth(token)
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert "dsv_x" in error.value.details()


def test_unexpected_errors_are_internal_and_sanitized(data_server: tuple[str, str]) -> None:
    address, token = data_server
    with grpc.insecure_channel(address) as channel:
        stub = data_pb2_grpc.DataServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.PreviewDatasetVersion(
                data_pb2.PreviewDatasetVersionRequest(), metadata=_auth(token)
            )
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert "passwd" not in error.value.details()
        assert "request id" in error.value.details()


def test_client_streaming_calls_are_mapped_too(data_server: tuple[str, str]) -> None:
    address, token = data_server
    with grpc.insecure_channel(address) as channel:
        stub = data_pb2_grpc.DataServiceStub(channel)
        requests = [data_pb2.UploadDatasetVersionRequest(chunk=b"abc")] * 2
        response = stub.UploadDatasetVersion(iter(requests), metadata=_auth(token), timeout=5)
        assert response.dataset_version.id == "6"
        with pytest.raises(grpc.RpcError) as error:
            stub.UploadDatasetVersion(iter([]), metadata=_auth(token), timeout=5)
        assert describe_rpc_error(error.value).violations[0].field == "line 1"


def test_reflection_lists_the_service(data_server: tuple[str, str]) -> None:
    address, token = data_server
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [response] = list(stub.ServerReflectionInfo(iter([request]), metadata=_auth(token)))
        names = {s.name for s in response.list_services_response.service}
        assert DATA_SERVICE in names


class ExampleServingServicer(serving_pb2_grpc.ServingServiceServicer):
    """Streams two pieces, or fails mid-stream."""

    async def Generate(  # type: ignore[override]
        self, request: serving_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.GenerateResponse]:
        yield serving_pb2.GenerateResponse(text="Hel")
        if request.model_id == "missing":
            raise NotFoundError("model", "missing")
        yield serving_pb2.GenerateResponse(text="lo", finish_reason=serving_pb2.FINISH_REASON_STOP)


def test_asyncio_server_streams_and_maps_errors(settings: ServerSettings) -> None:
    async def scenario() -> None:
        spec = ServiceSpec(
            "serving",
            [SERVING_SERVICE],
            lambda server: serving_pb2_grpc.add_ServingServiceServicer_to_server(
                ExampleServingServicer(), server
            ),
        )
        running = await start_async_server(spec, settings)
        token = load_or_create_token(settings.home)
        async with aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await mark_serving_async(running.health, spec)
            check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING

            stub = serving_pb2_grpc.ServingServiceStub(channel)
            pieces = [
                r.text
                async for r in stub.Generate(
                    serving_pb2.GenerateRequest(), metadata=_auth(token), timeout=5
                )
            ]
            assert pieces == ["Hel", "lo"]

            call = stub.Generate(
                serving_pb2.GenerateRequest(model_id="missing"), metadata=_auth(token), timeout=5
            )
            with pytest.raises(aio.AioRpcError) as error:
                async for _ in call:
                    pass
            assert error.value.code() == grpc.StatusCode.NOT_FOUND

            call = stub.Generate(serving_pb2.GenerateRequest(), timeout=5)
            with pytest.raises(aio.AioRpcError) as error:
                async for _ in call:
                    pass
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await running.server.stop(0)

    asyncio.run(scenario())

"""Channels retry UNAVAILABLE only on methods that cannot act twice."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio

from ownchat.auth import bearer, load_or_create_token
from ownchat.client import (
    CHANNEL_OPTIONS,
    RETRY_MAX_ATTEMPTS,
    SERVICE_DESCRIPTORS,
    is_retryable,
    open_channel,
    retryable_methods,
    service_config,
)
from ownchat.config import ClientSettings, ServerSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import UnavailableError
from ownchat.server import ServiceSpec, start_threaded_server

DATA_SERVICE = data_pb2.DESCRIPTOR.services_by_name["DataService"].full_name


class FlakyDataServicer(data_pb2_grpc.DataServiceServicer):
    """Each method fails UNAVAILABLE its first ``failures`` calls, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _attempt(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1
            failing = self.calls[method] <= self.failures
        if failing:
            raise UnavailableError("briefly unavailable")

    def GetDatasetVersion(self, request, context):  # type: ignore[no-untyped-def]
        self._attempt("GetDatasetVersion")
        return data_pb2.GetDatasetVersionResponse(
            dataset_version=data_pb2.DatasetVersion(id=request.dataset_version_id)
        )

    def EraseRecords(self, request, context):  # type: ignore[no-untyped-def]
        self._attempt("EraseRecords")
        return data_pb2.EraseRecordsResponse()

    def ScrubText(self, request, context):  # type: ignore[no-untyped-def]
        self._attempt("ScrubText")
        return data_pb2.ScrubTextResponse(text=request.text)


def _serve(tmp_path: Path, failures: int) -> Iterator[tuple[str, str, FlakyDataServicer]]:
    servicer = FlakyDataServicer(failures)  # type: ignore[abstract]
    spec = ServiceSpec(
        "data",
        [DATA_SERVICE],
        lambda server: data_pb2_grpc.add_DataServiceServicer_to_server(servicer, server),
    )
    settings = ServerSettings(home=tmp_path, port=0)
    running = start_threaded_server(spec, settings)
    try:
        yield f"127.0.0.1:{running.port}", load_or_create_token(tmp_path), servicer
    finally:
        running.server.stop(0)


@pytest.fixture
def flaky_once(tmp_path: Path) -> Iterator[tuple[str, str, FlakyDataServicer]]:
    yield from _serve(tmp_path, failures=1)


@pytest.fixture
def always_down(tmp_path: Path) -> Iterator[tuple[str, str, FlakyDataServicer]]:
    yield from _serve(tmp_path, failures=1000)


def _stub(address: str, token: str, tmp_path: Path) -> data_pb2_grpc.DataServiceStub:
    settings = ClientSettings(home=tmp_path, tls_ca_file=None, timeout_seconds=10)
    return data_pb2_grpc.DataServiceStub(open_channel(address, settings, token))


def test_a_read_that_fails_unavailable_once_succeeds(
    flaky_once: tuple[str, str, FlakyDataServicer], tmp_path: Path
) -> None:
    address, token, servicer = flaky_once
    stub = _stub(address, token, tmp_path)
    response = stub.GetDatasetVersion(data_pb2.GetDatasetVersionRequest(dataset_version_id="dsv_a"))
    assert response.dataset_version.id == "dsv_a"
    assert servicer.calls["GetDatasetVersion"] == 2


@pytest.mark.parametrize("method", ["EraseRecords", "ScrubText"])
def test_a_method_not_known_to_be_idempotent_is_not_retried(
    flaky_once: tuple[str, str, FlakyDataServicer], tmp_path: Path, method: str
) -> None:
    address, token, servicer = flaky_once
    stub = _stub(address, token, tmp_path)
    request = {
        "EraseRecords": data_pb2.EraseRecordsRequest(),
        "ScrubText": data_pb2.ScrubTextRequest(text="hello"),
    }[method]
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls[method] == 1


def test_retries_stop_after_max_attempts(
    always_down: tuple[str, str, FlakyDataServicer], tmp_path: Path
) -> None:
    address, token, servicer = always_down
    stub = _stub(address, token, tmp_path)
    with pytest.raises(grpc.RpcError) as error:
        stub.GetDatasetVersion(data_pb2.GetDatasetVersionRequest(dataset_version_id="dsv_a"))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetDatasetVersion"] == RETRY_MAX_ATTEMPTS


def test_asyncio_channels_with_the_shared_options_retry_too(
    flaky_once: tuple[str, str, FlakyDataServicer],
) -> None:
    # The gateway and serving build grpc.aio channels from CHANNEL_OPTIONS.
    address, token, servicer = flaky_once

    async def scenario() -> str:
        async with aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            response = await data_pb2_grpc.DataServiceStub(channel).GetDatasetVersion(
                data_pb2.GetDatasetVersionRequest(dataset_version_id="dsv_b"),
                metadata=[("authorization", bearer(token))],
                timeout=10,
            )
            return str(response.dataset_version.id)

    assert asyncio.run(scenario()) == "dsv_b"
    assert servicer.calls["GetDatasetVersion"] == 2


def test_the_rule_picks_reads_and_leaves_every_write_out() -> None:
    retryable = {f"{service.split('.')[-1]}/{method}" for service, method in retryable_methods()}
    for read in (
        "DataService/GetDatasetVersion",
        "DataService/ListDatasets",
        "DataService/PreviewDatasetVersion",
        "TrainerService/GetModel",
        "TrainerService/ListTrainingJobs",
        "EvaluatorService/CompareModels",
        "EvaluatorService/CheckPromotionGate",
        "EvaluatorService/RenderEvalReport",
        "ServingService/ListDeployments",
        "Health/Check",
    ):
        assert read in retryable
    every = {
        f"{service.name}/{method.name}"
        for service in SERVICE_DESCRIPTORS
        for method in service.methods
    }
    for write in (
        "DataService/UploadDatasetVersion",
        "DataService/EraseRecords",
        "DataService/ExportDatasetVersion",
        "TrainerService/CreateTrainingJob",
        "TrainerService/CancelTrainingJob",
        "TrainerService/PauseTrainingJob",
        "TrainerService/ResumeTrainingJob",
        "TrainerService/MergeAdapter",
        "TrainerService/StreamTrainingJobEvents",
        "EvaluatorService/CreateEvalRun",
        "EvaluatorService/NextReviewItem",
        "EvaluatorService/SubmitReview",
        "EvaluatorService/ExportFeedback",
        "EvaluatorService/EnqueueReviewItems",
        "ServingService/Deploy",
        "ServingService/Rollback",
        "ServingService/Generate",
        "Health/Watch",
    ):
        assert write in every, write  # the list above names real methods
        assert write not in retryable
    # Every retried method is named by the rule: a read-only verb or a declared level.
    for service in SERVICE_DESCRIPTORS:
        for method in service.methods:
            if f"{service.name}/{method.name}" in retryable:
                assert not method.client_streaming


def test_a_declared_idempotency_level_makes_a_method_retryable() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="example.proto", package="example.v1")
    file.message_type.add(name="Empty")
    service = file.service.add(name="ExampleService")
    block = service.method.add(
        name="BlockThings", input_type=".example.v1.Empty", output_type=".example.v1.Empty"
    )
    block.options.idempotency_level = descriptor_pb2.MethodOptions.IDEMPOTENT
    service.method.add(
        name="DeleteThings", input_type=".example.v1.Empty", output_type=".example.v1.Empty"
    )
    upload = service.method.add(
        name="GetUpload",
        input_type=".example.v1.Empty",
        output_type=".example.v1.Empty",
        client_streaming=True,
    )
    upload.options.idempotency_level = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    described = pool.FindServiceByName("example.v1.ExampleService")
    assert [m.name for m in described.methods if is_retryable(m)] == ["BlockThings"]
    config = json.loads(service_config([described]))
    [method_config] = config["methodConfig"]
    assert method_config["name"] == [
        {"service": "example.v1.ExampleService", "method": "BlockThings"}
    ]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]

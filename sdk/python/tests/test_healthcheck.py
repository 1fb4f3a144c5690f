"""The images' health check against a real gRPC server with grpc_health's servicer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ownchat.healthcheck import check, main
from ownchat.testing import free_port

SERVICE = "ownchat.data.v1.DataService"


@pytest.fixture
def server() -> Iterator[tuple[str, health.HealthServicer]]:
    """A loopback server with only the health service; the whole server SERVING."""
    servicer = health.HealthServicer()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        grpc_server.stop(None)


def test_serving_server_exits_0(server: tuple[str, health.HealthServicer]) -> None:
    address, _ = server
    assert check(address) is None
    assert main([address]) == 0


def test_not_serving_service_exits_1(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = server
    assert main([address, "--service", SERVICE]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    assert main([address, "--service", SERVICE]) == 0


def test_whole_server_turning_not_serving_exits_1(
    server: tuple[str, health.HealthServicer],
) -> None:
    address, servicer = server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check(address) == f"{address} is NOT_SERVING"
    assert main([address]) == 1


def test_unknown_service_exits_1(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = server
    assert main([address, "--service", "no.such.Service"]) == 1
    assert "does not know the service 'no.such.Service'" in capsys.readouterr().err


def test_draining_server_exits_1(server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = server
    servicer.enter_graceful_shutdown()
    assert main([address]) == 1


def test_unreachable_server_exits_1_within_the_deadline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert main([address, "--timeout", "2"]) == 1
    assert time.monotonic() - started < 5
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_silent_server_misses_the_deadline() -> None:
    """A server that accepts the connection but never answers: the deadline ends the call."""
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    blocked = futures.Future[None]()

    class Stuck(health_pb2_grpc.HealthServicer):
        def Check(  # noqa: N802 - the generated method name
            self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
        ) -> health_pb2.HealthCheckResponse:
            blocked.result(timeout=10)
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    health_pb2_grpc.add_HealthServicer_to_server(Stuck(), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        started = time.monotonic()
        problem = check(f"127.0.0.1:{port}", timeout=0.5)
        assert time.monotonic() - started < 3
        assert problem is not None and "DEADLINE_EXCEEDED" in problem
    finally:
        blocked.set_result(None)
        grpc_server.stop(None)


def test_bad_timeout_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["127.0.0.1:1", "--timeout", "0"])
    assert exit_info.value.code == 2


def test_runs_as_a_module(server: tuple[str, health.HealthServicer]) -> None:
    """The command line the images' HEALTHCHECK runs."""
    address, servicer = server
    command = [sys.executable, "-m", "ownchat.healthcheck", address, "--timeout", "5"]
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    failed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert f"unhealthy: {address} is NOT_SERVING" in failed.stderr

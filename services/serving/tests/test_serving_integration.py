"""``python -m ownchat_serving`` as a real process: health, auth, restart, clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ownchat.artifacts import ArtifactStore
from ownchat.auth import AUTHORIZATION_KEY, bearer, token_path
from ownchat.common.v1 import common_pb2
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat.testing import free_port
from ownchat_serving.store import DeploymentStore, EngineKind

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name


@dataclass
class Service:
    """A running service process and a channel to it."""

    process: subprocess.Popen[bytes]
    channel: grpc.Channel
    home: Path
    log: Path

    @property
    def stub(self) -> serving_pb2_grpc.ServingServiceStub:
        return serving_pb2_grpc.ServingServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTHORIZATION_KEY, bearer(token_path(self.home).read_text().strip())),)

    def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        status: int = response.status
        return status

    def descendants(self) -> dict[psutil.Process, str]:
        """The service's child processes, by name."""
        found = {}
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                found[child] = child.name()
            except psutil.Error:
                continue
        return found

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    started: list[Service] = []

    def launch(home: Path, ready_within: float = 180.0) -> Service:
        port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("OWNCHAT_") and key != "VLLM_CPU_KVCACHE_SPACE"
        }
        env |= {
            "OWNCHAT_HOME": str(home),
            "OWNCHAT_SERVING_PORT": str(port),
            "OWNCHAT_SERVING_METRICS_PORT": str(free_port()),
            "OWNCHAT_SERVING_KV_CACHE_BYTES": str(32 * 1024**2),
            # No trainer runs here: nothing in these tests resolves a model id.
            "OWNCHAT_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}",
        }
        log = tmp_path / f"serving-{len(started)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "ownchat_serving"], env=env, stdout=sink, stderr=sink
            )
        service = Service(process, grpc.insecure_channel(f"127.0.0.1:{port}"), home, log)
        started.append(service)
        deadline = time.monotonic() + ready_within
        while True:
            if process.poll() is not None:
                pytest.fail(f"the service exited with {process.returncode}:\n{log.read_text()}")
            try:
                if service.health() == health_pb2.HealthCheckResponse.SERVING:
                    return service
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the service was not SERVING in time:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)

    yield launch
    for service in started:
        service.channel.close()
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()


def chat_request(**sampling: float | int) -> serving_pb2.GenerateRequest:
    return serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hello")],
        sampling=serving_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def assert_gone(processes: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 10
    while True:
        alive = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert alive == []


def test_an_empty_service_is_healthy_and_authenticates(start: object, tmp_path: Path) -> None:
    service = start(tmp_path / "home")  # type: ignore[operator]
    assert service.health(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING

    with pytest.raises(grpc.RpcError) as error:
        list(service.stub.Generate(chat_request(), timeout=10))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as error:
        list(service.stub.Generate(chat_request(), metadata=service.metadata, timeout=10))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing is deployed" in error.value.details()

    listing = service.stub.ListDeployments(
        serving_pb2.ListDeploymentsRequest(), metadata=service.metadata, timeout=10
    )
    assert list(listing.deployments) == []

    descendants = service.descendants()
    assert service.stop() == 0, service.log.read_text()[-4000:]
    assert_gone(list(descendants))


def wait_for_health(service: Service, status: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if service.health() == status:
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    return False


def test_the_live_deployment_is_back_before_serving_restarts_and_is_gone_after_sigterm(
    start: object, tmp_path: Path, servable_models: dict[int, Path]
) -> None:
    home = tmp_path / "home"
    digest = ArtifactStore(home / "artifacts").put_tree(servable_models[0]).digest
    store = DeploymentStore(home / "serving" / "serving.db")
    deployment = store.create("tiny:1", EngineKind.VLLM, "alice")
    store.set_artifact(deployment.id, digest)
    store.mark_live(deployment.id)
    store.close()

    started = time.monotonic()
    service = start(home)  # type: ignore[operator]
    print(f"service start with a deployment to reload: {time.monotonic() - started:.1f} s")

    # SERVING means ready: the first reply needs no retry.
    responses = list(
        service.stub.Generate(
            chat_request(temperature=0, max_tokens=5), metadata=service.metadata, timeout=30
        )
    )
    final = responses[-1]
    assert final.finish_reason == serving_pb2.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 5
    assert {r.model_id for r in responses} == {"tiny:1"}

    listing = service.stub.ListDeployments(
        serving_pb2.ListDeploymentsRequest(), metadata=service.metadata, timeout=10
    )
    (live,) = listing.deployments
    assert (live.id, live.state, live.deployed_by) == (
        deployment.id,
        serving_pb2.DEPLOYMENT_STATE_LIVE,
        "alice",
    )

    first_engine = service.descendants()
    (engine_core,) = [p for p, name in first_engine.items() if name.startswith("VLLM::EngineCor")]

    # The engine's process dies: health says so until the engine is started again.
    engine_core.send_signal(signal.SIGKILL)
    assert wait_for_health(service, health_pb2.HealthCheckResponse.NOT_SERVING, 10)
    assert wait_for_health(service, health_pb2.HealthCheckResponse.SERVING, 300), (
        service.log.read_text()[-4000:]
    )
    again = list(
        service.stub.Generate(
            chat_request(temperature=0, max_tokens=5), metadata=service.metadata, timeout=30
        )
    )
    assert [r.text for r in again] == [r.text for r in responses]
    listing = service.stub.ListDeployments(
        serving_pb2.ListDeploymentsRequest(), metadata=service.metadata, timeout=10
    )
    assert listing.deployments[0].restart_count == 1
    # The dead engine's other processes (its worker) are gone too.
    assert_gone([p for p, name in first_engine.items() if "VLLM" in name])

    descendants = service.descendants()
    assert any(name.startswith("VLLM::EngineCor") for name in descendants.values()), descendants
    assert service.stop() == 0, service.log.read_text()[-4000:]
    assert_gone(list(descendants))

"""Service-to-service mutual TLS: the data service and the trainer in the cluster
profile on loopback, each with its own certificate from one CA, the trainer calling
the data service with it. A client with a certificate from that CA gets through,
as does the trainer's own call; no certificate, another CA's and plaintext do not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ownchat.certificates import CertificateAuthority, Identity
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.testing import free_port
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc

pytestmark = pytest.mark.integration

SERVICES = ("data", "trainer")
START_TIMEOUT_SECONDS = 45.0
TOKEN = "mtls-test-token"


def credentials(ca: Path, identity: Identity | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=identity.key.read_bytes() if identity else None,
        certificate_chain=identity.cert.read_bytes() if identity else None,
    )


def health(channel: grpc.Channel) -> str:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@dataclass
class Cluster:
    env: dict[str, str]
    ca: Path
    client: Identity
    stranger: Identity
    logs: dict[str, Path]

    def address(self, service: str) -> str:
        return self.env[f"OWNCHAT_{service.upper()}_ADDRESS"]


def _service_env(base: dict[str, str], service: str, identity: Identity) -> dict[str, str]:
    prefix = f"OWNCHAT_{service.upper()}"
    return {
        **base,
        f"{prefix}_PROFILE": "cluster",
        # The cluster profile would listen on 0.0.0.0; a test stays on loopback.
        f"{prefix}_HOST": "127.0.0.1",
        f"{prefix}_TLS_CERT_FILE": str(identity.cert),
        f"{prefix}_TLS_KEY_FILE": str(identity.key),
        f"{prefix}_TLS_CLIENT_CA_FILE": str(identity.ca),
        # The same certificate for the service's own calls to the others.
        "OWNCHAT_TLS_CA_FILE": str(identity.ca),
        "OWNCHAT_TLS_CERT_FILE": str(identity.cert),
        "OWNCHAT_TLS_KEY_FILE": str(identity.key),
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp_path = tmp_path_factory.mktemp("mtls")
    pki = tmp_path / "pki"
    pki.mkdir()
    authority = CertificateAuthority.create(pki / "ownchat-ca")
    other = CertificateAuthority.create(pki / "other-ca", name="other-ca")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OWNCHAT_")}
    env.update(
        OWNCHAT_HOME=str(tmp_path / "home"),
        OWNCHAT_TOKEN=TOKEN,
        OWNCHAT_TRAINER_TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    for service in SERVICES:
        prefix = f"OWNCHAT_{service.upper()}"
        port = free_port()
        env[f"{prefix}_PORT"] = str(port)
        env[f"{prefix}_METRICS_PORT"] = str(free_port())
        # By name for the data service (the trainer's calls check its DNS SAN),
        # by IP for the trainer (its IP SAN).
        host = "localhost" if service == "data" else "127.0.0.1"
        env[f"{prefix}_ADDRESS"] = f"{host}:{port}"
    processes: list[subprocess.Popen[bytes]] = []
    logs = {service: tmp_path / f"{service}.log" for service in SERVICES}
    try:
        for service in SERVICES:
            # Server and client use, for loopback by name and by address.
            identity = authority.issue(pki, service, ["localhost"], ["127.0.0.1"])
            with logs[service].open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", f"ownchat_{service}"],
                        env=_service_env(env, service, identity),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        result = Cluster(
            env=env,
            ca=authority.cert_path,
            client=authority.issue(pki, "operator", server=False),
            stranger=other.issue(pki, "stranger", server=False),
            logs=logs,
        )
        _wait_until_serving(result, processes)
        yield result
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(cluster: Cluster, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    waiting = set(SERVICES)
    while waiting and time.monotonic() < deadline:
        for service, process in zip(SERVICES, processes, strict=True):
            if process.poll() is not None:
                raise AssertionError(
                    f"{service} exited {process.returncode}:\n{cluster.logs[service].read_text()}"
                )
        for service in sorted(waiting):
            channel_credentials = credentials(cluster.ca, cluster.client)
            with grpc.secure_channel(cluster.address(service), channel_credentials) as channel:
                try:
                    if health(channel) == "SERVING":
                        waiting.discard(service)
                except grpc.RpcError:
                    pass
        time.sleep(0.2)
    if waiting:
        raise AssertionError(
            f"not serving after {START_TIMEOUT_SECONDS} s: {sorted(waiting)}\n"
            + "\n".join(cluster.logs[s].read_text() for s in sorted(waiting))
        )


def test_a_client_with_a_certificate_reaches_both_and_the_trainer_reaches_data(
    cluster: Cluster,
) -> None:
    for service in SERVICES:
        with grpc.secure_channel(
            cluster.address(service), credentials(cluster.ca, cluster.client)
        ) as channel:
            assert health(channel) == "SERVING"

    settings = ClientSettings(
        home=Path(cluster.env["OWNCHAT_HOME"]),
        trainer_address=cluster.address("trainer"),
        tls_ca_file=cluster.ca,
        tls_cert_file=cluster.client.cert,
        tls_key_file=cluster.client.key,
        timeout_seconds=20,
    )
    with open_channel(settings.trainer_address, settings, TOKEN) as channel:
        # The trainer looks the dataset version up in the data service over mTLS:
        # NOT_FOUND is the data service's answer; an unreachable one is UNAVAILABLE.
        with pytest.raises(grpc.RpcError) as error:
            trainer_pb2_grpc.TrainerServiceStub(channel).CreateTrainingJob(
                trainer_pb2.CreateTrainingJobRequest(
                    base_model="smollm2-135m-instruct",
                    dataset_version_id="dsv_nowhere",
                    method=trainer_pb2.TRAINING_METHOD_SFT_LORA,
                )
            )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND, error.value.details()
    assert "dsv_nowhere" in error.value.details()
    calls = [
        json.loads(line)
        for line in cluster.logs["data"].read_text().splitlines()
        if line.startswith("{") and '"rpc"' in line
    ]
    assert any(
        call.get("method", "").endswith("/GetDatasetVersion") and call.get("code") == "NOT_FOUND"
        for call in calls
    ), calls


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("client", ["no-certificate", "other-ca", "plaintext"])
def test_clients_without_a_certificate_from_the_ca_are_refused(
    cluster: Cluster, service: str, client: str
) -> None:
    address = cluster.address(service)
    if client == "plaintext":
        channel = grpc.insecure_channel(address)
    elif client == "no-certificate":
        channel = grpc.secure_channel(address, credentials(cluster.ca))
    else:
        channel = grpc.secure_channel(address, credentials(cluster.ca, cluster.stranger))
    with channel, pytest.raises(grpc.RpcError) as error:
        health(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", SERVICES)
def test_the_health_probe_passes_with_the_client_certificate_only(
    cluster: Cluster, service: str
) -> None:
    """``python -m ownchat.healthcheck`` as an exec probe: it uses the client settings'
    certificate, and without one the server refuses it."""
    from ownchat.healthcheck import check

    address = cluster.address(service)
    assert check(address, credentials=credentials(cluster.ca, cluster.client)) is None
    refused = check(address, timeout=3.0)
    assert refused is not None and "UNAVAILABLE" in refused

    # As the manifests run it: 127.0.0.1 inside the pod, the certificate's name given,
    # the client certificate from the OWNCHAT_TLS_* settings.
    port = address.rpartition(":")[2]
    probe = [sys.executable, "-m", "ownchat.healthcheck", f"127.0.0.1:{port}", "--timeout", "5"]
    environment = {
        **{k: v for k, v in cluster.env.items() if not k.startswith("OWNCHAT_TLS_")},
        "OWNCHAT_TLS_CA_FILE": str(cluster.ca),
        "OWNCHAT_TLS_CERT_FILE": str(cluster.client.cert),
        "OWNCHAT_TLS_KEY_FILE": str(cluster.client.key),
    }
    for server_name, status in (("localhost", 0), ("data.elsewhere", 1)):
        result = subprocess.run(
            [*probe, "--server-name", server_name],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == status, (server_name, result.stderr)


def test_ownchat_status_sees_the_services_with_the_client_certificate(cluster: Cluster) -> None:
    from ownchat.cli.supervisor import service_status

    with_certificate = ClientSettings(
        data_address=cluster.address("data"),
        trainer_address=cluster.address("trainer"),
        tls_ca_file=cluster.ca,
        tls_cert_file=cluster.client.cert,
        tls_key_file=cluster.client.key,
    )
    plaintext = ClientSettings(
        data_address=cluster.address("data"), trainer_address=cluster.address("trainer")
    )
    for service in SERVICES:
        assert service_status(service, with_certificate) == "SERVING"
        assert service_status(service, plaintext) == "UNREACHABLE"

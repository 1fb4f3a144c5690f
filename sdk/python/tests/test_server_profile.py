"""The deployment profile: local defaults, and a cluster server that needs mutual TLS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic_settings import SettingsConfigDict

from ownchat.auth import bearer, load_or_create_token
from ownchat.certificates import CertificateAuthority
from ownchat.config import ClientSettings, ServerSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.server import SecuritySettingsError, ServiceSpec, check_security, start_threaded_server

DATA_SERVICE = data_pb2.DESCRIPTOR.services_by_name["DataService"].full_name


class ExampleSettings(ServerSettings):
    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_EXAMPLE_", extra="ignore", populate_by_name=True
    )
    toml_table: ClassVar[str | None] = "example"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE", "CONFIG"):
        monkeypatch.delenv(f"OWNCHAT_{name}", raising=False)
    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path / "home"))


def test_local_is_the_default_loopback_with_reflection() -> None:
    settings = ExampleSettings()
    assert (settings.profile, settings.host, settings.reflection) == ("local", "127.0.0.1", True)
    check_security(settings)  # no TLS needed


def test_cluster_listens_everywhere_without_reflection_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OWNCHAT_EXAMPLE_PROFILE", "cluster")
    settings = ExampleSettings()
    assert (settings.host, settings.reflection) == ("0.0.0.0", False)

    monkeypatch.setenv("OWNCHAT_EXAMPLE_HOST", "10.1.2.3")
    monkeypatch.setenv("OWNCHAT_EXAMPLE_REFLECTION", "true")
    settings = ExampleSettings()
    assert (settings.host, settings.reflection) == ("10.1.2.3", True)

    # One top-level key of the config file sets the profile of every service.
    monkeypatch.delenv("OWNCHAT_EXAMPLE_PROFILE")
    config = tmp_path / "config.toml"
    config.write_text('profile = "cluster"\n')
    monkeypatch.setenv("OWNCHAT_CONFIG", str(config))
    assert ExampleSettings().profile == "cluster"


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        ExampleSettings(profile="production")  # type: ignore[arg-type]


def _spec() -> ServiceSpec:
    return ServiceSpec(
        "data",
        [DATA_SERVICE],
        lambda server: data_pb2_grpc.add_DataServiceServicer_to_server(
            data_pb2_grpc.DataServiceServicer(),  # type: ignore[abstract]
            server,
        ),
    )


def test_a_cluster_server_without_tls_refuses_to_start_naming_the_settings() -> None:
    settings = ExampleSettings(profile="cluster", port=0)
    with pytest.raises(SecuritySettingsError) as error:
        start_threaded_server(_spec(), settings)
    message = str(error.value)
    for name in (
        "OWNCHAT_EXAMPLE_PROFILE",
        "OWNCHAT_EXAMPLE_TLS_CERT_FILE",
        "OWNCHAT_EXAMPLE_TLS_KEY_FILE",
        "OWNCHAT_EXAMPLE_TLS_CLIENT_CA_FILE",
        "OWNCHAT_TLS_CA_FILE",
        "OWNCHAT_TLS_CERT_FILE",
        "OWNCHAT_TLS_KEY_FILE",
    ):
        assert name in message


def test_a_cluster_server_needs_client_certificates_for_its_own_calls(
    certificates: dict[str, Path],
) -> None:
    settings = ExampleSettings(
        profile="cluster",
        tls_cert_file=certificates["cert"],
        tls_key_file=certificates["key"],
        tls_client_ca_file=certificates["ca"],
    )
    with pytest.raises(SecuritySettingsError) as error:
        check_security(settings, ClientSettings(tls_ca_file=certificates["ca"]))
    message = str(error.value)
    assert "OWNCHAT_TLS_CERT_FILE" in message and "OWNCHAT_TLS_KEY_FILE" in message
    assert "OWNCHAT_EXAMPLE" not in message.split("not set:")[1]


@pytest.mark.parametrize(
    "files",
    [("cert",), ("key",), ("ca",), ("key", "ca")],
    ids=["cert-only", "key-only", "client-ca-only", "no-cert"],
)
def test_half_a_tls_configuration_is_refused_in_any_profile(
    certificates: dict[str, Path], files: tuple[str, ...]
) -> None:
    fields = {"cert": "tls_cert_file", "key": "tls_key_file", "ca": "tls_client_ca_file"}
    settings = ExampleSettings.model_validate({fields[f]: certificates[f] for f in files})
    with pytest.raises(SecuritySettingsError, match="OWNCHAT_EXAMPLE_TLS_CERT_FILE"):
        check_security(settings)


def test_a_cluster_server_with_mutual_tls_serves_health_but_no_reflection(
    certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWNCHAT_TLS_CA_FILE", str(certificates["ca"]))
    monkeypatch.setenv("OWNCHAT_TLS_CERT_FILE", str(certificates["cert"]))
    monkeypatch.setenv("OWNCHAT_TLS_KEY_FILE", str(certificates["key"]))
    settings = ExampleSettings(
        profile="cluster",
        host="127.0.0.1",
        port=0,
        tls_cert_file=certificates["cert"],
        tls_key_file=certificates["key"],
        tls_client_ca_file=certificates["ca"],
    )
    running = start_threaded_server(_spec(), settings)
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=certificates["ca"].read_bytes(),
            private_key=certificates["key"].read_bytes(),
            certificate_chain=certificates["cert"].read_bytes(),
        )
        token = load_or_create_token(settings.home)
        with grpc.secure_channel(f"127.0.0.1:{running.port}", credentials) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                list(
                    reflection.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                        metadata=[("authorization", bearer(token))],
                        timeout=10,
                    )
                )
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.server.stop(0)


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """A CA and one certificate (127.0.0.1, server and client use) signed by it."""
    authority = CertificateAuthority.create(tmp_path / "ca")
    identity = authority.issue(tmp_path, "example", ip_addresses=["127.0.0.1"])
    return {"ca": identity.ca, "cert": identity.cert, "key": identity.key}


def test_a_service_with_half_a_tls_configuration_exits_with_one_line(tmp_path: Path) -> None:
    """The services' first step: no traceback, the settings to set, exit status 2."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("OWNCHAT_") and key != "PYTHONPATH"
    }
    (tmp_path / "empty.toml").write_text("")
    environment.update(
        OWNCHAT_HOME=str(tmp_path / "home"),
        OWNCHAT_DATA_PROFILE="cluster",
        OWNCHAT_CONFIG=str(tmp_path / "empty.toml"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "ownchat_data"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: the cluster profile"), result.stderr
    assert "Traceback" not in result.stderr
    assert "OWNCHAT_DATA_TLS_CERT_FILE" in result.stderr
    # Refused before the service touched its state: no store was created.
    assert not (tmp_path / "home" / "data").exists()


def test_the_gateway_in_the_cluster_profile_needs_only_client_certificates(
    certificates: dict[str, Path],
) -> None:
    settings = ExampleSettings(profile="cluster")
    with pytest.raises(SecuritySettingsError) as error:
        check_security(settings, ClientSettings(), serves_grpc=False)
    message = str(error.value).split("not set:")[1]
    assert "OWNCHAT_TLS_CA_FILE" in message and "OWNCHAT_EXAMPLE" not in message
    client = ClientSettings(
        tls_ca_file=certificates["ca"],
        tls_cert_file=certificates["cert"],
        tls_key_file=certificates["key"],
    )
    check_security(settings, client, serves_grpc=False)


def test_cluster_tls_files_that_cannot_be_read_are_named(
    certificates: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "not-mounted" / "tls.key"
    settings = ExampleSettings(
        profile="cluster",
        tls_cert_file=certificates["cert"],
        tls_key_file=missing,
        tls_client_ca_file=certificates["ca"],
    )
    client = ClientSettings(
        tls_ca_file=certificates["ca"],
        tls_cert_file=certificates["cert"],
        tls_key_file=tmp_path,  # a directory
    )
    with pytest.raises(SecuritySettingsError) as error:
        check_security(settings, client)
    message = str(error.value)
    assert f"OWNCHAT_EXAMPLE_TLS_KEY_FILE={missing} (No such file or directory)" in message
    assert f"OWNCHAT_TLS_KEY_FILE={tmp_path} (Is a directory)" in message
    assert "TLS_CERT_FILE" not in message

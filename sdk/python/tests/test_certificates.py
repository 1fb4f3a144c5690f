"""ownchat certs: the CA and the services' certificate, checked with cryptography's
own verifier and by a TLS handshake between a real gRPC server and client."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from ownchat.certificates import (
    CA_CERT,
    CA_KEY,
    TLS_CERT,
    TLS_KEY,
    CertificateAuthority,
    CertificateError,
    Identity,
    create_service_certificates,
    renew_service_certificates,
    service_dns_names,
)
from ownchat.cli.main import app
from ownchat.healthcheck import check


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _dns_names(certificate: x509.Certificate) -> list[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(names.get_values_for_type(x509.DNSName))


def _verify_as_server(identity: Identity, name: str) -> None:
    """cryptography's RFC 5280 path validation of the certificate for ``name``."""
    store = Store([_certificate(identity.ca)])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(_certificate(identity.cert), [])


def test_create_writes_a_ca_and_an_identity_for_every_service_name(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    identity = create_service_certificates(folder, namespace="team-a")
    assert identity == Identity(folder / TLS_CERT, folder / TLS_KEY, folder / CA_CERT)
    assert sorted(path.name for path in folder.iterdir()) == [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY]
    # Keys are the owner's alone from the moment they exist.
    for key in (CA_KEY, TLS_KEY):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600

    certificate = _certificate(identity.cert)
    names = _dns_names(certificate)
    assert names == service_dns_names("team-a")
    for name in ("data", "trainer.team-a.svc", "serving.team-a.svc.cluster.local", "localhost"):
        assert name in names
        _verify_as_server(identity, name)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ca = _certificate(identity.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert certificate.not_valid_after_utc <= ca.not_valid_after_utc


def test_a_name_the_certificate_does_not_carry_fails_verification(tmp_path: Path) -> None:
    identity = create_service_certificates(tmp_path)
    with pytest.raises(x509.verification.VerificationError):
        _verify_as_server(identity, "data.elsewhere.svc")


def test_create_refuses_to_replace_existing_files(tmp_path: Path) -> None:
    create_service_certificates(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(CertificateError, match="refusing to replace"):
        create_service_certificates(tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_renew_issues_a_new_key_from_the_same_ca(tmp_path: Path) -> None:
    first = create_service_certificates(tmp_path)
    ca_before = first.ca.read_bytes()
    key_before = first.key.read_bytes()
    renewed = renew_service_certificates(tmp_path, extra_names=["ownchat.example.com"])
    assert renewed.ca.read_bytes() == ca_before
    assert renewed.key.read_bytes() != key_before
    assert "ownchat.example.com" in _dns_names(_certificate(renewed.cert))
    _verify_as_server(renewed, "ownchat.example.com")
    # No temporary file is left behind by the atomic replacement.
    assert sorted(path.name for path in tmp_path.iterdir()) == [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY]


def test_renew_without_a_ca_or_with_a_foreign_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no CA"):
        renew_service_certificates(tmp_path)
    create_service_certificates(tmp_path / "one")
    create_service_certificates(tmp_path / "two")
    (tmp_path / "one" / CA_KEY).write_bytes((tmp_path / "two" / CA_KEY).read_bytes())
    with pytest.raises(CertificateError, match="is not the key of"):
        renew_service_certificates(tmp_path / "one")


def test_a_server_certificate_needs_a_name(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path)
    with pytest.raises(ValueError, match="DNS name or IP"):
        authority.issue(tmp_path, "nameless")
    client = authority.issue(tmp_path, "operator", server=False)
    usages = _certificate(client.cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usages.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.fixture
def mtls_server(tmp_path: Path) -> Iterator[tuple[str, Identity]]:
    """A loopback health server requiring client certificates from the created CA."""
    identity = create_service_certificates(tmp_path / "tls")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(identity.key.read_bytes(), identity.cert.read_bytes())],
        root_certificates=identity.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield f"127.0.0.1:{port}", identity
    finally:
        server.stop(None)


def _client_credentials(identity: Identity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca.read_bytes(),
        private_key=identity.key.read_bytes(),
        certificate_chain=identity.cert.read_bytes(),
    )


def test_the_identity_serves_and_calls_over_mutual_tls(
    mtls_server: tuple[str, Identity],
) -> None:
    address, identity = mtls_server
    credentials = _client_credentials(identity)
    # The probe in the pod dials 127.0.0.1 and checks the Service's name.
    assert check(address, credentials=credentials, server_name="data") is None
    assert check(address, credentials=credentials) is None  # the IP address is named too
    refused = check(address, credentials=credentials, server_name="data.elsewhere", timeout=3)
    assert refused is not None and "UNAVAILABLE" in refused


def test_cli_create_then_renew(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    runner = CliRunner()
    created = runner.invoke(app, ["certs", "create", str(folder), "--namespace", "prod"])
    assert created.exit_code == 0, created.output
    assert "kubectl -n prod create secret generic ownchat-tls" in created.output
    assert "trainer.prod.svc" in _dns_names(_certificate(folder / TLS_CERT))

    again = runner.invoke(app, ["certs", "create", str(folder)])
    assert again.exit_code == 1
    assert "refusing to replace" in again.output

    renewed = runner.invoke(app, ["certs", "renew", str(folder), "--namespace", "prod"])
    assert renewed.exit_code == 0, renewed.output
    assert "renewed" in renewed.output

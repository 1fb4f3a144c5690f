"""A private certificate authority for mutual TLS between the services.

The cluster profile (``OWNCHAT_<SERVICE>_PROFILE=cluster``) refuses to start
without a server certificate, the CA its clients must chain to, and a client
certificate for its own calls. ``ownchat certs create DIR`` writes all of it in
the layout cert-manager and ``kubectl create secret tls`` use, so the same files
feed the Kubernetes Secret ``ownchat-tls`` and the compose file's secrets:

- ``ca.crt``: the CA every service trusts (servers and clients alike);
- ``ca.key``: the CA's key, kept by the operator, never mounted in a pod;
- ``tls.crt`` / ``tls.key``: one identity every service presents, as a server
  (its names: each Service's short and namespaced DNS names, ``localhost``,
  ``127.0.0.1``) and as a client.

``ownchat certs renew DIR`` issues a new identity from the same CA, which is
how certificates are rotated without a restart of trust. An organisation with
its own PKI (cert-manager, Vault) issues the same three files instead.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The names the services call each other by: the Kubernetes Services and the
# compose services of deploy/ (ownchat.config.ClientSettings' *_address hosts).
SERVICE_NAMES = ("data", "trainer", "evaluator", "serving", "gateway")
DEFAULT_NAMESPACE = "ownchat"
DEFAULT_VALID_DAYS = 365
CA_VALID_DAYS = 3650

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

# Servers take their clock from NTP; a freshly issued certificate must not be
# "not yet valid" on a node a few seconds behind.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


class CertificateError(RuntimeError):
    """Files that would be overwritten, or a CA that cannot be read; the message says which."""


@dataclass(frozen=True)
class Identity:
    """A certificate, its private key and the CA it chains to, as PEM files."""

    cert: Path
    key: Path
    ca: Path


def service_dns_names(
    namespace: str = DEFAULT_NAMESPACE, services: Sequence[str] = SERVICE_NAMES
) -> list[str]:
    """Every name a service may be dialled by: ``data``, ``data.<ns>``,
    ``data.<ns>.svc``, ``data.<ns>.svc.cluster.local``... and ``localhost``."""
    names = []
    for service in services:
        names += [
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local",
        ]
    return [*names, "localhost"]


class CertificateAuthority:
    """An ECDSA P-256 CA whose certificate and key are PEM files in one folder."""

    def __init__(
        self, folder: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ):
        self.folder = folder
        self.certificate = certificate
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.folder / CA_CERT

    @classmethod
    def create(
        cls, folder: Path, name: str = "ownchat-ca", valid_days: int = CA_VALID_DAYS
    ) -> CertificateAuthority:
        """A new CA written to ``folder/ca.crt`` and ``folder/ca.key``; refuses to replace one."""
        _refuse_existing(folder, (CA_CERT, CA_KEY))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        _write_private(folder / CA_KEY, _key_pem(key))
        _write_public(folder / CA_CERT, certificate.public_bytes(serialization.Encoding.PEM))
        return cls(folder, certificate, key)

    @classmethod
    def load(cls, folder: Path) -> CertificateAuthority:
        """The CA kept in ``folder`` (``ca.crt`` and ``ca.key``)."""
        try:
            certificate = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
        except FileNotFoundError as error:
            raise CertificateError(
                f"no CA in {folder}: {Path(error.filename).name} is missing"
                " (ownchat certs create makes one)"
            ) from None
        except ValueError as error:
            raise CertificateError(f"cannot read the CA in {folder}: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or _public_der(
            key.public_key()
        ) != _public_der(certificate.public_key()):
            raise CertificateError(f"{folder / CA_KEY} is not the key of {folder / CA_CERT}")
        return cls(folder, certificate, key)

    def issue(
        self,
        folder: Path,
        stem: str,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        *,
        server: bool = True,
        client: bool = True,
        valid_days: int = DEFAULT_VALID_DAYS,
        replace: bool = False,
    ) -> Identity:
        """A new key and certificate, ``folder/<stem>.crt`` and ``.key``, signed by this CA.

        ``server`` certificates name ``dns_names`` and ``ip_addresses`` as their
        subject alternative names (what a client checks); ``client`` ones may log
        in to an mTLS server. Existing files are replaced only when ``replace``,
        and then atomically, so a reader sees the old pair or the new one.
        """
        if not (server or client):
            raise ValueError("a certificate must be good for server or client use")
        dns = list(dict.fromkeys(dns_names))
        ips = [ipaddress.ip_address(address) for address in dict.fromkeys(ip_addresses)]
        if server and not (dns or ips):
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        if not replace:
            _refuse_existing(folder, (cert_path.name, key_path.name))
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        common_name = dns[0] if dns else stem
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(
                min(now + datetime.timedelta(days=valid_days), self.certificate.not_valid_after_utc)
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if dns or ips:
            names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
            names += [x509.IPAddress(address) for address in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        folder.mkdir(parents=True, exist_ok=True)
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        return Identity(cert_path, key_path, self.cert_path)


def create_service_certificates(
    folder: Path,
    namespace: str = DEFAULT_NAMESPACE,
    extra_names: Sequence[str] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
) -> Identity:
    """A new CA and the services' shared identity (``tls.crt``, ``tls.key``) in ``folder``."""
    _refuse_existing(folder, (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY))
    authority = CertificateAuthority.create(folder)
    return _issue_service_identity(authority, namespace, extra_names, valid_days, replace=False)


def renew_service_certificates(
    folder: Path,
    namespace: str = DEFAULT_NAMESPACE,
    extra_names: Sequence[str] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
) -> Identity:
    """A new key and certificate for the services from the CA already in ``folder``."""
    authority = CertificateAuthority.load(folder)
    return _issue_service_identity(authority, namespace, extra_names, valid_days, replace=True)


def _issue_service_identity(
    authority: CertificateAuthority,
    namespace: str,
    extra_names: Sequence[str],
    valid_days: int,
    *,
    replace: bool,
) -> Identity:
    return authority.issue(
        authority.folder,
        "tls",
        [*service_dns_names(namespace), *extra_names],
        ["127.0.0.1"],
        valid_days=valid_days,
        replace=replace,
    )


def _refuse_existing(folder: Path, names: Iterable[str]) -> None:
    existing = [name for name in names if (folder / name).exists()]
    if existing:
        raise CertificateError(
            f"{folder} already holds {', '.join(existing)}; refusing to replace them"
            " (ownchat certs renew issues a new service certificate from the same CA)"
        )


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, content: bytes) -> None:
    _write_atomically(path, content, 0o600)


def _write_public(path: Path, content: bytes) -> None:
    _write_atomically(path, content, 0o644)


def _write_atomically(path: Path, content: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    # The mode is set at creation: a private key is never readable by others, not even briefly.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

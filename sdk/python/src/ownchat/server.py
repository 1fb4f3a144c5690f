"""Bootstrap shared by every ownchat gRPC server.

A server gets the bearer-token interceptor, ``grpc.health.v1`` health (NOT_SERVING
until its store or model is ready), reflection, message size limits, optional
TLS or mTLS, Prometheus metrics, JSON logs, and a graceful drain on SIGTERM or
SIGINT: health turns NOT_SERVING, new calls are refused, calls in flight get
``grace_seconds`` to finish.

Before it binds, a server checks its TLS settings (:func:`check_security`):
half a TLS configuration is an error in any profile, and the ``cluster``
profile refuses to start without mutual TLS both on its own port and on the
calls it makes to other services.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ownchat.auth import load_or_create_token
from ownchat.config import ClientSettings, ServerSettings
from ownchat.interceptors import AsyncServerInterceptor, ServerInterceptor
from ownchat.logs import configure_logging
from ownchat.metrics import serve_metrics

logger = logging.getLogger("ownchat.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServiceSpec:
    """What a service hands the bootstrap: its names and how to add its servicer."""

    short_name: str
    full_names: Sequence[str]
    add_servicers: Callable[[grpc.Server], None]


class SecuritySettingsError(RuntimeError):
    """TLS settings a server will not start with; the message names the settings to set."""


# What the cluster profile requires: the server's certificate and key, the CA its
# clients' certificates must chain to, and the same three for its own calls out.
CLUSTER_SERVER_TLS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
CLUSTER_CLIENT_TLS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def check_security(
    settings: ServerSettings,
    client: ClientSettings | None = None,
    *,
    serves_grpc: bool = True,
    check_files: bool = True,
) -> None:
    """Refuses TLS settings that would leave a port less protected than configured.

    Any profile: a certificate without its key (or the reverse), or a client CA
    without a server certificate, would silently serve plaintext. The cluster
    profile: all of :data:`CLUSTER_SERVER_TLS` on the server and, since every
    service also calls others, :data:`CLUSTER_CLIENT_TLS` in ``client`` (the
    ``OWNCHAT_TLS_*`` client settings when not given). ``serves_grpc=False`` is
    the gateway: its HTTP port is behind the ingress, which terminates TLS, so
    only its calls to the gRPC services are checked. With ``check_files`` (the
    default) the cluster profile's files must also be readable files here.
    """
    kind = type(settings)
    if serves_grpc and (
        (settings.tls_cert_file is None) != (settings.tls_key_file is None)
        or (settings.tls_client_ca_file is not None and settings.tls_cert_file is None)
    ):
        raise SecuritySettingsError(
            "incomplete TLS settings: set both "
            f"{kind.env_name('tls_cert_file')} and {kind.env_name('tls_key_file')}"
            f" (and {kind.env_name('tls_client_ca_file')} for mutual TLS), or none of them"
        )
    if settings.profile != "cluster":
        return
    client = client if client is not None else ClientSettings(home=settings.home)
    server_fields = CLUSTER_SERVER_TLS if serves_grpc else ()
    missing = [kind.env_name(f) for f in server_fields if getattr(settings, f) is None]
    missing += [type(client).env_name(f) for f in CLUSTER_CLIENT_TLS if getattr(client, f) is None]
    if missing:
        table = f"[{kind.toml_table}] table" if kind.toml_table else "top level"
        raise SecuritySettingsError(
            f"the cluster profile ({kind.env_name('profile')}) needs mutual TLS; not set: "
            f"{', '.join(missing)} (environment variables; or the same keys without the "
            f"prefix in the config file: server ones in its {table}, client ones at its "
            "top level)"
        )
    if not check_files:
        return
    # A Secret that is not mounted, or mounted unreadable, is named here rather than
    # surfacing as a traceback from the TLS library.
    unreadable = [
        f"{type(owner).env_name(field)}={path} ({_unreadable(path)})"
        for owner, fields in ((settings, server_fields), (client, CLUSTER_CLIENT_TLS))
        for field in fields
        if (path := getattr(owner, field)) is not None and _unreadable(path)
    ]
    if unreadable:
        raise SecuritySettingsError(f"TLS files that cannot be read: {'; '.join(unreadable)}")


def _unreadable(path: Path) -> str:
    """Why ``path`` cannot be read, or "" when it can."""
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        return error.strerror or type(error).__name__
    return ""


def exit_if_insecure(settings: ServerSettings, *, serves_grpc: bool = True) -> None:
    """:func:`check_security` as a service's first step: a refusal is one line on
    stderr and exit status 2, before the service opens its store or resumes work."""
    try:
        check_security(settings, serves_grpc=serves_grpc)
    except SecuritySettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def _bind(server: grpc.Server | aio.Server, settings: ServerSettings) -> int:
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert_file and settings.tls_key_file:
        key = settings.tls_key_file.read_bytes()
        cert = settings.tls_cert_file.read_bytes()
        client_ca = (
            settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
        )
        credentials = grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    return port


def _add_common(
    server: grpc.Server | aio.Server,
    spec: ServiceSpec,
    settings: ServerSettings,
    health_servicer: health.HealthServicer | health.aio.HealthServicer,
) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    spec.add_servicers(server)  # type: ignore[arg-type]
    if settings.reflection:
        reflection.enable_server_reflection(
            (*spec.full_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )


def mark_serving(health_servicer: health.HealthServicer, spec: ServiceSpec) -> None:
    """Turns health SERVING for the server and each of its services."""
    for name in ("", *spec.full_names):
        health_servicer.set(name, SERVING)


async def mark_serving_async(health_servicer: health.aio.HealthServicer, spec: ServiceSpec) -> None:
    """Turns health SERVING on an asyncio server."""
    for name in ("", *spec.full_names):
        await health_servicer.set(name, SERVING)


def announce(settings: ServerSettings, port: int) -> None:
    """Starts the metrics endpoint and logs where the server listens."""
    metrics_port = serve_metrics(settings.host, settings.metrics_port)
    logger.info(
        "listening",
        extra={
            "address": f"{settings.host}:{port}",
            "port": port,
            "metrics_port": metrics_port,
            "tls": bool(settings.tls_cert_file),
            "mtls": bool(settings.tls_client_ca_file),
            "profile": settings.profile,
        },
    )


@dataclass
class RunningServer:
    """A started server, its health servicer and the port it listens on."""

    server: grpc.Server
    health: health.HealthServicer
    port: int


def start_threaded_server(spec: ServiceSpec, settings: ServerSettings) -> RunningServer:
    """Builds, binds and starts a threaded server; health turns SERVING."""
    check_security(settings)
    token = load_or_create_token(settings.home, settings.token)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers),
        interceptors=[ServerInterceptor(token)],
        options=_options(settings),
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", *spec.full_names):
        health_servicer.set(name, NOT_SERVING)
    _add_common(server, spec, settings, health_servicer)
    port = _bind(server, settings)
    server.start()
    mark_serving(health_servicer, spec)
    return RunningServer(server, health_servicer, port)


def run_threaded_server(
    spec: ServiceSpec,
    settings: ServerSettings,
    on_shutdown: Callable[[], None] | None = None,
) -> None:
    """Runs a control-plane server until SIGTERM or SIGINT, then drains it."""
    configure_logging(spec.short_name, settings.log_level)
    running = start_threaded_server(spec, settings)
    announce(settings, running.port)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    logger.info("draining", extra={"grace_seconds": settings.grace_seconds})
    running.health.enter_graceful_shutdown()
    running.server.stop(settings.grace_seconds).wait()
    if on_shutdown is not None:
        on_shutdown()
    logger.info("stopped")


@dataclass
class RunningAsyncServer:
    """A started asyncio server, its health servicer and the port it listens on."""

    server: aio.Server
    health: health.aio.HealthServicer
    port: int


async def start_async_server(spec: ServiceSpec, settings: ServerSettings) -> RunningAsyncServer:
    """Builds, binds and starts a ``grpc.aio`` server; health stays NOT_SERVING."""
    check_security(settings)
    token = load_or_create_token(settings.home, settings.token)
    server = aio.server(interceptors=[AsyncServerInterceptor(token)], options=_options(settings))
    health_servicer = health.aio.HealthServicer()
    for name in ("", *spec.full_names):
        await health_servicer.set(name, NOT_SERVING)
    _add_common(server, spec, settings, health_servicer)
    port = _bind(server, settings)
    await server.start()
    return RunningAsyncServer(server, health_servicer, port)

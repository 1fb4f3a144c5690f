"""Typed client of the ownchat services.

Every call carries the bearer token and a request id, and every unary call a
deadline (``timeout_seconds`` unless the caller passes one)::

    from ownchat.client import OwnchatClient
    client = OwnchatClient.from_settings()
    version = client.data.GetDatasetVersion(GetDatasetVersionRequest(dataset_version_id="dsv_..."))
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from ownchat.auth import AUTHORIZATION_KEY, bearer, load_or_create_token
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2_grpc
from ownchat.evaluator.v1 import evaluator_pb2_grpc
from ownchat.interceptors import REQUEST_ID_KEY
from ownchat.serving.v1 import serving_pb2_grpc
from ownchat.trainer.v1 import trainer_pb2_grpc

SERVICES = ("data", "trainer", "evaluator", "serving")


class _ClientCallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: list[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _AuthInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token, a request id and, for unary calls, a default deadline."""

    def __init__(self, token: str, default_timeout: float) -> None:
        self._token = token
        self._default_timeout = default_timeout

    def _details(self, details: Any, unary: bool) -> _ClientCallDetails:
        metadata = list(details.metadata or [])
        keys = {key for key, _ in metadata}
        if AUTHORIZATION_KEY not in keys:
            metadata.append((AUTHORIZATION_KEY, bearer(self._token)))
        if REQUEST_ID_KEY not in keys:
            metadata.append((REQUEST_ID_KEY, uuid.uuid4().hex))
        timeout = details.timeout
        if timeout is None and unary:
            timeout = self._default_timeout
        return _ClientCallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details, True), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details, False), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._details(details, False), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._details(details, False), requests)


CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def channel_credentials(settings: ClientSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials when a CA is configured (with a client certificate for mTLS)."""
    if settings.tls_ca_file is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca_file.read_bytes(),
        private_key=settings.tls_key_file.read_bytes() if settings.tls_key_file else None,
        certificate_chain=settings.tls_cert_file.read_bytes() if settings.tls_cert_file else None,
    )


def open_channel(address: str, settings: ClientSettings, token: str) -> grpc.Channel:
    """A channel to one address that authenticates every call."""
    credentials = channel_credentials(settings)
    if credentials is None:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return grpc.intercept_channel(channel, _AuthInterceptor(token, settings.timeout_seconds))


class OwnchatClient:
    """Stubs of the four gRPC services over authenticated channels."""

    def __init__(self, settings: ClientSettings, token: str) -> None:
        self.settings = settings
        self.token = token
        self._channels = {
            name: open_channel(settings.address(name), settings, token) for name in SERVICES
        }
        self.data = data_pb2_grpc.DataServiceStub(self._channels["data"])
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self._channels["trainer"])
        self.evaluator = evaluator_pb2_grpc.EvaluatorServiceStub(self._channels["evaluator"])
        self.serving = serving_pb2_grpc.ServingServiceStub(self._channels["serving"])

    @classmethod
    def from_settings(cls, settings: ClientSettings | None = None) -> OwnchatClient:
        """A client configured from the environment and the home's token."""
        settings = settings or ClientSettings()
        return cls(settings, load_or_create_token(settings.home, settings.token))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> OwnchatClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

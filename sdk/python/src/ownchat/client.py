"""Typed client of the ownchat services.

Every call carries the bearer token and a request id, and every unary call a
deadline (``timeout_seconds`` unless the caller passes one)::

    from ownchat.client import OwnchatClient
    client = OwnchatClient.from_settings()
    version = client.data.GetDatasetVersion(GetDatasetVersionRequest(dataset_version_id="dsv_..."))

Streaming calls get no default deadline: each caller passes one sized to its
stream (an upload, an export, a reply). The one stream without a deadline is the
CLI following a training job's events, which lasts as long as the job.

Channels (:data:`CHANNEL_OPTIONS`, also used by the gateway's and serving's
``grpc.aio`` channels) retry a call that fails UNAVAILABLE up to
:data:`RETRY_MAX_ATTEMPTS` times in all, with jittered exponential backoff and
within the call's one deadline, but only for the methods :func:`is_retryable`
picks from the services' descriptors: never one that could act twice.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2

from ownchat.auth import AUTHORIZATION_KEY, bearer, load_or_create_token
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.interceptors import REQUEST_ID_KEY
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc

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


# The rule for retries. A method is retried on UNAVAILABLE when it is not client
# streaming (an upload is never replayed) and either its proto declares
# ``option idempotency_level = NO_SIDE_EFFECTS`` (or ``IDEMPOTENT``), or its name
# starts with one of these verbs, which in ownchat's API only read or compute:
# Get, List, Preview (samples), Lint (token counts), Compare (two runs), Check
# (the promotion gate; health), Render (a report). Not Export (ExportFeedback
# writes dataset versions), not Create even with an idempotency key (a key is
# optional, and the retry policy cannot see the request), not Next (leases).
READ_ONLY_VERBS = frozenset({"Get", "List", "Preview", "Lint", "Compare", "Check", "Render"})
_IDEMPOTENT_LEVELS = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)
RETRY_MAX_ATTEMPTS = 4

# Every gRPC service a client of ownchat calls.
SERVICE_DESCRIPTORS: tuple[ServiceDescriptor, ...] = (
    data_pb2.DESCRIPTOR.services_by_name["DataService"],
    trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"],
    serving_pb2.DESCRIPTOR.services_by_name["ServingService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)


def is_retryable(method: MethodDescriptor) -> bool:
    """Whether a failed call of this method may be sent again (see the rule above)."""
    if method.client_streaming:
        return False
    if method.GetOptions().idempotency_level in _IDEMPOTENT_LEVELS:
        return True
    verb = re.match(r"[A-Z][a-z]*", method.name)
    return verb is not None and verb.group() in READ_ONLY_VERBS


def retryable_methods(
    services: Iterable[ServiceDescriptor] = SERVICE_DESCRIPTORS,
) -> list[tuple[str, str]]:
    """(full service name, method name) of every retryable method."""
    return [
        (service.full_name, method.name)
        for service in services
        for method in service.methods
        if is_retryable(method)
    ]


def service_config(services: Iterable[ServiceDescriptor] = SERVICE_DESCRIPTORS) -> str:
    """The gRPC service config (JSON) with the retry policy for these services."""
    names = [
        {"service": service, "method": method} for service, method in retryable_methods(services)
    ]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": RETRY_MAX_ATTEMPTS,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            # Retries stop while more than half of a channel's recent calls fail.
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", service_config()),
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

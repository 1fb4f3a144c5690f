"""The gateway's gRPC client of the serving service (grpc.aio).

Every call carries the bearer token, the request id and a deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from grpc import aio

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.client import CHANNEL_OPTIONS, channel_credentials
from ownchat.config import ClientSettings
from ownchat.interceptors import REQUEST_ID_KEY
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc

GenerateCall: TypeAlias = aio.UnaryStreamCall[
    serving_pb2.GenerateRequest, serving_pb2.GenerateResponse
]

# Enough for any real deployment history; /v1/models only needs the live ones,
# which serving lists first (newest first).
_MAX_DEPLOYMENT_PAGES = 20


class ServingUpstream:
    """Authenticated calls to ``ownchat.serving.v1.ServingService``."""

    def __init__(self, client: ClientSettings, token: str, timeout_seconds: float) -> None:
        credentials = channel_credentials(client)
        if credentials is None:
            self._channel = aio.insecure_channel(client.serving_address, options=CHANNEL_OPTIONS)
        else:
            self._channel = aio.secure_channel(
                client.serving_address, credentials, options=CHANNEL_OPTIONS
            )
        self._stub = serving_pb2_grpc.ServingServiceStub(self._channel)
        self._token = token
        self._timeout = timeout_seconds

    def _metadata(self, request_id: str) -> Sequence[tuple[str, str]]:
        return ((AUTHORIZATION_KEY, bearer(self._token)), (REQUEST_ID_KEY, request_id))

    def generate(self, request: serving_pb2.GenerateRequest, request_id: str) -> GenerateCall:
        """Starts a Generate stream; the deadline covers the whole reply."""
        call: GenerateCall = self._stub.Generate(
            request, timeout=self._timeout, metadata=self._metadata(request_id)
        )
        return call

    async def list_deployments(self, request_id: str) -> list[serving_pb2.Deployment]:
        """Every deployment serving knows, newest first."""
        deployments: list[serving_pb2.Deployment] = []
        token = ""
        for _ in range(_MAX_DEPLOYMENT_PAGES):
            response: serving_pb2.ListDeploymentsResponse = await self._stub.ListDeployments(
                serving_pb2.ListDeploymentsRequest(page_size=100, page_token=token),
                timeout=self._timeout,
                metadata=self._metadata(request_id),
            )
            deployments.extend(response.deployments)
            token = response.next_page_token
            if not token:
                break
        return deployments

    async def close(self) -> None:
        """Closes the channel, cancelling calls in flight."""
        await self._channel.close()

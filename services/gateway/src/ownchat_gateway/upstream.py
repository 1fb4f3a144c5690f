"""The gateway's gRPC clients (grpc.aio) of the serving and evaluator services.

Every call carries the bearer token, the request id and a deadline. A channel
is opened on its first call, inside the event loop that serves requests:
grpc.aio ties a channel to the loop it was made in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from grpc import aio

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.client import CHANNEL_OPTIONS, channel_credentials
from ownchat.config import ClientSettings
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.interceptors import REQUEST_ID_KEY
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc

GenerateCall: TypeAlias = aio.UnaryStreamCall[
    serving_pb2.GenerateRequest, serving_pb2.GenerateResponse
]

# Enough for any real deployment history; /v1/models only needs the live ones,
# which serving lists first (newest first).
_MAX_DEPLOYMENT_PAGES = 20


class _Channel:
    """One service's channel, opened on first use."""

    def __init__(self, client: ClientSettings, address: str) -> None:
        self._client = client
        self._address = address
        self._channel: aio.Channel | None = None

    def get(self) -> aio.Channel:
        if self._channel is None:
            credentials = channel_credentials(self._client)
            if credentials is None:
                self._channel = aio.insecure_channel(self._address, options=CHANNEL_OPTIONS)
            else:
                self._channel = aio.secure_channel(
                    self._address, credentials, options=CHANNEL_OPTIONS
                )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _metadata(token: str, request_id: str) -> Sequence[tuple[str, str]]:
    return ((AUTHORIZATION_KEY, bearer(token)), (REQUEST_ID_KEY, request_id))


class ServingUpstream:
    """Authenticated calls to ``ownchat.serving.v1.ServingService``."""

    def __init__(self, client: ClientSettings, token: str, timeout_seconds: float) -> None:
        self._channel = _Channel(client, client.serving_address)
        self._token = token
        self._timeout = timeout_seconds

    def _stub(self) -> serving_pb2_grpc.ServingServiceStub:
        return serving_pb2_grpc.ServingServiceStub(self._channel.get())

    def generate(self, request: serving_pb2.GenerateRequest, request_id: str) -> GenerateCall:
        """Starts a Generate stream; the deadline covers the whole reply."""
        call: GenerateCall = self._stub().Generate(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return call

    async def list_deployments(self, request_id: str) -> list[serving_pb2.Deployment]:
        """Every deployment serving knows, newest first."""
        stub = self._stub()
        deployments: list[serving_pb2.Deployment] = []
        token = ""
        for _ in range(_MAX_DEPLOYMENT_PAGES):
            response: serving_pb2.ListDeploymentsResponse = await stub.ListDeployments(
                serving_pb2.ListDeploymentsRequest(page_size=100, page_token=token),
                timeout=self._timeout,
                metadata=_metadata(self._token, request_id),
            )
            deployments.extend(response.deployments)
            token = response.next_page_token
            if not token:
                break
        return deployments

    async def close(self) -> None:
        """Closes the channel, cancelling calls in flight."""
        await self._channel.close()


class EvaluatorUpstream:
    """Authenticated calls to the review queue of ``ownchat.evaluator.v1.EvaluatorService``."""

    def __init__(self, client: ClientSettings, token: str) -> None:
        self._channel = _Channel(client, client.evaluator_address)
        self._token = token
        # Queue calls are small reads and writes of the evaluator's store.
        self._timeout = client.timeout_seconds

    def _stub(self) -> evaluator_pb2_grpc.EvaluatorServiceStub:
        return evaluator_pb2_grpc.EvaluatorServiceStub(self._channel.get())

    async def next_review_item(
        self, request: evaluator_pb2.NextReviewItemRequest, request_id: str
    ) -> evaluator_pb2.NextReviewItemResponse:
        """Leases the reviewer's next item (or the one they hold)."""
        response: evaluator_pb2.NextReviewItemResponse = await self._stub().NextReviewItem(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def submit_review(
        self, request: evaluator_pb2.SubmitReviewRequest, request_id: str
    ) -> evaluator_pb2.SubmitReviewResponse:
        """Stores a review of a leased item."""
        response: evaluator_pb2.SubmitReviewResponse = await self._stub().SubmitReview(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def release_review_item(
        self, request: evaluator_pb2.ReleaseReviewItemRequest, request_id: str
    ) -> evaluator_pb2.ReleaseReviewItemResponse:
        """Gives a leased item back unreviewed (a skip)."""
        response: evaluator_pb2.ReleaseReviewItemResponse = await self._stub().ReleaseReviewItem(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def get_review_stats(
        self, request: evaluator_pb2.GetReviewStatsRequest, request_id: str
    ) -> evaluator_pb2.GetReviewStatsResponse:
        """The queue's counts and reviews per reviewer."""
        response: evaluator_pb2.GetReviewStatsResponse = await self._stub().GetReviewStats(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()

"""What the gateway's routes share, made once per server process."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from ownchat_gateway.access import Authenticator
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.errors import GatewayError
from ownchat_gateway.feedback.loop import FeedbackLoop
from ownchat_gateway.keys import KeyStore
from ownchat_gateway.limits import Limits, RateLimiter, UsageStore
from ownchat_gateway.upstream import (
    DataUpstream,
    EvaluatorUpstream,
    ServingUpstream,
    TrainerUpstream,
)


@dataclass
class GatewayContext:
    """The settings, the accepted credentials, the keys' usage counters and the
    clients of the services behind."""

    settings: GatewaySettings
    token: str
    upstream: ServingUpstream
    evaluator: EvaluatorUpstream
    keys: KeyStore
    usage: UsageStore
    authenticator: Authenticator = field(init=False)
    limiter: RateLimiter = field(init=False)
    # The files and fine-tuning API's clients; without them those paths answer 503.
    data: DataUpstream | None = None
    trainer: TrainerUpstream | None = None
    # Chat capture and feedback; without it /v1/feedback answers 503 and nothing is captured.
    feedback: FeedbackLoop | None = None

    def __post_init__(self) -> None:
        self.authenticator = Authenticator(self.token, self.keys)
        self.limiter = RateLimiter(self.usage, default_limits(self.settings))

    async def close(self) -> None:
        """Lets captures in flight finish, then closes the channels, the stores and the counters."""
        if self.feedback is not None:
            await self.feedback.close()
        await self.upstream.close()
        await self.evaluator.close()
        if self.data is not None:
            await self.data.close()
        if self.trainer is not None:
            await self.trainer.close()
        self.keys.close()
        self.usage.close()


def default_limits(settings: GatewaySettings) -> Limits:
    """The limits of a key that has none of its own."""
    return Limits(
        requests_per_minute=settings.default_requests_per_minute,
        tokens_per_minute=settings.default_tokens_per_minute,
        tokens_per_day=settings.default_tokens_per_day,
    )


def context_of(request: Request) -> GatewayContext:
    """The context the service gave the app; 503 until it has."""
    context: GatewayContext | None = getattr(request.app.state, "context", None)
    if context is None:
        raise GatewayError(503, "the gateway is starting", "server_error", code="unavailable")
    return context

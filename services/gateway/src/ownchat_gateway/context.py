"""What the gateway's routes share, made once per server process."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from ownchat_gateway.access import Authenticator
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.errors import GatewayError
from ownchat_gateway.keys import KeyStore
from ownchat_gateway.upstream import EvaluatorUpstream, ServingUpstream


@dataclass
class GatewayContext:
    """The settings, the accepted credentials and the clients of the services behind."""

    settings: GatewaySettings
    token: str
    upstream: ServingUpstream
    evaluator: EvaluatorUpstream
    keys: KeyStore
    authenticator: Authenticator = field(init=False)

    def __post_init__(self) -> None:
        self.authenticator = Authenticator(self.token, self.keys)

    async def close(self) -> None:
        """Closes the channels and the key store."""
        await self.upstream.close()
        await self.evaluator.close()
        self.keys.close()


def context_of(request: Request) -> GatewayContext:
    """The context the service gave the app; 503 until it has."""
    context: GatewayContext | None = getattr(request.app.state, "context", None)
    if context is None:
        raise GatewayError(503, "the gateway is starting", "server_error", code="unavailable")
    return context

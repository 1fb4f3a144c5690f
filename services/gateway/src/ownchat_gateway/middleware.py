"""The gateway's edge checks, as plain ASGI middleware of each of its apps.

They run before FastAPI reads the body, so a caller without a valid credential
gets 401 (and one without the scope 403) whatever it sent, and an oversized body
is refused before it is buffered. Order (outermost first): CORS (``/v1`` only,
when origins are configured, so that a browser's preflight needs no key),
request id, authentication, rate limits (``/v1`` only), body size.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as ASGIScope

from ownchat_gateway.access import Authenticator, Principal
from ownchat_gateway.errors import (
    GatewayError,
    body_too_large,
    forbidden,
    rate_limited,
    unauthorized,
)
from ownchat_gateway.keys import Scope
from ownchat_gateway.limits import RateLimiter
from ownchat_gateway.metrics import RATE_LIMITED, TOKENS
from ownchat_gateway.translate import request_id_from

# The scope a path (relative to the app's mount) needs; None for a public path.
ScopeRule = Callable[[str], Scope | None]

REQUEST_ID_HEADER = "X-Request-Id"


class Metering(Enum):
    """What a path's requests count against."""

    # Requests per minute only.
    REQUESTS = "requests"
    # Requests per minute, and the token bucket and quota (it generates).
    TOKENS = "tokens"


# How a path (relative to the app's mount) is metered; None for not at all.
MeteringRule = Callable[[str], Metering | None]

# The largest body a path (relative to the app's mount) accepts.
BodyLimitRule = Callable[[str], int]


@dataclass
class UsageMeter:
    """The tokens one request's replies used, reported by the route as usage arrives."""

    tokens: int = 0


_METER: ContextVar[UsageMeter | None] = ContextVar("ownchat_gateway_usage_meter", default=None)


def report_usage(prompt_tokens: int, completion_tokens: int) -> None:
    """Counts a finished reply's tokens against the caller's limits.

    A no-op outside a metered request (the operator's, or an unlimited key's).
    The rate-limit middleware set the meter in this request's context, which
    the route and its streamed body share.
    """
    TOKENS.labels("prompt").inc(prompt_tokens)
    TOKENS.labels("completion").inc(completion_tokens)
    meter = _METER.get()
    if meter is not None:
        meter.tokens += prompt_tokens + completion_tokens


def error_response(error: GatewayError, request_id: str | None = None) -> JSONResponse:
    """The JSON response for an error, with its headers."""
    headers = dict(error.headers)
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def request_id_of(scope: ASGIScope) -> str:
    """The request id the first middleware gave this request."""
    value: str = scope.setdefault("state", {}).get("request_id", "")
    return value


def principal_of(scope: ASGIScope) -> Principal | None:
    """The caller the authentication middleware let through, if the path needed one."""
    principal: Principal | None = scope.setdefault("state", {}).get("principal")
    return principal


def route_path(scope: ASGIScope) -> str:
    """The request's path below the app's mount point (``/chat/completions`` under ``/v1``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class RequestIdMiddleware:
    """Gives each request an id (the caller's ``X-Request-Id`` when usable) and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class AuthMiddleware:
    """Lets a request through only with a credential holding the scope its path needs.

    ``Authorization: Bearer`` with the ownchat token or a live API key; the caller
    is left in the request's state for the routes (:func:`principal_of`).
    """

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Callable[[], Authenticator | None],
        required_scope: ScopeRule,
    ) -> None:
        self.app = app
        self._authenticator = authenticator
        self._required_scope = required_scope

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = self._required_scope(route_path(scope))
        if needed is None:
            await self.app(scope, receive, send)
            return
        authenticator = self._authenticator()
        presented = Headers(scope=scope).get("authorization")
        # No authenticator yet (the service is still starting) also refuses.
        principal = authenticator.authenticate(presented) if authenticator else None
        if principal is None:
            await error_response(unauthorized())(scope, receive, send)
            return
        if not principal.allows(needed):
            await error_response(forbidden(needed.value))(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


class RateLimitMiddleware:
    """Holds API keys to their limits: 429 when over one, ``x-ratelimit-*`` headers always.

    Runs inside authentication (it needs the caller). The ownchat token, keys
    with no limit and paths the rule does not meter pass without counting.
    Tokens are counted after the reply, from what the route reported with
    :func:`report_usage`.
    """

    def __init__(
        self, app: ASGIApp, limiter: Callable[[], RateLimiter | None], metering: MeteringRule
    ) -> None:
        self.app = app
        self._limiter = limiter
        self._metering = metering

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = principal_of(scope)
        limiter = self._limiter()
        metering = self._metering(route_path(scope))
        if principal is None or principal.operator or limiter is None or metering is None:
            await self.app(scope, receive, send)
            return
        limits = limiter.limits_of(principal.limits)
        if limits.unlimited:
            await self.app(scope, receive, send)
            return
        admission = await limiter.admit(
            principal.id, limits, spends_tokens=metering is Metering.TOKENS
        )
        if admission.refusal is not None:
            RATE_LIMITED.labels(admission.refusal.limit.value).inc()
            error = rate_limited(admission.refusal, principal.id, admission.headers)
            await error_response(error, request_id_of(scope))(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in admission.headers.items():
                    headers[name] = value
            await send(message)

        meter = UsageMeter()
        token = _METER.set(meter)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _METER.reset(token)
            # Also when the client went away after serving reported the usage.
            if meter.tokens:
                await limiter.record(principal.id, limits, meter.tokens)


class BodyLimitMiddleware:
    """Answers 413 for a body over ``max_bytes``, by its Content-Length or as it arrives.

    ``limit_for`` gives some paths a limit of their own (file uploads).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, limit_for: BodyLimitRule | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_for = limit_for

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit_for(route_path(scope)) if self.limit_for else self.max_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await error_response(body_too_large(max_bytes))(scope, receive, send)
            return
        received = 0

        # A chunked body has no Content-Length: count it as it is read. The
        # exception reaches the app's handler, which answers in OpenAI's shape.
        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(413, body_too_large(max_bytes).message)
            return message

        await self.app(scope, counting_receive, send)

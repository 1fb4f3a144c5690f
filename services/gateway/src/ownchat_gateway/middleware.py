"""The gateway's edge checks, as plain ASGI middleware of the OpenAI app.

They run before FastAPI reads the body, so a caller without a token gets 401
whatever it sent, and an oversized body is refused before it is buffered.
Order (outermost first): request id, authentication, body size.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ownchat.auth import token_matches
from ownchat_gateway.errors import GatewayError, body_too_large, unauthorized
from ownchat_gateway.translate import request_id_from

REQUEST_ID_HEADER = "X-Request-Id"


def error_response(error: GatewayError, request_id: str | None = None) -> JSONResponse:
    """The JSON response for an error, with its headers."""
    headers = dict(error.headers)
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def request_id_of(scope: Scope) -> str:
    """The request id the first middleware gave this request."""
    value: str = scope.setdefault("state", {}).get("request_id", "")
    return value


class RequestIdMiddleware:
    """Gives each request an id (the caller's ``X-Request-Id`` when usable) and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
    """Lets through only requests with ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: Callable[[], str | None]) -> None:
        self.app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = self._token()
        presented = Headers(scope=scope).get("authorization")
        # No configured token yet (the service is still starting) also refuses.
        if token is None or not token_matches(presented, token):
            await error_response(unauthorized())(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 for a body over ``max_bytes``, by its Content-Length or as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(body_too_large(self.max_bytes))(scope, receive, send)
            return
        received = 0

        # A chunked body has no Content-Length: count it as it is read. The
        # exception reaches the app's handler, which answers in OpenAI's shape.
        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, body_too_large(self.max_bytes).message)
            return message

        await self.app(scope, counting_receive, send)

"""What each of the gateway's FastAPI apps has: the edge middleware, errors in
OpenAI's shape, and a 404 in that shape for paths it does not know.

The gateway mounts three such apps in BentoML: the OpenAI-compatible API at
``/v1``, the admin API at ``/admin/v1`` and the reviewer page at ``/review``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ownchat import __version__
from ownchat.errors import OwnchatError
from ownchat_gateway.access import Authenticator
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.errors import (
    GatewayError,
    from_ownchat_error,
    internal_error,
    invalid_request,
)
from ownchat_gateway.keys import Scope
from ownchat_gateway.limits import RateLimiter
from ownchat_gateway.middleware import (
    REQUEST_ID_HEADER,
    AuthMiddleware,
    BodyLimitMiddleware,
    BodyLimitRule,
    MeteringRule,
    RateLimitMiddleware,
    RequestIdMiddleware,
    ScopeRule,
    error_response,
    request_id_of,
)

logger = logging.getLogger("ownchat.gateway")

# Where each app serves its OpenAPI document (/v1/openapi.json, /admin/v1/openapi.json).
OPENAPI_PATH = "/openapi.json"

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}

# What a browser page may read of an answer besides the CORS-safelisted headers.
CORS_EXPOSED_HEADERS = [
    REQUEST_ID_HEADER,
    "Retry-After",
    *(
        f"x-ratelimit-{what}-{bucket}"
        for what in ("limit", "remaining", "reset")
        for bucket in ("requests", "tokens")
    ),
]


def validation_error(error: RequestValidationError) -> GatewayError:
    """A 400 naming the first bad field by its OpenAI name (``messages.0.role``)."""
    problems = error.errors()
    if not problems:
        return invalid_request("invalid request body")
    first = problems[0]
    if first.get("type") == "json_invalid":
        return invalid_request("request body is not valid JSON")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value"))
    return invalid_request(f"{param}: {message}" if param else message, param=param)


def _openapi_with_bearer(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document of the app, with the bearer credential every path but this
    one needs (the ownchat token or an API key)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "API key"}
        }
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def new_app(
    settings: GatewaySettings,
    title: str,
    required_scope: ScopeRule,
    *,
    metering: MeteringRule | None = None,
    cors: bool = False,
    body_limit: BodyLimitRule | None = None,
) -> FastAPI:
    """An app with the edge checks; ``app.state.context`` must be set before it takes requests.

    ``required_scope`` gives the scope each path needs (None: no credential needed).
    ``metering`` holds API keys to their rate limits and quotas on the paths it
    meters; ``cors`` answers browsers from ``settings.cors_allowed_origins``
    (no CORS headers at all while that is empty). ``body_limit`` gives paths a body
    limit other than ``settings.max_body_bytes``.
    """
    app = FastAPI(
        title=title, version=__version__, docs_url=None, redoc_url=None, openapi_url=OPENAPI_PATH
    )
    app.openapi = lambda: _openapi_with_bearer(app)  # type: ignore[method-assign]

    def scope_of(path: str) -> Scope | None:
        # The API's description is public, as OpenAI's is.
        return None if path == OPENAPI_PATH else required_scope(path)

    def authenticator() -> Authenticator | None:
        context = getattr(app.state, "context", None)
        return context.authenticator if context is not None else None

    def limiter() -> RateLimiter | None:
        context = getattr(app.state, "context", None)
        return context.limiter if context is not None else None

    # Starlette runs the last added outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, limit_for=body_limit)
    if metering is not None:
        app.add_middleware(RateLimitMiddleware, limiter=limiter, metering=metering)
    app.add_middleware(AuthMiddleware, authenticator=authenticator, required_scope=scope_of)
    app.add_middleware(RequestIdMiddleware)
    if cors and settings.cors_allowed_origins:
        # Outermost: a preflight is answered before authentication, and every
        # answer (refusals included) carries the CORS headers a page needs to
        # read it. Keys travel in a header, never in cookies: no credentials mode.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            # OpenAI's browser clients send their own x-stainless-* headers.
            allow_headers=["*"],
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, error: GatewayError) -> Response:
        return error_response(error, request_id_of(request.scope))

    @app.exception_handler(OwnchatError)
    async def _own_error(request: Request, error: OwnchatError) -> Response:
        request_id = request_id_of(request.scope)
        return error_response(from_ownchat_error(error, request_id), request_id)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        return error_response(validation_error(error), request_id_of(request.scope))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> Response:
        status = error.status_code
        mapped = GatewayError(
            status,
            str(error.detail),
            "invalid_request_error" if status < 500 else "server_error",
            code=_HTTP_ERROR_CODES.get(status),
            headers=dict(error.headers or {}),
        )
        return error_response(mapped, request_id_of(request.scope))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        request_id = request_id_of(request.scope)
        logger.error("unexpected error", exc_info=error, extra={"request_id": request_id})
        return error_response(internal_error(request_id), request_id)

    return app


def add_not_found_route(app: FastAPI, mount: str, prefix: str = "") -> None:
    """Answers 404 in OpenAI's shape for any other path under ``prefix``; add it last.

    BentoML hands a mounted app only the paths it has routes for; this keeps
    every other path (and a wrong method) answered in OpenAI's shape.
    """

    @app.api_route(f"{prefix}/{{path:path}}", methods=ALL_METHODS, include_in_schema=False)
    async def unknown_route(path: str, request: Request) -> Response:
        raise GatewayError(
            404,
            f"Invalid URL ({request.method} {mount}{prefix}/{path})",
            "invalid_request_error",
            code="not_found",
        )

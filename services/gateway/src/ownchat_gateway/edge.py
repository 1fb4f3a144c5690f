"""What each of the gateway's FastAPI apps has: the edge middleware, errors in
OpenAI's shape, and a 404 in that shape for paths it does not know.

The gateway mounts three such apps in BentoML: the OpenAI-compatible API at
``/v1``, the admin API at ``/admin/v1`` and the reviewer page at ``/review``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ownchat.errors import OwnchatError
from ownchat_gateway.access import Authenticator
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.errors import (
    GatewayError,
    from_ownchat_error,
    internal_error,
    invalid_request,
)
from ownchat_gateway.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    RequestIdMiddleware,
    ScopeRule,
    error_response,
    request_id_of,
)

logger = logging.getLogger("ownchat.gateway")

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


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


def new_app(settings: GatewaySettings, title: str, required_scope: ScopeRule) -> FastAPI:
    """An app with the edge checks; ``app.state.context`` must be set before it takes requests.

    ``required_scope`` gives the scope each path needs (None: no credential needed).
    """
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    def authenticator() -> Authenticator | None:
        context = getattr(app.state, "context", None)
        return context.authenticator if context is not None else None

    # Starlette runs the last added outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, authenticator=authenticator, required_scope=required_scope)
    app.add_middleware(RequestIdMiddleware)

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

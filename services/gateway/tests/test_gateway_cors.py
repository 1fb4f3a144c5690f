"""CORS on the OpenAI-compatible API: configured origins only, preflight answered
without a key, refusals readable by the page; nothing at all when unconfigured."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from starlette.applications import Starlette

from ownchat_gateway.context import GatewayContext
from ownchat_gateway.keys import NewApiKey, Scope

ContextFactory = Callable[..., GatewayContext]
Edge = Callable[[GatewayContext], Starlette]

ORIGIN = "https://chat.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
}


def test_gateway_cors_preflight_needs_no_key(context_factory: ContextFactory, edge: Edge) -> None:
    context = context_factory(cors_allowed_origins=[ORIGIN, "http://localhost:5173"])
    with TestClient(edge(context)) as http:
        preflight = http.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "x-stainless-os" in allowed
        assert "access-control-allow-credentials" not in preflight.headers

        # Another origin gets no permission.
        other = http.options(
            "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil"}
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers

        # A refusal still carries the headers the page needs to read it.
        refused = http.get("/v1/models", headers={"Origin": ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN
        exposed = refused.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed
        assert "x-ratelimit-remaining-requests" in exposed


def test_gateway_cors_applies_to_the_openai_api_only(
    context_factory: ContextFactory, edge: Edge
) -> None:
    context = context_factory(cors_allowed_origins=[ORIGIN])
    secret = context.keys.create(NewApiKey(name="root", scopes=(Scope.ADMIN,))).secret
    with TestClient(edge(context)) as http:
        # The admin API is for operators' tools, not pages: no CORS, so a preflight
        # meets authentication.
        assert http.options("/admin/v1/api-keys", headers=PREFLIGHT).status_code == 401
        listed = http.get(
            "/admin/v1/api-keys", headers={"Origin": ORIGIN, "Authorization": f"Bearer {secret}"}
        )
        assert listed.status_code == 200
        assert "access-control-allow-origin" not in listed.headers


def test_gateway_no_cors_headers_unless_configured(http: TestClient) -> None:
    preflight = http.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 401
    assert not any(name.startswith("access-control-") for name in preflight.headers)
    refused = http.get("/v1/models", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in refused.headers

"""The admin endpoints and the auth rules over HTTP (TestClient on the mounted apps):
protobuf JSON bodies, who may call what, and revocation taking effect at once."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format

from ownchat.gateway.v1 import gateway_pb2
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.keys import Scope

NewKey = Callable[..., tuple[str, str]]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def operator(token: str) -> dict[str, str]:
    return bearer(token)


def _create(http: TestClient, body: object, headers: dict[str, str]) -> httpx.Response:
    return http.post("/admin/v1/api-keys", json=body, headers=headers)


def test_gateway_admin_creates_lists_and_revokes(
    http: TestClient, operator: dict[str, str]
) -> None:
    response = _create(
        http,
        {
            "name": "alice",
            "scopes": ["SCOPE_REVIEW", 1],
            "requestsPerMinute": 30,
            "tokensPerMinute": -1,
        },
        operator,
    )
    assert response.status_code == 200
    created = json_format.ParseDict(response.json(), gateway_pb2.CreateApiKeyResponse())
    key = created.api_key
    assert created.secret.startswith(f"oc-{key.id}-")
    assert list(key.scopes) == [gateway_pb2.SCOPE_CHAT, gateway_pb2.SCOPE_REVIEW]
    assert (key.name, key.requests_per_minute, key.tokens_per_day) == ("alice", 30, 0)
    assert key.tokens_per_minute == -1  # no limit for this key, whatever the default
    assert key.HasField("create_time") and not key.HasField("revoke_time")

    listing = http.get("/admin/v1/api-keys", headers=operator)
    assert listing.status_code == 200
    assert created.secret not in listing.text
    keys = json_format.ParseDict(listing.json(), gateway_pb2.ListApiKeysResponse()).api_keys
    assert [k.id for k in keys] == [key.id]
    assert listing.json()["apiKeys"][0]["tokensPerDay"] == "0"  # int64 as a JSON string

    # The key works until it is revoked, and not one request after.
    assert http.get("/review/api/me", headers=bearer(created.secret)).status_code == 200
    revoked = http.post(f"/admin/v1/api-keys/{key.id}:revoke", headers=operator)
    assert revoked.status_code == 200
    answer = json_format.ParseDict(revoked.json(), gateway_pb2.RevokeApiKeyResponse())
    assert answer.api_key.id == key.id and answer.api_key.HasField("revoke_time")
    refused = http.get("/review/api/me", headers=bearer(created.secret))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    listed = http.get("/admin/v1/api-keys", headers=operator).json()["apiKeys"]
    assert "revokeTime" in listed[0]


def test_gateway_admin_revoke_body_and_unknown_key(
    http: TestClient, operator: dict[str, str]
) -> None:
    created = _create(http, {"name": "a", "scopes": ["SCOPE_CHAT"]}, operator)
    key_id = created.json()["apiKey"]["id"]
    path = f"/admin/v1/api-keys/{key_id}:revoke"
    assert http.post(path, json={"apiKeyId": key_id}, headers=operator).status_code == 200
    other = http.post(path, json={"apiKeyId": "ak_other"}, headers=operator)
    assert (other.status_code, other.json()["error"]["param"]) == (400, "api_key_id")
    missing = http.post("/admin/v1/api-keys/ak_nope:revoke", headers=operator)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert "ak_nope" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "a", "scopes": ["SCOPE_UNSPECIFIED"]}, "scopes[0]"),
        ({"name": "a", "scopes": [9]}, "scopes[0]"),
        ({"name": "a", "scopes": ["SCOPE_CHAT", "SCOPE_NOPE"]}, None),
        ({"name": "", "scopes": ["SCOPE_CHAT"]}, "name"),
        ({"name": "a"}, "scopes"),
        ({"name": "a", "scopes": ["SCOPE_CHAT"], "requestsPerMinute": -2}, "requests_per_minute"),
        ({"name": "a", "scopes": ["SCOPE_CHAT"], "tokensPerMinute": -3}, "tokens_per_minute"),
        ({"name": "a", "scopes": ["SCOPE_CHAT"], "colour": "red"}, None),
        ([], None),
    ],
)
def test_gateway_admin_refuses_bad_bodies(
    http: TestClient, operator: dict[str, str], body: object, param: str | None
) -> None:
    response = _create(http, body, operator)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert http.get("/admin/v1/api-keys", headers=operator).json()["apiKeys"] == []


def test_gateway_admin_refuses_invalid_json(http: TestClient, operator: dict[str, str]) -> None:
    response = http.post(
        "/admin/v1/api-keys", content=b"{nope", headers={**operator, "Content-Type": "x"}
    )
    assert response.status_code == 400
    assert "CreateApiKeyRequest" in response.json()["error"]["message"]


def test_gateway_admin_needs_the_admin_scope(
    http: TestClient, context: GatewayContext, new_key: NewKey
) -> None:
    _, admin = new_key(context, "root", Scope.ADMIN)
    _, chat = new_key(context, "bot", Scope.CHAT)
    _, review = new_key(context, "ann", Scope.REVIEW, Scope.FINE_TUNE)
    body = {"name": "x", "scopes": ["SCOPE_CHAT"]}
    assert _create(http, body, bearer(admin)).status_code == 200
    for secret in (chat, review):
        refused = _create(http, body, bearer(secret))
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("permission_error", "insufficient_scope")
        assert "'admin'" in error["message"]
        assert http.get("/admin/v1/api-keys", headers=bearer(secret)).status_code == 403
    for headers in ({}, bearer("oc-ak_0000000000000000-guess"), bearer("wrong")):
        refused = http.get("/admin/v1/api-keys", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        assert refused.headers["www-authenticate"] == "Bearer"
    # Unknown admin paths are checked like known ones, then answered in OpenAI's shape.
    assert http.get("/admin/v1/nothing", headers=bearer(chat)).status_code == 403
    unknown = http.get("/admin/v1/nothing", headers=bearer(admin))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")


def test_gateway_chat_endpoints_need_the_chat_scope(
    http: TestClient, context: GatewayContext, new_key: NewKey, token: str
) -> None:
    _, chat = new_key(context, "bot", Scope.CHAT)
    _, admin = new_key(context, "root", Scope.ADMIN)
    _, review = new_key(context, "ann", Scope.REVIEW)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    # Past authentication, the unknown route answers 404: the scope was enough.
    for secret in (chat, admin, token):
        assert http.get("/v1/nothing", headers=bearer(secret)).status_code == 404
    refused = http.post("/v1/chat/completions", json=body, headers=bearer(review))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert http.get("/v1/models", headers=bearer(review)).status_code == 403
    # Refused before the body is read: a bad body still gets 403, not 400.
    bad = http.post("/v1/chat/completions", content=b"{nope", headers=bearer(review))
    assert bad.status_code == 403
    # The chat key gets through to serving, which is not running here.
    down = http.get("/v1/models", headers=bearer(chat))
    assert down.status_code == 503
    assert down.json()["error"]["message"] == "the serving service is unavailable; try again later"


def test_gateway_revoked_key_is_refused_at_once_everywhere(
    http: TestClient, context: GatewayContext, new_key: NewKey
) -> None:
    key_id, secret = new_key(context, "all", Scope.ADMIN)
    assert http.get("/v1/nothing", headers=bearer(secret)).status_code == 404
    assert http.get("/admin/v1/api-keys", headers=bearer(secret)).status_code == 200
    # The key revokes itself; the next request with it is refused.
    revoke = http.post(f"/admin/v1/api-keys/{key_id}:revoke", headers=bearer(secret))
    assert revoke.status_code == 200
    for path in ("/v1/nothing", "/admin/v1/api-keys", "/review/api/me"):
        refused = http.get(path, headers=bearer(secret))
        assert refused.status_code == 401, path
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}

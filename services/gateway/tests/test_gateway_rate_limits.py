"""Per-key rate limits and token quotas over HTTP (TestClient on the mounted apps, no
serving behind them): 429 in OpenAI's shape with Retry-After and x-ratelimit-*
headers, the defaults, the keys' own limits, and the operator never limited."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette

from ownchat_gateway.context import GatewayContext
from ownchat_gateway.keys import UNLIMITED, NewApiKey, Scope

ContextFactory = Callable[..., GatewayContext]
Edge = Callable[[GatewayContext], Starlette]

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def limited(context_factory: ContextFactory) -> GatewayContext:
    """A gateway whose keys get 2 requests a minute unless they say otherwise."""
    return context_factory(default_requests_per_minute=2)


@pytest.fixture
def http(limited: GatewayContext, edge: Edge) -> Iterator[TestClient]:
    with TestClient(edge(limited)) as client:
        yield client


def _key(context: GatewayContext, **limits: int) -> tuple[str, str]:
    created = context.keys.create(NewApiKey(name="bot", scopes=(Scope.CHAT,), **limits))
    return created.key.id, created.secret


def test_gateway_requests_over_the_limit_get_429_in_openai_shape(
    http: TestClient, limited: GatewayContext
) -> None:
    key_id, secret = _key(limited)
    answers = [http.get("/v1/models", headers=bearer(secret)) for _ in range(3)]
    # Serving is not running: the first two pass the limits and reach for it.
    assert [a.status_code for a in answers] == [503, 503, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["1", "0", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "2" for a in answers)
    # Full again in a minute, less the moments the requests took (the call to the
    # absent serving is retried with backoff before the 503, about 1.4 s).
    assert re.fullmatch(r"1m0s|5\d\.\d+s", answers[1].headers["x-ratelimit-reset-requests"])
    refused = answers[2]
    # One request is back every 30 s (less the moments since the first).
    wait = refused.headers["retry-after"]
    assert wait in ("29", "30")
    assert refused.json() == {
        "error": {
            "message": f"Rate limit reached for API key {key_id} on requests per min (RPM): "
            f"Limit 2, Used 2. Please try again in {wait}s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert refused.headers["x-request-id"]
    # Every path of the API counts, unknown ones and generating ones included.
    assert http.post("/v1/chat/completions", json=CHAT, headers=bearer(secret)).status_code == 429
    assert http.get("/v1/nothing", headers=bearer(secret)).status_code == 429


def test_gateway_operator_and_unlimited_keys_are_never_limited(
    http: TestClient, limited: GatewayContext, token: str
) -> None:
    _, unlimited = _key(limited, requests_per_minute=UNLIMITED)
    _, own = _key(limited, requests_per_minute=5)
    for _ in range(6):
        for secret in (token, unlimited):
            answer = http.get("/v1/models", headers=bearer(secret))
            assert answer.status_code == 503
            assert "x-ratelimit-limit-requests" not in answer.headers
    # A key's own limit replaces the default.
    statuses = [http.get("/v1/models", headers=bearer(own)).status_code for _ in range(6)]
    assert statuses == [503] * 5 + [429]


def test_gateway_admin_and_review_apis_are_not_rate_limited(
    http: TestClient, limited: GatewayContext
) -> None:
    created = limited.keys.create(NewApiKey(name="root", scopes=(Scope.ADMIN,)))
    for _ in range(4):
        assert http.get("/admin/v1/api-keys", headers=bearer(created.secret)).status_code == 200
        assert http.get("/review/api/me", headers=bearer(created.secret)).status_code == 200


def test_gateway_empty_token_bucket_refuses_generation_only(
    context_factory: ContextFactory, edge: Edge
) -> None:
    context = context_factory(default_tokens_per_minute=100)
    key_id, secret = _key(context)
    limits = context.limiter.limits_of(context.keys.get(key_id).limits)
    with TestClient(edge(context)) as http:
        first = http.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
        # Admitted, then refused by the absent serving; the bucket was full.
        assert first.status_code == 503
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        assert first.headers["x-ratelimit-remaining-tokens"] == "100"
        # A reply took more than the bucket held (as serving's usage reports it).
        context.usage.record(key_id, limits, 130)
        refused = http.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
        assert "tokens per min (TPM): Limit 100, Used 130" in error["message"]
        assert int(refused.headers["retry-after"]) in (19, 20)  # 31 tokens at 100 a minute
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        completions = {"prompt": "hi"}
        assert (
            http.post("/v1/completions", json=completions, headers=bearer(secret)).status_code
            == 429
        )
        # Listing models generates nothing: still allowed.
        assert http.get("/v1/models", headers=bearer(secret)).status_code == 503


def test_gateway_spent_daily_quota_is_insufficient_quota(
    context_factory: ContextFactory, edge: Edge
) -> None:
    context = context_factory()
    key_id, secret = _key(context, tokens_per_day=1000)
    limits = context.limiter.limits_of(context.keys.get(key_id).limits)
    context.usage.record(key_id, limits, 1000)
    with TestClient(edge(context)) as http:
        refused = http.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert "quota of 1000 tokens for today (UTC)" in error["message"]
        assert 0 < int(refused.headers["retry-after"]) <= 86_400
        assert http.get("/v1/models", headers=bearer(secret)).status_code == 503


@pytest.mark.integration
@pytest.mark.slow
def test_gateway_limit_is_shared_by_bentoml_workers(
    gateway_process: Callable[[Path, dict[str, str]], AbstractContextManager[str]],
    tmp_path: Path,
) -> None:
    """Two BentoML workers, one key of 5 requests a minute: 5 pass in all, not 10."""
    home = tmp_path / "home"
    env = {"OWNCHAT_GATEWAY_WORKERS": "2", "OWNCHAT_TOKEN": "t0ken"}
    with gateway_process(home, env) as url:
        created = httpx.post(
            f"{url}/admin/v1/api-keys",
            json={"name": "bot", "scopes": ["SCOPE_CHAT"], "requestsPerMinute": 5},
            headers=bearer("t0ken"),
            timeout=10,
        )
        assert created.status_code == 200, created.text
        secret = created.json()["secret"]
        statuses = []
        # Fresh connections, so that both workers take some of them.
        for _ in range(12):
            answer = httpx.get(f"{url}/v1/models", headers=bearer(secret), timeout=10)
            statuses.append(answer.status_code)
    # Serving is not running: the admitted requests end in 503.
    assert statuses.count(503) == 5 and statuses.count(429) == 7, statuses

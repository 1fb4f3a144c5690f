"""The real gateway (``python -m ownchat_gateway``) in front of a stand-in serving service.

The stand-in is a small ``ServingService`` on grpc.aio with ownchat's own server
interceptor (token check, error mapping): two text deltas and a final message
with usage, NOT_FOUND for an unknown model version, INVALID_ARGUMENT with a field
violation for too many tokens. The gateway is driven with the official ``openai``
client and with plain HTTP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from grpc import aio

from ownchat.auth import load_or_create_token
from ownchat.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from ownchat.interceptors import AsyncServerInterceptor
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIVE_MODEL = "mv_live"
SLOW_MODEL = "mv_slow"  # one delta, then nothing until cancelled
FAILING_MODEL = "mv_failing"  # one delta, then UNAVAILABLE
MAX_BODY_BYTES = 64 * 1024
ORIGIN = "https://chat.example.com"


class StandInServing(serving_pb2_grpc.ServingServiceServicer):
    """Serving as the gateway sees it; records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[serving_pb2.GenerateRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.cancelled = threading.Event()

    async def Generate(  # noqa: N802 - gRPC's method name
        self, request: serving_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.GenerateResponse]:
        self.requests.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if request.model_id == SLOW_MODEL:
            yield serving_pb2.GenerateResponse(text="thinking", model_id=SLOW_MODEL)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.model_id == FAILING_MODEL:
            yield serving_pb2.GenerateResponse(text="half", model_id=FAILING_MODEL)
            raise UnavailableError("the engine stopped")
        if request.model_id not in ("", LIVE_MODEL):
            raise NotFoundError("model version", request.model_id)
        if request.sampling.max_tokens > 1000:
            raise InvalidArgumentError(
                "sampling is invalid",
                [FieldViolation("sampling.max_tokens", "must be at most 1000")],
            )
        yield serving_pb2.GenerateResponse(text="Hello", model_id=LIVE_MODEL)
        yield serving_pb2.GenerateResponse(text=", world", model_id=LIVE_MODEL)
        yield serving_pb2.GenerateResponse(
            finish_reason=serving_pb2.FINISH_REASON_STOP,
            usage=serving_pb2.Usage(prompt_tokens=len(request.messages) * 5, completion_tokens=2),
            model_id=LIVE_MODEL,
        )

    async def ListDeployments(  # noqa: N802
        self, request: serving_pb2.ListDeploymentsRequest, context: aio.ServicerContext
    ) -> serving_pb2.ListDeploymentsResponse:
        return serving_pb2.ListDeploymentsResponse(
            deployments=[
                serving_pb2.Deployment(
                    id="dep_2", model_id=LIVE_MODEL, state=serving_pb2.DEPLOYMENT_STATE_LIVE
                ),
                serving_pb2.Deployment(
                    id="dep_1", model_id="mv_old", state=serving_pb2.DEPLOYMENT_STATE_RETIRED
                ),
            ]
        )


@dataclass
class StandIn:
    address: str
    servicer: StandInServing


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ownchat-home")


@pytest.fixture(scope="module")
def token(home: Path) -> str:
    # Made here first; the gateway reads the same file, as every ownchat process does.
    return load_or_create_token(home)


@pytest.fixture(scope="module")
def serving(token: str) -> Iterator[StandIn]:
    """The stand-in on its own event loop in a thread."""
    servicer = StandInServing()
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def run() -> None:
        server = aio.server(interceptors=[AsyncServerInterceptor(token)])
        serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        started.set()
        # Stopped from inside its loop: awaiting wait_for_termination() while
        # another thread schedules stop() can hang grpc.aio.
        await stop.wait()
        await server.stop(0)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(10), "stand-in serving did not start"
    yield StandIn(f"127.0.0.1:{port}", servicer)
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    assert not thread.is_alive(), "stand-in serving did not stop"
    loop.close()


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    startup_seconds: float


@pytest.fixture(scope="module")
def gateway(home: Path, token: str, serving: StandIn) -> Iterator[Gateway]:
    """``python -m ownchat_gateway`` on a free port; afterwards no process of it may remain."""
    port = free_port()
    env = {
        **os.environ,
        "OWNCHAT_HOME": str(home),
        "OWNCHAT_SERVING_ADDRESS": serving.address,
        "OWNCHAT_GATEWAY_PORT": str(port),
        "OWNCHAT_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "OWNCHAT_GATEWAY_REQUEST_TIMEOUT_SECONDS": "20",
        "OWNCHAT_GATEWAY_CORS_ALLOWED_ORIGINS": ORIGIN,
    }
    env.pop("OWNCHAT_TOKEN", None)
    log = (home / "gateway.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "ownchat_gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (home / "gateway.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway not ready in 60 s"
            time.sleep(0.1)
        startup = time.perf_counter() - started
        family = [
            psutil.Process(process.pid),
            *psutil.Process(process.pid).children(recursive=True),
        ]
        assert len(family) >= 2, "expected BentoML's supervisor and at least one worker"
        yield Gateway(url, process, startup)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(family, timeout=15)
        assert not alive, f"left behind: {[p.info for p in alive]}"
    finally:
        for proc in family:
            if proc.is_running():
                proc.kill()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


@pytest.fixture()
def client(gateway: Gateway, token: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0) as oai:
        yield oai


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_gateway_readyz_needs_no_token(gateway: Gateway) -> None:
    for path in ("/readyz", "/livez", "/healthz", "/metrics"):
        assert httpx.get(f"{gateway.url}{path}", timeout=5).status_code == 200, path
    print(f"gateway startup: {gateway.startup_seconds:.2f} s")  # noqa: T201 - shown with -s


def test_gateway_chat_completion(client: openai.OpenAI, serving: StandIn, token: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="default",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        temperature=0.3,
        max_tokens=12,
        stop=["END"],
        seed=7,
        user="alice",
        extra_headers={"X-Request-Id": "req-abc-1"},
    )
    assert raw.headers["x-request-id"] == "req-abc-1"
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == LIVE_MODEL
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello, world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 2)
    assert completion.usage.total_tokens == 12

    request, metadata = serving.servicer.requests[-1], serving.servicer.metadata[-1]
    assert request.model_id == ""
    assert [m.content for m in request.messages] == ["be brief", "hi"]
    assert request.sampling.max_tokens == 12 and list(request.sampling.stop) == ["END"]
    assert request.sampling.seed == 7 and request.conversation_id == "alice"
    assert metadata["x-request-id"] == "req-abc-1" == request.request_id
    assert metadata["authorization"] == f"Bearer {token}"


def test_gateway_chat_completion_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=LIVE_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Hello, world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.object == "chat.completion.chunk" and c.model == LIVE_MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_gateway_stream_is_server_sent_events(gateway: Gateway, token: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=_auth(token), timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_gateway_error_mid_stream_is_an_error_event(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=FAILING_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "half"
    assert "the engine stopped" in caught.value.message


def test_gateway_client_gone_cancels_generation(
    gateway: Gateway, serving: StandIn, token: str
) -> None:
    body = {"model": SLOW_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=_auth(token), timeout=10
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert "thinking" in next(line for line in lines if "thinking" in line)
    # The connection is closed with the reply unfinished: serving must hear of it.
    assert serving.servicer.cancelled.wait(10)


def test_gateway_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [LIVE_MODEL]


def test_gateway_unknown_model_is_404(client: openai.OpenAI, gateway: Gateway, token: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="mv_nope", messages=[{"role": "user", "content": "x"}])
    assert "mv_nope" in caught.value.message
    for stream in (False, True):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={
                "model": "mv_nope",
                "messages": [{"role": "user", "content": "x"}],
                "stream": stream,
            },
            headers=_auth(token),
            timeout=10,
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_gateway_upstream_field_violation_is_400(gateway: Gateway, token: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5000},
        headers=_auth(token),
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


def test_gateway_needs_the_token(gateway: Gateway, client: openai.OpenAI) -> None:
    url = f"{gateway.url}/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = httpx.post(url, content=b"{not json", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{gateway.url}/v1/models", timeout=10).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").models.list()


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b'{"model": "default"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
        (b"[]", None),
    ],
)
def test_gateway_malformed_body_is_400(
    gateway: Gateway, token: str, content: bytes, param: str | None
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={**_auth(token), "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_gateway_body_limit_is_413(gateway: Gateway, token: str) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1)}]}
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=big, headers=_auth(token), timeout=10
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b"x" * 1024
        yield b'"}]}'

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=chunked(), headers=_auth(token), timeout=10
    )
    assert response.status_code == 413


def test_gateway_unknown_route_is_openai_shaped(gateway: Gateway, token: str) -> None:
    response = httpx.get(f"{gateway.url}/v1/nothing", headers=_auth(token), timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_gateway_cors_preflight_through_bentoml(gateway: Gateway) -> None:
    preflight = httpx.options(
        f"{gateway.url}/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.get(f"{gateway.url}/v1/models", headers={"Origin": ORIGIN}, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN


def test_gateway_key_rate_limit_through_bentoml(
    gateway: Gateway, token: str, client: openai.OpenAI
) -> None:
    created = httpx.post(
        f"{gateway.url}/admin/v1/api-keys",
        json={"name": "bot", "scopes": ["SCOPE_CHAT"], "requestsPerMinute": 2},
        headers=_auth(token),
        timeout=10,
    )
    assert created.status_code == 200, created.text
    limited = client.with_options(api_key=created.json()["secret"])
    for remaining in ("1", "0"):
        raw = limited.models.with_raw_response.list()
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
    with pytest.raises(openai.RateLimitError) as caught:
        limited.models.list()
    assert (caught.value.code, caught.value.type) == ("rate_limit_exceeded", "requests")
    assert caught.value.response.headers["retry-after"] in ("29", "30")
    # The operator's token is never limited.
    assert [m.id for m in client.models.list()] == [LIVE_MODEL]

"""The Slack and Telegram webhooks: signatures checked first, the model's reply posted
back through each platform's API.

The platforms cannot be reached from tests: a local HTTP server stands in for their
outbound APIs (Slack's chat.postMessage, Telegram's sendMessage) and the requests it
receives are checked against the platforms' documented formats. Serving is the
conftest's echo stand-in, which answers each message with a known reply.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.webhooks import slack, telegram
from ownchat_gateway.webhooks.app import create_webhooks_app
from ownchat_gateway.webhooks.replies import APOLOGY
from ownchat_gateway.webhooks.settings import WebhookSettings

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_BOT_TOKEN = "xoxb-test-bot-token"
TELEGRAM_BOT_TOKEN = "123456:ABC-test"
TELEGRAM_SECRET = "telegram-webhook-secret"


# --- the checks, as functions -------------------------------------------------------


def test_gateway_slack_signature_matches_slacks_documented_example() -> None:
    # The worked example of Slack's "Verifying requests from Slack".
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
        b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629"
        b"121.803a0bc887a14d10d2c447fce8b6703c"
    )
    assert (
        slack.slack_signature(SIGNING_SECRET, "1531420618", body)
        == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )


def test_gateway_slack_requests_are_refused_unless_signed_and_fresh() -> None:
    body = b'{"type":"event_callback"}'
    now = 1_700_000_000.0
    stamp = str(int(now))
    good = slack.slack_signature(SIGNING_SECRET, stamp, body)
    assert slack.verify_slack_request(SIGNING_SECRET, stamp, good, body, now, 300) is None
    assert slack.verify_slack_request(SIGNING_SECRET, stamp, good, body + b" ", now, 300)
    assert slack.verify_slack_request("other-secret", stamp, good, body, now, 300)
    assert slack.verify_slack_request(SIGNING_SECRET, None, good, body, now, 300)
    assert slack.verify_slack_request(SIGNING_SECRET, stamp, None, body, now, 300)
    assert slack.verify_slack_request(SIGNING_SECRET, "soon", good, body, now, 300)
    # A replay ten minutes later, with its valid signature, is stale.
    assert slack.verify_slack_request(SIGNING_SECRET, stamp, good, body, now + 600, 300) == (
        "stale X-Slack-Request-Timestamp"
    )


def _slack_event(event: dict[str, Any], event_id: str = "Ev01") -> dict[str, Any]:
    return {"type": "event_callback", "event_id": event_id, "team_id": "T1", "event": event}


def test_gateway_slack_answers_mentions_and_direct_messages_only() -> None:
    mention = slack.message_to_answer(
        _slack_event(
            {
                "type": "app_mention",
                "user": "U1",
                "text": "<@U0BOT> reset my password?",
                "ts": "1700000000.000100",
                "channel": "C1",
            }
        )
    )
    assert mention == slack.SlackMessage(
        event_id="Ev01",
        channel="C1",
        thread_ts="1700000000.000100",
        user="U1",
        text="reset my password?",
    )
    in_thread = slack.message_to_answer(
        _slack_event(
            {
                "type": "app_mention",
                "user": "U1",
                "text": "<@U0BOT> and then?",
                "ts": "1700000000.000300",
                "thread_ts": "1700000000.000100",
                "channel": "C1",
            }
        )
    )
    assert in_thread is not None and in_thread.thread_ts == "1700000000.000100"
    direct = {
        "type": "message",
        "channel_type": "im",
        "user": "U1",
        "text": "hi",
        "ts": "1.2",
        "channel": "D1",
    }
    assert slack.message_to_answer(_slack_event(direct)) is not None
    # Its own replies (bot_id), edits (subtype) and channel chatter are left alone.
    assert slack.message_to_answer(_slack_event({**direct, "bot_id": "B1"})) is None
    assert slack.message_to_answer(_slack_event({**direct, "subtype": "message_changed"})) is None
    assert slack.message_to_answer(_slack_event({**direct, "channel_type": "channel"})) is None
    assert slack.message_to_answer(_slack_event({**direct, "text": "<@U0BOT> "})) is None
    assert slack.message_to_answer({"type": "url_verification", "challenge": "x"}) is None


def test_gateway_telegram_secret_and_updates() -> None:
    assert telegram.verify_telegram_request(TELEGRAM_SECRET, TELEGRAM_SECRET) is None
    assert telegram.verify_telegram_request(TELEGRAM_SECRET, None)
    assert telegram.verify_telegram_request(TELEGRAM_SECRET, TELEGRAM_SECRET + "x")
    update = {
        "update_id": 10,
        "message": {
            "message_id": 5,
            "chat": {"id": -42, "type": "group"},
            "from": {"id": 7},
            "text": " where is my order? ",
        },
    }
    assert telegram.message_to_answer(update) == telegram.TelegramMessage(
        update_id=10, chat_id=-42, message_id=5, text="where is my order?"
    )
    command = {**update, "message": {**update["message"], "text": "/start"}}
    assert telegram.message_to_answer(command) is None
    photo = {"update_id": 11, "message": {"message_id": 6, "chat": {"id": 1}, "photo": []}}
    assert telegram.message_to_answer(photo) is None
    assert telegram.message_to_answer({"update_id": 12, "edited_message": {}}) is None


# --- the app, against stand-ins ---------------------------------------------------------


@dataclass
class _Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class _Platform:
    """The platforms' outbound APIs, on loopback: records each request, answers ok."""

    url: str
    received: list[_Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[_Received]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, timeout), (
                f"{len(self.received)} of {count} replies arrived"
            )
            return list(self.received)


@pytest.fixture
def platform() -> Iterator[_Platform]:
    state = _Platform(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length))
            answer = json.dumps({"ok": True, "result": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            with state.arrived:
                state.received.append(
                    _Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                state.arrived.notify_all()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _webhook_settings(platform: _Platform, **overrides: object) -> WebhookSettings:
    values: dict[str, object] = {
        "slack_signing_secret": SIGNING_SECRET,
        "slack_bot_token": SLACK_BOT_TOKEN,
        "slack_api_url": f"{platform.url}/api",
        "telegram_bot_token": TELEGRAM_BOT_TOKEN,
        "telegram_secret_token": TELEGRAM_SECRET,
        "telegram_api_url": platform.url,
        **overrides,
    }
    return WebhookSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def webhooks_url(
    context_factory: Callable[..., Any],
    serve_app: Callable[[Starlette], AbstractContextManager[str]],
    echo_serving: Any,
    platform: _Platform,
    tmp_path: Path,
) -> Iterator[str]:
    context = context_factory(serving_address=echo_serving.address)
    app = create_webhooks_app(GatewaySettings(home=tmp_path / "home"), _webhook_settings(platform))
    app.state.context = context
    with serve_app(Starlette(routes=[Mount("/webhooks", app=app)])) as url:
        yield f"{url}/webhooks"


def _signed(body: bytes, at: float | None = None) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    return {
        slack.TIMESTAMP_HEADER: stamp,
        slack.SIGNATURE_HEADER: slack.slack_signature(SIGNING_SECRET, stamp, body),
        "content-type": "application/json",
    }


def test_gateway_slack_url_verification(webhooks_url: str) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV"}).encode()
    response = httpx.post(f"{webhooks_url}/slack/events", content=body, headers=_signed(body))
    assert response.status_code == 200
    assert response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV"}


def test_gateway_slack_mention_is_answered_in_its_thread(
    webhooks_url: str, platform: _Platform, echo_serving: Any
) -> None:
    payload = _slack_event(
        {
            "type": "app_mention",
            "user": "U1",
            "text": "<@U0BOT> how do refunds work?",
            "ts": "1700000000.000100",
            "channel": "C024BE91L",
        },
        event_id="Ev123",
    )
    body = json.dumps(payload).encode()
    response = httpx.post(f"{webhooks_url}/slack/events", content=body, headers=_signed(body))
    assert response.status_code == 200
    # Slack retries the same event when it thinks the first delivery failed.
    retry = httpx.post(
        f"{webhooks_url}/slack/events",
        content=body,
        headers={**_signed(body), slack.RETRY_HEADER: "1"},
    )
    assert retry.status_code == 200
    (posted,) = platform.wait_for(1)
    # chat.postMessage as Slack documents it: a bearer bot token, JSON, the thread's ts.
    assert posted.path == "/api/chat.postMessage"
    assert posted.headers["authorization"] == f"Bearer {SLACK_BOT_TOKEN}"
    assert posted.headers["content-type"] == "application/json; charset=utf-8"
    assert posted.body == {
        "channel": "C024BE91L",
        "text": "Answer: how do refunds work?",
        "thread_ts": "1700000000.000100",
    }
    (asked,) = echo_serving.requests
    assert asked.conversation_id == "slack:C024BE91L:1700000000.000100"
    time.sleep(0.5)
    assert len(platform.received) == 1  # the retry got no second reply


@pytest.mark.parametrize(
    "headers",
    [
        {},  # unsigned
        {slack.TIMESTAMP_HEADER: str(int(time.time())), slack.SIGNATURE_HEADER: "v0=00"},
        "stale",
    ],
    ids=["unsigned", "bad-signature", "replayed"],
)
def test_gateway_slack_refuses_bad_signatures(
    webhooks_url: str, platform: _Platform, echo_serving: Any, headers: Any
) -> None:
    payload = _slack_event(
        {"type": "app_mention", "user": "U1", "text": "<@U0BOT> hi", "ts": "1.1", "channel": "C1"}
    )
    body = json.dumps(payload).encode()
    if headers == "stale":
        headers = _signed(body, at=time.time() - 3600)
    response = httpx.post(f"{webhooks_url}/slack/events", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    time.sleep(0.3)
    assert echo_serving.requests == [] and platform.received == []


def test_gateway_telegram_message_is_answered(
    webhooks_url: str, platform: _Platform, echo_serving: Any
) -> None:
    update = {
        "update_id": 900001,
        "message": {
            "message_id": 77,
            "date": 1700000000,
            "chat": {"id": 4242, "type": "private"},
            "from": {"id": 4242, "is_bot": False, "first_name": "Ann"},
            "text": "Is the shop open on Sunday?",
        },
    }
    response = httpx.post(
        f"{webhooks_url}/telegram", json=update, headers={telegram.SECRET_HEADER: TELEGRAM_SECRET}
    )
    assert response.status_code == 200
    (sent,) = platform.wait_for(1)
    # sendMessage as the Bot API documents it: the token in the path, JSON parameters.
    assert sent.path == f"/bot{TELEGRAM_BOT_TOKEN}/sendMessage"
    assert sent.body == {
        "chat_id": 4242,
        "text": "Answer: Is the shop open on Sunday?",
        "reply_parameters": {"message_id": 77},
    }
    assert echo_serving.requests[0].conversation_id == "telegram:4242"


def test_gateway_telegram_refuses_a_wrong_secret(
    webhooks_url: str, platform: _Platform, echo_serving: Any
) -> None:
    update = {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 1}, "text": "hi"}}
    for headers in ({}, {telegram.SECRET_HEADER: "guess"}):
        response = httpx.post(f"{webhooks_url}/telegram", json=update, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_signature"
    time.sleep(0.3)
    assert echo_serving.requests == [] and platform.received == []


def test_gateway_telegram_failure_gets_an_apology(
    webhooks_url: str, platform: _Platform, echo_serving: Any
) -> None:
    failing = echo_serving.failing_text
    update = {"update_id": 5, "message": {"message_id": 9, "chat": {"id": 3}, "text": failing}}
    response = httpx.post(
        f"{webhooks_url}/telegram", json=update, headers={telegram.SECRET_HEADER: TELEGRAM_SECRET}
    )
    assert response.status_code == 200
    (sent,) = platform.wait_for(1)
    assert sent.body["text"] == APOLOGY


def test_gateway_webhooks_malformed_and_unconfigured(
    webhooks_url: str,
    context_factory: Callable[..., Any],
    serve_app: Callable[[Starlette], AbstractContextManager[str]],
    platform: _Platform,
    tmp_path: Path,
) -> None:
    body = b"{not json"
    response = httpx.post(f"{webhooks_url}/slack/events", content=body, headers=_signed(body))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    # Without its secrets a platform's webhook does not exist.
    app = create_webhooks_app(
        GatewaySettings(home=tmp_path / "other"),
        _webhook_settings(platform, slack_signing_secret=None, telegram_bot_token=None),
    )
    app.state.context = context_factory()
    with serve_app(Starlette(routes=[Mount("/webhooks", app=app)])) as url:
        for path in ("/webhooks/slack/events", "/webhooks/telegram"):
            response = httpx.post(f"{url}{path}", content=b"{}")
            assert response.status_code == 404, path


@pytest.mark.integration
@pytest.mark.slow
def test_gateway_process_serves_the_webhooks(
    gateway_process: Callable[[Path, dict[str, str]], AbstractContextManager[str]],
    echo_serving: Any,
    platform: _Platform,
    tmp_path: Path,
) -> None:
    env = {
        "OWNCHAT_SERVING_ADDRESS": echo_serving.address,
        "OWNCHAT_GATEWAY_TELEGRAM_BOT_TOKEN": TELEGRAM_BOT_TOKEN,
        "OWNCHAT_GATEWAY_TELEGRAM_SECRET_TOKEN": TELEGRAM_SECRET,
        "OWNCHAT_GATEWAY_TELEGRAM_API_URL": platform.url,
    }
    with gateway_process(tmp_path / "home", env) as url:
        update = {"update_id": 3, "message": {"message_id": 4, "chat": {"id": 5}, "text": "hello"}}
        response = httpx.post(
            f"{url}/webhooks/telegram", json=update, headers={telegram.SECRET_HEADER: "nope"}
        )
        assert response.status_code == 401
        response = httpx.post(
            f"{url}/webhooks/telegram",
            json=update,
            headers={telegram.SECRET_HEADER: TELEGRAM_SECRET},
        )
        assert response.status_code == 200
        (sent,) = platform.wait_for(1)
        assert sent.body["text"] == "Answer: hello"
        # Counted on BentoML's /metrics, beside its HTTP metrics.
        deadline = time.monotonic() + 10
        posted = 'ownchat_gateway_webhook_replies_total{outcome="posted",platform="telegram"} 1.0'
        while posted not in (metrics := httpx.get(f"{url}/metrics").text):
            assert time.monotonic() < deadline, metrics[-2000:]
            time.sleep(0.2)
        # Slack has no secrets here: its webhook is off.
        assert httpx.post(f"{url}/webhooks/slack/events", content=b"{}").status_code == 404

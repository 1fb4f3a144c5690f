"""Slack's Events API: request signatures, the events a bot answers, chat.postMessage.

Slack signs each request: ``X-Slack-Signature`` is ``v0=`` and the hex HMAC-SHA256,
keyed by the app's signing secret, of ``v0:{X-Slack-Request-Timestamp}:{raw body}``;
a timestamp older than a few minutes is refused, so a captured request cannot be
replayed. See https://api.slack.com/authentication/verifying-requests-from-slack.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import httpx

SIGNATURE_HEADER = "x-slack-signature"
TIMESTAMP_HEADER = "x-slack-request-timestamp"
RETRY_HEADER = "x-slack-retry-num"

# A mention of the bot, <@U0123ABC>, is not part of the question.
_MENTION = re.compile(r"<@[A-Z0-9]+(\|[^>]*)?>\s*")


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature Slack sends with a request made at ``timestamp`` with ``body``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack_request(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    max_age_seconds: float,
) -> str | None:
    """None when the request is Slack's and fresh; otherwise why it is refused."""
    if not timestamp or not signature:
        return "missing Slack signature headers"
    if not timestamp.isdigit():
        return "malformed X-Slack-Request-Timestamp"
    if abs(now - int(timestamp)) > max_age_seconds:
        return "stale X-Slack-Request-Timestamp"
    if not hmac.compare_digest(slack_signature(secret, timestamp, body), signature):
        return "bad X-Slack-Signature"
    return None


@dataclass(frozen=True)
class SlackMessage:
    """A message the bot answers, in a thread of its own channel."""

    event_id: str
    channel: str
    thread_ts: str
    user: str
    text: str


def message_to_answer(payload: dict[str, Any]) -> SlackMessage | None:
    """The message in an ``event_callback`` the bot should answer, if any.

    It answers mentions (``app_mention``) and direct messages (``message`` in an
    ``im`` channel); never a bot's own message or an edit (both have a subtype or a
    ``bot_id``), which would make it talk to itself.
    """
    event = payload.get("event")
    if payload.get("type") != "event_callback" or not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind not in ("app_mention", "message"):
        return None
    if kind == "message" and event.get("channel_type") != "im":
        return None
    if event.get("bot_id") or event.get("subtype"):
        return None
    text = _MENTION.sub("", str(event.get("text", ""))).strip()
    channel = event.get("channel")
    ts = event.get("thread_ts") or event.get("ts")
    if not text or not isinstance(channel, str) or not isinstance(ts, str):
        return None
    return SlackMessage(
        event_id=str(payload.get("event_id", "")),
        channel=channel,
        thread_ts=ts,
        user=str(event.get("user", "")),
        text=text,
    )


class SlackClient:
    """Posts replies with the Web API's ``chat.postMessage``."""

    def __init__(self, api_url: str, bot_token: str, http: httpx.AsyncClient) -> None:
        self._url = api_url.rstrip("/") + "/chat.postMessage"
        self._headers = {
            "Authorization": f"Bearer {bot_token}",
            "Content-Type": "application/json; charset=utf-8",
        }
        self._http = http

    async def post_reply(self, message: SlackMessage, text: str) -> None:
        """Answers in the message's thread; raises when Slack does not take it."""
        response = await self._http.post(
            self._url,
            headers=self._headers,
            json={"channel": message.channel, "text": text, "thread_ts": message.thread_ts},
        )
        response.raise_for_status()
        body = response.json()
        if not body.get("ok"):
            raise RuntimeError(f"chat.postMessage refused: {body.get('error', 'unknown')}")

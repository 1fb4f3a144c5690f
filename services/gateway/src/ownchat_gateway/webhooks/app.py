"""The webhooks' FastAPI app, mounted by the service at ``/webhooks``.

``POST /webhooks/slack/events`` (Slack's Events API) and ``POST /webhooks/telegram``
(a Telegram bot's webhook). Neither takes an API key: each platform proves its
requests its own way, checked before anything else is read. The platform gets its
answer at once (Slack retries after 3 seconds); the model's reply is posted back
through the platform's API when it is written. A platform retrying an event this
worker has seen is acknowledged without a second reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import context_of
from ownchat_gateway.edge import add_not_found_route, new_app
from ownchat_gateway.errors import GatewayError, invalid_request
from ownchat_gateway.metrics import WEBHOOK_REPLIES
from ownchat_gateway.middleware import request_id_of
from ownchat_gateway.webhooks import slack, telegram
from ownchat_gateway.webhooks.replies import APOLOGY, REPLY_ERRORS, model_reply
from ownchat_gateway.webhooks.settings import WebhookSettings

logger = logging.getLogger("ownchat.gateway.webhooks")

# Platforms retry for minutes at most; remembering this many events covers it.
_SEEN_EVENTS = 4096
_PLATFORM_TIMEOUT_SECONDS = 30.0


class _Seen:
    """The events this worker has taken, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self._events: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first_time(self, key: str) -> bool:
        if key in self._events:
            return False
        self._events[key] = None
        if len(self._events) > self._size:
            self._events.popitem(last=False)
        return True


class WebhookState:
    """The outbound HTTP client and the replies being written, per worker."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.seen = _Seen(_SEEN_EVENTS)
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def http(self) -> httpx.AsyncClient:
        # Made on first use, inside the serving event loop.
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=_PLATFORM_TIMEOUT_SECONDS)
        return self._http

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # a running task must be referenced to be kept
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Lets the replies being written finish (or cancels them after ``timeout``)."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    async def close(self, timeout: float = 10.0) -> None:
        """Finishes the replies in flight, then closes the HTTP client."""
        await self.drain(timeout)
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def create_webhooks_app(settings: GatewaySettings, webhooks: WebhookSettings) -> FastAPI:
    """The app; ``app.state.context`` must be set before it takes requests.
    ``app.state.webhooks`` holds its :class:`WebhookState`."""
    # No API key on these paths: each handler checks its platform's proof first.
    app = new_app(settings, "ownchat webhooks", lambda path: None)
    state = WebhookState(webhooks)
    app.state.webhooks = state

    @app.post("/slack/events", response_model=None)
    async def slack_events(request: Request) -> Response:
        """Slack's Events API: the URL check, and messages to the bot."""
        if not webhooks.slack_enabled:
            raise _not_configured("Slack")
        assert webhooks.slack_signing_secret and webhooks.slack_bot_token
        body = await request.body()
        refused = slack.verify_slack_request(
            webhooks.slack_signing_secret.get_secret_value(),
            request.headers.get(slack.TIMESTAMP_HEADER),
            request.headers.get(slack.SIGNATURE_HEADER),
            body,
            time.time(),
            webhooks.webhook_max_age_seconds,
        )
        if refused:
            raise _refused(refused)
        payload = _json_object(body)
        if payload.get("type") == "url_verification":
            return JSONResponse({"challenge": str(payload.get("challenge", ""))})
        message = slack.message_to_answer(payload)
        if message is None or not state.seen.first_time(f"slack:{message.event_id}"):
            return JSONResponse({})
        client = slack.SlackClient(
            webhooks.slack_api_url, webhooks.slack_bot_token.get_secret_value(), state.http()
        )
        request_id = request_id_of(request.scope)
        state.spawn(
            _answer(
                request,
                message.text,
                f"slack:{message.channel}:{message.thread_ts}",
                lambda text: client.post_reply(message, text),
                request_id,
                platform="slack",
            )
        )
        return JSONResponse({})

    @app.post("/telegram", response_model=None)
    async def telegram_update(request: Request) -> Response:
        """A Telegram bot's webhook: text messages to the bot."""
        if not webhooks.telegram_enabled:
            raise _not_configured("Telegram")
        assert webhooks.telegram_secret_token and webhooks.telegram_bot_token
        refused = telegram.verify_telegram_request(
            webhooks.telegram_secret_token.get_secret_value(),
            request.headers.get(telegram.SECRET_HEADER),
        )
        if refused:
            raise _refused(refused)
        update = _json_object(await request.body())
        message = telegram.message_to_answer(update)
        if message is None or not state.seen.first_time(f"telegram:{message.update_id}"):
            return JSONResponse({})
        client = telegram.TelegramClient(
            webhooks.telegram_api_url, webhooks.telegram_bot_token.get_secret_value(), state.http()
        )
        request_id = request_id_of(request.scope)
        state.spawn(
            _answer(
                request,
                message.text,
                f"telegram:{message.chat_id}",
                lambda text: client.send_reply(message, text),
                request_id,
                platform="telegram",
            )
        )
        return JSONResponse({})

    add_not_found_route(app, "/webhooks")
    return app


async def _answer(
    request: Request,
    text: str,
    conversation_id: str,
    post: Callable[[str], Awaitable[None]],
    request_id: str,
    *,
    platform: str,
) -> None:
    """Writes the model's reply and posts it; an apology when the model cannot answer."""
    context = context_of(request)
    webhooks: WebhookSettings = request.app.state.webhooks.settings
    started = time.perf_counter()
    try:
        reply = await model_reply(
            context.upstream,
            text,
            conversation_id,
            request_id,
            webhooks.webhook_reply_max_tokens,
        )
    except REPLY_ERRORS as error:
        logger.warning(
            "webhook reply failed",
            extra={"request_id": request_id, "platform": platform, "error": str(error)},
        )
        reply = APOLOGY
    try:
        await post(reply)
    except (httpx.HTTPError, RuntimeError, ValueError) as error:
        logger.error(
            "posting the reply failed",
            extra={"request_id": request_id, "platform": platform, "error": str(error)},
        )
        WEBHOOK_REPLIES.labels(platform, "post_failed").inc()
        return
    WEBHOOK_REPLIES.labels(platform, "apology" if reply is APOLOGY else "posted").inc()
    logger.info(
        "webhook reply",
        extra={
            "request_id": request_id,
            "platform": platform,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise invalid_request("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise invalid_request("request body must be a JSON object")
    return payload


def _refused(reason: str) -> GatewayError:
    return GatewayError(401, reason, "invalid_request_error", code="invalid_signature")


def _not_configured(platform: str) -> GatewayError:
    return GatewayError(
        404, f"the {platform} webhook is not configured", "invalid_request_error", code="not_found"
    )

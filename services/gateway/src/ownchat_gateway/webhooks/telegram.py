"""Telegram's Bot API webhook: the secret token check, the updates a bot answers,
sendMessage.

Telegram proves an update is its own by sending back, in
``X-Telegram-Bot-Api-Secret-Token``, the ``secret_token`` given to ``setWebhook``.
See https://core.telegram.org/bots/api#setwebhook.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import httpx

SECRET_HEADER = "x-telegram-bot-api-secret-token"


def verify_telegram_request(secret: str, presented: str | None) -> str | None:
    """None when the update carries the webhook's secret; otherwise why it is refused."""
    if not presented:
        return "missing X-Telegram-Bot-Api-Secret-Token"
    if not hmac.compare_digest(secret.encode(), presented.encode()):
        return "bad X-Telegram-Bot-Api-Secret-Token"
    return None


@dataclass(frozen=True)
class TelegramMessage:
    """A text message the bot answers."""

    update_id: int
    chat_id: int
    message_id: int
    text: str


def message_to_answer(update: dict[str, Any]) -> TelegramMessage | None:
    """The text message of an update, if it has one (not a command like /start)."""
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    chat = message.get("chat")
    text = message.get("text")
    if not isinstance(chat, dict) or not isinstance(text, str) or not text.strip():
        return None
    if text.startswith("/"):
        return None
    chat_id = chat.get("id")
    message_id = message.get("message_id")
    update_id = update.get("update_id")
    if not (
        isinstance(chat_id, int) and isinstance(message_id, int) and isinstance(update_id, int)
    ):
        return None
    return TelegramMessage(
        update_id=update_id, chat_id=chat_id, message_id=message_id, text=text.strip()
    )


class TelegramClient:
    """Sends replies with the Bot API's ``sendMessage``."""

    def __init__(self, api_url: str, bot_token: str, http: httpx.AsyncClient) -> None:
        self._url = f"{api_url.rstrip('/')}/bot{bot_token}/sendMessage"
        self._http = http

    async def send_reply(self, message: TelegramMessage, text: str) -> None:
        """Answers the message, quoting it; raises when Telegram does not take it."""
        response = await self._http.post(
            self._url,
            json={
                "chat_id": message.chat_id,
                "text": text,
                "reply_parameters": {"message_id": message.message_id},
            },
        )
        body = response.json()
        if not body.get("ok"):
            raise RuntimeError(f"sendMessage refused: {body.get('description', 'unknown')}")

"""The webhooks' settings: the gateway's own table and prefix (``[gateway]``,
``OWNCHAT_GATEWAY_``), kept in a class of their own because only the webhooks read them.

A platform whose secrets are unset is off: its route answers 404.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ownchat.config import OwnchatSettings


class WebhookSettings(OwnchatSettings):
    """Secrets and API addresses of the chat platforms the gateway answers."""

    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_GATEWAY_", extra="ignore", populate_by_name=True
    )
    toml_table: ClassVar[str | None] = "gateway"

    slack_signing_secret: SecretStr | None = Field(
        default=None, description="The Slack app's signing secret; verifies each event."
    )
    slack_bot_token: SecretStr | None = Field(
        default=None, description="The bot's token (xoxb-...) that posts the replies."
    )
    slack_api_url: str = Field(
        default="https://slack.com/api", description="Slack's Web API, for chat.postMessage."
    )
    telegram_bot_token: SecretStr | None = Field(
        default=None, description="The bot's token from BotFather; sends the replies."
    )
    telegram_secret_token: SecretStr | None = Field(
        default=None,
        description="The secret_token given to setWebhook; Telegram sends it back in "
        "X-Telegram-Bot-Api-Secret-Token with every update.",
    )
    telegram_api_url: str = Field(
        default="https://api.telegram.org", description="Telegram's Bot API."
    )
    webhook_max_age_seconds: int = Field(
        default=300,
        gt=0,
        description="Oldest Slack request timestamp accepted (replayed requests are refused).",
    )
    webhook_reply_max_tokens: int = Field(
        default=512, gt=0, description="Longest reply the model writes to a chat message."
    )

    @property
    def slack_enabled(self) -> bool:
        """Whether both Slack secrets are set."""
        return self.slack_signing_secret is not None and self.slack_bot_token is not None

    @property
    def telegram_enabled(self) -> bool:
        """Whether both Telegram secrets are set."""
        return self.telegram_bot_token is not None and self.telegram_secret_token is not None

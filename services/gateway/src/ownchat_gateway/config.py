"""The gateway's settings (env prefix ``OWNCHAT_GATEWAY_``, TOML table ``[gateway]``).

The gateway is an HTTP server, so of the shared server settings it uses ``home``,
``token``, ``host``, ``port``, ``grace_seconds`` and ``log_level``; the gRPC-only ones
(``max_workers``, ``reflection``, ``metrics_port``: BentoML serves ``/metrics`` on the
HTTP port) are ignored. Where serving and the evaluator are comes from
:class:`ownchat.config.ClientSettings` (``OWNCHAT_SERVING_ADDRESS``,
``OWNCHAT_EVALUATOR_ADDRESS``). API keys and their usage counters live in
``<home>/gateway/gateway.db``, captured chats and feedback in
``<home>/gateway/captured.db``; with ``database_url`` (``OWNCHAT_GATEWAY_DATABASE_URL``)
all of them live in that PostgreSQL database instead, shared by every replica.

List settings (``cors_allowed_origins``) take a JSON list or comma-separated
values from the environment, and a TOML array from the file.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from ownchat.config import GATEWAY_DEFAULT_PORT, ServerSettings


class GatewaySettings(ServerSettings):
    """Settings of the gateway."""

    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_GATEWAY_", extra="ignore", populate_by_name=True
    )
    toml_table: ClassVar[str | None] = "gateway"

    port: int = Field(default=GATEWAY_DEFAULT_PORT, ge=0, le=65535)
    request_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Deadline of one upstream call; a whole streamed reply must fit in it.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest request body accepted; larger is 413."
    )
    max_file_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest body of a file upload (POST /v1/files, fine-tuning data); "
        "larger is 413. The file is passed on to the data service as it arrives.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Server processes; one asyncio process carries many concurrent streams.",
    )
    json_logs: bool = Field(
        default=True, description="Log JSON lines from the worker instead of BentoML's text."
    )
    tracing_sample_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of requests BentoML traces with OpenTelemetry (its exporter is "
        "set in BentoML's own configuration). At 0 no span is made at all: BentoML would "
        "otherwise build and drop one for every streamed chunk.",
    )
    default_requests_per_minute: int = Field(
        default=0,
        ge=0,
        description="Requests per minute of an API key without its own limit; 0 for no limit. "
        "The ownchat token is never limited.",
    )
    default_tokens_per_minute: int = Field(
        default=0,
        ge=0,
        description="Tokens (prompt plus completion) per minute of an API key without its own "
        "limit; 0 for no limit. Counted when a reply's usage arrives; a request is refused "
        "while the key's bucket is empty.",
    )
    default_tokens_per_day: int = Field(
        default=0,
        ge=0,
        description="Token quota per UTC day of an API key without its own; 0 for no quota.",
    )
    max_prompt_chars: int = Field(
        default=100_000,
        gt=0,
        description="Most characters of a prompt (all messages' content together); more is 400.",
    )
    max_prompt_messages: int = Field(
        default=1024, gt=0, description="Most messages of a chat prompt; more is 400."
    )
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins whose browser pages may call /v1 (CORS); empty sends no CORS "
        "headers. '*' allows any origin.",
    )
    capture_conversations: bool = Field(
        default=False,
        description="Capture every chat for the review queue unless a request says "
        "store=false; off, only requests with store=true are captured. Captured chats are "
        "scrubbed of personal data by the data service before they are kept.",
    )

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        """A JSON list or comma-separated origins from the environment."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [origin.strip() for origin in text.split(",") if origin.strip()]


def tracing_config(settings: GatewaySettings) -> dict[str, object]:
    """BentoML's tracing settings for the service: untraced, every URL is left out of
    its OpenTelemetry middleware, which otherwise builds a span for each chunk of a
    streamed reply. Given in the service's own configuration: BentoML's environment
    overrides do not reach a new-style service's tracing."""
    if settings.tracing_sample_rate == 0:
        return {"excluded_urls": [".*"]}
    return {"sample_rate": settings.tracing_sample_rate}

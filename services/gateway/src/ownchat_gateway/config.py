"""The gateway's settings (env prefix ``OWNCHAT_GATEWAY_``, TOML table ``[gateway]``).

The gateway is an HTTP server, so of the shared server settings it uses ``home``,
``token``, ``host``, ``port``, ``grace_seconds`` and ``log_level``; the gRPC-only ones
(``max_workers``, ``reflection``, ``metrics_port``: BentoML serves ``/metrics`` on the
HTTP port) are ignored. Where serving and the evaluator are comes from
:class:`ownchat.config.ClientSettings` (``OWNCHAT_SERVING_ADDRESS``,
``OWNCHAT_EVALUATOR_ADDRESS``). API keys live in ``<home>/gateway/gateway.db``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

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

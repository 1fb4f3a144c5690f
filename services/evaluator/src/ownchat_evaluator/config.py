"""The evaluator's settings (env prefix ``OWNCHAT_EVALUATOR_``, TOML table ``[evaluator]``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ownchat.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServerSettings


class EvaluatorSettings(ServerSettings):
    """Settings of the evaluator service."""

    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_EVALUATOR_", extra="ignore", populate_by_name=True
    )
    toml_table: ClassVar[str | None] = "evaluator"

    port: int = Field(default=DEFAULT_PORTS["evaluator"], ge=0, le=65535)
    metrics_port: int | None = Field(default=DEFAULT_METRICS_PORTS["evaluator"], ge=0, le=65535)
    torch_threads: int = Field(
        default=0, ge=0, description="CPU threads for torch; 0 = torch's default."
    )
    batch_size: int = Field(default=8, gt=0, description="Conversations per forward pass.")
    max_length: int = Field(default=2048, gt=0, description="Tokens per conversation at most.")

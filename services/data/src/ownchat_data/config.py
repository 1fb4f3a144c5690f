"""The data service's settings (env prefix ``OWNCHAT_DATA_``, TOML table ``[data]``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ownchat.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServerSettings


class DataSettings(ServerSettings):
    """Settings of the data service."""

    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_DATA_", extra="ignore", populate_by_name=True
    )
    toml_table: ClassVar[str | None] = "data"

    port: int = Field(default=DEFAULT_PORTS["data"], ge=0, le=65535)
    metrics_port: int | None = Field(default=DEFAULT_METRICS_PORTS["data"], ge=0, le=65535)
    max_upload_bytes: int = Field(
        default=1024**3, gt=0, description="Largest source file accepted in one upload."
    )
    pii_salt: SecretStr | None = Field(
        default=None,
        description="Secret key of PII pseudonyms; generated into the service's state when unset.",
    )
    max_record_bytes: int = Field(
        default=8 * 1024**2, gt=0, description="Largest single record (line) of a source file."
    )

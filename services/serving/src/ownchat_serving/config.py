"""The serving service's settings (env prefix ``OWNCHAT_SERVING_``, TOML table ``[serving]``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ownchat.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServerSettings
from ownchat_serving.engine import EngineOptions


class ServingSettings(ServerSettings):
    """Settings of the serving service."""

    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_SERVING_", extra="ignore", populate_by_name=True
    )
    toml_table: ClassVar[str | None] = "serving"

    port: int = Field(default=DEFAULT_PORTS["serving"], ge=0, le=65535)
    metrics_port: int | None = Field(default=DEFAULT_METRICS_PORTS["serving"], ge=0, le=65535)
    max_model_len: int = Field(
        default=2048,
        gt=0,
        description="Longest context (prompt plus reply) in tokens; the model's own limit "
        "applies when it is lower.",
    )
    kv_cache_bytes: int = Field(
        default=1024**3,
        gt=0,
        description="Memory reserved for the KV cache (host RAM on CPU, GPU memory on CUDA). "
        "VLLM_CPU_KVCACHE_SPACE (GiB), when set, takes precedence on CPU.",
    )
    enforce_eager: bool = Field(
        default=True,
        description="Run the model eagerly: no graph capture or compilation, so a deployment "
        "starts in seconds; turn off on GPUs for faster decoding.",
    )
    dtype: str = Field(default="auto", description="Weights' dtype: auto, bfloat16, float32...")
    max_num_seqs: int | None = Field(
        default=None, gt=0, description="Most sequences in one engine step; the engine's default."
    )
    seed: int = Field(default=0, ge=0, description="The engine's seed for unseeded sampling.")
    resolve_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Deadline of the trainer's GetModel, which imports a base model on first use.",
    )
    drain_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long replies in flight on a replaced deployment may finish before "
        "its engine is shut down.",
    )

    def engine_options(self) -> EngineOptions:
        """The engine's part of these settings."""
        return EngineOptions(
            max_model_len=self.max_model_len,
            kv_cache_bytes=self.kv_cache_bytes,
            enforce_eager=self.enforce_eager,
            dtype=self.dtype,
            max_num_seqs=self.max_num_seqs,
            seed=self.seed,
        )

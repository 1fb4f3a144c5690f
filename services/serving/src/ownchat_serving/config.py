"""The serving service's settings (env prefix ``OWNCHAT_SERVING_``, TOML table ``[serving]``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ownchat.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServerSettings
from ownchat_serving.core import ServingLimits
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
    prefix_caching: bool = Field(
        default=True,
        description="Reuse the KV cache of prompt prefixes seen before (a shared system "
        "prompt, a conversation's earlier turns) instead of computing them again.",
    )
    dtype: str = Field(
        default="auto",
        description="Weights' dtype: auto, bfloat16, float32... auto is the checkpoint's, "
        "except float32 on a CPU without native bfloat16 (no AVX512-BF16 or AMX).",
    )
    max_num_seqs: int | None = Field(
        default=None, gt=0, description="Most sequences in one engine step; the engine's default."
    )
    seed: int = Field(default=0, ge=0, description="The engine's seed for unseeded sampling.")
    max_loras: int = Field(
        default=4,
        gt=0,
        description="LoRA adapters one vLLM engine holds at once (adapters of one base model "
        "share its engine; more are swapped in as requests need them).",
    )
    max_lora_rank: int = Field(
        default=16,
        gt=0,
        description="Largest LoRA rank an engine accepts; an adapter of a higher rank fails "
        "its deployment. vLLM takes 8, 16, 32, 64, 128, 256, 320 or 512.",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="GPUs one engine's weights are split over (vLLM's tensor parallelism); "
        "the service's GPUs must number at least this.",
    )
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

    max_running_replies: int = Field(
        default=64,
        gt=0,
        description="Replies one engine produces at once; later requests wait. Match it to "
        "the engine's batch (max_num_seqs) for vLLM.",
    )
    max_waiting_replies: int = Field(
        default=128,
        ge=0,
        description="Requests that may wait for one engine; past that, Generate answers "
        "RESOURCE_EXHAUSTED with a retry delay instead of queueing without bound.",
    )
    restart_backoff_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait between attempts to start a dead engine again.",
    )

    def limits(self) -> ServingLimits:
        """The admission, drain and restart part of these settings."""
        return ServingLimits(
            max_running=self.max_running_replies,
            max_waiting=self.max_waiting_replies,
            drain_seconds=self.drain_seconds,
            restart_backoff=(
                min(1.0, self.restart_backoff_max_seconds),
                self.restart_backoff_max_seconds,
            ),
        )

    def engine_options(self) -> EngineOptions:
        """The engine's part of these settings."""
        return EngineOptions(
            max_model_len=self.max_model_len,
            kv_cache_bytes=self.kv_cache_bytes,
            enforce_eager=self.enforce_eager,
            prefix_caching=self.prefix_caching,
            dtype=self.dtype,
            max_num_seqs=self.max_num_seqs,
            seed=self.seed,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            tensor_parallel_size=self.tensor_parallel_size,
        )

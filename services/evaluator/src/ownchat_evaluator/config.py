"""The evaluator's settings (env prefix ``OWNCHAT_EVALUATOR_``, TOML table ``[evaluator]``).

The promotion gate's thresholds are the nested table ``[evaluator.gate]``, or
``OWNCHAT_EVALUATOR_GATE__<THRESHOLD>`` in the environment (see ``gate.py``).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ownchat.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServerSettings
from ownchat_evaluator.bootstrap import DEFAULT_RESAMPLES
from ownchat_evaluator.core import RunOptions
from ownchat_evaluator.gate import GateThresholds
from ownchat_evaluator.review.model import MAX_REVIEWS_WANTED


class EvaluatorSettings(ServerSettings):
    """Settings of the evaluator service."""

    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_EVALUATOR_",
        extra="ignore",
        populate_by_name=True,
        env_nested_delimiter="__",
    )
    toml_table: ClassVar[str | None] = "evaluator"

    port: int = Field(default=DEFAULT_PORTS["evaluator"], ge=0, le=65535)
    metrics_port: int | None = Field(default=DEFAULT_METRICS_PORTS["evaluator"], ge=0, le=65535)
    torch_threads: int = Field(
        default=0, ge=0, description="CPU threads for torch; 0 = torch's default."
    )
    batch_size: int = Field(
        default=64, gt=0, description="Perplexity windows per forward pass at most."
    )
    tokens_per_batch: int = Field(
        default=0,
        ge=0,
        description="Padded tokens per perplexity forward pass at most; "
        "0: 4096 on a CPU, 32768 on a GPU.",
    )
    max_length: int = Field(
        default=2048,
        gt=1,
        description="Default perplexity context (tokens per window); the model's context caps it.",
    )
    generation_batch_size: int = Field(
        default=16, gt=0, description="Prompts generated together in one batch."
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='Where runs compute: "auto" (the first GPU if any, else the CPU), "cuda:N"...',
    )
    bootstrap_resamples: int = Field(
        default=DEFAULT_RESAMPLES,
        ge=100,
        le=100_000,
        description="Bootstrap resamples of confidence intervals and comparisons by default.",
    )
    gate: GateThresholds = Field(
        default_factory=GateThresholds, description="The promotion gate's thresholds."
    )

    def run_options(self) -> RunOptions:
        """How runs are computed, for the core."""
        return RunOptions(
            max_length=self.max_length,
            tokens_per_batch=self.tokens_per_batch,
            max_rows=self.batch_size,
            generation_batch_size=self.generation_batch_size,
            device=self.device,
            resamples=self.bootstrap_resamples,
        )

    review_lease_seconds: float = Field(
        default=1800.0,
        gt=0,
        le=7 * 24 * 3600,
        description="How long a reviewer holds a review item before it returns to the queue.",
    )
    reviews_per_item: int = Field(
        default=1,
        ge=1,
        le=MAX_REVIEWS_WANTED,
        description="Reviewers per review item unless an enqueue says otherwise.",
    )

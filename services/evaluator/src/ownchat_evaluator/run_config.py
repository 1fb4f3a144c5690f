"""What a run computes and how: stored with the run so that it can be repeated.

The metric names are the evaluator's own; the servicer maps them to the
proto's ``Metric`` values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ownchat_evaluator.checks import CheckKind, TaskCheck
from ownchat_evaluator.replies import DEFAULT_REFUSAL_PATTERNS

PERPLEXITY = "perplexity"
BLEU = "bleu"
CHRF = "chrf"
TASK_ACCURACY = "task_accuracy"
RESPONSE_LENGTH = "response_length"
RESPONSE_LENGTH_P95 = "response_length_p95"
REFUSAL_RATE = "refusal_rate"

# Every metric, in the order results are reported.
METRICS = (
    PERPLEXITY,
    BLEU,
    CHRF,
    TASK_ACCURACY,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_P95,
    REFUSAL_RATE,
)
# The metrics of generated replies: asking for any of them generates.
GENERATION_METRICS = frozenset(METRICS) - {PERPLEXITY}
DEFAULT_MAX_NEW_TOKENS = 128

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
# The precisions a run computes in (the model's weights and activations).
PRECISIONS = (FLOAT32, BFLOAT16)


def canonical_metrics(metrics: list[str]) -> list[str]:
    """The metrics in report order, without repeats; the mean length brings its p95."""
    wanted = set(metrics)
    if RESPONSE_LENGTH in wanted:
        wanted.add(RESPONSE_LENGTH_P95)
    return [m for m in METRICS if m in wanted]


@dataclass(frozen=True)
class RunConfig:
    """A run's configuration, resolved: no field is left to a default later.

    ``context_length`` and ``stride`` are the perplexity windows; a run stored
    before they were configurable has 0 for both (whole conversations,
    truncated at the evaluator's ``max_length``).

    ``precision`` is what the model computes in, one of ``PRECISIONS``; a run
    stored before it was a setting has "" (the device's default: float32 on a
    CPU, bfloat16 on a GPU), resolved when the run computes.
    """

    metrics: list[str]
    max_samples: int = 0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    context_length: int = 0
    stride: int = 0
    task_check: TaskCheck | None = None
    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS))
    seed: int = 0
    precision: str = ""

    @property
    def generates(self) -> bool:
        """Whether the run generates replies."""
        return any(m in GENERATION_METRICS for m in self.metrics)

    @property
    def passes(self) -> int:
        """How many passes over the samples the run makes (scoring, generating)."""
        return int(PERPLEXITY in self.metrics) + int(self.generates)

    def to_json(self) -> str:
        """The stored form."""
        value: dict[str, Any] = {
            "metrics": self.metrics,
            "max_samples": self.max_samples,
            "max_new_tokens": self.max_new_tokens,
            "context_length": self.context_length,
            "stride": self.stride,
            "task_check": None
            if self.task_check is None
            else {"kind": self.task_check.kind.value, "pattern": self.task_check.pattern},
            "refusal_patterns": self.refusal_patterns,
            "seed": self.seed,
            "precision": self.precision,
        }
        return json.dumps(value, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, metrics: list[str], max_samples: int) -> RunConfig:
        """Reads the stored form; ``metrics`` and ``max_samples`` fill in older runs' gaps."""
        value = json.loads(text) if text else {}
        check = value.get("task_check")
        return cls(
            metrics=value.get("metrics", metrics),
            max_samples=value.get("max_samples", max_samples),
            max_new_tokens=value.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            context_length=value.get("context_length", 0),
            stride=value.get("stride", 0),
            task_check=None
            if check is None
            else TaskCheck(CheckKind(check["kind"]), check["pattern"]),
            refusal_patterns=value.get("refusal_patterns", list(DEFAULT_REFUSAL_PATTERNS)),
            seed=value.get("seed", 0),
            precision=value.get("precision", ""),
        )

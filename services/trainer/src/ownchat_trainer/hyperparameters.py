"""Training hyperparameters: what a request may leave unset, the checks, the defaults.

A request's unset fields take defaults ("auto"); the job stores and reports the
resolved values, so a job can be read back and repeated exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ownchat.errors import FieldViolation

DEFAULT_EPOCHS = 1.0
DEFAULT_LEARNING_RATE = 5e-5
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_SEQ_LENGTH = 512
DEFAULT_WARMUP_RATIO = 0.0

MAX_EPOCHS = 100.0
MAX_STEPS = 10_000_000
MAX_LEARNING_RATE = 1.0
MAX_BATCH_SIZE = 1024
MIN_SEQ_LENGTH = 8
MAX_SEQ_LENGTH = 131_072

# Fields of other methods; refused for full fine-tuning rather than ignored.
_LORA_FIELDS = ("lora_rank", "lora_alpha")
_DPO_FIELDS = ("dpo_beta",)


@dataclass(frozen=True)
class Hyperparameters:
    """Hyperparameters of a job; None means "not given" before resolution."""

    epochs: float | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    max_seq_length: int | None = None
    warmup_ratio: float | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    checkpoint_interval_steps: int | None = None
    eval_interval_steps: int | None = None
    dpo_beta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The set fields, for storage."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Hyperparameters:
        """Reads what :meth:`to_dict` wrote."""
        return cls(**value)


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """Every value a full fine-tuning run needs, defaults applied."""

    epochs: float
    max_steps: int
    learning_rate: float
    batch_size: int
    max_seq_length: int
    warmup_ratio: float
    checkpoint_interval_steps: int
    eval_interval_steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ResolvedHyperparameters:
        return cls(**value)

    def as_requested(self) -> Hyperparameters:
        """The same values in the request's shape, for reporting."""
        return Hyperparameters(**asdict(self))


def _check_range(
    violations: list[FieldViolation],
    name: str,
    value: float | None,
    low: float,
    high: float,
    low_open: bool = False,
) -> None:
    if value is None:
        return
    too_low = value <= low if low_open else value < low
    if too_low or value > high or (isinstance(value, float) and math.isnan(value)):
        bracket = "(" if low_open else "["
        violations.append(
            FieldViolation(f"hyperparameters.{name}", f"must be within {bracket}{low:g}, {high:g}]")
        )


def check_full(hyperparameters: Hyperparameters) -> list[FieldViolation]:
    """Every problem with hyperparameters for full fine-tuning; empty when fine."""
    h = hyperparameters
    violations: list[FieldViolation] = []
    _check_range(violations, "epochs", h.epochs, 0, MAX_EPOCHS, low_open=True)
    _check_range(violations, "max_steps", h.max_steps, 1, MAX_STEPS)
    _check_range(violations, "learning_rate", h.learning_rate, 0, MAX_LEARNING_RATE, low_open=True)
    _check_range(violations, "batch_size", h.batch_size, 1, MAX_BATCH_SIZE)
    _check_range(violations, "max_seq_length", h.max_seq_length, MIN_SEQ_LENGTH, MAX_SEQ_LENGTH)
    _check_range(violations, "warmup_ratio", h.warmup_ratio, 0, 1)
    _check_range(violations, "checkpoint_interval_steps", h.checkpoint_interval_steps, 1, MAX_STEPS)
    _check_range(violations, "eval_interval_steps", h.eval_interval_steps, 1, MAX_STEPS)
    for name in _LORA_FIELDS:
        if getattr(h, name) is not None:
            violations.append(
                FieldViolation(f"hyperparameters.{name}", "applies only to the SFT_LORA method")
            )
    for name in _DPO_FIELDS:
        if getattr(h, name) is not None:
            violations.append(
                FieldViolation(f"hyperparameters.{name}", "applies only to the DPO method")
            )
    return violations


def resolve_full(hyperparameters: Hyperparameters, train_samples: int) -> ResolvedHyperparameters:
    """Applies the defaults; ``max_steps`` defaults to epochs over the training split."""
    h = hyperparameters
    epochs = h.epochs if h.epochs is not None else DEFAULT_EPOCHS
    batch_size = h.batch_size if h.batch_size is not None else DEFAULT_BATCH_SIZE
    steps_per_epoch = math.ceil(max(train_samples, 1) / batch_size)
    max_steps = h.max_steps if h.max_steps is not None else math.ceil(epochs * steps_per_epoch)
    max_steps = max(max_steps, 1)
    return ResolvedHyperparameters(
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=h.learning_rate if h.learning_rate is not None else DEFAULT_LEARNING_RATE,
        batch_size=batch_size,
        max_seq_length=(
            h.max_seq_length if h.max_seq_length is not None else DEFAULT_MAX_SEQ_LENGTH
        ),
        warmup_ratio=h.warmup_ratio if h.warmup_ratio is not None else DEFAULT_WARMUP_RATIO,
        # Unset: only the final checkpoint, and validation only at the end.
        checkpoint_interval_steps=min(h.checkpoint_interval_steps or max_steps, max_steps),
        eval_interval_steps=min(h.eval_interval_steps or max_steps, max_steps),
    )

"""Training methods and their hyperparameters: what a request may leave unset, the checks,
the defaults.

A request's unset fields take defaults ("auto") that depend on the method; the
job stores and reports the resolved values, so a job can be read back and
repeated exactly.

The defaults per method:

- SFT_FULL: learning rate 5e-5.
- SFT_LORA: a LoRA adapter of rank 16 and alpha twice the rank (32), learning
  rate 2e-4 (an adapter starts at zero and needs larger steps than full
  weights).
- DPO: beta 0.1, and a LoRA adapter by default (rank 16, alpha 32, learning
  rate 5e-5): its reference model is the base with the adapter switched off,
  so no second copy of the weights is held, and the adapter keeps the policy
  close to the reference by construction. ``lora_rank=0`` asks for full DPO
  (learning rate 5e-6, a tenth of SFT's, as DPO's gradients are large).

Every method: one epoch, batch size 4 (samples, or pairs for DPO, per
optimizer step), 512 tokens a sequence (never more than the base model's
context), no warm-up, a checkpoint and a validation only at the end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

from ownchat.errors import FieldViolation


class TrainingMethod(Enum):
    """How a job trains; the values are the worker's ``method`` names."""

    SFT_FULL = "sft_full"
    SFT_LORA = "sft_lora"
    DPO = "dpo"

    @property
    def dataset_kind(self) -> str:
        """The kind of dataset version the method trains on."""
        return "preference" if self is TrainingMethod.DPO else "chat"


DEFAULT_EPOCHS = 1.0
DEFAULT_LEARNING_RATE = 5e-5
DEFAULT_LORA_LEARNING_RATE = 2e-4
DEFAULT_DPO_LEARNING_RATE = 5e-6
DEFAULT_DPO_LORA_LEARNING_RATE = 5e-5
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_SEQ_LENGTH = 512
DEFAULT_WARMUP_RATIO = 0.0
DEFAULT_LORA_RANK = 16
# alpha / rank scales the adapter's output; 2 is the usual choice.
DEFAULT_LORA_ALPHA_PER_RANK = 2.0
DEFAULT_DPO_BETA = 0.1

MAX_EPOCHS = 100.0
MAX_STEPS = 10_000_000
MAX_LEARNING_RATE = 1.0
MAX_BATCH_SIZE = 1024
MIN_SEQ_LENGTH = 8
MAX_SEQ_LENGTH = 131_072
MAX_LORA_RANK = 1024
MAX_LORA_ALPHA = 4096.0
MAX_DPO_BETA = 10.0


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
    """Every value a run needs, defaults applied.

    ``lora_rank`` 0 means every weight trains (no adapter); ``dpo_beta`` 0
    means the method is not DPO.
    """

    epochs: float
    max_steps: int
    learning_rate: float
    batch_size: int
    max_seq_length: int
    warmup_ratio: float
    checkpoint_interval_steps: int
    eval_interval_steps: int
    # Defaults so that jobs stored before these fields existed read back.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    dpo_beta: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ResolvedHyperparameters:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})

    def as_requested(self) -> Hyperparameters:
        """The same values in the request's shape, for reporting.

        The LoRA fields appear only when an adapter is trained, ``dpo_beta``
        only for DPO: a full DPO job reports neither LoRA field.
        """
        values = asdict(self)
        if self.lora_rank <= 0:
            del values["lora_rank"], values["lora_alpha"]
        if self.dpo_beta <= 0:
            del values["dpo_beta"]
        return Hyperparameters(**values)


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


def _not_for(violations: list[FieldViolation], name: str, value: Any, why: str) -> None:
    # Fields of another method are refused rather than silently ignored.
    if value is not None:
        violations.append(FieldViolation(f"hyperparameters.{name}", why))


def check(hyperparameters: Hyperparameters, method: TrainingMethod | None) -> list[FieldViolation]:
    """Every problem with hyperparameters for a method; empty when fine.

    With no (known) method, only the fields every method shares are checked.
    """
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
    if method is None:
        return violations
    lora_only = "applies only to the SFT_LORA and DPO methods"
    if method is TrainingMethod.SFT_FULL:
        _not_for(violations, "lora_rank", h.lora_rank, lora_only)
        _not_for(violations, "lora_alpha", h.lora_alpha, lora_only)
    elif method is TrainingMethod.SFT_LORA:
        _check_range(violations, "lora_rank", h.lora_rank, 1, MAX_LORA_RANK)
    else:
        # 0 asks for full DPO: every weight trains against a frozen reference.
        _check_range(violations, "lora_rank", h.lora_rank, 0, MAX_LORA_RANK)
        if h.lora_rank == 0:
            _not_for(violations, "lora_alpha", h.lora_alpha, "applies only with lora_rank > 0")
    if method is not TrainingMethod.SFT_FULL:
        _check_range(violations, "lora_alpha", h.lora_alpha, 0, MAX_LORA_ALPHA, low_open=True)
    if method is TrainingMethod.DPO:
        _check_range(violations, "dpo_beta", h.dpo_beta, 0, MAX_DPO_BETA, low_open=True)
    else:
        _not_for(violations, "dpo_beta", h.dpo_beta, "applies only to the DPO method")
    return violations


def _learning_rate(method: TrainingMethod, lora_rank: int) -> float:
    if method is TrainingMethod.DPO:
        return DEFAULT_DPO_LORA_LEARNING_RATE if lora_rank else DEFAULT_DPO_LEARNING_RATE
    return DEFAULT_LORA_LEARNING_RATE if lora_rank else DEFAULT_LEARNING_RATE


def resolve(
    hyperparameters: Hyperparameters,
    method: TrainingMethod,
    train_samples: int,
    context_length: int | None = None,
) -> ResolvedHyperparameters:
    """Applies the method's defaults to checked hyperparameters.

    ``max_steps`` defaults to epochs over the training split (samples, or
    pairs for DPO); ``max_seq_length`` to 512 tokens or the base model's
    ``context_length`` when that is shorter.
    """
    h = hyperparameters
    epochs = h.epochs if h.epochs is not None else DEFAULT_EPOCHS
    batch_size = h.batch_size if h.batch_size is not None else DEFAULT_BATCH_SIZE
    steps_per_epoch = math.ceil(max(train_samples, 1) / batch_size)
    max_steps = h.max_steps if h.max_steps is not None else math.ceil(epochs * steps_per_epoch)
    max_steps = max(max_steps, 1)
    if method is TrainingMethod.SFT_FULL:
        lora_rank = 0
    else:
        lora_rank = h.lora_rank if h.lora_rank is not None else DEFAULT_LORA_RANK
    lora_alpha = 0.0
    if lora_rank:
        lora_alpha = (
            h.lora_alpha if h.lora_alpha is not None else DEFAULT_LORA_ALPHA_PER_RANK * lora_rank
        )
    max_seq_length = h.max_seq_length
    if max_seq_length is None:
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, context_length or DEFAULT_MAX_SEQ_LENGTH)
    return ResolvedHyperparameters(
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=(
            h.learning_rate if h.learning_rate is not None else _learning_rate(method, lora_rank)
        ),
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        warmup_ratio=h.warmup_ratio if h.warmup_ratio is not None else DEFAULT_WARMUP_RATIO,
        # Unset: only the final checkpoint, and validation only at the end.
        checkpoint_interval_steps=min(h.checkpoint_interval_steps or max_steps, max_steps),
        eval_interval_steps=min(h.eval_interval_steps or max_steps, max_steps),
        lora_rank=lora_rank,
        lora_alpha=float(lora_alpha),
        dpo_beta=(
            (h.dpo_beta if h.dpo_beta is not None else DEFAULT_DPO_BETA)
            if method is TrainingMethod.DPO
            else 0.0
        ),
    )


def check_full(hyperparameters: Hyperparameters) -> list[FieldViolation]:
    """Every problem with hyperparameters for full supervised fine-tuning."""
    return check(hyperparameters, TrainingMethod.SFT_FULL)


def resolve_full(hyperparameters: Hyperparameters, train_samples: int) -> ResolvedHyperparameters:
    """The defaults of full supervised fine-tuning; see :func:`resolve`."""
    return resolve(hyperparameters, TrainingMethod.SFT_FULL, train_samples)

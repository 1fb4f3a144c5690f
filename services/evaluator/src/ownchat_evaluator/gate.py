"""The promotion gate: may a model version replace the live one?

Thresholds come from the evaluator's settings (TOML table ``[evaluator.gate]``,
or ``OWNCHAT_EVALUATOR_GATE__<NAME>``); a threshold left unset is not checked,
and with none set every version passes. Each configured threshold becomes one
check with the measured value and, in words, why it passed or failed. A value
that cannot be measured (no run, a metric the run did not compute, too few
human reviews) fails its check. The baseline checks (perplexity regression,
human win rate) pass when there is no baseline version at all: a first
deployment has nothing to regress from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ownchat_evaluator.run_config import BLEU, CHRF, PERPLEXITY, REFUSAL_RATE, TASK_ACCURACY
from ownchat_evaluator.store import EvalRun

WinRateLookup = Callable[[str, str], "tuple[float, int] | None"]
"""(candidate model id, baseline model id) -> (win rate, ties as half; pairwise reviews)."""


class GateThresholds(BaseModel):
    """The promotion gate's thresholds; unset ones are not checked."""

    model_config = ConfigDict(extra="forbid")

    max_perplexity: float | None = Field(default=None, gt=0, description="Highest perplexity.")
    max_perplexity_regression: float | None = Field(
        default=None,
        ge=0,
        description="Largest relative perplexity increase over the baseline's run "
        "on the same data (0.05: at most 5% higher).",
    )
    min_bleu: float | None = Field(default=None, ge=0, le=100, description="Lowest BLEU.")
    min_chrf: float | None = Field(default=None, ge=0, le=100, description="Lowest chrF.")
    min_task_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Lowest share of task checks passed."
    )
    max_refusal_rate: float | None = Field(
        default=None, ge=0, le=1, description="Highest share of replies that refuse."
    )
    min_human_win_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lowest human win rate over the baseline (ties count half).",
    )
    min_human_reviews: int = Field(
        default=20, ge=1, description="Pairwise reviews needed before the win rate counts."
    )

    def run_thresholds(self) -> bool:
        """Whether a threshold needs the candidate's evaluation run."""
        return any(getattr(self, name) is not None for name, *_ in _METRIC_CHECKS) or (
            self.max_perplexity_regression is not None
        )

    def any_configured(self) -> bool:
        """Whether any threshold is set."""
        return self.run_thresholds() or self.min_human_win_rate is not None


# Setting, metric, whether it is a maximum, the metric's name in words.
_METRIC_CHECKS = (
    ("max_perplexity", PERPLEXITY, True, "perplexity"),
    ("min_bleu", BLEU, False, "BLEU"),
    ("min_chrf", CHRF, False, "chrF"),
    ("min_task_accuracy", TASK_ACCURACY, False, "task accuracy"),
    ("max_refusal_rate", REFUSAL_RATE, True, "refusal rate"),
)


@dataclass(frozen=True)
class GateCheck:
    """One configured threshold and how the candidate did."""

    name: str
    threshold: str
    limit: float
    value: float | None
    passed: bool
    reason: str

    @property
    def measured(self) -> bool:
        """Whether a value was measured."""
        return self.value is not None


@dataclass(frozen=True)
class GateInputs:
    """What the gate judges: the candidate's run and the baseline's, when found.

    ``run_missing`` and ``baseline_run_missing`` say why a run is None;
    ``win_rate`` is the review queue's answer for the two versions.
    """

    model_id: str
    run: EvalRun | None
    run_missing: str
    baseline_model_id: str
    baseline_run: EvalRun | None
    baseline_run_missing: str
    win_rate: tuple[float, int] | None


@dataclass(frozen=True)
class GateVerdict:
    """Whether every check passed, each check, and the verdict in words."""

    passed: bool
    checks: list[GateCheck]
    summary: str
    eval_run_id: str
    baseline_eval_run_id: str


def _number(value: float) -> str:
    return f"{value:.4g}"


def _metric_check(
    name: str, metric: str, is_max: bool, label: str, limit: float, inputs: GateInputs
) -> GateCheck:
    threshold = f"{label} {'<=' if is_max else '>='} {_number(limit)}"
    if inputs.run is None:
        return GateCheck(name, threshold, limit, None, False, inputs.run_missing)
    result = inputs.run.result(metric)
    if result is None or math.isnan(result.value):
        reason = f"run {inputs.run.id} has no {label}: evaluate with it to check {name}"
        return GateCheck(name, threshold, limit, None, False, reason)
    passed = result.value <= limit if is_max else result.value >= limit
    relation = (
        ("within" if passed else "above") if is_max else ("at or above" if passed else "below")
    )
    bound = "maximum" if is_max else "minimum"
    reason = f"{label} {_number(result.value)} is {relation} the {bound} {_number(limit)}"
    return GateCheck(name, threshold, limit, result.value, passed, reason)


def _regression_check(limit: float, inputs: GateInputs) -> GateCheck:
    name = "max_perplexity_regression"
    threshold = f"perplexity regression <= {_number(limit * 100)}%"
    if not inputs.baseline_model_id and inputs.baseline_run is None:
        return GateCheck(
            name, threshold, limit, None, True, "no baseline version: nothing to regress from"
        )
    if inputs.run is None:
        return GateCheck(name, threshold, limit, None, False, inputs.run_missing)
    if inputs.baseline_run is None:
        return GateCheck(name, threshold, limit, None, False, inputs.baseline_run_missing)
    ours, theirs = inputs.run.result(PERPLEXITY), inputs.baseline_run.result(PERPLEXITY)
    if ours is None or theirs is None:
        lacking = inputs.run.id if ours is None else inputs.baseline_run.id
        reason = f"run {lacking} has no perplexity: evaluate with it to check {name}"
        return GateCheck(name, threshold, limit, None, False, reason)
    change = ours.value / theirs.value - 1
    passed = change <= limit
    reason = (
        f"perplexity {_number(ours.value)} is {_number(change * 100)}% "
        f"{'above' if change >= 0 else 'below'} the baseline's {_number(theirs.value)} "
        f"(run {inputs.baseline_run.id}); at most {_number(limit * 100)}% allowed"
    )
    return GateCheck(name, threshold, limit, change, passed, reason)


def _win_rate_check(limit: float, minimum_reviews: int, inputs: GateInputs) -> GateCheck:
    name = "min_human_win_rate"
    threshold = f"human win rate >= {_number(limit)} over >= {minimum_reviews} pairwise reviews"
    if not inputs.baseline_model_id:
        return GateCheck(
            name, threshold, limit, None, True, "no baseline version: no pairwise reviews to weigh"
        )
    pair = f"{inputs.model_id} against {inputs.baseline_model_id}"
    if inputs.win_rate is None or inputs.win_rate[1] == 0:
        return GateCheck(name, threshold, limit, None, False, f"no pairwise reviews of {pair}")
    rate, reviews = inputs.win_rate
    if reviews < minimum_reviews:
        reason = (
            f"only {reviews} pairwise reviews of {pair}; min_human_reviews is {minimum_reviews}"
        )
        return GateCheck(name, threshold, limit, rate, False, reason)
    passed = rate >= limit
    reason = (
        f"human win rate {_number(rate)} over {reviews} reviews of {pair} is "
        f"{'at or above' if passed else 'below'} the minimum {_number(limit)}"
    )
    return GateCheck(name, threshold, limit, rate, passed, reason)


def check_gate(thresholds: GateThresholds, inputs: GateInputs) -> GateVerdict:
    """Judges a candidate against every configured threshold."""
    checks = [
        _metric_check(name, metric, is_max, label, limit, inputs)
        for name, metric, is_max, label in _METRIC_CHECKS
        if (limit := getattr(thresholds, name)) is not None
    ]
    if thresholds.max_perplexity_regression is not None:
        checks.append(_regression_check(thresholds.max_perplexity_regression, inputs))
    if thresholds.min_human_win_rate is not None:
        checks.append(
            _win_rate_check(thresholds.min_human_win_rate, thresholds.min_human_reviews, inputs)
        )
    failed = [c for c in checks if not c.passed]
    if not checks:
        summary = "passed: no promotion thresholds are configured"
    elif failed:
        summary = "failed: " + "; ".join(f"{c.name} ({c.threshold}): {c.reason}" for c in failed)
    else:
        summary = f"passed: all {len(checks)} checks"
    return GateVerdict(
        passed=not failed,
        checks=checks,
        summary=summary,
        eval_run_id=inputs.run.id if inputs.run else "",
        baseline_eval_run_id=inputs.baseline_run.id if inputs.baseline_run else "",
    )

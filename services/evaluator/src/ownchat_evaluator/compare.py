"""Comparing two finished runs on the same samples: deltas with paired bootstrap intervals.

Two runs compare when they evaluated the same dataset version's same samples
and computed a metric the same way (the same perplexity windows, the same
generation length, task check and refusal phrases); otherwise the comparison is
refused, saying which condition failed. Each delta is the candidate's value
minus the baseline's, with the 95% interval of that difference over paired
resamples of the samples (corpus BLEU and chrF recomputed per resample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ownchat.errors import FailedPreconditionError, PreconditionViolation
from ownchat_evaluator.bootstrap import paired_interval
from ownchat_evaluator.run_config import (
    BLEU,
    CHRF,
    METRICS,
    PERPLEXITY,
    REFUSAL_RATE,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_P95,
    TASK_ACCURACY,
)
from ownchat_evaluator.statistics import statistic
from ownchat_evaluator.store import EvalRun, RunState, SampleOutput

# The configuration each metric depends on beyond the samples.
_DEPENDS_ON = {
    PERPLEXITY: ("context_length", "stride"),
    BLEU: ("max_new_tokens",),
    CHRF: ("max_new_tokens",),
    TASK_ACCURACY: ("max_new_tokens", "task_check"),
    RESPONSE_LENGTH: ("max_new_tokens",),
    RESPONSE_LENGTH_P95: ("max_new_tokens",),
    REFUSAL_RATE: ("max_new_tokens", "refusal_patterns"),
}


@dataclass(frozen=True)
class MetricDelta:
    """How one metric moved from the baseline run to the candidate run."""

    metric: str
    baseline_value: float
    candidate_value: float
    delta: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """Every shared metric's delta and how the intervals were drawn."""

    deltas: list[MetricDelta]
    samples: int
    resamples: int
    seed: int


def _violation(subject: str, description: str) -> PreconditionViolation:
    return PreconditionViolation("EVAL_RUNS_COMPARABLE", subject, description)


def comparable_metrics(baseline: EvalRun, candidate: EvalRun) -> list[str]:
    """The metrics both runs computed the same way; raises when the runs do not compare."""
    violations = [
        _violation(run.id, f"run {run.id} is {run.state.value}, not succeeded")
        for run in (baseline, candidate)
        if run.state is not RunState.SUCCEEDED
    ]
    if baseline.dataset_version_id != candidate.dataset_version_id:
        violations.append(
            _violation(
                candidate.id,
                f"the runs evaluated different dataset versions "
                f"({baseline.dataset_version_id} and {candidate.dataset_version_id})",
            )
        )
    shared = [
        m for m in METRICS if baseline.result(m) is not None and candidate.result(m) is not None
    ]
    if not violations and not shared:
        violations.append(_violation(candidate.id, "the runs share no metric"))
    for metric in shared:
        for setting in _DEPENDS_ON[metric]:
            ours, theirs = getattr(baseline.config, setting), getattr(candidate.config, setting)
            if ours != theirs:
                violations.append(
                    _violation(
                        candidate.id,
                        f"{metric} was computed with different {setting} ({ours!r} and {theirs!r})",
                    )
                )
    if violations:
        raise FailedPreconditionError(
            "the runs cannot be compared: " + "; ".join(v.description for v in violations),
            violations,
        )
    return shared


def compare_runs(
    baseline: EvalRun,
    baseline_outputs: Sequence[SampleOutput],
    candidate: EvalRun,
    candidate_outputs: Sequence[SampleOutput],
    resamples: int,
    seed: int,
) -> Comparison:
    """Deltas of every metric both runs computed the same way, with paired intervals."""
    metrics = comparable_metrics(baseline, candidate)
    for run, outputs in ((baseline, baseline_outputs), (candidate, candidate_outputs)):
        if not outputs:
            raise FailedPreconditionError(
                f"run {run.id} kept no per-sample outputs (it predates them): "
                "repeat it with repeat_eval_run_id to compare it",
                [_violation(run.id, "no per-sample outputs")],
            )
    if [o.index for o in baseline_outputs] != [o.index for o in candidate_outputs]:
        raise FailedPreconditionError(
            f"the runs evaluated different samples ({len(baseline_outputs)} and "
            f"{len(candidate_outputs)}); evaluate both with the same max_samples",
            [_violation(candidate.id, "different sample sets")],
        )
    deltas = []
    for metric in metrics:
        base_result, cand_result = baseline.result(metric), candidate.result(metric)
        assert base_result is not None and cand_result is not None
        low, high = paired_interval(
            statistic(metric, baseline_outputs),
            statistic(metric, candidate_outputs),
            resamples,
            seed,
        )
        deltas.append(
            MetricDelta(
                metric=metric,
                baseline_value=base_result.value,
                candidate_value=cand_result.value,
                delta=cand_result.value - base_result.value,
                ci_low=low,
                ci_high=high,
            )
        )
    return Comparison(deltas, len(baseline_outputs), resamples, seed)

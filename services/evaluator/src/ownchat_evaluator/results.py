"""A finished run's metric values, intervals and how each was computed, from its outputs.

Every value comes with its 95% bootstrap interval over the run's samples (seeded
by the run's seed) and a sentence saying how it was computed. BLEU's and chrF's
values are sacrebleu's ``corpus_score`` with its signature; the time sacrebleu
took (score, per-reply statistics and interval) is reported beside its share
of the run's wall time so far.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ownchat_evaluator.bleu_chrf import corpus_score
from ownchat_evaluator.bootstrap import interval
from ownchat_evaluator.perplexity import PerplexityResult
from ownchat_evaluator.run_config import (
    BLEU,
    CHRF,
    PERPLEXITY,
    REFUSAL_RATE,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_P95,
    TASK_ACCURACY,
    RunConfig,
)
from ownchat_evaluator.statistics import statistic
from ownchat_evaluator.store import MetricResult, SampleOutput


@dataclass
class RunTimings:
    """Seconds spent in each phase of a run."""

    load: float = 0.0
    perplexity: float = 0.0
    generation: float = 0.0
    bleu: float = 0.0
    chrf: float = 0.0
    wall: float = 0.0

    @property
    def bleu_share(self) -> float:
        """BLEU's share of the wall time (0 before the run ends)."""
        return self.bleu / self.wall if self.wall else 0.0

    def as_dict(self) -> dict[str, float]:
        """The timings by phase, in seconds, rounded to milliseconds."""
        return {
            f"{name}_seconds": round(getattr(self, name), 3)
            for name in ("load", "perplexity", "generation", "bleu", "chrf", "wall")
        }


def _interval(low: float, high: float) -> tuple[float | None, float | None]:
    if math.isnan(low) or math.isnan(high):
        return None, None
    return low, high


def metric_results(
    config: RunConfig,
    outputs: Sequence[SampleOutput],
    perplexity: PerplexityResult | None,
    timings: RunTimings,
    started: float,
    resamples: int,
) -> list[MetricResult]:
    """The results of every metric of a run (``started``: the run's ``perf_counter`` start)."""
    replied = [o for o in outputs if o.reply is not None]
    interval_note = f"95% interval from {resamples} bootstrap resamples, seed {config.seed}"
    generation_note = f"{len(replied)} greedy replies of at most {config.max_new_tokens} tokens"
    results = []
    for metric in config.metrics:
        phase = time.perf_counter()
        low, high = _interval(*interval(statistic(metric, outputs), resamples, config.seed))
        if metric == PERPLEXITY:
            assert perplexity is not None
            value = perplexity.perplexity
            details = (
                f"assistant tokens only; context length {perplexity.context_length}, "
                f"stride {perplexity.stride}; {perplexity.tokens} tokens of "
                f"{perplexity.conversations} conversations in {perplexity.windows} windows; "
                f"{perplexity.precision}; {interval_note}"
            )
        elif metric in (BLEU, CHRF):
            score = corpus_score(
                metric, [o.reply or "" for o in replied], [o.reference for o in replied]
            )
            value = score.value
            seconds = time.perf_counter() - phase
            setattr(timings, metric, seconds)
            share = seconds / (time.perf_counter() - started)
            details = (
                f"{score.signature}; {generation_note}; {interval_note}; "
                f"sacrebleu took {seconds:.3f} s, {share:.2%} of the run's wall time"
            )
        elif metric == TASK_ACCURACY:
            checked = [o for o in outputs if o.check_passed is not None]
            passed = sum(1 for o in checked if o.check_passed)
            value = passed / len(checked) if checked else math.nan
            how = (
                f"the run's {config.task_check.kind.value} check of the reference"
                if config.task_check
                else "no run check"
            )
            details = (
                f"{passed} of {len(checked)} checked replies passed; expected answers from the "
                f"samples where they carry one, else {how}; {generation_note}; {interval_note}"
            )
        elif metric == RESPONSE_LENGTH:
            value = statistic(metric, outputs).value()
            details = (
                f"mean tokens a reply, end of turn excluded; {generation_note}; {interval_note}"
            )
        elif metric == RESPONSE_LENGTH_P95:
            value = statistic(metric, outputs).value()
            details = (
                f"95th percentile (linear interpolation) of tokens a reply; {generation_note}; "
                f"{interval_note}"
            )
        elif metric == REFUSAL_RATE:
            refused = sum(1 for o in replied if o.refused)
            value = refused / len(replied) if replied else math.nan
            details = (
                f"{refused} of {len(replied)} replies contain one of "
                f"{len(config.refusal_patterns)} refusal phrases (case-insensitive); "
                f"{generation_note}; {interval_note}"
            )
        else:
            raise ValueError(f"unknown metric {metric!r}")
        results.append(MetricResult(metric, value, details, low, high))
    return results

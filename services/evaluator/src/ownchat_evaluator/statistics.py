"""Each metric as a bootstrap statistic of a run's per-sample outputs.

One row per sample, in split order, so two runs over the same samples pair up
row by row. A sample that a metric does not cover (no reply, not checked)
contributes a row of zeros to a sum, or is left out of a percentile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ownchat_evaluator.bleu_chrf import new_metric, sample_statistics, score_from_sums
from ownchat_evaluator.bootstrap import Statistic, ratio
from ownchat_evaluator.run_config import (
    BLEU,
    CHRF,
    PERPLEXITY,
    REFUSAL_RATE,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_P95,
    TASK_ACCURACY,
)
from ownchat_evaluator.store import SampleOutput


def _perplexity(sums: np.ndarray) -> float:
    return math.exp(sums[0] / sums[1]) if sums[1] else float("nan")


def statistic(metric: str, outputs: Sequence[SampleOutput]) -> Statistic:
    """The statistic of one metric over a run's outputs."""
    replied = [o.reply is not None for o in outputs]
    if metric == PERPLEXITY:
        vectors = np.array([[o.nll, o.scored_tokens] for o in outputs], dtype=np.float64)
        return Statistic(vectors.reshape(-1, 2), _perplexity)
    if metric in (BLEU, CHRF):
        scorer = new_metric(metric)
        stats = sample_statistics(
            metric,
            [o.reply or "" for o in outputs],
            [o.reference for o in outputs],
        )
        stats[~np.array(replied, dtype=bool)] = 0
        return Statistic(stats, lambda sums: score_from_sums(scorer, sums))
    if metric == TASK_ACCURACY:
        rows = [[float(bool(o.check_passed)), float(o.check_passed is not None)] for o in outputs]
        return Statistic(np.array(rows, dtype=np.float64).reshape(-1, 2), ratio(0, 1))
    if metric == REFUSAL_RATE:
        rows = [[float(bool(o.refused)), float(o.reply is not None)] for o in outputs]
        return Statistic(np.array(rows, dtype=np.float64).reshape(-1, 2), ratio(0, 1))
    if metric == RESPONSE_LENGTH:
        rows = [
            [float(o.reply_tokens if r else 0), float(r)]
            for o, r in zip(outputs, replied, strict=True)
        ]
        return Statistic(np.array(rows, dtype=np.float64).reshape(-1, 2), ratio(0, 1))
    if metric == RESPONSE_LENGTH_P95:
        rows = [[float(o.reply_tokens), float(r)] for o, r in zip(outputs, replied, strict=True)]
        return Statistic(np.array(rows, dtype=np.float64).reshape(-1, 2), quantile=95.0)
    raise ValueError(f"unknown metric {metric!r}")

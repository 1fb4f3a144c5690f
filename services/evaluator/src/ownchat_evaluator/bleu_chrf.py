"""Corpus BLEU and chrF of generated replies against references, by sacrebleu itself.

Scores come from sacrebleu's ``corpus_score`` with its default settings (BLEU:
13a tokenisation, exponential smoothing; chrF: character 6-grams, beta 2), so
they equal sacrebleu's to the last digit, and each is reported with sacrebleu's
signature string. For bootstrap intervals the per-reply sufficient statistics
(n-gram matches and totals) are extracted once, and a resample's corpus score is
recomputed from their sums, as sacrebleu's own paired bootstrap does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric

BLEU_NAME = "bleu"
CHRF_NAME = "chrf"


def new_metric(name: str) -> Metric:
    """A fresh sacrebleu metric object with the defaults (objects cache references)."""
    if name == BLEU_NAME:
        return BLEU()
    if name == CHRF_NAME:
        return CHRF()
    raise ValueError(f"not a sacrebleu metric: {name}")


@dataclass(frozen=True)
class CorpusScore:
    """A corpus score with sacrebleu's signature."""

    value: float
    signature: str


def corpus_score(name: str, replies: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """sacrebleu's corpus score of replies against one reference each."""
    metric = new_metric(name)
    score = metric.corpus_score(list(replies), [list(references)])
    return CorpusScore(float(score.score), str(metric.get_signature()))


def sample_statistics(name: str, replies: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-reply sufficient statistics ``[samples, k]``, summable into a corpus score."""
    metric = new_metric(name)
    # Private to sacrebleu but what its significance tests use (stable across 2.x).
    stats = metric._extract_corpus_statistics(list(replies), [list(references)])
    return np.asarray(stats, dtype=np.float64).reshape(len(replies), -1)


def score_from_sums(metric: Metric, sums: np.ndarray) -> float:
    """The corpus score of summed sufficient statistics (``metric`` from :func:`new_metric`)."""
    # Private to sacrebleu but what its significance tests use; the statistics
    # are integer counts, which float64 sums hold exactly.
    return float(metric._compute_score_from_stats([int(round(v)) for v in sums]).score)

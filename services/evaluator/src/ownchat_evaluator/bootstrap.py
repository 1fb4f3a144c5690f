"""Bootstrap confidence intervals over samples, single and paired.

Every metric here is a function of how often each sample is drawn: corpus
metrics (perplexity, BLEU, chrF, shares) from the sums of per-sample vectors,
the length percentile from the drawn lengths themselves. A resample is a row of
draw counts; the same rows serve both runs of a comparison, which makes it a
paired bootstrap (Koehn 2004; sacrebleu's ``--paired-bs``). Intervals are the
2.5th and 97.5th percentiles of the resampled values. The rows come from numpy's
``default_rng(seed)`` in fixed-size chunks, so a seed always gives the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
# Rows of draw counts made at once: bounds memory at CHUNK x samples floats.
CHUNK = 100


def resample_counts(samples: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Rows of draw counts ``[rows, samples]``, ``resamples`` rows in all, in chunks."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK):
        rows = min(CHUNK, resamples - start)
        drawn = rng.integers(0, samples, size=(rows, samples))
        flat = drawn + (np.arange(rows) * samples)[:, None]
        counts = np.bincount(flat.ravel(), minlength=rows * samples)
        yield counts.reshape(rows, samples).astype(np.float64)


@dataclass(frozen=True)
class Statistic:
    """A metric as a function of draw counts.

    ``vectors`` holds one row per sample. With ``quantile`` unset the metric is
    ``combine`` of the count-weighted sum of the rows; with it, the quantile
    (in percent) of the first column over the drawn samples whose second
    column is 1 (the others do not count).
    """

    vectors: np.ndarray
    combine: Callable[[np.ndarray], float] | None = None
    quantile: float | None = None

    @property
    def samples(self) -> int:
        """The number of samples."""
        return int(self.vectors.shape[0])

    def evaluate(self, counts: np.ndarray) -> np.ndarray:
        """The metric for each row of draw counts ``[rows, samples]``."""
        if self.quantile is not None:
            values, included = self.vectors[:, 0], self.vectors[:, 1] != 0
            drawn = counts[:, included].astype(np.int64)
            return np.array(
                [
                    np.percentile(np.repeat(values[included], row), self.quantile)
                    if row.any()
                    else np.nan
                    for row in drawn
                ]
            )
        assert self.combine is not None
        sums = counts @ self.vectors
        return np.array([self.combine(row) for row in sums])

    def value(self) -> float:
        """The metric over every sample once."""
        return float(self.evaluate(np.ones((1, self.samples)))[0])


def ratio(numerator: int, denominator: int) -> Callable[[np.ndarray], float]:
    """Combines summed columns into their ratio (NaN when the denominator is 0)."""

    def combine(sums: np.ndarray) -> float:
        return float(sums[numerator] / sums[denominator]) if sums[denominator] else float("nan")

    return combine


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def interval(statistic: Statistic, resamples: int, seed: int) -> tuple[float, float]:
    """The 95% bootstrap interval of one run's metric."""
    values = [statistic.evaluate(c) for c in resample_counts(statistic.samples, resamples, seed)]
    return _percentiles(np.concatenate(values))


def paired_interval(
    baseline: Statistic, candidate: Statistic, resamples: int, seed: int
) -> tuple[float, float]:
    """The 95% paired bootstrap interval of ``candidate - baseline`` over the same samples."""
    if baseline.samples != candidate.samples:
        raise ValueError("a paired bootstrap needs the same samples in both runs")
    differences = [
        candidate.evaluate(counts) - baseline.evaluate(counts)
        for counts in resample_counts(baseline.samples, resamples, seed)
    ]
    return _percentiles(np.concatenate(differences))

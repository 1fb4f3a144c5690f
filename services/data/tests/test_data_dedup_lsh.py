"""LSH banding, candidate pairs and connected components."""

from __future__ import annotations

import numpy as np

from ownchat_data.dedup.lsh import (
    band_parameters,
    candidate_pairs,
    canonical_members,
    jaccard_estimates,
)


def test_band_parameters_favour_recall() -> None:
    bands, rows = band_parameters(0.8, 128)
    assert bands * rows <= 128
    # A pair at Jaccard 0.85 becomes a candidate with probability above 0.95.
    assert 1 - (1 - 0.85**rows) ** bands > 0.95


def test_canonical_members_are_component_minima() -> None:
    first, second = np.array([3, 1, 5]), np.array([4, 3, 6])
    assert canonical_members(7, first, second).tolist() == [0, 1, 2, 1, 1, 5, 5]


def test_candidates_share_a_band_and_estimates_count_equal_values() -> None:
    rng = np.random.default_rng(0)
    signatures = rng.integers(0, 2**32, size=(6, 8), dtype=np.uint32)
    signatures[3, :4] = signatures[0, :4]  # band 0 shared by 0 and 3
    signatures[5, 4:] = signatures[1, 4:]  # band 1 shared by 1 and 5
    signatures[4] = signatures[1]
    first, second = candidate_pairs(signatures, bands=2, rows=4, window=8)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [
        (0, 3),
        (1, 4),
        (1, 5),
        (4, 5),
    ]
    estimates = jaccard_estimates(signatures, first, second)
    assert estimates.tolist() == [0.5, 1.0, 0.5, 0.5]


def test_window_limits_comparisons_in_a_big_bucket() -> None:
    signatures = np.zeros((10, 4), dtype=np.uint32)
    first, second = candidate_pairs(signatures, bands=2, rows=2, window=1)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(i, i + 1) for i in range(9)]
    assert canonical_members(10, first, second).tolist() == [0] * 10

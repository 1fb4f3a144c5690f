"""MinHash LSH over a finished set of signatures: candidate pairs, checked, grouped.

The banding is datasketch's ``MinHashLSH``: signatures are cut into ``bands``
bands of ``rows`` values and two documents are candidates when any band is
equal. (bands, rows) come from datasketch's own optimiser, weighted towards few
false negatives, since every candidate is then checked by its Jaccard estimate
and a missed near-duplicate across train and validation is a leak.

Instead of one Python dictionary entry per document and band (several KiB per
document in ``MinHashLSH``), each band is hashed to 64 bits per document in
numpy and sorted, so equal bands sit next to each other: the index costs a few
bytes per document and band, and only while that band is processed. Inside one
bucket each document is compared with at most ``window`` earlier ones, which
keeps a huge cluster of similar documents from costing quadratic time; a
cluster is still joined into one group through the chain of comparisons.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from datasketch import MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Weights of (false positives, false negatives) given to datasketch's optimiser.
FALSE_POSITIVE_WEIGHT = 0.1
FALSE_NEGATIVE_WEIGHT = 0.9
_CHECK_PAIRS = 65536
_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


@lru_cache(maxsize=16)
def band_parameters(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) datasketch's MinHashLSH picks for this threshold and size."""
    index = MinHashLSH(
        threshold=threshold,
        num_perm=num_perm,
        weights=(FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT),
    )
    return index.b, index.r


def _band_hashes(columns: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of uint32 values; equal rows hash alike."""
    h = np.zeros(columns.shape[0], dtype=np.uint64)
    for column in columns.T:
        h ^= column.astype(np.uint64)
        h *= _MIX[0]
        h ^= h >> np.uint64(33)
        h *= _MIX[1]
        h ^= h >> np.uint64(29)
    return h


def candidate_pairs(
    signatures: np.ndarray, bands: int, rows: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (earlier, later) that share at least one band, each pair once."""
    found: list[np.ndarray] = []
    count = signatures.shape[0]
    for band in range(bands):
        hashes = _band_hashes(np.asarray(signatures[:, band * rows : (band + 1) * rows]))
        # Stable, so a bucket lists its documents in arrival order.
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        equal_next = ordered[1:] == ordered[:-1]
        if not equal_next.any():
            continue
        # Only documents in buckets of two or more take part from here on.
        shared = np.zeros(count, dtype=bool)
        shared[:-1] |= equal_next
        shared[1:] |= equal_next
        members, keys = order[shared], ordered[shared]
        for distance in range(1, min(window, len(members) - 1) + 1):
            same = keys[distance:] == keys[:-distance]
            if not same.any():
                break
            first, second = members[:-distance][same], members[distance:][same]
            found.append(np.minimum(first, second) * count + np.maximum(first, second))
    if not found:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    codes = np.unique(np.concatenate(found))
    return codes // count, codes % count


def jaccard_estimates(signatures: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The MinHash Jaccard estimate (share of equal values) of each pair."""
    estimates = np.empty(len(first), dtype=np.float64)
    for begin in range(0, len(first), _CHECK_PAIRS):
        end = begin + _CHECK_PAIRS
        left = np.asarray(signatures[first[begin:end]])
        right = np.asarray(signatures[second[begin:end]])
        estimates[begin:end] = np.count_nonzero(left == right, axis=1) / signatures.shape[1]
    return estimates


def canonical_members(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For each document, the lowest index of its connected component."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix(
        (np.ones(len(first), dtype=np.int8), (first, second)), shape=(count, count)
    ).tocsr()
    _, labels = connected_components(graph, directed=False)
    lowest = np.full(labels.max() + 1, count, dtype=np.int64)
    np.minimum.at(lowest, labels, np.arange(count, dtype=np.int64))
    return lowest[labels]

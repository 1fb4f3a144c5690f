"""MinHash signatures of many documents at once, equal to datasketch's.

datasketch's ``MinHash`` (scheme ``affine32``) pre-mixes each 32-bit input hash
with the MurmurHash3 finalizer, applies ``num_perm`` permutations
``a * h + b mod 2**32`` and keeps the minimum of each. Updating one MinHash per
shingle costs a Python call and a small numpy operation per shingle; here the
shingles of a whole batch of documents go through the permutations as one
matrix and the per-document minima come from one ``np.minimum.reduceat``. The
permutation parameters are taken from datasketch itself, so a signature equals
``MinHash(num_perm, seed, hashfunc=...)`` updated with the same shingles, and
its Jaccard estimate (the share of equal positions) means the same thing.
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash

# Rows of the (shingles x num_perm) block computed at once: 8 MiB at num_perm=128.
_BLOCK_BYTES = 8 * 1024 * 1024


def _fmix32(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finalizer, as datasketch applies it before permuting."""
    h = values.astype(np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


class MinHasher:
    """Computes MinHash signatures (uint32, ``num_perm`` values each) in batches.

    ``block_rows`` shingles go through the permutations at once (by default as
    many as fit in 8 MiB), which bounds the memory of a batch.
    """

    def __init__(self, num_perm: int, seed: int, block_rows: int | None = None) -> None:
        reference = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        a, b = reference.permutations
        self.num_perm = num_perm
        self.seed = seed
        self._a = np.ascontiguousarray(a, dtype=np.uint32)
        self._b = np.ascontiguousarray(b, dtype=np.uint32)
        self._block_rows = block_rows or max(1, _BLOCK_BYTES // (4 * num_perm))

    def signatures(self, hashes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Signatures of consecutive documents, shape (documents, num_perm).

        ``hashes`` holds the 32-bit shingle hashes of all documents one after the
        other, ``lengths`` how many belong to each; every length must be at least 1.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size and lengths.min() < 1:
            raise ValueError("every document needs at least one shingle")
        ends = np.cumsum(lengths)
        starts = ends - lengths
        total = int(ends[-1]) if lengths.size else 0
        if total != len(hashes):
            raise ValueError("lengths do not add up to the number of hashes")
        result = np.full((lengths.size, self.num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
        mixed = _fmix32(np.asarray(hashes, dtype=np.uint32))
        block = np.empty((self._block_rows, self.num_perm), dtype=np.uint32)
        for begin in range(0, total, self._block_rows):
            end = min(begin + self._block_rows, total)
            rows = block[: end - begin]
            np.multiply(mixed[begin:end, None], self._a, out=rows)
            np.add(rows, self._b, out=rows)
            # Documents with at least one shingle in [begin, end); a long one spans
            # several blocks and takes the minimum over them.
            first = int(np.searchsorted(ends, begin, side="right"))
            last = int(np.searchsorted(starts, end, side="left"))
            offsets = np.maximum(starts[first:last], begin) - begin
            minima = np.minimum.reduceat(rows, offsets, axis=0)
            np.minimum(result[first:last], minima, out=result[first:last])
        return result

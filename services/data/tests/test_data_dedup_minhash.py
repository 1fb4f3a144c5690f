"""MinHash signatures computed in batches, against datasketch's MinHash."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash
from datasketch import MinHash
from hypothesis import given
from hypothesis import strategies as st

from ownchat_data.dedup.minhash import MinHasher
from ownchat_data.dedup.text import shingle_hashes, shingles


@given(
    st.lists(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=30), max_size=8),
    st.integers(min_value=1, max_value=50),
)
def test_signatures_equal_datasketch_minhash(documents: list[list[str]], block_rows: int) -> None:
    hasher = MinHasher(num_perm=64, seed=7, block_rows=block_rows)
    hashes = [list(shingle_hashes(words, 3)) for words in documents]
    flat = np.array([h for doc in hashes for h in doc], dtype=np.uint32)
    signatures = hasher.signatures(flat, np.array([len(doc) for doc in hashes]))
    assert signatures.shape == (len(documents), 64)
    for words, signature in zip(documents, signatures, strict=True):
        reference = MinHash(num_perm=64, seed=7, hashfunc=xxhash.xxh32_intdigest)
        reference.update_batch([s.encode() for s in shingles(words, 3)])
        assert np.array_equal(signature, reference.hashvalues)


def test_every_document_needs_a_shingle() -> None:
    hasher = MinHasher(num_perm=16, seed=1)
    with pytest.raises(ValueError, match="at least one"):
        hasher.signatures(np.array([1, 2], dtype=np.uint32), np.array([2, 0]))

"""Exact and near-duplicate conversations of one upload, found as the samples stream in.

Exact duplicates are known at once (:meth:`Deduplicator.add` says which earlier
record a sample repeats), so the upload can drop them as it goes. Near-duplicates
need every signature: they are grouped by :meth:`Deduplicator.finish`.

Memory per kept sample, measured: about 140 bytes while adding (its 16-byte
content digest and record number in a dictionary), plus its signature
(``num_perm`` x 4 bytes: 512 bytes at the default 128), which is written to a
temporary file as batches complete rather than held in memory. Grouping reads
one band at a time (about 50 bytes per sample while it runs); the result
holds about 175 bytes per sample (``group_keys``), and finishing peaks at about
380 bytes per sample. Shingle hashes are held only
for the current batch (``batch_shingles``, 64 Ki by default).
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from ownchat_data.dedup.lsh import (
    band_parameters,
    candidate_pairs,
    canonical_members,
    jaccard_estimates,
)
from ownchat_data.dedup.minhash import MinHasher
from ownchat_data.dedup.text import (
    Message,
    comparison_words,
    content_digest,
    normalize_messages,
    shingle_hashes,
)


@dataclass(frozen=True)
class DedupConfig:
    """How near two conversations must be to count as duplicates, and how it is measured.

    The defaults: Jaccard 0.8 over 3-word shingles with 128 permutations. With
    n words and m changed words far apart, the Jaccard similarity is about
    (n - 2 - 3m) / (n - 2 + 3m), so one changed word stays above 0.8 from about
    30 words on (5-word shingles would need about 50, and chat turns are short);
    shorter shingles would make unrelated text share too many common phrases.
    128 permutations give a Jaccard estimate within about ±0.035 (one standard
    error at 0.8) for 512 bytes a sample.
    """

    threshold: float = 0.8
    num_perm: int = 128
    shingle_words: int = 3
    seed: int = 1
    # Each sample is compared with at most this many earlier ones sharing a band bucket.
    bucket_window: int = 32
    # Shingles hashed before their signatures are computed as one batch.
    batch_shingles: int = 1 << 16

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.threshold <= 1:
            problems.append("threshold must be within (0, 1]")
        if self.num_perm < 2:
            problems.append("num_perm must be at least 2")
        if self.shingle_words < 1:
            problems.append("shingle_words must be at least 1")
        if self.bucket_window < 1:
            problems.append("bucket_window must be at least 1")
        if self.batch_shingles < 1:
            problems.append("batch_shingles must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ExactDuplicate:
    """A sample dropped because its normalised content equals an earlier one's."""

    record: int
    duplicate_of: int


@dataclass(frozen=True)
class NearDuplicatePair:
    """Two samples whose estimated Jaccard similarity reaches the threshold.

    ``first`` arrived before ``second``. Exact duplicates reported as pairs
    (by :func:`find_leaks`) carry 1.0.
    """

    first: int
    second: int
    jaccard: float


@dataclass(frozen=True)
class DedupResult:
    """What one pass over an upload found."""

    exact_duplicates: tuple[ExactDuplicate, ...]
    near_duplicates: tuple[NearDuplicatePair, ...]
    # Near-duplicate groups of two or more kept samples, each in arrival order
    # (its first record is the canonical member), ordered by that first record's arrival.
    groups: tuple[tuple[int, ...], ...]
    # Every kept record -> hex content digest of its group's canonical member
    # (its own digest when it has no near-duplicate): the key the split hashes.
    group_keys: dict[int, str] = field(repr=False)

    def group_key(self, record: int) -> str:
        """The group key of a kept record."""
        return self.group_keys[record]


class Deduplicator:
    """Finds exact and near-duplicate conversations among samples added one by one.

    Use as a context manager (or call :meth:`close`) so the temporary signature
    file is removed. Record numbers must be unique.
    """

    def __init__(self, config: DedupConfig | None = None, work_dir: Path | None = None) -> None:
        self.config = config or DedupConfig()
        self._hasher = MinHasher(self.config.num_perm, self.config.seed)
        self._seen: dict[bytes, int] = {}
        self._exact: list[ExactDuplicate] = []
        self._kept = array("q")
        self._pending_hashes = array("I")
        self._pending_lengths = array("q")
        self._signatures: IO[bytes] = tempfile.TemporaryFile(dir=work_dir)
        self._finished = False

    def add(self, record: int, messages: Sequence[Message]) -> int | None:
        """Adds one sample; returns the record it exactly duplicates (then it is not kept)."""
        if self._finished:
            raise RuntimeError("the deduplicator has already finished")
        normalized = normalize_messages(messages)
        digest = content_digest(normalized, normalized=True)
        earlier = self._seen.setdefault(digest, record)
        if earlier != record:
            self._exact.append(ExactDuplicate(record, earlier))
            return earlier
        self._kept.append(record)
        before = len(self._pending_hashes)
        words = comparison_words(normalized, normalized=True)
        self._pending_hashes.extend(shingle_hashes(words, self.config.shingle_words))
        self._pending_lengths.append(len(self._pending_hashes) - before)
        if len(self._pending_hashes) >= self.config.batch_shingles:
            self._flush()
        return None

    def add_all(self, samples: Iterable[tuple[int, Sequence[Message]]]) -> None:
        """Adds (record, messages) pairs in order."""
        for record, messages in samples:
            self.add(record, messages)

    def _flush(self) -> None:
        if not self._pending_lengths:
            return
        signatures = self._hasher.signatures(
            np.frombuffer(self._pending_hashes, dtype=np.uint32),
            np.frombuffer(self._pending_lengths, dtype=np.int64),
        )
        self._signatures.write(signatures.tobytes())
        self._pending_hashes = array("I")
        self._pending_lengths = array("q")

    def finish(self) -> DedupResult:
        """Groups the near-duplicates among the kept samples; call once, after the last add."""
        if self._finished:
            raise RuntimeError("the deduplicator has already finished")
        self._finished = True
        self._flush()
        kept = np.frombuffer(self._kept, dtype=np.int64)
        count = len(kept)
        first = second = np.empty(0, dtype=np.int64)
        estimates = np.empty(0, dtype=np.float64)
        if count > 1:
            self._signatures.flush()
            signatures = np.memmap(
                self._signatures, dtype=np.uint32, mode="r", shape=(count, self.config.num_perm)
            )
            bands, rows = band_parameters(self.config.threshold, self.config.num_perm)
            first, second = candidate_pairs(signatures, bands, rows, self.config.bucket_window)
            estimates = jaccard_estimates(signatures, first, second)
            # A tiny tolerance so that e.g. 0.8 * 128 equal values counts as 0.8.
            close = estimates >= self.config.threshold - 1e-9
            first, second, estimates = first[close], second[close], estimates[close]
            del signatures
        canonical = canonical_members(count, first, second)
        self.close()
        return DedupResult(
            exact_duplicates=tuple(self._exact),
            near_duplicates=tuple(
                NearDuplicatePair(int(kept[i]), int(kept[j]), float(e))
                for i, j, e in zip(first.tolist(), second.tolist(), estimates.tolist(), strict=True)
            ),
            groups=_groups(kept, canonical),
            group_keys=self._group_keys(kept, canonical),
        )

    def _group_keys(self, kept: np.ndarray, canonical: np.ndarray) -> dict[int, str]:
        digest_of = {record: digest for digest, record in self._seen.items()}
        self._seen = {}
        records = kept.tolist()
        return {
            record: digest_of[records[lead]].hex()
            for record, lead in zip(records, canonical.tolist(), strict=True)
        }

    def close(self) -> None:
        """Removes the temporary signature file."""
        self._signatures.close()

    def __enter__(self) -> Deduplicator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _groups(kept: np.ndarray, canonical: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Groups of two or more, members in arrival order, groups by their first member."""
    if len(kept) == 0:
        return ()
    order = np.argsort(canonical, kind="stable")
    leads = canonical[order]
    starts = np.flatnonzero(np.r_[True, leads[1:] != leads[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    return tuple(
        tuple(kept[order[start : start + size]].tolist())
        for start, size in zip(starts.tolist(), sizes.tolist(), strict=True)
        if size > 1
    )


def deduplicate(
    samples: Iterable[tuple[int, Sequence[Message]]],
    config: DedupConfig | None = None,
    work_dir: Path | None = None,
) -> DedupResult:
    """Exact and near-duplicates of (record, messages) pairs, in one call."""
    with Deduplicator(config, work_dir) as deduplicator:
        deduplicator.add_all(samples)
        return deduplicator.finish()

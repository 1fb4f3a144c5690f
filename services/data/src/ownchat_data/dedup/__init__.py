"""Exact and near-duplicate conversations, and a split that keeps near-duplicates together.

Use::

    with Deduplicator(DedupConfig()) as dedup:
        for sample in samples:
            if dedup.add(sample.record, [(m.role, m.content) for m in sample.messages]) is None:
                keep(sample)                      # not an exact duplicate
        result = dedup.finish()                   # near-duplicate pairs and groups
    sides = assign_splits(result.group_keys, validation_fraction, seed)
    leaks = find_leaks(result, sides_from_elsewhere)   # for a split not made by assign_splits

Exact duplicates: a 128-bit hash of each message's role and normalised content
(NFKC, case-folded, whitespace collapsed); the first sample is kept. Near
duplicates: MinHash over 3-word shingles of the user and assistant turns,
banded as in datasketch's MinHashLSH, each candidate checked by its Jaccard
estimate, grouped as connected components.
"""

from ownchat_data.dedup.deduplicator import (
    DedupConfig,
    Deduplicator,
    DedupResult,
    ExactDuplicate,
    NearDuplicatePair,
    deduplicate,
)
from ownchat_data.dedup.split import Split, assign_splits, find_leaks, group_score
from ownchat_data.dedup.text import Message, content_digest, normalize_text

__all__ = [
    "DedupConfig",
    "DedupResult",
    "Deduplicator",
    "ExactDuplicate",
    "Message",
    "NearDuplicatePair",
    "Split",
    "assign_splits",
    "content_digest",
    "deduplicate",
    "find_leaks",
    "group_score",
    "normalize_text",
]

"""A deterministic train/validation split that never separates a near-duplicate group,
and the check that finds near-duplicates on both sides of a split made elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum

from ownchat_data.dedup.deduplicator import DedupResult, NearDuplicatePair


class Split(StrEnum):
    """The side of the split a sample is on."""

    TRAIN = "train"
    VALIDATION = "validation"


def group_score(group_key: str, seed: int) -> float:
    """A group's place in [0, 1): below the validation fraction means validation."""
    digest = hashlib.sha256(f"{seed}:{group_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    group_keys: Mapping[int, str], validation_fraction: float, seed: int
) -> dict[int, Split]:
    """Puts each record on the side its group's key and the seed hash to.

    ``group_keys`` maps every record to its group's key (see
    :attr:`DedupResult.group_keys`: the canonical member's content digest, so the
    split does not depend on the order of the file). Whole groups move, so the
    validation share is the fraction of groups, not exactly of samples. With two
    or more groups and a fraction above zero, at least one group is held out
    (the lowest-scoring one) and, when the fraction is below one, at least one
    stays in train (the highest-scoring one).
    """
    if not 0 <= validation_fraction <= 1:
        raise ValueError("validation_fraction must be within [0, 1]")
    scores = {key: group_score(key, seed) for key in set(group_keys.values())}
    held_out = {key for key, score in scores.items() if score < validation_fraction}
    if len(scores) >= 2 and validation_fraction > 0:
        ranked = sorted(scores, key=lambda key: (scores[key], key))
        if not held_out:
            held_out.add(ranked[0])
        elif len(held_out) == len(scores) and validation_fraction < 1:
            held_out.discard(ranked[-1])
    return {
        record: Split.VALIDATION if key in held_out else Split.TRAIN
        for record, key in group_keys.items()
    }


def find_leaks(result: DedupResult, split_of: Mapping[int, Split]) -> list[NearDuplicatePair]:
    """Near-duplicate and exact-duplicate pairs whose two records are on different sides.

    Records missing from ``split_of`` (e.g. dropped exact duplicates) are ignored.
    The pairs join every group, so a group with members on both sides always
    shows at least one pair here.
    """
    exact = (NearDuplicatePair(d.duplicate_of, d.record, 1.0) for d in result.exact_duplicates)
    leaks = []
    for pair in (*result.near_duplicates, *exact):
        first, second = split_of.get(pair.first), split_of.get(pair.second)
        if first is not None and second is not None and first != second:
            leaks.append(pair)
    return sorted(leaks, key=lambda pair: (pair.first, pair.second))

"""The group-aware split and the leakage check."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ownchat_data.dedup import (
    DedupResult,
    ExactDuplicate,
    NearDuplicatePair,
    Split,
    assign_splits,
    deduplicate,
    find_leaks,
)

groupings = st.dictionaries(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from([f"group-{i}" for i in range(40)]),
    max_size=120,
)
fractions = st.floats(min_value=0, max_value=1)
seeds = st.integers(min_value=0, max_value=2**32)


@given(groupings, fractions, seeds)
def test_split_never_separates_a_group(keys: dict[int, str], fraction: float, seed: int) -> None:
    sides = assign_splits(keys, fraction, seed)
    assert sides.keys() == keys.keys()
    side_of_group: dict[str, Split] = {}
    for record, key in keys.items():
        assert side_of_group.setdefault(key, sides[record]) == sides[record]
    groups = len(set(keys.values()))
    if groups >= 2 and fraction > 0:
        assert Split.VALIDATION in sides.values()
    if groups >= 2 and fraction < 1:
        assert Split.TRAIN in sides.values()
    if fraction == 0:
        assert Split.VALIDATION not in sides.values()
    if fraction == 1:
        # An evaluation-only version: every group held out, a single one too.
        assert Split.TRAIN not in sides.values()
    assert assign_splits(dict(reversed(list(keys.items()))), fraction, seed) == sides


def test_a_fraction_of_one_holds_every_group_out() -> None:
    keys = {record: f"group-{record // 3}" for record in range(300)}
    for seed in range(5):
        assert set(assign_splits(keys, 1.0, seed).values()) == {Split.VALIDATION}
    assert assign_splits({1: "only"}, 1.0, 0) == {1: Split.VALIDATION}


def test_split_follows_the_fraction_and_the_seed() -> None:
    keys = {record: f"group-{record // 2}" for record in range(4000)}
    sides = assign_splits(keys, 0.2, seed=1)
    held_out = sum(side is Split.VALIDATION for side in sides.values()) / len(sides)
    assert 0.17 < held_out < 0.23
    assert assign_splits(keys, 0.2, seed=2) != sides
    assert assign_splits(keys, 0.2, seed=1) == sides


def test_one_group_each_side_when_few() -> None:
    assert sorted(assign_splits({1: "a", 2: "b"}, 0.01, seed=0).values()) == [
        Split.TRAIN,
        Split.VALIDATION,
    ]
    # One group stays whole, whichever side it falls on.
    assert len(set(assign_splits({1: "a", 2: "a", 3: "a"}, 0.5, seed=0).values())) == 1


def test_leaks_are_the_pairs_across_the_split() -> None:
    result = DedupResult(
        exact_duplicates=(ExactDuplicate(9, 1), ExactDuplicate(8, 2)),
        near_duplicates=(NearDuplicatePair(1, 2, 0.9), NearDuplicatePair(3, 4, 0.85)),
        groups=((1, 2), (3, 4)),
        group_keys={},
    )
    sides = {
        1: Split.TRAIN,
        2: Split.VALIDATION,
        3: Split.TRAIN,
        4: Split.TRAIN,
        9: Split.VALIDATION,
    }
    assert find_leaks(result, sides) == [
        NearDuplicatePair(1, 2, 0.9),
        NearDuplicatePair(1, 9, 1.0),
    ]


def test_a_split_made_from_the_groups_has_no_leaks() -> None:
    words = [f"word{i}" for i in range(200)]
    text = " ".join(words)
    samples = [
        (i, [("user", text.replace(f"word{i * 7} ", "other ")), ("assistant", f"reply {i}")])
        for i in range(20)
    ]
    samples += [(100 + i, [("user", f"other {i} " * 3), ("assistant", "ok")]) for i in range(20)]
    result = deduplicate(samples)
    assert result.groups and len(result.groups[0]) == 20
    sides = assign_splits(result.group_keys, 0.3, seed=5)
    assert find_leaks(result, sides) == []
    # Moving one member of the group to the other side is reported.
    moved = dict(sides)
    moved[5] = Split.VALIDATION if sides[5] is Split.TRAIN else Split.TRAIN
    leaks = find_leaks(result, moved)
    assert leaks and all(5 in (pair.first, pair.second) for pair in leaks)

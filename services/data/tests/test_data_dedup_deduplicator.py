"""Exact and near-duplicate conversations found by the Deduplicator."""

from __future__ import annotations

import random

import pytest

from ownchat_data.dedup import (
    DedupConfig,
    Deduplicator,
    ExactDuplicate,
    Message,
    content_digest,
    deduplicate,
)

VOCABULARY = [f"w{i}" for i in range(3000)]


def conversation(seed: int, words: int = 120) -> list[Message]:
    """A conversation of random words: two unrelated ones share almost no shingles."""
    rng = random.Random(seed)
    text = [rng.choice(VOCABULARY) for _ in range(words)]
    half = words // 2
    return [("user", " ".join(text[:half])), ("assistant", " ".join(text[half:]))]


def changed(messages: list[Message], positions: list[int], seed: int = 0) -> list[Message]:
    """The same conversation with the words at ``positions`` (of the user turn) replaced."""
    rng = random.Random(seed)
    words = messages[0][1].split()
    for position in positions:
        words[position] = f"changed{rng.randrange(10**6)}"
    return [(messages[0][0], " ".join(words)), *messages[1:]]


SUPPORT = [
    ("system", "You are the support assistant of Acme Shipping."),
    (
        "user",
        "Hello, I ordered a blue winter jacket two weeks ago and the tracking page still says "
        "that the parcel is waiting at the sorting centre in Lyon. Could you tell me when it "
        "will be delivered and whether I can change the delivery address to my office?",
    ),
    (
        "assistant",
        "Thank you for your patience. Your parcel left the sorting centre this morning and "
        "should reach you within two working days. You can change the delivery address from "
        "the tracking page until the courier picks it up, or reply here with the new address "
        "and I will update it for you.",
    ),
]


def test_exact_duplicates_regardless_of_whitespace_and_case() -> None:
    shouted = [(role, f"  {content.upper()}\n") for role, content in SUPPORT]
    spaced = [(role, content.replace(" ", "   \t")) for role, content in SUPPORT]
    result = deduplicate([(1, SUPPORT), (2, conversation(1)), (3, shouted), (7, spaced)])
    assert result.exact_duplicates == (ExactDuplicate(3, 1), ExactDuplicate(7, 1))
    assert set(result.group_keys) == {1, 2}


def test_add_reports_the_exact_duplicate_at_once() -> None:
    with Deduplicator() as dedup:
        assert dedup.add(10, SUPPORT) is None
        assert dedup.add(11, [(r, c.lower()) for r, c in SUPPORT]) == 10
        assert dedup.add(12, conversation(5)) is None


def test_a_word_or_two_changed_is_grouped_and_unrelated_ones_are_not() -> None:
    one_word = [SUPPORT[0], (SUPPORT[1][0], SUPPORT[1][1].replace("blue", "red")), SUPPORT[2]]
    base = conversation(42)
    samples = [
        (1, SUPPORT),
        (2, conversation(7)),
        (3, base),
        (4, one_word),
        (5, conversation(8)),
        (6, changed(base, [10, 40])),
        (7, conversation(9)),
    ]
    result = deduplicate(samples)
    assert result.exact_duplicates == ()
    assert result.groups == ((1, 4), (3, 6))
    assert {(p.first, p.second) for p in result.near_duplicates} == {(1, 4), (3, 6)}
    assert all(0.8 <= p.jaccard <= 1 for p in result.near_duplicates)
    # Every member of a group is keyed by its canonical (first) member's content.
    assert result.group_keys[4] == result.group_keys[1] == content_digest(SUPPORT).hex()
    assert result.group_keys[6] == result.group_keys[3] != result.group_keys[1]
    assert len({result.group_keys[r] for r in (2, 5, 7)}) == 3


def test_system_prompt_alone_does_not_make_near_duplicates() -> None:
    prompt = ("system", " ".join(conversation(99, words=400)[0][1].split()))
    samples = [(i, [prompt, *conversation(i, words=20)]) for i in range(5)]
    assert deduplicate(samples).groups == ()


def test_groups_are_transitive_and_batches_do_not_change_results() -> None:
    base = conversation(3, words=200)
    # A chain: each one differs from the previous by one more word.
    chain = [changed(base, list(range(5, 5 + 4 * n, 4))) for n in range(8)]
    samples = [(100 + i, messages) for i, messages in enumerate(chain)]
    samples += [(200 + i, conversation(500 + i)) for i in range(10)]
    big = deduplicate(samples)
    small = deduplicate(samples, DedupConfig(batch_shingles=50, bucket_window=2))
    assert big.groups == ((100, 101, 102, 103, 104, 105, 106, 107),)
    assert small.groups == big.groups
    assert small.group_keys == big.group_keys


def test_same_input_same_output() -> None:
    base = conversation(11)
    samples = [(i, conversation(i)) for i in range(30)]
    samples += [(30 + i, changed(base, [i])) for i in range(5)]
    samples += [(40, samples[3][1])]
    first, second = deduplicate(samples), deduplicate(samples)
    assert first == second
    assert first.group_keys == second.group_keys
    assert first.exact_duplicates == (ExactDuplicate(40, 3),)


def test_config_is_checked_and_finish_runs_once() -> None:
    with pytest.raises(ValueError, match="threshold"):
        DedupConfig(threshold=0)
    dedup = Deduplicator()
    result = dedup.finish()
    assert result.groups == () and result.group_keys == {}
    with pytest.raises(RuntimeError):
        dedup.add(1, SUPPORT)

"""Normalisation, content digests, comparison words and shingles."""

from __future__ import annotations

from ownchat_data.dedup.text import (
    comparison_words,
    content_digest,
    normalize_text,
    shingles,
)


def test_normalize_text_folds_width_case_and_whitespace() -> None:
    assert normalize_text("  Ｈｅｌｌｏ\tWORLD \n\n again ") == "hello world again"
    assert normalize_text("Straße") == normalize_text("STRASSE")


def test_digest_ignores_whitespace_and_case_but_not_roles_or_words() -> None:
    base = content_digest([("user", "Where is my order?"), ("assistant", "It ships today.")])
    assert base == content_digest(
        [("user", "  where IS my\n order?"), ("assistant", "it  ships\ttoday.")]
    )
    swapped = [("assistant", "Where is my order?"), ("user", "It ships today.")]
    assert base != content_digest(swapped)
    reworded = [("user", "Where is my order?"), ("assistant", "It ships soon.")]
    assert base != content_digest(reworded)
    # Message boundaries count: the same words split differently are another conversation.
    assert content_digest([("user", "a b"), ("user", "c")]) != content_digest(
        [("user", "a"), ("user", "b c")]
    )


def test_comparison_words_skip_system_and_punctuation() -> None:
    messages = [
        ("system", "You are a helpful assistant."),
        ("user", "Hello, World!"),
        ("assistant", "Hi -- how can I help?"),
    ]
    assert comparison_words(messages) == ["hello", "world", "hi", "how", "can", "i", "help"]
    only_system = [("system", "Only a system prompt.")]
    assert comparison_words(only_system) == ["only", "a", "system", "prompt"]
    assert comparison_words([("user", "?!")]) == ["?!"]


def test_shingles_overlap_and_short_texts_make_one() -> None:
    assert list(shingles(["a", "b", "c", "d"], 3)) == ["a b c", "b c d"]
    assert list(shingles(["a", "b"], 3)) == ["a b"]
    assert list(shingles(["a", "b", "c"], 3)) == ["a b c"]

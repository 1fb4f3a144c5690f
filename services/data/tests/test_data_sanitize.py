"""Cleaning and quality filters, alone and through an upload's report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ownchat.artifacts import ArtifactStore
from ownchat.errors import FailedPreconditionError, InvalidArgumentError
from ownchat_data.chat_jsonl import ChatMessage, ChatSample
from ownchat_data.cleaning import (
    normalize_whitespace,
    remove_boilerplate,
    repair_encoding,
    strip_markup,
)
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.pii import RedactionMode
from ownchat_data.quality import QualityFilter
from ownchat_data.sanitize import SanitizeOptions
from ownchat_data.store import DataStore


def test_mojibake_is_repaired() -> None:
    assert repair_encoding("CafÃ© â€” naÃ¯ve") == "Café — naïve"


def test_markup_is_stripped_and_entities_decoded() -> None:
    text = "<p>Hello&nbsp;<b>there</b></p><script>alert(1)</script><div>Price: 5 &euro;</div>"
    assert normalize_whitespace(strip_markup(text)) == "Hello there\n\nPrice: 5 €"
    assert strip_markup("a < b and c > d") == "a < b and c > d"
    assert strip_markup("Tom &amp; Jerry") == "Tom & Jerry"


def test_quoted_replies_and_signatures_are_removed() -> None:
    email = (
        "Thanks, that worked.\n\nBest,\nAnn\n-- \nAnn Smith | Acme\n"
        "On Mon, 3 Jun 2024 at 10:00, Support <help@acme.test> wrote:\n> Try a restart."
    )
    assert normalize_whitespace(remove_boilerplate(email)) == "Thanks, that worked.\n\nBest,\nAnn"
    assert remove_boilerplate("Sent from my iPhone") == ""


@given(st.text())
def test_whitespace_normalisation_is_idempotent(text: str) -> None:
    once = normalize_whitespace(text)
    assert normalize_whitespace(once) == once
    assert "\n\n\n" not in once and "  " not in once


def chat(*turns: tuple[str, str]) -> ChatSample:
    return ChatSample(tuple(ChatMessage(role, text) for role, text in turns), 1.0, 1)


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (chat(("user", "hi"), ("user", "anyone?")), "one_sided"),
        (chat(("assistant", "Hello!"), ("user", "hi"), ("assistant", "yes")), "assistant_first"),
        (chat(("user", "hi"), ("system", "be nice"), ("assistant", "yes")), "system_not_first"),
        (chat(("user", "hi"), ("assistant", "  ")), "empty_message"),
    ],
)
def test_quality_filter_reasons(sample: ChatSample, reason: str) -> None:
    quality = QualityFilter()
    assert quality.check(sample) is None
    assert quality.removed == {reason: 1}


def test_an_upload_reports_what_sanitization_did(tmp_path: Path) -> None:
    core = DataCore(
        DataStore(tmp_path / "data.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16
    )
    rows = [
        [("user", "<p>Is shipping free?</p>"), ("assistant", "Above 50 euros.")],
        [("user", "Hi"), ("assistant", "Hello"), ("assistant", "How can I help?")],
        [("user", "only a question"), ("user", "still here?")],
        [("user", "caf\u00c3\u00a9?"), ("assistant", "yes   we  have coffee")],
    ]
    body = "\n".join(
        json.dumps({"messages": [{"role": r, "content": c} for r, c in row]}) for row in rows
    )
    spec = UploadSpec("support", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0)
    version = core.upload(spec, iter([body.encode()]))
    assert version.samples == 3
    assert version.sanitization.removed == {"one_sided": 1}
    assert version.sanitization.changed == {
        "markup_stripped": 1,
        "encoding_repaired": 1,
        # The stripped <p> left line breaks around the text, and one reply had double spaces.
        "whitespace_normalized": 2,
        "turns_merged": 1,
    }
    raw = UploadSpec(
        "raw",
        "x.jsonl",
        SourceFormat.OPENAI_CHAT_JSONL,
        0.0,
        sanitize=SanitizeOptions(False, False),
    )
    assert core.upload(raw, iter([body.encode()])).samples == 4


def test_an_upload_left_empty_by_sanitization_says_why(tmp_path: Path) -> None:
    core = DataCore(
        DataStore(tmp_path / "data.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16
    )
    body = json.dumps({"messages": [{"role": "assistant", "content": "Hello"}]})
    spec = UploadSpec("support", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0)
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec, iter([body.encode()]))
    assert "one_sided: 1" in error.value.violations[0].description


def test_duplicates_are_removed_and_near_duplicates_share_a_split(tmp_path: Path) -> None:
    core = DataCore(
        DataStore(tmp_path / "data.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16
    )
    answer = (
        "Hold the reset pin on the back of the router for ten seconds, wait for the light to "
        "blink amber, then open the Acme Home app and reinstall the latest firmware version. "
        "If the error comes back after the update, unplug the power cable for a full minute, "
        "plug it back in, and write to us with the serial number printed under the router."
    )
    rows = [
        [("user", "My router shows error E42, what should I do?"), ("assistant", answer)],
        [("user", "My router shows error E42, what should I do?"), ("assistant", answer)],
        [("user", "my router shows ERROR E42,   what should I do?"), ("assistant", answer)],
        [("user", "My router shows error E42, what can I do?"), ("assistant", answer)],
    ] + [
        [("user", f"Question number {i}?"), ("assistant", f"Answer number {i}.")] for i in range(12)
    ]
    body = "\n".join(
        json.dumps({"messages": [{"role": r, "content": c} for r, c in row]}) for row in rows
    ).encode()
    spec = UploadSpec("support", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.3)
    version = core.upload(spec, iter([body]))
    assert version.sanitization.removed == {"exact_duplicate": 2, "near_duplicate": 1}
    assert version.samples == 13

    kept = UploadSpec(
        "support", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.3,
        sanitize=SanitizeOptions(remove_near_duplicates=False),
    )  # fmt: skip
    grouped = core.upload(kept, iter([body]))
    assert grouped.samples == 14
    store = ArtifactStore(tmp_path / "a")
    sides = {
        split: store.path(artifact.digest).read_text()
        for split, artifact in (
            ("train", grouped.train_split),
            ("validation", grouped.validation_split),
        )
    }
    holding = [side for side, text in sides.items() if "E42" in text]
    assert len(holding) == 1, "near-duplicates must not straddle the split"


PLANTED = {
    "email": "ann.smith@example.org",
    "card": "4111 1111 1111 1111",
    "phone": "+44 20 7946 0958",
    "key": "AKIAIOSFODNN7EXAMPLE",
}


def _pii_upload(tmp_path: Path, sanitize: SanitizeOptions, salt: bytes | None = b"s" * 32):
    core = DataCore(
        DataStore(tmp_path / "data.db"),
        ArtifactStore(tmp_path / "a"),
        1 << 20,
        1 << 16,
        pii_salt=salt,
    )
    rows = [
        [
            ("user", f"Mail me at {PLANTED['email']} or call {PLANTED['phone']}."),
            ("assistant", f"Sure, I will write to {PLANTED['email']}."),
        ],
        [
            ("user", f"My card {PLANTED['card']} was charged twice; key {PLANTED['key']}"),
            ("assistant", "I have refunded the second charge."),
        ],
        [("user", f"Is {PLANTED['email']} on file?"), ("assistant", "Yes, it is.")],
    ]
    body = "\n".join(
        json.dumps({"messages": [{"role": r, "content": c} for r, c in row]}) for row in rows
    ).encode()
    spec = UploadSpec("support", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0, sanitize=sanitize)
    version = core.upload(spec, iter([body]))
    stored = ArtifactStore(tmp_path / "a").path(version.train_split.digest).read_text()
    return version, stored


def test_personal_data_is_replaced_by_placeholders_by_default(tmp_path: Path) -> None:
    version, stored = _pii_upload(tmp_path, SanitizeOptions())
    for value in PLANTED.values():
        assert value not in stored
    assert "Sure, I will write to <EMAIL_1>." in stored
    assert "My card <CREDIT_CARD_1> was charged twice; key <AWS_ACCESS_KEY_1>" in stored
    assert version.sanitization.changed == {
        "pii_email": 3,
        "pii_phone": 1,
        "pii_credit_card": 1,
        "pii_aws_access_key": 1,
    }


def test_pseudonyms_are_consistent_across_the_dataset(tmp_path: Path) -> None:
    options = SanitizeOptions(pii_mode=RedactionMode.PSEUDONYMIZE)
    _, stored = _pii_upload(tmp_path, options)
    assert PLANTED["email"] not in stored
    emails = {
        word.strip(".?,")
        for line in stored.splitlines()
        for message in json.loads(line)["messages"]
        for word in message["content"].split()
        if "@" in word
    }
    assert len(emails) == 1, "one address must get one surrogate everywhere"
    with pytest.raises(FailedPreconditionError):
        _pii_upload(tmp_path / "nosalt", options, salt=None)


def test_pii_scanning_can_be_turned_off(tmp_path: Path) -> None:
    _, stored = _pii_upload(tmp_path, SanitizeOptions(pii_mode=None))
    assert PLANTED["email"] in stored


def test_the_language_filter_keeps_the_languages_asked_for(tmp_path: Path) -> None:
    core = DataCore(DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16)
    rows = [
        ("How much does the Zephyr X2 router cost?", "The Zephyr X2 router costs 129 euros."),
        ("Wie viel kostet der Zephyr X2 Router?", "Der Zephyr X2 Router kostet 129 Euro."),
        ("Combien coûte le routeur Zephyr X2 ?", "Le routeur Zephyr X2 coûte 129 euros."),
        ("Hi", "Hello!"),
    ]
    body = "\n".join(
        json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
        for q, a in rows
    ).encode()
    spec = UploadSpec(
        "support", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0,
        sanitize=SanitizeOptions(languages=frozenset({"en", "de"})),
    )  # fmt: skip
    version = core.upload(spec, iter([body]))
    assert version.samples == 3, "English, German, and the one too short to judge"
    assert version.sanitization.removed == {"other_language": 1}
    bad = UploadSpec(
        "support", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0,
        sanitize=SanitizeOptions(languages=frozenset({"english"})),
    )  # fmt: skip
    with pytest.raises(InvalidArgumentError):
        core.upload(bad, iter([body]))

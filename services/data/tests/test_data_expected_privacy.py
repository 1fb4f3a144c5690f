"""Expected answers are as private as the conversations they belong to.

Exact and contains answers are redacted in their conversation's placeholder
scope; a regex answer holding personal data is refused, since a pattern cannot
be redacted safely.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError
from ownchat_data.chat_jsonl import ChatMessage, ChatSample, ExpectedAnswer
from ownchat_data.core import BadRecordPolicy, DataCore, SourceFormat, UploadSpec
from ownchat_data.pattern_text import literal_readings
from ownchat_data.pii import RedactionMode
from ownchat_data.records import RecordError
from ownchat_data.sanitize import SanitizeOptions, Sanitizer
from ownchat_data.store import DatasetVersion, DataStore

# A labelled example: each planted value, with the type the scanner must find.
EMAIL = "alice.martin@example.org"
PHONE = "+44 20 7946 0958"
OTHER_EMAIL = "billing@acme-corp.example"
LABELS = {EMAIL: "EMAIL", PHONE: "PHONE", OTHER_EMAIL: "EMAIL"}


def labelled_sample(expected: ExpectedAnswer) -> ChatSample:
    return ChatSample(
        (
            ChatMessage("user", f"I am {EMAIL}. Which number do you have for me?"),
            ChatMessage("assistant", f"We have {PHONE} on file for {EMAIL}."),
        ),
        1.0,
        7,
        expected,
    )


@pytest.mark.parametrize(
    ("answer", "kind", "redacted"),
    [
        (f"{PHONE} on file for {EMAIL}", "exact", "<PHONE_1> on file for <EMAIL_1>"),
        (EMAIL, "contains", "<EMAIL_1>"),
        (PHONE, "exact", "<PHONE_1>"),
    ],
)
def test_an_answer_gets_the_placeholders_of_its_conversation(
    answer: str, kind: str, redacted: str
) -> None:
    sanitizer = Sanitizer(SanitizeOptions())
    result = sanitizer.apply(labelled_sample(ExpectedAnswer(answer, kind)))
    assert isinstance(result, ChatSample)
    assert result.messages[0].content == "I am <EMAIL_1>. Which number do you have for me?"
    assert result.messages[1].content == "We have <PHONE_1> on file for <EMAIL_1>."
    # The same value has the same placeholder in the reply and in the answer, so
    # the evaluator's check still matches the stored reply.
    assert result.expected == ExpectedAnswer(redacted, kind)
    assert redacted in result.messages[1].content
    counted = sanitizer.report().changed
    assert counted["pii_email"] == 2 + answer.count(EMAIL)
    assert counted["pii_phone"] == 1 + answer.count(PHONE)


def test_a_value_only_in_the_answer_gets_its_own_placeholder() -> None:
    result = Sanitizer(SanitizeOptions()).apply(
        labelled_sample(ExpectedAnswer(f"Write to {OTHER_EMAIL}", "contains"))
    )
    assert isinstance(result, ChatSample) and result.expected is not None
    assert result.expected.answer == "Write to <EMAIL_2>"


def test_pseudonyms_in_the_answer_match_the_conversation() -> None:
    options = SanitizeOptions(pii_mode=RedactionMode.PSEUDONYMIZE)
    result = Sanitizer(options, pii_salt=b"s" * 32).apply(
        labelled_sample(ExpectedAnswer(EMAIL, "exact"))
    )
    assert isinstance(result, ChatSample) and result.expected is not None
    surrogate = result.expected.answer
    assert surrogate != EMAIL and "@" in surrogate
    assert surrogate in result.messages[0].content and surrogate in result.messages[1].content


@pytest.mark.parametrize(
    ("pattern", "types"),
    [
        (r"alice\.martin@example\.org", "EMAIL"),
        (r"alice\.martin\x40example[.]org", "EMAIL"),
        (r"(alice\.martin|bob)@example\.org", "EMAIL"),
        (r"\+44 20 7946 0958", "PHONE"),
        (r"call (\+44 20 7946 0958|alice\.martin@example\.org)", "EMAIL, PHONE"),
    ],
)
def test_a_regex_answer_holding_personal_data_is_refused(pattern: str, types: str) -> None:
    result = Sanitizer(SanitizeOptions()).apply(labelled_sample(ExpectedAnswer(pattern, "regex")))
    assert isinstance(result, RecordError) and result.record == 7
    assert f"regular expression holding personal data or secrets ({types})" in result.reason
    assert "alice" not in result.reason and "7946" not in result.reason


def test_a_regex_answer_without_personal_data_is_kept_as_written() -> None:
    pattern = r"(?i)\d+ ?(€|euros)"
    result = Sanitizer(SanitizeOptions()).apply(labelled_sample(ExpectedAnswer(pattern, "regex")))
    assert isinstance(result, ChatSample)
    assert result.expected == ExpectedAnswer(pattern, "regex")
    assert result.messages[0].content == "I am <EMAIL_1>. Which number do you have for me?"


def test_with_pii_replacement_off_answers_are_left_as_uploaded() -> None:
    for expected in (ExpectedAnswer(EMAIL, "exact"), ExpectedAnswer(r"alice\.martin@", "regex")):
        result = Sanitizer(SanitizeOptions(pii_mode=None)).apply(labelled_sample(expected))
        assert isinstance(result, ChatSample) and result.expected == expected


def test_literal_readings_undo_escapes_and_join_alternatives() -> None:
    assert literal_readings(r"a\.b\+c\(d\)") == [r"a\.b\+c\(d\)", "a.b+c(d)"]
    assert literal_readings(r"x\x40y[.]z") == [r"x\x40y[.]z", "x@y.z"]
    assert literal_readings(r"(ann|bo)@x\.com") == [
        r"(ann|bo)@x\.com",
        "(ann|bo)@x.com",
        "annbo@x.com",
    ]
    assert literal_readings(r"\d{3}-\d+") == [r"\d{3}-\d+", "-"]


def upload(
    tmp_path: Path, lines: list[dict[str, object]], policy: BadRecordPolicy
) -> tuple[DatasetVersion, str]:
    core = DataCore(
        DataStore(tmp_path / "data.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16
    )
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    spec = UploadSpec(
        "support", "chats.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0, bad_record_policy=policy
    )
    version = core.upload(spec, iter([body]))
    split = ArtifactStore(tmp_path / "a").path(version.train_split.digest).read_text()
    return version, split


def line(i: int, expected: object) -> dict[str, object]:
    return {
        "messages": [
            {"role": "user", "content": f"Order {i}: I am {EMAIL}, call me on {PHONE}."},
            {"role": "assistant", "content": f"Order {i} will be confirmed to {EMAIL}."},
        ],
        "expected": expected,
    }


def test_an_upload_stores_no_planted_value_in_any_answer(tmp_path: Path) -> None:
    lines = [
        line(1, f"Order 1 will be confirmed to {EMAIL}."),
        line(2, {"answer": PHONE, "kind": "contains"}),
        line(3, {"answer": r"Order \d+", "kind": "regex"}),
    ]
    version, split = upload(tmp_path, lines, BadRecordPolicy.REJECT_ALL)
    assert version.samples == 3
    for value in LABELS:
        assert value not in split
    stored = {s.record: s for s in map(ChatSample.from_json, split.splitlines())}
    assert stored[1].expected == ExpectedAnswer("Order 1 will be confirmed to <EMAIL_1>.")
    assert stored[1].messages[1].content == stored[1].expected.answer
    assert stored[2].expected == ExpectedAnswer("<PHONE_1>", "contains")
    assert "<PHONE_1>" in stored[2].messages[0].content
    assert stored[3].expected == ExpectedAnswer(r"Order \d+", "regex")
    # Three emails and three phones in the messages, plus one of each in the answers.
    assert version.sanitization.changed["pii_email"] == 7
    assert version.sanitization.changed["pii_phone"] == 4


def test_an_upload_refuses_a_regex_answer_holding_personal_data(tmp_path: Path) -> None:
    lines = [line(1, "fine"), line(2, {"answer": r"alice\.martin@example\.org", "kind": "regex"})]
    with pytest.raises(InvalidArgumentError) as error:
        upload(tmp_path / "strict", lines, BadRecordPolicy.REJECT_ALL)
    [violation] = error.value.violations
    assert violation.field == "line 2"
    assert "cannot be redacted from a pattern safely" in violation.description
    assert "alice" not in str(error.value) + violation.description

    version, split = upload(tmp_path / "lenient", lines, BadRecordPolicy.SKIP_AND_REPORT)
    assert version.samples == 1 and version.skipped_records == 1
    assert version.skipped[0].record == 2 and "(EMAIL)" in version.skipped[0].reason
    assert "alice" not in split

"""Properties of the chat JSONL parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ownchat.artifacts import ArtifactStore
from ownchat_data.chat_jsonl import (
    ChatSample,
    ExpectedAnswer,
    RecordError,
    parse_record,
    split_lines,
)
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.store import DataStore

texts = st.text(min_size=1).filter(lambda s: s.strip())
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": texts}
    ),
    min_size=1,
    max_size=6,
)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_split_lines_rejoins_to_the_input(data: bytes, chunk: int) -> None:
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    lines = list(split_lines(chunks, max_line_bytes=1000))
    expected = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        expected.pop()
    assert [line for _, line in lines] == expected
    assert [n for n, _ in lines] == list(range(1, len(lines) + 1))


@given(st.binary(max_size=200))
def test_any_bytes_parse_to_a_sample_an_error_or_nothing(raw: bytes) -> None:
    result = parse_record(7, raw)
    assert result is None or isinstance(result, ChatSample | RecordError)
    if isinstance(result, RecordError):
        assert result.record == 7 and result.reason


@given(messages)
def test_valid_conversations_round_trip(conversation: list[dict[str, str]]) -> None:
    result = parse_record(1, json.dumps({"messages": conversation}).encode())
    assert isinstance(result, ChatSample)
    assert ChatSample.from_json(result.to_json()) == result
    assert [m.content for m in result.messages] == [m["content"] for m in conversation]


def test_deep_json_nesting_is_an_error_not_a_crash() -> None:
    result = parse_record(1, b"[" * 100000 + b"]" * 100000)
    assert isinstance(result, RecordError)


answers = st.one_of(
    texts,
    st.fixed_dictionaries(
        {"answer": texts, "kind": st.sampled_from(["exact", "contains"])},
    ),
)


@given(messages, answers)
def test_expected_answers_round_trip_in_the_canonical_form(
    conversation: list[dict[str, str]], answer: str | dict[str, str]
) -> None:
    result = parse_record(1, json.dumps({"messages": conversation, "expected": answer}).encode())
    assert isinstance(result, ChatSample) and result.expected is not None
    # A bare string is an exact match; the stored line always has the object form.
    wanted = answer if isinstance(answer, dict) else {"answer": answer, "kind": "exact"}
    assert json.loads(result.to_json())["expected"] == wanted
    assert ChatSample.from_json(result.to_json()) == result


def test_a_sample_without_an_expected_answer_keeps_its_stored_line() -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
    result = parse_record(3, line)
    assert isinstance(result, ChatSample) and result.expected is None
    assert (
        result.to_json() == '{"messages":[{"content":"Hi","role":"user"}],"record":3,"weight":1.0}'
    )


def test_a_regex_answer_is_kept_as_a_pattern() -> None:
    line = {
        "messages": [{"role": "user", "content": "Price?"}],
        "expected": {"answer": r"\d+ ?(€|euros)", "kind": "regex"},
    }
    result = parse_record(1, json.dumps(line).encode())
    assert isinstance(result, ChatSample)
    assert result.expected == ExpectedAnswer(r"\d+ ?(€|euros)", "regex")


@pytest.mark.parametrize(
    ("expected", "reason"),
    [
        (12, "'expected' must be a string or"),
        ({"kind": "exact"}, "'expected' must be a string or"),
        ({"answer": "a", "kind": "fuzzy"}, "'expected.kind' must be one of exact, contains, regex"),
        ({"answer": "a", "knd": "contains"}, "unknown key(s) 'knd'"),
        ({"answer": "(unclosed", "kind": "regex"}, "'expected.answer' is not a regular expression"),
    ],
)
def test_bad_expected_answers_are_refused_with_their_line(expected: object, reason: str) -> None:
    line = {"messages": [{"role": "user", "content": "Hi"}], "expected": expected}
    result = parse_record(9, json.dumps(line).encode())
    assert isinstance(result, RecordError) and result.record == 9
    assert reason in result.reason


def test_expected_answers_are_stored_with_their_samples_in_a_version(tmp_path: Path) -> None:
    core = DataCore(
        DataStore(tmp_path / "data.db"),
        ArtifactStore(tmp_path / "artifacts"),
        max_upload_bytes=1 << 20,
        max_record_bytes=4096,
    )
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"How much is plan {i}?"},
                {"role": "assistant", "content": f"Plan {i} costs {10 + i} euros."},
            ],
            **({"expected": {"answer": f"{10 + i} euros", "kind": "contains"}} if i % 2 else {}),
        }
        for i in range(10)
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    spec = UploadSpec("priced", "chats.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.5)
    version = core.upload(spec, iter([body]))
    store = ArtifactStore(tmp_path / "artifacts")
    stored = [
        ChatSample.from_json(line)
        for split in (version.train_split, version.validation_split)
        for line in store.path(split.digest).read_text().splitlines()
    ]
    assert len(stored) == 10
    by_record = {s.record: s.expected for s in stored}
    assert by_record == {
        i + 1: ExpectedAnswer(f"{10 + i} euros", "contains") if i % 2 else None for i in range(10)
    }

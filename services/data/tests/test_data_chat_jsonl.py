"""Properties of the chat JSONL parser."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from ownchat_data.chat_jsonl import ChatSample, RecordError, parse_record, split_lines

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

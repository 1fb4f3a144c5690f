"""Parsing OpenAI chat JSONL: ``{"messages": [{"role": ..., "content": ...}], "weight": 1}``.

Lines are parsed as the bytes arrive; each valid line becomes a :class:`ChatSample`,
each bad one a :class:`RecordError` with its 1-based line number.

A line may carry the answer its last assistant turn is expected to give, for the
evaluator's task checks: ``"expected": "129 euros"`` (an exact match) or
``"expected": {"answer": "129", "kind": "exact" | "contains" | "regex"}``. It is
stored in the canonical object form, which the evaluator reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import regex

from ownchat_data.records import ROLES, RecordError, RecordTooLarge


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation."""

    role: str
    content: str


# How the evaluator compares a reply with an expected answer.
EXPECTED_KINDS = ("exact", "contains", "regex")


@dataclass(frozen=True)
class ExpectedAnswer:
    """The answer a conversation's last assistant turn should give, and how to compare.

    ``kind`` is one of :data:`EXPECTED_KINDS`; a regex answer is a pattern (the
    ``regex`` module's syntax, as the evaluator runs it) to find in the reply.
    """

    answer: str
    kind: str = "exact"

    def to_dict(self) -> dict[str, str]:
        """The stored form, which the evaluator's split reader takes."""
        return {"answer": self.answer, "kind": self.kind}


@dataclass(frozen=True)
class ChatSample:
    """One conversation with its loss weight, its source line and, maybe, its expected answer."""

    messages: tuple[ChatMessage, ...]
    weight: float
    record: int
    expected: ExpectedAnswer | None = None

    def to_json(self) -> str:
        """The canonical line stored in a split file."""
        value: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "weight": self.weight,
            "record": self.record,
        }
        # Absent rather than null, so lines without one keep the bytes (and
        # the versions their digests) they always had.
        if self.expected is not None:
            value["expected"] = self.expected.to_dict()
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ChatSample:
        """Reads a line written by :meth:`to_json`."""
        value = json.loads(line)
        expected = value.get("expected")
        return cls(
            messages=tuple(ChatMessage(m["role"], m["content"]) for m in value["messages"]),
            weight=float(value["weight"]),
            record=int(value["record"]),
            expected=None
            if expected is None
            else ExpectedAnswer(expected["answer"], expected["kind"]),
        )


def split_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yields (line number, line bytes) from a stream of chunks, in constant memory."""
    pending = bytearray()
    number = 0
    for chunk in chunks:
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            number += 1
            if end - start > max_line_bytes:
                raise RecordTooLarge(number, max_line_bytes)
            yield number, bytes(pending[start:end])
            start = end + 1
        del pending[:start]
        if len(pending) > max_line_bytes:
            raise RecordTooLarge(number + 1, max_line_bytes)
    if pending:
        yield number + 1, bytes(pending)


def parse_messages(
    number: int, messages: object, field: str = "messages"
) -> list[ChatMessage] | RecordError:
    """Validates a list of {"role", "content"} objects."""
    if not isinstance(messages, list) or not messages:
        return RecordError(number, f"'{field}' must be a non-empty list")
    parsed: list[ChatMessage] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return RecordError(number, f"{field}[{index}] must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return RecordError(
                number, f"{field}[{index}].role must be one of {', '.join(ROLES)}, got {role!r}"
            )
        if not isinstance(content, str) or not content.strip():
            return RecordError(number, f"{field}[{index}].content must be a non-empty string")
        parsed.append(ChatMessage(role, content))
    return parsed


def decode_json_line(number: int, raw: bytes) -> object | RecordError | None:
    """A line's JSON value; None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return RecordError(number, f"not valid UTF-8 at byte {error.start}")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return RecordError(number, f"not valid JSON: {error.msg} at column {error.colno}")
    except RecursionError:
        return RecordError(number, "JSON nested too deeply")


def parse_expected(number: int, value: object) -> ExpectedAnswer | RecordError | None:
    """Validates an optional expected answer: a string, or {"answer", "kind"}."""
    if value is None:
        return None
    if isinstance(value, str):
        return ExpectedAnswer(value)
    shape = (
        '\'expected\' must be a string or {"answer": "...", "kind": "exact" | "contains" | "regex"}'
    )
    if not isinstance(value, dict) or not isinstance(value.get("answer"), str):
        return RecordError(number, shape)
    unknown = sorted(set(value) - {"answer", "kind"})
    if unknown:
        return RecordError(number, f"{shape}; unknown key(s) {', '.join(map(repr, unknown))}")
    kind = value.get("kind", "exact")
    if kind not in EXPECTED_KINDS:
        return RecordError(number, f"'expected.kind' must be one of {', '.join(EXPECTED_KINDS)}")
    if kind == "regex":
        # Refused here rather than failing every evaluation of the version later.
        try:
            regex.compile(value["answer"])
        except regex.error as error:
            return RecordError(number, f"'expected.answer' is not a regular expression: {error}")
    return ExpectedAnswer(value["answer"], kind)


def parse_record(number: int, raw: bytes) -> ChatSample | RecordError | None:
    """Parses one line; None for a blank line."""
    value = decode_json_line(number, raw)
    if value is None or isinstance(value, RecordError):
        return value
    if not isinstance(value, dict):
        return RecordError(number, "expected a JSON object with a 'messages' list")
    parsed = parse_messages(number, value.get("messages"))
    if isinstance(parsed, RecordError):
        return parsed
    weight = value.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
        return RecordError(number, "'weight' must be a number between 0 and 100")
    expected = parse_expected(number, value.get("expected"))
    if isinstance(expected, RecordError):
        return expected
    return ChatSample(tuple(parsed), float(weight), number, expected)


def parse_chat_jsonl(
    chunks: Iterable[bytes], max_line_bytes: int
) -> Iterator[ChatSample | RecordError]:
    """Every conversation or refused line of an OpenAI chat JSONL stream."""
    for number, raw in split_lines(chunks, max_line_bytes):
        parsed = parse_record(number, raw)
        if parsed is not None:
            yield parsed

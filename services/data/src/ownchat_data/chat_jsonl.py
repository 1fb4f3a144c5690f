"""Parsing OpenAI chat JSONL: ``{"messages": [{"role": ..., "content": ...}], "weight": 1}``.

Lines are parsed as the bytes arrive; each valid line becomes a :class:`ChatSample`,
each bad one a :class:`RecordError` with its 1-based line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ownchat_data.records import ROLES, RecordError, RecordTooLarge


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatSample:
    """One conversation with its loss weight and its source line."""

    messages: tuple[ChatMessage, ...]
    weight: float
    record: int

    def to_json(self) -> str:
        """The canonical line stored in a split file."""
        return json.dumps(
            {
                "messages": [{"role": m.role, "content": m.content} for m in self.messages],
                "weight": self.weight,
                "record": self.record,
            },
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> ChatSample:
        """Reads a line written by :meth:`to_json`."""
        value = json.loads(line)
        return cls(
            messages=tuple(ChatMessage(m["role"], m["content"]) for m in value["messages"]),
            weight=float(value["weight"]),
            record=int(value["record"]),
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
    return ChatSample(tuple(parsed), float(weight), number)


def parse_chat_jsonl(
    chunks: Iterable[bytes], max_line_bytes: int
) -> Iterator[ChatSample | RecordError]:
    """Every conversation or refused line of an OpenAI chat JSONL stream."""
    for number, raw in split_lines(chunks, max_line_bytes):
        parsed = parse_record(number, raw)
        if parsed is not None:
            yield parsed

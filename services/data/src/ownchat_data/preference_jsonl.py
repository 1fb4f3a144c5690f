"""Parsing OpenAI's DPO-style preference JSONL, one pair per line::

{"input": {"messages": [...]},
 "preferred_output": [{"role": "assistant", "content": "..."}],
 "non_preferred_output": [{"role": "assistant", "content": "..."}]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ownchat_data.chat_jsonl import (
    ChatMessage,
    decode_json_line,
    parse_messages,
    split_lines,
)
from ownchat_data.records import RecordError


@dataclass(frozen=True)
class PreferenceSample:
    """A prompt with a better and a worse reply."""

    prompt: tuple[ChatMessage, ...]
    chosen: str
    rejected: str
    record: int

    def to_json(self) -> str:
        """The canonical line stored in a split file."""
        return json.dumps(
            {
                "prompt": [{"role": m.role, "content": m.content} for m in self.prompt],
                "chosen": self.chosen,
                "rejected": self.rejected,
                "record": self.record,
            },
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> PreferenceSample:
        """Reads a line written by :meth:`to_json`."""
        value = json.loads(line)
        return cls(
            prompt=tuple(ChatMessage(m["role"], m["content"]) for m in value["prompt"]),
            chosen=value["chosen"],
            rejected=value["rejected"],
            record=int(value["record"]),
        )


def _reply(number: int, value: object, field: str) -> str | RecordError:
    messages = parse_messages(number, value, field)
    if isinstance(messages, RecordError):
        return messages
    if len(messages) != 1 or messages[0].role != "assistant":
        return RecordError(number, f"'{field}' must hold exactly one assistant message")
    return messages[0].content


def parse_preference_record(number: int, raw: bytes) -> PreferenceSample | RecordError | None:
    """Parses one line; None for a blank line."""
    value = decode_json_line(number, raw)
    if value is None or isinstance(value, RecordError):
        return value
    if not isinstance(value, dict) or not isinstance(value.get("input"), dict):
        return RecordError(number, "expected an object with 'input': {'messages': [...]}")
    prompt = parse_messages(number, value["input"].get("messages"), "input.messages")
    if isinstance(prompt, RecordError):
        return prompt
    if prompt[-1].role != "user":
        return RecordError(number, "'input.messages' must end with a user message")
    chosen = _reply(number, value.get("preferred_output"), "preferred_output")
    if isinstance(chosen, RecordError):
        return chosen
    rejected = _reply(number, value.get("non_preferred_output"), "non_preferred_output")
    if isinstance(rejected, RecordError):
        return rejected
    if chosen == rejected:
        return RecordError(number, "the preferred and non-preferred outputs are identical")
    return PreferenceSample(tuple(prompt), chosen, rejected, number)


def parse_preference_jsonl(
    chunks: Iterable[bytes], max_line_bytes: int
) -> Iterator[PreferenceSample | RecordError]:
    """Every pair or refused line of a preference JSONL stream."""
    for number, raw in split_lines(chunks, max_line_bytes):
        parsed = parse_preference_record(number, raw)
        if parsed is not None:
            yield parsed

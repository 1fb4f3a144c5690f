"""Parsing ShareGPT JSON: a list of ``{"conversations": [{"from": ..., "value": ...}]}``.

The file is one JSON array, so it is parsed incrementally (ijson) as the
bytes arrive: memory holds one conversation at a time. Records are numbered
by their 1-based position in the array.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import ijson

from ownchat_data.chat_jsonl import ChatMessage, ChatSample
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge

# Deeper than any real conversation object (a list of turns holding strings).
MAX_DEPTH = 32

# The speaker names seen in ShareGPT-style exports.
SPEAKERS = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}


def _conversation(number: int, item: object) -> ChatSample | RecordError:
    if not isinstance(item, dict):
        return RecordError(number, "expected an object with a 'conversations' list")
    turns = item.get("conversations")
    if not isinstance(turns, list) or not turns:
        return RecordError(number, "'conversations' must be a non-empty list")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return RecordError(number, f"conversations[{index}] must be an object")
        speaker, value = turn.get("from"), turn.get("value")
        role = SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            return RecordError(
                number,
                f"conversations[{index}].from must be one of {', '.join(sorted(SPEAKERS))}, "
                f"got {speaker!r}",
            )
        if not isinstance(value, str) or not value.strip():
            return RecordError(number, f"conversations[{index}].value must be a non-empty string")
        messages.append(ChatMessage(role, value))
    return ChatSample(tuple(messages), 1.0, number)


class _Items:
    """Builds the top-level array's items from parser events, refusing deep nesting.

    ijson's own item builder keeps a dotted path per nesting level, so a file of
    nested brackets costs memory quadratic in its depth: a few hundred kilobytes
    of "[" exhaust gigabytes. Events without paths, and a depth limit, keep a
    hostile upload to the memory of one bounded record.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.finished = False
        self.builder: ijson.ObjectBuilder | None = None
        self.count = 0
        self.done: list[object] = []

    def feed(self, event: str, value: object) -> None:
        opens = event in ("start_map", "start_array")
        closes = event in ("end_map", "end_array")
        if self.depth == 0:
            if self.finished or event != "start_array":
                raise MalformedSource(1, "expected one JSON array of conversations")
            self.depth = 1
        elif self.depth == 1 and event == "end_array":
            self.depth = 0
            self.finished = True
        elif self.depth == 1 and not opens:
            self._complete(value)
        else:
            if opens:
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    raise MalformedSource(
                        self.count + 1,
                        f"item {self.count + 1} is nested deeper than {MAX_DEPTH} levels",
                    )
                if self.depth == 2:
                    self.builder = ijson.ObjectBuilder()
            assert self.builder is not None
            self.builder.event(event, value)
            if closes:
                self.depth -= 1
                if self.depth == 1:
                    self._complete(self.builder.value)
                    self.builder = None

    def _complete(self, item: object) -> None:
        self.done.append(item)
        self.count += 1


def parse_sharegpt(
    chunks: Iterable[bytes], max_record_bytes: int
) -> Iterator[ChatSample | RecordError]:
    """Every conversation or refused item of a ShareGPT JSON stream."""
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=True)
    items = _Items()
    number = 0
    since_last_item = 0
    try:
        for chunk in chunks:
            parser.send(chunk)
            since_last_item += len(chunk)
            for event, value in events:
                items.feed(event, value)
            del events[:]
            if items.done:
                since_last_item = 0
            elif since_last_item > max_record_bytes:
                raise RecordTooLarge(number + 1, max_record_bytes)
            for item in items.done:
                number += 1
                yield _conversation(number, item)
            del items.done[:]
        parser.close()
        for event, value in events:
            items.feed(event, value)
    except ijson.JSONError as error:
        raise MalformedSource(number + 1, f"not valid JSON after item {number}: {error}") from None
    for item in items.done:
        number += 1
        yield _conversation(number, item)
    if number == 0:
        raise MalformedSource(1, "expected a JSON array of conversations")

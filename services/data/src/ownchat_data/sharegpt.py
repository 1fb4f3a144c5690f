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


def parse_sharegpt(
    chunks: Iterable[bytes], max_record_bytes: int
) -> Iterator[ChatSample | RecordError]:
    """Every conversation or refused item of a ShareGPT JSON stream."""
    items = ijson.sendable_list()
    parser = ijson.items_coro(items, "item", use_float=True)
    number = 0
    since_last_item = 0
    try:
        for chunk in chunks:
            parser.send(chunk)
            since_last_item += len(chunk)
            if items:
                since_last_item = 0
            elif since_last_item > max_record_bytes:
                raise RecordTooLarge(number + 1, max_record_bytes)
            for item in items:
                number += 1
                yield _conversation(number, item)
            del items[:]
        parser.close()
    except ijson.JSONError as error:
        raise MalformedSource(number + 1, f"not valid JSON after item {number}: {error}") from None
    for item in items:
        number += 1
        yield _conversation(number, item)
    if number == 0:
        raise MalformedSource(1, "expected a JSON array of conversations")

"""Parsing CSV transcript exports: one row per message, grouped by a conversation id.

Help-desk exports list a conversation's messages on consecutive rows. Rows are
read as they arrive and a conversation is complete when the id changes, so
memory holds one conversation; an id that comes back after other
conversations is refused with both row numbers (sort the export first).
Records are numbered by CSV row, the header being row 1.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ownchat_data.chat_jsonl import ChatMessage, ChatSample
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge

# Author names seen in help-desk and chat-platform exports.
AUTHORS = {
    "system": "system",
    "user": "user",
    "customer": "user",
    "client": "user",
    "human": "user",
    "visitor": "user",
    "end-user": "user",
    "end_user": "user",
    "requester": "user",
    "assistant": "assistant",
    "agent": "assistant",
    "bot": "assistant",
    "support": "assistant",
    "operator": "assistant",
    "staff": "assistant",
}


@dataclass(frozen=True)
class CsvColumns:
    """Which columns hold what."""

    conversation_id: str = "conversation_id"
    role: str = "role"
    content: str = "content"
    order: str = ""


@dataclass
class _Conversation:
    id: str
    first_row: int
    rows: list[tuple[object, int, ChatMessage]] = field(default_factory=list)
    size: int = 0
    error: RecordError | None = None


def _lines(chunks: Iterable[bytes], max_record_bytes: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    offset = 0
    for chunk in chunks:
        try:
            pending += decoder.decode(chunk)
        except UnicodeDecodeError as error:
            raise MalformedSource(0, f"not valid UTF-8 at byte {offset + error.start}") from None
        offset += len(chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line + "\n"
        if len(pending) > max_record_bytes:
            raise RecordTooLarge(0, max_record_bytes)
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise MalformedSource(0, "the file ends inside a UTF-8 character") from None
    if pending:
        yield pending


def _order_key(value: str) -> object:
    try:
        return (0, float(value))
    except ValueError:
        pass
    try:
        return (0, datetime.fromisoformat(value).timestamp())
    except ValueError:
        return (1, value)


def _finish(conversation: _Conversation) -> ChatSample | RecordError:
    if conversation.error is not None:
        return conversation.error
    rows = sorted(conversation.rows, key=lambda row: (row[0], row[1]))
    messages = tuple(message for _, _, message in rows)
    return ChatSample(messages, 1.0, conversation.first_row)


def parse_csv_transcript(
    chunks: Iterable[bytes], max_record_bytes: int, columns: CsvColumns
) -> Iterator[ChatSample | RecordError]:
    """Every conversation or refused row of a CSV transcript stream."""
    csv.field_size_limit(max_record_bytes)
    reader = csv.reader(_lines(chunks, max_record_bytes))
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise MalformedSource(1, f"the header row is not valid CSV: {error}") from None
    if header is None:
        raise MalformedSource(1, "the file is empty")
    names = [name.strip() for name in header]
    wanted = [columns.conversation_id, columns.role, columns.content]
    if columns.order:
        wanted.append(columns.order)
    missing = [name for name in wanted if name not in names]
    if missing:
        raise MalformedSource(
            1, f"the header lacks column(s) {', '.join(missing)}; it has {', '.join(names)}"
        )
    index = {name: names.index(name) for name in wanted}
    finished: set[str] = set()
    current: _Conversation | None = None
    row_number = 1
    while True:
        try:
            row = next(reader, None)
        except csv.Error as error:
            raise MalformedSource(row_number + 1, f"row {row_number + 1}: {error}") from None
        if row is None:
            break
        row_number += 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            yield RecordError(row_number, f"expected {len(names)} columns, got {len(row)}")
            continue
        conversation_id = row[index[columns.conversation_id]].strip()
        if current is None or conversation_id != current.id:
            if current is not None:
                finished.add(current.id)
                yield _finish(current)
            if conversation_id in finished:
                yield RecordError(
                    row_number,
                    f"conversation {conversation_id!r} continues after other conversations; "
                    "sort the export by conversation",
                )
                current = None
                continue
            current = _Conversation(conversation_id, row_number)
        author = row[index[columns.role]].strip().lower()
        content = row[index[columns.content]]
        role = AUTHORS.get(author)
        if role is None and current.error is None:
            current.error = RecordError(
                row_number, f"unknown author {author!r}; expected one of {', '.join(AUTHORS)}"
            )
        elif not content.strip() and current.error is None:
            current.error = RecordError(row_number, "empty message")
        elif current.error is None:
            current.size += len(content)
            if current.size > max_record_bytes:
                # Rows of a refused conversation are not kept: memory stays one record.
                current.error = RecordError(
                    current.first_row,
                    f"conversation {conversation_id!r} is longer than {max_record_bytes} bytes",
                )
                current.rows.clear()
            else:
                order = _order_key(row[index[columns.order]]) if columns.order else (0, 0.0)
                current.rows.append((order, row_number, ChatMessage(role or "user", content)))
    if current is not None:
        yield _finish(current)

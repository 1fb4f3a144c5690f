"""Captured chats and the feedback on them, in ``$OWNCHAT_HOME/gateway/captured.db``
(or in the gateway's PostgreSQL database when ``database_url`` is set).

Only scrubbed text is ever written here: the capture scrubs through the data
service first and stores nothing when it cannot. A file of its own, apart from the
keys, so that the chats can be erased or moved without touching credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ownchat.database import Database, Migrations, Row, delete_in, keyset_scan
from ownchat.erasure import MIN_VALUE_CHARS, folded_values, holds_any, too_short
from ownchat_gateway.feedback.settings import CaptureSettings

MIGRATIONS = Migrations("captured", Path(__file__).with_name("migrations"))

# What an erasure reads, a page after the last key read (see keyset_scan).
_CHATS_TO_SCAN = (
    "SELECT response_id, messages, reply FROM captured_chats"
    " WHERE response_id > ? ORDER BY response_id LIMIT ?"
)
_FEEDBACK_TO_SCAN = "SELECT id, comment FROM feedback WHERE id > ? ORDER BY id LIMIT ?"


class Rating(StrEnum):
    """A thumb."""

    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class CapturedChat:
    """A reply and the conversation before it, scrubbed."""

    response_id: str
    model_id: str
    key_id: str
    # (role, content) pairs, in order.
    messages: tuple[tuple[str, str], ...]
    reply: str
    create_time: float
    review_item_id: str = ""


@dataclass(frozen=True)
class Feedback:
    """A thumb on a reply, with its scrubbed comment."""

    id: int
    response_id: str
    rating: Rating
    comment: str
    key_id: str
    create_time: float
    review_item_id: str = ""


@dataclass(frozen=True)
class ErasedCaptures:
    """What an erasure deleted."""

    # The captured chats', in response id order.
    response_ids: tuple[str, ...]
    # Feedback rows: those on the deleted chats and those whose comment held a value.
    feedback: int
    # The review items made from the deleted chats and feedback, each once: the
    # evaluator holds copies of their text, which its own erasure deletes.
    review_item_ids: tuple[str, ...]


class CaptureStore:
    """The captured chats and the feedback, shared by the gateway's workers."""

    def __init__(self, location: Path | str, clock: Callable[[], float] = time.time) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self._database = Database(location, MIGRATIONS)
        self._clock = clock

    def add_chat(self, chat: CapturedChat) -> None:
        """Keeps a captured chat; a response id is captured once."""
        with self._database.transaction() as connection:
            connection.execute(
                "INSERT INTO captured_chats (response_id, model_id, key_id, messages, reply,"
                " review_item_id, create_time) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (response_id) DO NOTHING",
                (
                    chat.response_id,
                    chat.model_id,
                    chat.key_id,
                    json.dumps([list(message) for message in chat.messages]),
                    chat.reply,
                    chat.review_item_id,
                    chat.create_time,
                ),
            )

    def chat(self, response_id: str) -> CapturedChat | None:
        """The captured chat of a reply, if it was captured."""
        rows = self._database.query(
            "SELECT * FROM captured_chats WHERE response_id = ?", (response_id,)
        )
        if not rows:
            return None
        row = rows[0]
        return CapturedChat(
            response_id=row["response_id"],
            model_id=row["model_id"],
            key_id=row["key_id"],
            messages=tuple((role, content) for role, content in json.loads(row["messages"])),
            reply=row["reply"],
            create_time=row["create_time"],
            review_item_id=row["review_item_id"],
        )

    def add_feedback(
        self,
        response_id: str,
        rating: Rating,
        comment: str,
        key_id: str,
        review_item_id: str = "",
    ) -> Feedback:
        """Keeps a thumb; every thumb is kept, the latest counts."""
        now = self._clock()
        with self._database.transaction() as connection:
            (feedback_id,) = connection.execute(
                "INSERT INTO feedback (response_id, rating, comment, key_id, review_item_id,"
                " create_time) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (response_id, rating.value, comment, key_id, review_item_id, now),
            ).fetchone()
        return Feedback(feedback_id, response_id, rating, comment, key_id, now, review_item_id)

    def feedback(self, response_id: str) -> list[Feedback]:
        """The thumbs on a reply, oldest first."""
        rows = self._database.query(
            "SELECT * FROM feedback WHERE response_id = ? ORDER BY id", (response_id,)
        )
        return [
            Feedback(
                row["id"],
                row["response_id"],
                Rating(row["rating"]),
                row["comment"],
                row["key_id"],
                row["create_time"],
                row["review_item_id"],
            )
            for row in rows
        ]

    def erase(self, values: Sequence[str]) -> ErasedCaptures:
        """Right to erasure: deletes every chat whose messages or reply hold a value,
        the feedback on it, and every other feedback whose comment holds one.

        "Holds" is :mod:`ownchat.erasure`'s rule, the data service's, so a value
        erased from the datasets is erased here too. It is applied in Python, not
        SQL: ``LOWER`` folds case differently from ``casefold`` and differently on
        each engine. One transaction, so no chat goes while its feedback stays.

        Nothing of the deleted rows is left in the store's files after
        (``Database.scrub_erased``), nor in SQLite's log once no other
        connection is reading.
        """
        if too_short(values):
            # "" would hold in every text: refused here too, not only by the callers.
            raise ValueError(f"each value to erase needs {MIN_VALUE_CHARS} characters or more")
        folded = folded_values(values)
        with self._database.transaction() as connection:
            response_ids = [
                row["response_id"]
                for row in keyset_scan(connection, _CHATS_TO_SCAN, "response_id", "")
                if holds_any(_chat_texts(row), folded)
            ]
            chat_items = delete_in(
                connection, "captured_chats", "response_id", response_ids, "review_item_id"
            )
            on_chats = delete_in(
                connection, "feedback", "response_id", response_ids, "review_item_id"
            )
            commented = [
                row["id"]
                for row in keyset_scan(connection, _FEEDBACK_TO_SCAN, "id", 0)
                if holds_any([row["comment"]], folded)
            ]
            by_comment = delete_in(connection, "feedback", "id", commented, "review_item_id")
        if response_ids or commented:
            self._database.scrub_erased(("captured_chats", "feedback"))
        return ErasedCaptures(
            response_ids=tuple(response_ids),
            feedback=len(on_chats) + len(by_comment),
            review_item_ids=_distinct_ids(chat_items, on_chats, by_comment),
        )

    def capture_settings(self) -> CaptureSettings | None:
        """The settings an operator set; None until one does."""
        rows = self._database.query(
            "SELECT enabled, sample_percent, update_time, updated_by FROM capture_settings"
            " WHERE id = 1"
        )
        if not rows:
            return None
        row = rows[0]
        return CaptureSettings(
            enabled=bool(row["enabled"]),
            sample_percent=row["sample_percent"],
            update_time=row["update_time"],
            updated_by=row["updated_by"],
        )

    def set_capture_settings(
        self, *, enabled: bool, sample_percent: int, updated_by: str
    ) -> CaptureSettings:
        """Replaces the settings; every worker sharing the store reads them."""
        settings = CaptureSettings(enabled, sample_percent, self._clock(), updated_by)
        with self._database.transaction() as connection:
            connection.execute(
                "INSERT INTO capture_settings (id, enabled, sample_percent, update_time,"
                " updated_by) VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " enabled = excluded.enabled, sample_percent = excluded.sample_percent,"
                " update_time = excluded.update_time, updated_by = excluded.updated_by",
                (enabled, sample_percent, settings.update_time, updated_by),
            )
        return settings

    def close(self) -> None:
        """Closes the database."""
        self._database.close()


def _distinct_ids(*groups: Iterable[str]) -> tuple[str, ...]:
    """The non-empty ids (a chat or thumb the queue did not take has ""), each once, in order."""
    return tuple(dict.fromkeys(item for group in groups for item in group if item))


def _chat_texts(row: Row) -> list[str]:
    # The contents decoded from the JSON: json.dumps escapes non-ASCII text
    # ("\u00e9"), so the stored column would not hold "José" as typed. Roles are
    # not matched: they are no one's data, and "user" would match every chat.
    return [content for _, content in json.loads(row["messages"])] + [row["reply"]]

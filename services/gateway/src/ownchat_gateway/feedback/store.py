"""Captured chats and the feedback on them, in ``$OWNCHAT_HOME/gateway/captured.db``
(or in the gateway's PostgreSQL database when ``database_url`` is set).

Only scrubbed text is ever written here: the capture scrubs through the data
service first and stores nothing when it cannot. A file of its own, apart from the
keys, so that the chats can be erased or moved without touching credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ownchat.database import Database, Migrations

MIGRATIONS = Migrations("captured", Path(__file__).with_name("migrations"))


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

    def close(self) -> None:
        """Closes the database."""
        self._database.close()

"""Captured chats and the feedback on them, in ``$OWNCHAT_HOME/gateway/captured.db``.

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

from ownchat.sqlite import Database

_MIGRATIONS = [
    """
    CREATE TABLE captured_chats (
        response_id TEXT PRIMARY KEY,
        model_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        messages TEXT NOT NULL,
        reply TEXT NOT NULL,
        review_item_id TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL
    );
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        response_id TEXT NOT NULL,
        rating TEXT NOT NULL,
        comment TEXT NOT NULL,
        key_id TEXT NOT NULL,
        review_item_id TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL
    );
    CREATE INDEX feedback_by_response ON feedback (response_id)
    """,
]


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
    """The captured chats and the feedback, shared by the gateway's workers (WAL)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._database = Database(path, _MIGRATIONS)
        self._clock = clock

    def add_chat(self, chat: CapturedChat) -> None:
        """Keeps a captured chat; a response id is captured once."""
        with self._database.transaction() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO captured_chats (response_id, model_id, key_id, messages,"
                " reply, review_item_id, create_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            cursor = connection.execute(
                "INSERT INTO feedback (response_id, rating, comment, key_id, review_item_id,"
                " create_time) VALUES (?, ?, ?, ?, ?, ?)",
                (response_id, rating.value, comment, key_id, review_item_id, now),
            )
            feedback_id = cursor.lastrowid
        assert feedback_id is not None
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
        """Closes the file."""
        self._database.close()

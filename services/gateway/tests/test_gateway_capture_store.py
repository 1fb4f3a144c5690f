"""The captured chats and feedback store as a plain object, on SQLite and on
PostgreSQL: a reply is captured once, every thumb is kept in order, and a file
from before Alembic keeps its rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownchat.testing import ManualClock
from ownchat_gateway.feedback.store import CapturedChat, CaptureStore, Rating


@pytest.fixture
def store(store_location: Path | str) -> Iterator[CaptureStore]:
    capture_store = CaptureStore(store_location, clock=ManualClock(1_700_000_000.0, step=1.0))
    yield capture_store
    capture_store.close()


def _chat(response_id: str, reply: str = "Hello.") -> CapturedChat:
    return CapturedChat(
        response_id=response_id,
        model_id="mv_live",
        key_id="ak_1",
        messages=(("system", "Be brief."), ("user", "Hi, I am <PERSON_1>.")),
        reply=reply,
        create_time=1_700_000_000.5,
        review_item_id="ri_1",
    )


def test_gateway_a_reply_is_captured_once(store: CaptureStore) -> None:
    assert store.chat("chatcmpl-1") is None
    store.add_chat(_chat("chatcmpl-1"))
    # A second capture of the same reply changes nothing.
    store.add_chat(_chat("chatcmpl-1", reply="Something else."))
    assert store.chat("chatcmpl-1") == _chat("chatcmpl-1")
    store.add_chat(_chat("chatcmpl-2", reply="Bye."))
    kept = store.chat("chatcmpl-2")
    assert kept is not None and kept.reply == "Bye."


def test_gateway_every_thumb_is_kept_in_order(store: CaptureStore) -> None:
    assert store.feedback("chatcmpl-1") == []
    down = store.add_feedback("chatcmpl-1", Rating.DOWN, "wrong", "ak_1", "ri_9")
    other = store.add_feedback("chatcmpl-2", Rating.UP, "", "ak_2")
    up = store.add_feedback("chatcmpl-1", Rating.UP, "better now", "ak_1")
    assert down.id < other.id < up.id
    assert (down.rating, down.comment, down.review_item_id) == (Rating.DOWN, "wrong", "ri_9")
    assert down.create_time < up.create_time
    assert store.feedback("chatcmpl-1") == [down, up]
    assert store.feedback("chatcmpl-2") == [other]


def test_gateway_feedback_kept_across_opens(store_location: Path | str) -> None:
    first = CaptureStore(store_location, clock=ManualClock(1_700_000_000.0, step=1.0))
    first.add_chat(_chat("chatcmpl-1"))
    thumb = first.add_feedback("chatcmpl-1", Rating.UP, "", "ak_1")
    first.close()
    reopened = CaptureStore(store_location)
    assert reopened.chat("chatcmpl-1") == _chat("chatcmpl-1")
    assert reopened.feedback("chatcmpl-1") == [thumb]
    assert reopened.add_feedback("chatcmpl-1", Rating.DOWN, "", "ak_1").id > thumb.id
    reopened.close()


def test_gateway_captured_file_from_before_alembic_is_kept(tmp_path: Path) -> None:
    # captured.db as the releases before Alembic wrote it (PRAGMA user_version 1).
    path = tmp_path / "captured.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
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
        CREATE INDEX feedback_by_response ON feedback (response_id);
        PRAGMA user_version = 1;
        INSERT INTO captured_chats VALUES
            ('chatcmpl-1', 'mv_old', 'ak_1', '[["user", "Hi"]]', 'Hello.', '', 5.0);
        INSERT INTO feedback VALUES (1, 'chatcmpl-1', 'up', '', 'ak_1', '', 6.0);
        INSERT INTO feedback VALUES (2, 'chatcmpl-1', 'down', 'no', 'ak_1', '', 7.0);
        DELETE FROM feedback WHERE id = 2;
        """
    )
    old.close()
    store = CaptureStore(path)
    chat = store.chat("chatcmpl-1")
    assert chat is not None and chat.messages == (("user", "Hi"),) and chat.model_id == "mv_old"
    assert [(f.id, f.rating) for f in store.feedback("chatcmpl-1")] == [(1, Rating.UP)]
    # AUTOINCREMENT: an id once given is never given again.
    assert store.add_feedback("chatcmpl-1", Rating.DOWN, "", "ak_1").id == 3
    store.close()

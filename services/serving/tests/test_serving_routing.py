"""Canary splits: sticky per conversation, close to the share asked, growing monotonically."""

from __future__ import annotations

from ownchat_serving.generation import ChatTurn
from ownchat_serving.routing import bucket, conversation_key, takes_canary


def test_the_key_is_the_conversation_id_or_the_first_user_message() -> None:
    first = [ChatTurn("system", "Be brief."), ChatTurn("user", "My router blinks red")]
    later = [*first, ChatTurn("assistant", "Unplug it."), ChatTurn("user", "Still red")]
    assert conversation_key("", first) == conversation_key("", later)
    assert conversation_key("c-1", first) == conversation_key("c-1", [ChatTurn("user", "x")])
    assert conversation_key("c-1", first) != conversation_key("", first)
    assert conversation_key("", [ChatTurn("system", "only")]) == "first:only"


def test_a_raw_prompt_is_its_own_key_unless_an_id_is_given() -> None:
    assert conversation_key("", [], "Once upon a time") == "prompt:Once upon a time"
    assert conversation_key("", [], "Once upon") != conversation_key("", [], "Once upon a time")
    # Never the same key as a conversation whose first message has the same text.
    assert conversation_key("", [], "Hi") != conversation_key("", [ChatTurn("user", "Hi")])
    assert conversation_key("c-1", [], "Once upon a time") == "id:c-1"


def test_the_split_is_close_to_the_share_and_stable() -> None:
    keys = [f"id:conversation-{i}" for i in range(5000)]
    chosen = [key for key in keys if takes_canary(key, "tiny:2", 10)]
    assert 400 <= len(chosen) <= 600
    assert chosen == [key for key in keys if takes_canary(key, "tiny:2", 10)]
    # Raising the share only adds conversations.
    wider = {key for key in keys if takes_canary(key, "tiny:2", 30)}
    assert set(chosen) <= wider
    # Another version is tried on other conversations.
    other = {key for key in keys if takes_canary(key, "tiny:3", 10)}
    assert len(other & set(chosen)) < len(chosen) // 2
    assert all(0 <= bucket(key, "s") < 100 for key in keys[:100])

"""Which side of a canary split a conversation falls on, the same way every time.

A conversation is known by its ``conversation_id`` or, when the caller sends
none, by its first user message (which every later turn repeats). A raw text
prompt without an id is known by the whole prompt, not by its opening: callers
sharing a few-shot template would all open alike and land on the same side.
The key is hashed, salted with the canary's model version, into one of 100
buckets; the canary takes the buckets below its share. So a conversation
sticks to one version for as long as the canary runs, raising the share only
adds conversations to the canary, and each new version is tried on a
different set of conversations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ownchat_serving.generation import ChatTurn

BUCKETS = 100


def conversation_key(conversation_id: str, messages: Sequence[ChatTurn], prompt: str = "") -> str:
    """What identifies a conversation across its turns (or a raw prompt, when given)."""
    if conversation_id:
        return f"id:{conversation_id}"
    if prompt:
        return f"prompt:{prompt}"
    first = next((turn for turn in messages if turn.role == "user"), None)
    if first is None and messages:
        first = messages[0]
    return f"first:{first.content if first else ''}"


def bucket(key: str, salt: str) -> int:
    """The conversation's bucket, 0..99, for one canary."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def takes_canary(key: str, salt: str, canary_percent: int) -> bool:
    """Whether the conversation goes to a canary that takes ``canary_percent`` of traffic."""
    return bucket(key, salt) < canary_percent

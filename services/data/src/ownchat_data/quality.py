"""Quality filters: conversations a chat model should not learn from.

A conversation is dropped, with the reason counted, when a message is empty
after cleaning, when it is one-sided (no user or no assistant turn), when it
starts with the assistant, or when a system message comes after the first
turn. Consecutive messages of the same author are merged into one turn, since
most chat templates expect user and assistant to alternate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ownchat_data.chat_jsonl import ChatMessage, ChatSample


class QualityFilter:
    """Keeps or drops conversations and counts why."""

    def __init__(self) -> None:
        self.removed: Counter[str] = Counter()
        self.merged_turns = 0

    def _reason(self, messages: tuple[ChatMessage, ...]) -> str | None:
        if any(not m.content.strip() for m in messages):
            return "empty_message"
        roles = [m.role for m in messages]
        if "user" not in roles or "assistant" not in roles:
            return "one_sided"
        if "system" in roles[1:]:
            return "system_not_first"
        first_turn = roles[1] if roles[0] == "system" else roles[0]
        if first_turn != "user":
            return "assistant_first"
        return None

    def check(self, sample: ChatSample) -> ChatSample | None:
        """The conversation to keep (turns merged), or None with the reason counted."""
        reason = self._reason(sample.messages)
        if reason is not None:
            self.removed[reason] += 1
            return None
        merged: list[ChatMessage] = []
        for message in sample.messages:
            if merged and merged[-1].role == message.role:
                merged[-1] = ChatMessage(message.role, f"{merged[-1].content}\n\n{message.content}")
                self.merged_turns += 1
            else:
                merged.append(message)
        return replace(sample, messages=tuple(merged))

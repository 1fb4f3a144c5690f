"""A seeded sample of a chat split's conversations, as review items."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ownchat_evaluator.review.model import NewItem, ReviewKind, Turn


def sample_lines(path: Path, count: int, seed: int) -> list[tuple[int, str]]:
    """``count`` lines drawn uniformly with ``seed`` (reservoir sampling, so the
    file is read once in constant memory), as (1-based line, text) in file order."""
    chosen = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if len(reservoir) < count:
                reservoir.append((number, line))
                continue
            slot = chosen.randrange(number)
            if slot < count:
                reservoir[slot] = (number, line)
    return sorted(reservoir)


def item_from_conversation(
    line: str, kind: ReviewKind, source: str, priority: int, reviews_wanted: int
) -> NewItem | None:
    """The conversation's last assistant turn under review, the turns before it
    as context; None when no assistant turn answers a user turn."""
    messages = json.loads(line).get("messages", [])
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last < 1 or messages[last - 1].get("role") != "user":
        return None
    return NewItem(
        kind=kind,
        context=tuple(Turn(m["role"], m["content"]) for m in messages[:last]),
        reply_a=messages[last]["content"],
        source=source,
        priority=priority,
        reviews_wanted=reviews_wanted,
    )

"""Reviews turned into the data service's upload formats.

Pairwise reviews become OpenAI DPO-style preference lines, one per finished
item whose reviewers preferred one reply by a majority; corrections become
chat lines, the context followed by the corrected reply. Each line also
carries ``item_id`` and ``review_ids``: the data service ignores unknown keys
when it parses but keeps the uploaded file, and every sample's lineage names
its line in that file, so a sample leads back to its reviews.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ownchat_evaluator.review.model import Item, Review, Turn
from ownchat_evaluator.review.store import ExportedRecord


@dataclass(frozen=True)
class ExportFile:
    """The bytes of one upload and the reviews behind each of its lines."""

    body: bytes
    records: list[ExportedRecord]


def _messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in turns]


def _line(value: dict[str, object]) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def majority(item: Item, reviews: Sequence[Review]) -> str | None:
    """The model preferred by more reviews than the other; None on a tie or even split."""
    votes = Counter(r.preferred_model_id for r in reviews if not r.tie)
    first, second = votes[item.model_id_a], votes[item.model_id_b]
    if first == second:
        return None
    return item.model_id_a if first > second else item.model_id_b


def preference_file(items: Sequence[tuple[Item, Sequence[Review]]]) -> tuple[ExportFile, int]:
    """Preference JSONL of the items with a majority; also how many had none."""
    lines: list[str] = []
    records: list[ExportedRecord] = []
    without_majority = 0
    for item, reviews in items:
        winner = majority(item, reviews)
        if winner is None:
            without_majority += 1
            continue
        first_won = winner == item.model_id_a
        chosen, rejected = (
            (item.reply_a, item.reply_b) if first_won else (item.reply_b, item.reply_a)
        )
        loser = item.model_id_b if first_won else item.model_id_a
        review_ids = [r.id for r in reviews]
        lines.append(
            _line(
                {
                    "input": {"messages": _messages(item.context)},
                    "preferred_output": [{"role": "assistant", "content": chosen}],
                    "non_preferred_output": [{"role": "assistant", "content": rejected}],
                    "item_id": item.id,
                    "review_ids": review_ids,
                    "chosen_model_id": winner,
                    "rejected_model_id": loser,
                }
            )
        )
        records.append(ExportedRecord(len(lines), tuple(review_ids)))
    return ExportFile("".join(f"{line}\n" for line in lines).encode(), records), without_majority


def correction_file(corrections: Sequence[tuple[Item, Review]]) -> ExportFile:
    """Chat JSONL: each correction after its context."""
    lines: list[str] = []
    records: list[ExportedRecord] = []
    for item, review in corrections:
        messages = [*_messages(item.context), {"role": "assistant", "content": review.correction}]
        lines.append(
            _line(
                {
                    "messages": messages,
                    "item_id": item.id,
                    "review_ids": [review.id],
                }
            )
        )
        records.append(ExportedRecord(len(lines), (review.id,)))
    return ExportFile("".join(f"{line}\n" for line in lines).encode(), records)

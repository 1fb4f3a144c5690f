"""The pre-flight check of a chat dataset version against a base model.

Renders samples through the model's own chat template and tokenizer, exactly
as training will, and reports how many tokens there are, how many carry loss,
which samples are longer than the model's context, and which hold the
template's special tokens in their text (a sample that says "<|im_end|>" can
end a turn early or teach the model to emit control tokens).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ownchat.chat_template import IGNORE_INDEX, tokenize_chat
from ownchat_data.chat_jsonl import ChatSample
from ownchat_data.tokens import UNLIMITED, TokenStats

MAX_LISTED = 1000


@dataclass
class LintReport:
    """What the pre-flight check found."""

    max_length: int
    samples_checked: int = 0
    total_tokens: int = 0
    loss_tokens: int = 0
    too_long_records: list[int] = field(default_factory=list)
    special_token_records: list[int] = field(default_factory=list)
    rendered_spans: list[tuple[str, bool]] = field(default_factory=list)
    # Samples per token-count bucket: (exclusive upper bound or None for the rest, count).
    length_histogram: list[tuple[int | None, int]] = field(default_factory=list)


def _spans(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    spans: list[tuple[str, bool]] = []
    start = 0
    for position in range(1, len(input_ids) + 1):
        boundary = position == len(input_ids) or (
            (labels[position] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX)
        )
        if boundary:
            text = tokenizer.decode(input_ids[start:position], skip_special_tokens=False)
            spans.append((text, labels[start] != IGNORE_INDEX))
            start = position
    return spans


def lint(samples: Iterable[ChatSample], tokenizer: Any, max_length: int) -> LintReport:
    """Checks every sample; the first one is also rendered span by span."""
    report = LintReport(max_length=max_length)
    lengths = TokenStats()
    special = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    for sample in samples:
        messages = [{"role": m.role, "content": m.content} for m in sample.messages]
        tokenized = tokenize_chat(tokenizer, messages, UNLIMITED)
        report.samples_checked += 1
        report.total_tokens += len(tokenized.input_ids)
        report.loss_tokens += tokenized.loss_tokens
        lengths.add(len(tokenized.input_ids))
        if len(tokenized.input_ids) > max_length and len(report.too_long_records) < MAX_LISTED:
            report.too_long_records.append(sample.record)
        if any(token in m.content for m in sample.messages for token in special):
            if len(report.special_token_records) < MAX_LISTED:
                report.special_token_records.append(sample.record)
        if not report.rendered_spans:
            report.rendered_spans = _spans(tokenizer, tokenized.input_ids, tokenized.labels)
    report.length_histogram = list(lengths.histogram())
    return report

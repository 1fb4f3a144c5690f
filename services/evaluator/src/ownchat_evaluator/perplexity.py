"""Token-weighted perplexity of the assistant turns of conversations.

Conversations are sorted by length and batched, so padding stays small; the
loss is summed over assistant tokens only (the tokens a chat model is asked to
produce), then divided by their count over the whole set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ownchat.chat_template import IGNORE_INDEX, TokenizedChat, tokenize_chat


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity with what it was computed over."""

    perplexity: float
    mean_nll: float
    tokens: int
    conversations: int
    max_length: int


def corpus_perplexity(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    max_length: int,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of a model on conversations; ``on_progress(done)`` after each batch."""
    tokenized = [tokenize_chat(tokenizer, messages, max_length) for messages in conversations]
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    done = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [tokenized[i] for i in order[start : start + batch_size]]
            nll, tokens = _batch_nll(model, batch, pad_id, device)
            total_nll += nll
            total_tokens += tokens
            done += len(batch)
            if on_progress is not None:
                on_progress(done)
    if total_tokens == 0:
        raise ValueError("no assistant tokens to score")
    mean = total_nll / total_tokens
    return PerplexityResult(math.exp(mean), mean, total_tokens, len(tokenized), max_length)


def _batch_nll(
    model: Any, batch: list[TokenizedChat], pad_id: int, device: torch.device
) -> tuple[float, int]:
    width = max(len(sample.input_ids) for sample in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, sample in enumerate(batch):
        length = len(sample.input_ids)
        input_ids[row, :length] = torch.tensor(sample.input_ids)
        labels[row, :length] = torch.tensor(sample.labels)
        attention[row, :length] = 1
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention.to(device)
    ).logits.float()
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1).to(device)
    nll = torch.nn.functional.cross_entropy(
        shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return float(nll), int((shifted_labels != IGNORE_INDEX).sum())

"""Hugging Face's perplexity recipe, one conversation and one window at a time.

The yardstick the evaluator's batched perplexity is held to: its tests compare
against it to 1e-4 and the perplexity benchmark times it as the baseline.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from ownchat.chat_template import IGNORE_INDEX, tokenize_chat


def naive_nll(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    context: int,
    stride: int,
) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant tokens, and how many were scored."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            sample = tokenize_chat(tokenizer, list(messages), sys.maxsize)
            ids = torch.tensor([sample.input_ids], device=device)
            labels = torch.tensor([sample.labels], device=device)
            previous_end = 0
            for begin in range(0, ids.shape[1], stride):
                end = min(begin + context, ids.shape[1])
                target = labels[:, begin:end].clone()
                # Tokens an earlier window scored are context only here.
                target[:, : previous_end - begin] = IGNORE_INDEX
                scored = int((target[:, 1:] != IGNORE_INDEX).sum())
                if scored:
                    loss = model(input_ids=ids[:, begin:end], labels=target).loss
                    nll += float(loss) * scored
                    count += scored
                previous_end = end
                if end == ids.shape[1]:
                    break
    return nll, count

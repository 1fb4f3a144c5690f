"""Training samples as tensors: chat lines to token ids with assistant-only labels,
padded batches, and the per-sample weighted loss.

A split file holds one JSON object a line: ``{"messages": [{"role", "content"}],
"weight": float, "record": int}``. Only the assistant's tokens carry loss (see
``ownchat.chat_template``); a sample's ``weight`` scales its tokens' loss.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ownchat.chat_template import IGNORE_INDEX, ChatTokenizer, tokenize_chat


@dataclass(frozen=True)
class EncodedSample:
    """One conversation as token ids, labels (-100: no loss) and its weight."""

    input_ids: list[int]
    labels: list[int]
    weight: float
    record: int


@dataclass(frozen=True)
class Batch:
    """Padded tensors of several samples."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    @property
    def real_tokens(self) -> int:
        """Tokens that are not padding."""
        return int(self.attention_mask.sum().item())

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.weights.to(device),
        )


def read_split(path: Path) -> list[dict[str, Any]]:
    """The samples of a split file, in file order."""
    samples = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                samples.append(json.loads(line))
    return samples


def encode_samples(
    tokenizer: ChatTokenizer, samples: Sequence[dict[str, Any]], max_length: int
) -> tuple[list[EncodedSample], int]:
    """Tokenizes samples; those left with no loss token (truncated away) are dropped.

    Returns the kept samples and how many were dropped.
    """
    kept: list[EncodedSample] = []
    dropped = 0
    for sample in samples:
        messages = [{"role": m["role"], "content": m["content"]} for m in sample["messages"]]
        tokenized = tokenize_chat(tokenizer, messages, max_length)
        if tokenized.loss_tokens == 0:
            dropped += 1
            continue
        kept.append(
            EncodedSample(
                input_ids=tokenized.input_ids,
                labels=tokenized.labels,
                weight=float(sample.get("weight", 1.0)),
                record=int(sample.get("record", 0)),
            )
        )
    return kept, dropped


def collate(samples: Sequence[EncodedSample], pad_token_id: int) -> Batch:
    """Right-pads samples to the longest; padding is masked and carries no loss."""
    length = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        size = len(sample.input_ids)
        input_ids[row, :size] = torch.tensor(sample.input_ids, dtype=torch.long)
        attention_mask[row, :size] = 1
        labels[row, :size] = torch.tensor(sample.labels, dtype=torch.long)
    weights = torch.tensor([s.weight for s in samples], dtype=torch.float32)
    return Batch(input_ids, attention_mask, labels, weights)


def weighted_loss_terms(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of next-token losses and the weighted count of loss tokens.

    Their ratio is the batch loss: each assistant token counts with its sample's
    weight. Returned apart so validation can sum them over many batches.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    losses = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    mask = (shifted_labels != IGNORE_INDEX).float() * weights[:, None]
    return (losses * mask).sum(), mask.sum()

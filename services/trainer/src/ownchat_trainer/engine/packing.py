"""Packing a step's samples into few rows, with no attention between samples.

A step's samples (``worker.batch_order`` picks them; packing never changes
which) are placed first-fit decreasing into rows of at most ``max_length``
tokens. Every sample's position ids restart at 0, and the free tail of a row is
filled with pad tokens that form a position run of their own, so the model sees
each sample exactly as it would alone. Labels and per-token weights travel with
the tokens, so the packed loss is the same sum over the same tokens as the
padded one (``batches.collate`` + ``batches.weighted_loss_terms``).

How the model must be called (transformers 5.19, Llama-style decoders; read in
``masking_utils.py`` and ``modeling_flash_attention_utils.py``), all done by
:meth:`PackedBatch.model_inputs`:

- Always ``position_ids=batch.position_ids``, ``attention_mask=None`` and
  ``use_cache=False``. ``_preprocess_mask_arguments`` looks for packing only
  when the 2-D attention mask is ``None`` *and* there is no cache; then
  ``find_packed_sequence_indices`` starts a new sequence wherever a position id
  is not its left neighbour's plus one, and ``create_causal_mask`` ANDs the
  causal mask with "same sequence". An all-ones ``attention_mask`` (what
  ``collate`` produces) or a cache silently turns this off, and samples then
  attend to each other: the tests show both.
- ``sdpa`` and ``eager`` (CPU and GPU): the result is a materialised
  block-diagonal causal mask of ``[rows, 1, T, T]`` booleans. On GPU, sdpa with
  an explicit mask cannot use its flash kernel and takes the memory-efficient
  one; fine for moderate ``T``.
- ``flex_attention`` (GPU): the same detection yields a ``BlockMask``, whose
  block sparsity skips the cross-sample blocks. On CPU, torch 2.13's
  FlexAttention has no backward (inference only, and it compiles slowly).
- ``flash_attention_2`` / ``flash_attention_3``: the mask function returns
  ``None`` and the varlen kernel is used only when ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` are passed, or when the batch has a *single* row whose
  position ids restart. With several rows and position ids alone, flash
  attention runs plain causal attention over each whole row and samples
  *would* attend to each other. So ``model_inputs`` also passes
  ``cu_seq_lens`` (offsets into the rows laid end to end, the pad runs being
  sequences of their own) and ``max_seq_len`` for any implementation whose
  name contains ``flash``; the varlen kernel then needs no mask at all.
- ``ownchat_varlen`` (``engine.varlen_attention``): on a GPU the
  ``flash_attn`` package's varlen kernel where installed, else PyTorch's own,
  given the same ``cu_seq_lens``; on a CPU sdpa over each sample in turn. The
  worker's packed steps use it (sdpa's block-diagonal mask remains for
  callers that pass rows alone).

For the implementations that take ``cu_seq_lens`` (:func:`takes_offsets`),
rows are only a layout: the offsets alone keep samples apart. So the worker
packs their steps ``end_to_end``: one row of every sample back to back, padded
only up to ``pad_to_multiple_of``. Rows of ``max_length`` would leave free
tails that every layer but attention computes for nothing (5 % of a SmolLM2
step's positions at sequence length 2048 on the chat-like benchmark data, 12 %
of a Llama-3.2-1B step's, whose steps have fewer samples to fill rows with;
9 % at the CPU benchmark's 512).

The first token of every sample gets label -100: it has no previous token in
its sample, so it can never be a next-token target (the padded loss drops it by
the shift too); without this, the last token of the sample before it in the row
would learn to predict it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import EncodedSample
from ownchat_trainer.engine.loss_positions import LossPositions, move_to
from ownchat_trainer.engine.varlen_attention import ATTENTION_NAME as VARLEN_ATTENTION


@dataclass(frozen=True)
class Placement:
    """Where one sample of the step lies in the packed batch."""

    row: int
    offset: int
    length: int


@dataclass(frozen=True)
class PackedBatch:
    """A step's samples packed into rows; all tensors are ``[rows, T]``.

    ``labels`` hold -100 wherever no loss is taken (prompt tokens, each
    sample's first token, padding); ``token_weights`` (float32) hold the
    sample's weight on each loss token and 0 elsewhere. ``cu_seq_lens``
    (int32, ``[segments + 1]``) are the start offsets of every sample and every
    pad run in the rows laid end to end, then ``rows * T``; ``max_seq_len`` is
    the longest of those segments. ``placements`` follow the order of the
    samples given to :func:`pack_samples`. ``loss_positions`` are the
    positions that carry loss, picked on the host (``engine.loss_positions``).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    token_weights: torch.Tensor
    cu_seq_lens: torch.Tensor
    max_seq_len: int
    placements: tuple[Placement, ...]
    loss_positions: LossPositions

    @property
    def real_tokens(self) -> int:
        """Tokens that belong to a sample (not padding)."""
        return sum(placement.length for placement in self.placements)

    @property
    def loss_weight(self) -> float:
        """The sum of the token weights: the denominator of the step's loss."""
        return float(self.token_weights.sum())

    def to(self, device: torch.device) -> PackedBatch:
        """The same batch with its tensors on ``device`` (``loss_positions.move_to``)."""
        return PackedBatch(
            move_to(self.input_ids, device),
            move_to(self.position_ids, device),
            move_to(self.labels, device),
            move_to(self.token_weights, device),
            move_to(self.cu_seq_lens, device),
            self.max_seq_len,
            self.placements,
            self.loss_positions.to(device),
        )

    def model_inputs(self, attn_implementation: str | None) -> dict[str, Any]:
        """Keyword arguments for a causal LM's forward over this batch.

        ``attn_implementation`` is the model's ``config._attn_implementation``;
        see the module docstring for why each argument is needed.
        """
        inputs: dict[str, Any] = {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": None,
            "use_cache": False,
        }
        if takes_offsets(attn_implementation):
            inputs.update(
                cu_seq_lens_q=self.cu_seq_lens,
                cu_seq_lens_k=self.cu_seq_lens,
                max_length_q=self.max_seq_len,
                max_length_k=self.max_seq_len,
            )
        return inputs


def takes_offsets(attn_implementation: str | None) -> bool:
    """Whether an attention implementation keeps packed samples apart by their offsets
    (``cu_seq_lens``) rather than by a mask; see the module docstring."""
    return bool(attn_implementation) and (
        "flash" in str(attn_implementation) or attn_implementation == VARLEN_ATTENTION
    )


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``capacity``.

    Longest first (ties in index order), each into the first bin it fits;
    within a bin, indices are in placement order. Deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    bins: list[list[int]] = []
    free: list[int] = []
    for index in order:
        for slot, room in enumerate(free):
            if lengths[index] <= room:
                bins[slot].append(index)
                free[slot] -= lengths[index]
                break
        else:
            bins.append([index])
            free.append(capacity - lengths[index])
    return bins


def pack_samples(
    samples: Sequence[EncodedSample],
    max_length: int,
    pad_token_id: int,
    pad_to_multiple_of: int = 1,
    *,
    end_to_end: bool = False,
) -> PackedBatch:
    """Packs one step's samples into as few rows of at most ``max_length`` tokens as
    first-fit decreasing finds, or with ``end_to_end`` into one row, in the order given.

    The row width ``T`` is the fullest row's length rounded up to
    ``pad_to_multiple_of`` (never past ``max_length``, except for the one row
    of ``end_to_end``, which only an attention that :func:`takes_offsets` may
    be given: it is longer than the model's context). Raises ``ValueError``
    for an empty step, an empty sample, or a sample longer than ``max_length``
    (``batches.encode_samples`` truncates to the same length beforehand).
    """
    if max_length < 1 or pad_to_multiple_of < 1:
        raise ValueError(
            f"max_length ({max_length}) and pad_to_multiple_of ({pad_to_multiple_of}) "
            "must be at least 1"
        )
    if not samples:
        raise ValueError("a step needs at least one sample to pack")
    lengths = [len(sample.input_ids) for sample in samples]
    for index, (sample, length) in enumerate(zip(samples, lengths, strict=True)):
        if length == 0:
            raise ValueError(f"sample {index} (record {sample.record}) has no tokens")
        if length > max_length:
            raise ValueError(
                f"sample {index} (record {sample.record}) has {length} tokens, more than "
                f"max_length={max_length}; truncate it first (encode_samples does)"
            )
        if len(sample.labels) != length:
            raise ValueError(f"sample {index} (record {sample.record}): labels and ids differ")

    if end_to_end:
        rows = [list(range(len(samples)))]
        width = -(-sum(lengths) // pad_to_multiple_of) * pad_to_multiple_of
    else:
        rows = first_fit_decreasing(lengths, max_length)
        fullest = max(sum(lengths[index] for index in row) for row in rows)
        width = min(-(-fullest // pad_to_multiple_of) * pad_to_multiple_of, max_length)

    # Built as flat lists, then one tensor each: a step of tens of thousands of
    # tokens packs in a few milliseconds, on the step's critical path.
    flat_ids: list[int] = []
    flat_labels: list[int] = []
    # Segments (each sample, each row's pad run) in layout order: length, weight.
    segment_lengths: list[int] = []
    segment_weights: list[float] = []
    placements: list[Placement | None] = [None] * len(samples)
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            sample, length = samples[index], lengths[index]
            flat_ids += sample.input_ids
            # Each sample's first token is never a target (see the module docstring).
            flat_labels.append(IGNORE_INDEX)
            flat_labels += sample.labels[1:]
            segment_lengths.append(length)
            segment_weights.append(sample.weight)
            placements[index] = Placement(row, offset, length)
            offset += length
        if offset < width:
            # The pad run restarts its own positions, so it is a sequence apart.
            flat_ids += [pad_token_id] * (width - offset)
            flat_labels += [IGNORE_INDEX] * (width - offset)
            segment_lengths.append(width - offset)
            segment_weights.append(0.0)
    shape = (len(rows), width)
    counts = torch.tensor(segment_lengths, dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    position_ids = torch.arange(shape[0] * width) - torch.repeat_interleave(starts, counts)
    labels = _long_tensor(flat_labels)
    token_weights = torch.repeat_interleave(
        torch.tensor(segment_weights, dtype=torch.float32), counts
    ) * (labels != IGNORE_INDEX)
    bounds = [*starts.tolist(), shape[0] * width]
    cu_seq_lens = torch.tensor(bounds, dtype=torch.int32)
    max_seq_len = max(segment_lengths)
    input_ids = _long_tensor(flat_ids).view(shape)
    position_ids, labels, token_weights = (
        position_ids.view(shape),
        labels.view(shape),
        token_weights.view(shape),
    )
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        labels=labels,
        token_weights=token_weights,
        cu_seq_lens=cu_seq_lens,
        max_seq_len=max_seq_len,
        placements=tuple(p for p in placements if p is not None),
        loss_positions=LossPositions.of(labels, token_weights),
    )


def _long_tensor(values: list[int]) -> torch.Tensor:
    # Through numpy: four times faster than torch.tensor on a long list of ints.
    return torch.from_numpy(np.array(values, dtype=np.int64))

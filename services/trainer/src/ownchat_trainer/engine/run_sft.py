"""Supervised fine-tuning's step: next-token loss on assistant tokens, weighted per sample.

Packed (the default): a step's share of samples is packed into few rows with
no attention between samples (``engine.packing``), and the loss runs over loss
positions only, in chunks (``engine.loss``): full logits never exist. Padded:
the samples are right-padded to the longest (``batches.collate``) and the loss
comes from the model's full logits (``batches.weighted_loss_terms``); slower
and hungrier, it is the reference that packing must agree with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ownchat_trainer.batches import EncodedSample, collate, weighted_loss_terms
from ownchat_trainer.engine.distributed import (
    DistributedContext,
    global_loss,
    idle_sample,
    is_sharded,
    local_share,
    sharded_mean,
    unwrap,
)
from ownchat_trainer.engine.loop import StepResult
from ownchat_trainer.engine.loss import forward_hidden, loss_terms_at, output_layer
from ownchat_trainer.engine.packing import PackedBatch, pack_samples, takes_offsets


class SftObjective:
    """The SFT loss of a step and of the validation split."""

    def __init__(
        self,
        model: nn.Module,
        train_samples: Sequence[EncodedSample],
        validation_samples: Sequence[EncodedSample],
        context: DistributedContext,
        *,
        pad_token_id: int,
        max_length: int,
        batch_size: int,
        packing: bool,
        pad_to_multiple_of: int = 1,
    ) -> None:
        self._model = model
        self._train = train_samples
        self._validation = validation_samples
        self._context = context
        self._pad = pad_token_id
        self._max_length = max_length
        self._batch_size = batch_size
        self._packing = packing
        self._multiple = pad_to_multiple_of
        config = getattr(unwrap(model), "config", None)
        self._end_to_end = takes_offsets(getattr(config, "_attn_implementation", None))
        # The next step's batch, packed and sent ahead, with its indices.
        self._ready: tuple[list[int], PackedBatch] | None = None

    def prepare(self, indices: Sequence[int]) -> None:
        """Packs this rank's share of the step and starts its copy to the device."""
        if self._packing:
            share = local_share(self._train, indices, self._context, self._pad)
            self._ready = (list(indices), self._pack(share))

    def train_step(self, indices: Sequence[int]) -> StepResult:
        """This rank's share of the step, normalised by the whole step's loss weight."""
        share = local_share(self._train, indices, self._context, self._pad)
        ready, self._ready = self._ready, None
        packed = ready[1] if ready is not None and ready[0] == list(indices) else None
        loss_sum, weight, tokens = self._loss_terms(self._model, share, packed)
        loss = global_loss(loss_sum, weight, self._context)
        return StepResult(loss.backward, loss.value, tokens)

    def validation_loss(self) -> float | None:
        """The weighted mean loss over the validation split; each rank takes every n-th sample."""
        if not self._validation:
            return None
        # Ranks may run different numbers of batches: not through DDP's wrapper,
        # whose forward waits for every rank. A sharded model has no forward
        # but its own, which waits too: then every rank runs as many (some empty).
        lockstep = is_sharded(self._model)
        model = self._model if lockstep else unwrap(self._model)

        def terms(batch: Sequence[EncodedSample]) -> tuple[torch.Tensor, torch.Tensor]:
            loss_sum, weight, _ = self._loss_terms(model, batch or [idle_sample(self._pad)])
            return loss_sum, weight

        return sharded_mean(
            self._validation, self._batch_size, self._context, terms, lockstep=lockstep
        )

    def _pack(self, samples: Sequence[EncodedSample]) -> PackedBatch:
        return pack_samples(
            samples, self._max_length, self._pad, self._multiple, end_to_end=self._end_to_end
        ).to(self._context.device)

    def _loss_terms(
        self, model: Any, samples: Sequence[EncodedSample], packed: PackedBatch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The weighted loss sum, its weight, and the non-padding tokens of some samples
        (``packed``: those samples packed already)."""
        if self._packing:
            if packed is None:
                packed = self._pack(samples)
            hidden = forward_hidden(model, packed)
            loss_sum, weight = loss_terms_at(hidden, output_layer(model), packed.loss_positions)
            return loss_sum, weight, packed.real_tokens
        batch = collate(samples, self._pad).to(self._context.device)
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
        loss_sum, weight = weighted_loss_terms(logits, batch.labels, batch.weights)
        return loss_sum, weight, batch.real_tokens

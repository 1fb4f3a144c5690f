"""DPO's step: the preference loss of a step's pairs against the reference model.

Pairs are always padded batches (``engine.dpo.collate_pairs``): a pair's chosen
and rejected rows are scored in one forward pass. The reference is the same
network with its LoRA adapter switched off, or, for full fine-tuning, log-probs
computed once from the base model before training (:func:`with_reference`).
Under data parallelism each rank takes every n-th pair of the step; the loss is
the mean over the step's pairs, whichever rank holds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import EncodedSample
from ownchat_trainer.engine.distributed import (
    DistributedContext,
    global_loss,
    is_sharded,
    shard_indices,
    sharded_mean,
    sum_across_ranks,
    unwrap,
)
from ownchat_trainer.engine.dpo import (
    EncodedPair,
    collate_pairs,
    dpo_loss,
    pair_log_probs,
    precompute_reference_log_probs,
    reference_log_probs,
)
from ownchat_trainer.engine.loop import StepResult


def idle_pair(pad_token_id: int, with_reference: bool) -> EncodedPair:
    """A pair for a rank whose share of a step is empty; its loss is multiplied by 0.

    Unlike ``distributed.idle_sample`` it scores one token: a forward pass with
    nothing to score is skipped by ``dpo.sequence_log_probs``, and every rank
    must run the model for the gradient all-reduce to happen.
    """
    sample = EncodedSample([pad_token_id, pad_token_id], [IGNORE_INDEX, pad_token_id], 0.0, -1)
    reference = 0.0 if with_reference else None
    return EncodedPair(sample, sample, -1, reference, reference)


def with_reference(
    model: nn.Module,
    pairs: Sequence[EncodedPair],
    context: DistributedContext,
    *,
    pad_token_id: int,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> list[EncodedPair]:
    """Every pair with the reference log-probs of ``model`` as it is now (the base).

    Each rank computes every n-th pair and the results are exchanged, so all
    ranks end with the same list. Call on the unwrapped model before training.
    """
    mine = shard_indices(range(len(pairs)), context.rank, context.world_size)
    with autocast():
        done = precompute_reference_log_probs(
            model, [pairs[i] for i in mine], pad_token_id, batch_size, context.device
        )
    if not context.distributed:
        return done
    values = [
        (index, pair.reference_chosen, pair.reference_rejected)
        for index, pair in zip(mine, done, strict=True)
    ]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, values)
    result = list(pairs)
    for part in gathered:
        for index, chosen, rejected in part:
            result[index] = dataclasses.replace(
                pairs[index], reference_chosen=chosen, reference_rejected=rejected
            )
    return result


class DpoObjective:
    """The DPO loss of a step (with reward accuracy and margin) and of the validation pairs."""

    def __init__(
        self,
        model: nn.Module,
        train_pairs: Sequence[EncodedPair],
        validation_pairs: Sequence[EncodedPair],
        context: DistributedContext,
        *,
        pad_token_id: int,
        batch_size: int,
        beta: float,
    ) -> None:
        self._model = model
        self._train = train_pairs
        self._validation = validation_pairs
        self._context = context
        self._pad = pad_token_id
        self._batch_size = batch_size
        self._beta = beta
        self._precomputed = bool(train_pairs) and train_pairs[0].has_reference

    def prepare(self, indices: Sequence[int]) -> None:
        """Nothing to do ahead: a DPO step pads its pairs as it runs."""

    def train_step(self, indices: Sequence[int]) -> StepResult:
        """This rank's pairs of the step; the loss is the mean over the whole step's pairs."""
        context = self._context
        mine = [self._train[i] for i in shard_indices(indices, context.rank, context.world_size)]
        loss_sum, count, tokens, metrics = self._terms(self._model, mine)
        loss = global_loss(loss_sum, count, context)
        totals = sum_across_ranks(metrics, context)
        pairs = max(float(totals[2]), 1.0)
        return StepResult(
            loss.backward,
            loss.value,
            tokens,
            {
                "reward_accuracy": float(totals[0]) / pairs,
                "reward_margin": float(totals[1]) / pairs,
            },
        )

    def validation_loss(self) -> float | None:
        """The mean DPO loss over the validation pairs; each rank takes every n-th pair."""
        if not self._validation:
            return None
        # As SFT's validation: around DDP's wrapper, in lockstep when sharded
        # (an empty batch scores an idle pair).
        lockstep = is_sharded(self._model)
        model = self._model if lockstep else unwrap(self._model)

        def terms(pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
            loss_sum, count, _, _ = self._terms(model, pairs)
            return loss_sum, count

        return sharded_mean(
            self._validation, self._batch_size, self._context, terms, lockstep=lockstep
        )

    def _terms(
        self, model: Any, pairs: Sequence[EncodedPair]
    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """The summed loss of some pairs, their count, the non-padding tokens, and
        ``[accuracy sum, margin sum, count]`` (float64) for the step's metrics."""
        device = self._context.device
        count = len(pairs)
        batch = collate_pairs(pairs or [idle_pair(self._pad, self._precomputed)], self._pad).to(
            device
        )
        # The reference first, with the adapter off and no grad, outside DDP.
        reference = reference_log_probs(unwrap(model), batch)
        policy = pair_log_probs(model, batch)
        mean, metrics = dpo_loss(*policy, *reference, self._beta)
        tokens = batch.real_tokens if count else 0
        stats = torch.tensor(
            [metrics["rewards/accuracies"] * count, metrics["rewards/margins"] * count, count],
            dtype=torch.float64,
            device=device,
        )
        return mean * count, torch.tensor(float(count), device=device), tokens, stats

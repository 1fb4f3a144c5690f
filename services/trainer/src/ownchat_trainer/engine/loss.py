"""The next-token loss without full logits: only loss positions, in chunks.

A step's full logits are ``[tokens, vocab]`` floats (and as much again for
their gradient): for a 150k vocabulary that is gigabytes, most of it spent on
prompt and padding positions that carry no loss. Here the model runs for its
final hidden states only (:func:`forward_hidden`); the positions that carry
loss are picked out first (``LossPositions``, which the packer computes on the
host), then the output layer and the cross-entropy run over them a chunk at a
time: for a plain output layer in one fused pass that makes the gradients in
the forward (``engine.linear_cross_entropy``), for one wrapped by an adapter
through the layer itself, each chunk under activation checkpointing. Either
way at most one chunk's logits exist at once, and the host never waits for
the GPU.

The result means exactly what ``batches.weighted_loss_terms`` returns.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ownchat_trainer.batches import Batch
from ownchat_trainer.engine.linear_cross_entropy import linear_cross_entropy_sum
from ownchat_trainer.engine.loss_positions import LossPositions
from ownchat_trainer.engine.packing import PackedBatch

# For an output layer wrapped by an adapter: 1024 rows of fp32 logits over a
# 150k vocabulary are about 0.6 GB; the backward holds that chunk's logits and
# their gradient at once.
ADAPTER_CHUNK_TOKENS = 1024


def causal_lm_loss_terms(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    token_weights: torch.Tensor,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of next-token losses and the sum of their weights (fp32 scalars).

    ``labels`` ``[rows, T]`` hold the token ids to learn at each position, -100
    for none; the hidden state at ``t`` predicts ``labels[:, t + 1]``.
    ``token_weights`` is float ``[rows, T]`` aligned with ``labels``
    (``PackedBatch.token_weights``) or ``[rows]``, one weight a row
    (``Batch.weights``). Picks the positions on the labels' device (on a GPU
    that waits for them); :func:`loss_terms_at` takes them picked already.
    """
    positions = LossPositions.of(labels, token_weights).to(hidden_states.device)
    return loss_terms_at(hidden_states, lm_head, positions, chunk_tokens)


def loss_terms_at(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    positions: LossPositions,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of the losses at ``positions`` and the sum of their weights.

    ``hidden_states`` ``[rows, T, hidden]`` are the model's final hidden states
    (any float dtype; under autocast the output layer runs in autocast's
    dtype, as in the model's own forward); ``lm_head`` is its output layer
    (``model.get_output_embeddings()``). The loss is ``loss_sum / weight_sum``;
    both are returned so that validation and gradient accumulation can sum
    them over many batches. The loss sum stays in the graph (it can be
    backpropagated, as zero) even when no position carries loss.
    ``chunk_tokens`` defaults to a size for the vocabulary
    (``linear_cross_entropy.chunk_tokens_for``) or, for an adapter-wrapped
    head, :data:`ADAPTER_CHUNK_TOKENS`.
    """
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, not {chunk_tokens}")
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])[positions.index]
    targets, weights = positions.targets, positions.weights
    # A head wrapped by an adapter is not a plain weight: it runs as a module.
    if type(lm_head) is nn.Linear:
        loss_sum = linear_cross_entropy_sum(
            hidden, lm_head.weight, lm_head.bias, targets, weights, chunk_tokens
        )
        return loss_sum, positions.weight_sum

    def chunk_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = lm_head(h).float()
        return (F.cross_entropy(logits, t, reduction="none") * w).sum()

    step = chunk_tokens or ADAPTER_CHUNK_TOKENS
    total = hidden_states.new_zeros((), dtype=torch.float32)
    # An empty step still runs one (empty) chunk so the loss stays in the graph.
    for start in range(0, max(1, hidden.size(0)), step):
        part = slice(start, start + step)
        if torch.is_grad_enabled():
            loss = checkpoint(
                chunk_loss, hidden[part], targets[part], weights[part], use_reentrant=False
            )
        else:
            loss = chunk_loss(hidden[part], targets[part], weights[part])
        total = total + loss
    return total, positions.weight_sum


def forward_hidden(model: Any, batch: PackedBatch | Batch) -> torch.Tensor:
    """The model's final hidden states ``[rows, T, hidden]`` for a batch, without full logits.

    ``model`` is a transformers causal LM, possibly wrapped by peft and/or
    ``DistributedDataParallel``; the call goes through the outermost wrapper's
    forward so adapters and DDP's gradient hooks take part. A ``PackedBatch``
    is passed the way its attention implementation needs (see
    ``engine.packing``); a padded ``Batch`` with its attention mask. The
    model's own output layer then runs on the last position only
    (``logits_to_keep=1``); feed the hidden states and :func:`output_layer`
    to :func:`loss_terms_at` with a packed batch's ``loss_positions``, or to
    :func:`causal_lm_loss_terms` with labels.
    """
    config = getattr(_unwrap(model), "config", None)
    if isinstance(batch, PackedBatch):
        inputs = batch.model_inputs(getattr(config, "_attn_implementation", None))
    else:
        inputs = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "use_cache": False,
        }
    outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1)
    # transformers ties hidden_states[-1] to the final (normed) last_hidden_state.
    hidden: torch.Tensor = outputs.hidden_states[-1]
    return hidden


def output_layer(model: Any) -> nn.Module:
    """The model's output layer (``lm_head``), through peft and DDP wrappers."""
    head = _unwrap(model).get_output_embeddings()
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(model).__name__} has no output layer")
    return head


def _unwrap(model: Any) -> Any:
    # DDP hides the model's attributes; peft forwards them itself.
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

"""The next-token loss without full logits: only loss positions, in chunks.

A step's full logits are ``[tokens, vocab]`` floats (and as much again for
their gradient): for a 150k vocabulary that is gigabytes, most of it spent on
prompt and padding positions that carry no loss. Here the model runs for its
final hidden states only (:func:`forward_hidden`); the positions that carry
loss are picked out first, then the output layer and the cross-entropy run over
them ``chunk_tokens`` at a time, each chunk under activation checkpointing, so
at most one chunk's fp32 logits exist at once, in the forward and the backward
(which recomputes that chunk's logits). On CUDA with Liger Kernel installed,
its fused linear cross-entropy does the same in Triton kernels.

The result means exactly what ``batches.weighted_loss_terms`` returns.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import Batch
from ownchat_trainer.engine.packing import PackedBatch

# 1024 rows of fp32 logits over a 150k vocabulary are about 0.6 GB; the
# backward holds that chunk's logits and their gradient at once.
DEFAULT_CHUNK_TOKENS = 1024


def causal_lm_loss_terms(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    token_weights: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    allow_liger: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of next-token losses and the sum of their weights (fp32 scalars).

    ``hidden_states`` ``[rows, T, hidden]`` are the model's final hidden states
    (any float dtype; under autocast the output layer runs in autocast's
    dtype, as in the model's own forward); ``lm_head`` is its output layer
    (``model.get_output_embeddings()``); ``labels`` ``[rows, T]`` hold the
    token ids to learn at each position, -100 for none; the hidden state at
    ``t`` predicts ``labels[:, t + 1]``. ``token_weights`` is float ``[rows, T]``
    aligned with ``labels`` (``PackedBatch.token_weights``) or ``[rows]``, one
    weight a row (``Batch.weights``). Positions of weight 0 are skipped. The
    loss is ``loss_sum / weight_sum``; both are returned so that validation
    and gradient accumulation can sum them over many batches. The loss sum
    stays in the graph (it can be backpropagated, as zero) even when no
    position carries loss.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, not {chunk_tokens}")
    targets = labels[:, 1:]
    if token_weights.dim() == 1:
        weights = token_weights[:, None].expand(targets.shape)
    else:
        weights = token_weights[:, 1:]
    weights = weights.float() * (targets != IGNORE_INDEX)
    keep = weights != 0
    hidden = hidden_states[:, :-1][keep]
    targets, weights = targets[keep], weights[keep]
    weight_sum = weights.sum()

    use_liger = allow_liger and hidden.is_cuda and hidden.size(0) > 0
    fused = _liger_fused_linear_cross_entropy() if use_liger else None
    # A head wrapped by an adapter is not a plain weight: it takes the chunked path.
    if fused is not None and type(lm_head) is nn.Linear:
        return _liger_loss_sum(fused, hidden, lm_head, targets, weights), weight_sum

    def chunk_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = lm_head(h).float()
        return (F.cross_entropy(logits, t, reduction="none") * w).sum()

    total = hidden_states.new_zeros((), dtype=torch.float32)
    # An empty step still runs one (empty) chunk so the loss stays in the graph.
    for start in range(0, max(1, hidden.size(0)), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            loss = checkpoint(
                chunk_loss, hidden[part], targets[part], weights[part], use_reentrant=False
            )
        else:
            loss = chunk_loss(hidden[part], targets[part], weights[part])
        total = total + loss
    return total, weight_sum


def forward_hidden(model: Any, batch: PackedBatch | Batch) -> torch.Tensor:
    """The model's final hidden states ``[rows, T, hidden]`` for a batch, without full logits.

    ``model`` is a transformers causal LM, possibly wrapped by peft and/or
    ``DistributedDataParallel``; the call goes through the outermost wrapper's
    forward so adapters and DDP's gradient hooks take part. A ``PackedBatch``
    is passed the way its attention implementation needs (see
    ``engine.packing``); a padded ``Batch`` with its attention mask. The
    model's own output layer then runs on the last position only
    (``logits_to_keep=1``); feed the hidden states and
    :func:`output_layer` to :func:`causal_lm_loss_terms`.
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


def _liger_fused_linear_cross_entropy() -> Any:
    try:
        from liger_kernel.transformers.functional import (  # type: ignore[import-not-found]
            liger_fused_linear_cross_entropy,
        )
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def _liger_loss_sum(
    fused: Any, hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    # Liger weighs classes, not tokens: weights are per sample, so there are few
    # distinct values; one summed call per value is exact.
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else hidden.dtype
    weight = head.weight.to(dtype)
    bias = None if head.bias is None else head.bias.to(dtype)
    total = hidden.new_zeros((), dtype=torch.float32)
    for value in torch.unique(weights).tolist():
        pick = weights == value
        loss = fused(hidden[pick].to(dtype), weight, targets[pick], bias=bias, reduction="sum")
        total = total + value * loss.float()
    return total

"""The output layer and the weighted cross-entropy in one pass, a chunk of positions at a time.

The cross-entropy is a model's last operation, so its gradients can be
computed in the forward: each chunk's logits are made, turned into their loss
and their gradient, projected back onto the hidden states and the output
layer's weight, and dropped. No more than one chunk's logits ever exist, and
the backward only scales the gradients already made by the loss's own
gradient (Liger Kernel's fused linear cross-entropy works the same way).

Unlike Liger's, nothing here asks the GPU for a value: Liger counts the
targets with ``.item()`` in the forward and compares the incoming gradient
to 1 in the backward, and each of those made the host wait for the GPU twice
a step. Per-token weights are native (Liger weighs classes, so per-sample
weights took one call per distinct weight), and the weight's gradient is
summed in fp32 over the chunks.

On a GPU each chunk's loss and gradient come from one Triton kernel that
writes the gradient over the logits (``engine.cross_entropy_kernel``): a
dozen fewer kernels a chunk, a fifth of the memory traffic, and chunks four
times as long in the same memory. Elsewhere (or where Triton cannot build
it) torch operations compute the same.

Precision: under autocast the logits are made in the autocast dtype, as the
model's own output layer makes them; the log-softmax, the loss and the
logits' gradient are computed in fp32, and that gradient is rounded to the
autocast dtype for the two projections back, as autograd would round it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ownchat_trainer.engine import cross_entropy_kernel

# A chunk's logits live three times over on the torch path (autocast-dtype
# logits, fp32 log-probabilities, autocast-dtype gradient), once in the
# Triton kernel's (the gradient is written over them); this bounds either to
# ~256 MiB, at the peak of the step: the end of the forward, when every
# activation exists.
CHUNK_BYTES = 256 * 1024 * 1024
_BYTES_PER_LOGIT = 2 + 4 + 2
_BYTES_PER_LOGIT_IN_KERNEL = 2
# Matrix-product tiles on a GPU are 64 to 256 rows: a chunk of 261 rows runs
# as three tiles of 128, one of them almost empty.
_CHUNK_MULTIPLE = 128


def chunk_tokens_for(vocab_size: int, bytes_per_logit: int = _BYTES_PER_LOGIT) -> int:
    """Positions per chunk for an output layer of ``vocab_size`` rows (:data:`CHUNK_BYTES`),
    a multiple of 128 where that is at least one."""
    tokens = CHUNK_BYTES // (bytes_per_logit * vocab_size)
    if tokens >= _CHUNK_MULTIPLE:
        return tokens - tokens % _CHUNK_MULTIPLE
    return max(1, tokens)


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """``sum_i token_weights[i] * cross_entropy(hidden[i] @ weight.T + bias, targets[i])``, fp32.

    ``hidden`` ``[N, H]``, ``weight`` ``[V, H]``, ``bias`` ``[V]`` or None,
    ``targets`` int64 ``[N]`` (every one a class: no ignore index),
    ``token_weights`` float32 ``[N]``. Under autocast the output layer runs in
    autocast's dtype. Differentiable in ``hidden``, ``weight`` and ``bias``;
    the backward may run once (it scales the forward's gradients in place).
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = hidden.dtype
    if chunk_tokens is None:
        in_kernel = cross_entropy_kernel.available(hidden.device, dtype)
        chunk_tokens = chunk_tokens_for(
            weight.shape[0], _BYTES_PER_LOGIT_IN_KERNEL if in_kernel else _BYTES_PER_LOGIT
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, not {chunk_tokens}")
    if not torch.is_grad_enabled():
        return _chunks(hidden, weight, bias, targets, token_weights, dtype, chunk_tokens)[0]
    loss: torch.Tensor = _LinearCrossEntropy.apply(
        hidden, weight, bias, targets, token_weights, dtype, chunk_tokens
    )
    return loss


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        token_weights: torch.Tensor,
        dtype: torch.dtype,
        chunk_tokens: int,
    ) -> torch.Tensor:
        loss, grad_hidden, grad_weight, grad_bias = _chunks(
            hidden,
            weight,
            bias,
            targets,
            token_weights,
            dtype,
            chunk_tokens,
            gradients=(
                hidden.requires_grad,
                weight.requires_grad,
                bias is not None and bias.requires_grad,
            ),
        )
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # The loss's gradient stays on the device: no comparison with 1 here.
        gradients = tuple(
            None if grad is None else grad.mul_(grad_loss.to(grad.dtype))
            for grad in ctx.saved_tensors
        )
        return (*gradients, None, None, None, None)


def _chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    dtype: torch.dtype,
    chunk_tokens: int,
    gradients: tuple[bool, bool, bool] = (False, False, False),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The loss sum, and the gradients asked for (of the loss sum, in the inputs' dtypes)."""
    want_hidden, want_weight, want_bias = gradients
    positions = hidden.shape[0]
    # Autocast is off in here: every cast is explicit.
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        matrix = weight.to(dtype)
        offset = None if bias is None else bias.to(dtype)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        # Summed over the chunks in fp32, whatever the parameters' dtype.
        grad_weight = weight.new_zeros(weight.shape, dtype=torch.float32) if want_weight else None
        grad_bias = weight.new_zeros(weight.shape[0], dtype=torch.float32) if want_bias else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, positions, chunk_tokens):
            end = min(start + chunk_tokens, positions)
            inputs = hidden[start:end].to(dtype)
            logits = inputs @ matrix.T if offset is None else torch.addmm(offset, inputs, matrix.T)
            grad_logits = _chunk_loss(
                logits, targets[start:end], token_weights[start:end], loss, any(gradients)
            )
            del logits
            if grad_logits is None:
                continue
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits @ matrix
            if grad_weight is not None:
                _add_product(grad_weight, grad_logits.T, inputs)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0, dtype=torch.float32)
    return (
        loss,
        grad_hidden,
        None if grad_weight is None else grad_weight.to(weight.dtype),
        None if grad_bias is None or bias is None else grad_bias.to(bias.dtype),
    )


def _chunk_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    loss: torch.Tensor,
    gradient: bool,
) -> torch.Tensor | None:
    """Adds the chunk's weighted loss to ``loss``; returns (with ``gradient``) the
    logits' gradient: in one Triton kernel on a GPU (written over the logits),
    else by :func:`_weighted_cross_entropy`."""
    if cross_entropy_kernel.available(logits.device, logits.dtype):
        loss += cross_entropy_kernel.weighted_cross_entropy_(logits, targets, weights).sum()
        return logits if gradient else None
    return _weighted_cross_entropy(logits, targets, weights, loss, gradient)


def _weighted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    loss: torch.Tensor,
    gradient: bool,
) -> torch.Tensor | None:
    """Subtracts the chunk's weighted log-likelihood from ``loss``; returns (with
    ``gradient``) the logits' gradient, ``weight * (softmax - one_hot(target))``,
    in their dtype. Torch operations in fp32; :mod:`cross_entropy_kernel` does
    the same in one kernel."""
    log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    chunk_targets = targets[:, None]
    chunk_weights = weights[:, None]
    target_log_probs = log_probs.gather(1, chunk_targets)
    loss -= (target_log_probs * chunk_weights).sum()
    if not gradient:
        return None
    grad_logits = log_probs.exp_()
    # Written, not subtracted: one write a row, deterministic on a GPU.
    grad_logits.scatter_(1, chunk_targets, torch.expm1(target_log_probs))
    return grad_logits.mul_(chunk_weights).to(logits.dtype)


def _add_product(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``total += left @ right`` with ``total`` fp32, summed in fp32."""
    if (
        total.is_cuda
        and left.dtype in (torch.bfloat16, torch.float16)
        and torch.cuda.get_device_capability(total.device)[0] >= 8
    ):
        # Half-precision operands, an fp32 result: no rounding of each chunk's product.
        torch.addmm(total, left, right, out_dtype=torch.float32, out=total)
    else:
        total.addmm_(left.float(), right.float())

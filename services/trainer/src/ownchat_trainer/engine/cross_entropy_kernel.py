"""One Triton kernel for a chunk's weighted cross-entropy and its logits' gradient, in place.

``linear_cross_entropy`` turns each chunk of half-precision logits into its
loss and its gradient. Written with torch operations that is about a dozen
kernels a chunk (the fp32 log-softmax, the gather, the exponential, the
target's correction, the weighting, the cast back), which read and write
about 34 bytes a logit in all: for SmolLM2's 49k-word vocabulary at 32k
loss positions a step, some 50 GB of memory traffic, more than the output
layer's matrix products themselves move. This kernel reads each row of logits twice
(its log-sum-exp online, then the gradient) and writes the gradient over
the logits: 6 bytes a logit, and one launch a chunk. Liger Kernel's
cross-entropy works the same way; this one weighs each row by its own
weight, as the trainer's loss does, and needs nothing from the host.

For a row ``x`` with target ``t`` and weight ``w`` it writes
``loss[row] = w * (logsumexp(x) - x[t])`` and overwrites ``x`` with
``w * (softmax(x) - one_hot(t))``, computed in fp32 and rounded to the
logits' dtype once, as the torch path rounds its fp32 gradient.

The trainer runs it on a GPU only, once a first launch on a one-row chunk
has built it (``triton_build``); where Triton cannot build it the torch path
runs. Under Triton's interpreter (``TRITON_INTERPRET=1`` before Triton is
imported) it runs on CPU tensors, which is how the tests check it without a
GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from ownchat_trainer.engine.triton_build import KernelBuild

# Logits a program reads at once: 16k fp32 values over 16 warps are 32
# registers a thread, and a 49k to 152k vocabulary takes 3 to 10 blocks a pass.
_BLOCK = 16384
_WARPS = 16


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`weighted_cross_entropy_` runs for logits of ``dtype`` on
    ``device``: half precision on a GPU where Triton builds the kernel."""
    return BUILD.runs_on(device, dtype)


def weighted_cross_entropy_(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Each row's weighted loss (fp32 ``[rows]``), the rows of ``logits`` overwritten
    by their loss's gradient.

    ``logits`` ``[rows, vocab]`` contiguous, half precision; ``targets`` int64
    ``[rows]``, each a class; ``weights`` float32 ``[rows]``.
    """
    return _launch(BUILD.kernel(), logits, targets, weights)


def _launch(
    kernel: Any, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    rows, vocab = logits.shape
    if not logits.is_contiguous():
        raise ValueError("the logits must be contiguous")
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return losses
    kernel[(rows,)](
        logits,
        logits.stride(0),
        targets,
        weights,
        losses,
        vocab,
        BLOCK=min(_BLOCK, 1 << (vocab - 1).bit_length()),
        num_warps=_WARPS,
    )
    return losses


def _trial(kernel: Any, device: torch.device) -> None:
    _launch(
        kernel,
        torch.zeros(1, 16, dtype=torch.bfloat16, device=device),
        torch.zeros(1, dtype=torch.int64, device=device),
        torch.ones(1, dtype=torch.float32, device=device),
    )


BUILD = KernelBuild("weighted_cross_entropy_kernel", _trial)

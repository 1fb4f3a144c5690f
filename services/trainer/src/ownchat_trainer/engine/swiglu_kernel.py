"""SwiGLU's product and its gradient over gate and up projections that may be two
halves of one matrix product's output.

``lean_activations`` runs the gate and up projections as one matrix product,
so gate and up are the two halves of each row of one ``[tokens, 2 * width]``
tensor: strided, not contiguous. Liger Kernel's SwiGLU kernels take
contiguous tensors only (a copy of both, each way); these Triton kernels take
each one's row stride, and the backward writes the gradients over gate and
up, so the gradient of the whole product comes out in the same one tensor the
projection's backward reads. They compute as Liger's do: silu in fp32, its
result rounded to the inputs' dtype before the product.

On a GPU where Triton builds them (``triton_build``); elsewhere torch
operations, as autograd computes them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ownchat_trainer.engine.triton_build import KernelBuild

_BLOCK = 4096
_WARPS = 8


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, contiguous; ``gate`` and ``up`` ``[..., width]``, their
    rows possibly strided."""
    if FORWARD.runs_on(gate.device, gate.dtype):
        return _forward(FORWARD.kernel(), gate, up)
    return F.silu(gate) * up


def swiglu_backward_(gate_up: torch.Tensor, grad_product: torch.Tensor) -> torch.Tensor:
    """The gradient of ``silu(gate) * up`` in ``gate_up = [gate | up]`` (``[..., 2 * width]``),
    given the product's: written over ``gate_up`` on a GPU (its last use), a new
    tensor elsewhere."""
    width = gate_up.shape[-1] // 2
    if BACKWARD.runs_on(gate_up.device, gate_up.dtype):
        _backward(BACKWARD.kernel(), gate_up[..., :width], gate_up[..., width:], grad_product)
        return gate_up
    # Autograd's own silu and product backward, on the same values.
    with torch.enable_grad():
        leaf = gate_up.detach().requires_grad_(True)
        product = F.silu(leaf[..., :width]) * leaf[..., width:]
    (grad,) = torch.autograd.grad(product, leaf, grad_product)
    return grad


def _rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``tensor`` as ``[rows, width]`` and its row stride (a view where it can be)."""
    flat = tensor.reshape(-1, tensor.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return flat, flat.stride(0)


def _forward(kernel: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    product = torch.empty(gate.shape, dtype=up.dtype, device=up.device)
    _launch(kernel, _rows(gate), _rows(up), product)
    return product


def _backward(
    kernel: Any, gate: torch.Tensor, up: torch.Tensor, grad_product: torch.Tensor
) -> None:
    gate_rows, up_rows = _rows(gate), _rows(up)
    if gate_rows[0].data_ptr() != gate.data_ptr() or up_rows[0].data_ptr() != up.data_ptr():
        raise ValueError("gate and up must have rows of unit stride to be written over")
    _launch(
        kernel, gate_rows, up_rows, grad_product.reshape(-1, grad_product.shape[-1]).contiguous()
    )


def _launch(
    kernel: Any,
    gate_rows: tuple[torch.Tensor, int],
    up_rows: tuple[torch.Tensor, int],
    product_rows: torch.Tensor,
) -> None:
    """One program a row: gate and up with their row strides, the product (or its
    gradient) contiguous."""
    (gate, gate_stride), (up, up_stride) = gate_rows, up_rows
    rows, width = gate.shape
    if rows:
        kernel[(rows,)](
            gate,
            gate_stride,
            up,
            up_stride,
            product_rows,
            width,
            BLOCK=min(_BLOCK, 1 << max(width - 1, 0).bit_length()),
            num_warps=_WARPS,
        )


def _trial_forward(kernel: Any, device: torch.device) -> None:
    halves = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
    _forward(kernel, halves[:, :16], halves[:, 16:])


def _trial_backward(kernel: Any, device: torch.device) -> None:
    halves = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
    _backward(
        kernel,
        halves[:, :16],
        halves[:, 16:],
        torch.zeros(1, 16, dtype=halves.dtype, device=device),
    )


FORWARD = KernelBuild("swiglu_forward_kernel", _trial_forward)
BACKWARD = KernelBuild("swiglu_backward_kernel", _trial_backward)

"""Packed attention through PyTorch's own variable-length flash kernel.

A packed row holds several samples that must not attend to each other. With
``sdpa`` transformers builds a ``[rows, 1, T, T]`` block-diagonal mask, and an
explicit mask rules out the flash kernel: every row pays for full ``T x T``
attention although most of its blocks are masked. The ``flash_attn`` package
has a variable-length kernel that skips them, but it is a source build most
machines do not have. PyTorch (2.10 and later, CUDA) ships the same kind of
kernel as ``torch.nn.attention.varlen.varlen_attn``: it takes the rows laid
end to end and the cumulative sequence offsets that ``PackedBatch`` already
computes for flash attention (``cu_seq_lens``), so attention costs the sum of
the squared sample lengths instead of ``rows * T**2``.

:func:`register` makes it an attention implementation transformers can load
by name (:data:`ATTENTION_NAME`), with a mask function that builds no mask.
The name avoids the word "flash" on purpose: transformers treats such names as
requests for the ``flash_attn`` package or a hub kernel. ``PackedBatch``
passes ``cu_seq_lens_q``/``max_length_q`` to it as it does to flash attention.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

ATTENTION_NAME = "ownchat_varlen"

VarlenKernel = Callable[..., torch.Tensor]


def torch_varlen_kernel() -> VarlenKernel | None:
    """PyTorch's ``varlen_attn``, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn  # type: ignore[return-value]  # returns a tuple only when asked (return_aux)


def available(device: torch.device) -> bool:
    """Whether packed steps on ``device`` can use :data:`ATTENTION_NAME`."""
    return device.type == "cuda" and torch_varlen_kernel() is not None


def attention_forward(kernel: VarlenKernel) -> Callable[..., tuple[torch.Tensor, None]]:
    """A transformers attention function over ``kernel`` (``varlen_attn``'s signature).

    Kept apart from the kernel so that the reshaping around it is tested on a
    CPU against a reference kernel; the GPU run uses PyTorch's.
    """
    parameters = inspect.signature(kernel).parameters
    # torch 2.13 takes enable_gqa; earlier versions are given whole key/value heads.
    native_gqa = "enable_gqa" in parameters
    causal: dict[str, Any] = (
        {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    )

    def forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        cu_seq_lens = kwargs.get("cu_seq_lens_q")
        max_length = kwargs.get("max_length_q")
        if cu_seq_lens is None or max_length is None:
            raise ValueError(
                f"attention {ATTENTION_NAME!r} runs packed batches only: "
                "cu_seq_lens_q and max_length_q are required"
            )
        if dropout:
            raise ValueError(f"attention {ATTENTION_NAME!r} has no dropout")
        # transformers hands [rows, heads, T, head_dim]; the kernel wants the rows
        # laid end to end, [rows * T, heads, head_dim].
        rows, heads, length, head_dim = query.shape
        kv_heads = key.shape[1]
        # The CUDA kernel takes half precision only (queries are bf16 under autocast).
        compute_dtype = (
            torch.bfloat16 if query.is_cuda and query.dtype == torch.float32 else query.dtype
        )

        def flat(states: torch.Tensor) -> torch.Tensor:
            return (
                states.transpose(1, 2)
                .reshape(rows * length, states.shape[1], head_dim)
                .to(compute_dtype)
            )

        flat_key, flat_value = flat(key), flat(value)
        extra: dict[str, Any] = dict(causal)
        if kv_heads != heads:
            if native_gqa:
                extra["enable_gqa"] = True
            else:
                flat_key = flat_key.repeat_interleave(heads // kv_heads, dim=1)
                flat_value = flat_value.repeat_interleave(heads // kv_heads, dim=1)
        output = kernel(
            flat(query),
            flat_key,
            flat_value,
            cu_seq_lens,
            cu_seq_lens,
            int(max_length),
            int(max_length),
            scale=scaling,
            **extra,
        )
        return output.view(rows, length, heads, head_dim).to(query.dtype), None

    return forward


def register(kernel: VarlenKernel | None = None) -> bool:
    """Registers :data:`ATTENTION_NAME` with transformers; False where no kernel exists."""
    kernel = kernel or torch_varlen_kernel()
    if kernel is None:
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward(kernel))
    # No mask: the offsets carry the sample boundaries, the kernel the causality.
    AttentionMaskInterface.register(ATTENTION_NAME, flash_attention_mask)
    return True

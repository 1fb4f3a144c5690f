"""Packed attention through a variable-length kernel: on a GPU the ``flash_attn``
package's where installed, else PyTorch's flash kernel; sdpa over each sample in
turn on a CPU.

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
by name (:data:`ATTENTION_NAME`), with no mask function, so transformers
builds no mask for it (nor looks for packed sequences in the position ids).
Where ``flash_attn`` is installed its kernel runs behind the same name
(:func:`flash_attn_kernel`) rather than as transformers' ``flash_attention_2``,
for the same reason.
The name avoids the word "flash" on purpose: transformers treats such names as
requests for the ``flash_attn`` package or a hub kernel. ``PackedBatch``
passes ``cu_seq_lens_q``/``max_length_q`` to it as it does to flash attention.

A CPU has no varlen kernel: :func:`sequence_loop_kernel` takes its place,
with the same signature, and runs sdpa's causal kernel over each sample's
slice of the rows. On 2 cores a step of SmolLM2-135M (7 samples, 1006
tokens) then takes 8 s instead of 10.5 s in two rows under sdpa's
block-diagonal mask, whose kernel computes every masked block, with the same
loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION_NAME = "ownchat_varlen"

VarlenKernel = Callable[..., torch.Tensor]


def torch_varlen_kernel() -> VarlenKernel | None:
    """PyTorch's ``varlen_attn``, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn  # type: ignore[return-value]  # returns a tuple only when asked (return_aux)


def flash_attn_kernel() -> VarlenKernel | None:
    """The ``flash_attn`` package's varlen kernel behind ``varlen_attn``'s signature,
    or None where it is not installed.

    Through :func:`attention_forward` it gets the sample offsets from the packed
    batch: transformers' own ``flash_attention_2`` path, given position ids
    instead, scans them for packed sequences at every forward, and that scan
    makes the host wait for the GPU.
    """
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except ImportError:
        return None

    def kernel(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seq_q: torch.Tensor,
        cu_seq_k: torch.Tensor,
        max_q: int,
        max_k: int,
        *,
        scale: float | None = None,
        window_size: tuple[int, int] = (-1, -1),
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        # flash_attn takes fewer key/value heads as they come (enable_gqa's case).
        causal = tuple(window_size) == (-1, 0)
        if not causal and tuple(window_size) != (-1, -1):
            raise ValueError(f"only full or causal attention, not window_size {window_size}")
        output: torch.Tensor = flash_attn_varlen_func(
            query,
            key,
            value,
            cu_seq_q,
            cu_seq_k,
            max_q,
            max_k,
            softmax_scale=scale,
            causal=causal,
        )
        return output

    return kernel


def sequence_loop_kernel(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``varlen_attn``'s contract (causal only) through sdpa, one sequence at a time."""
    if tuple(window_size) != (-1, 0):
        raise ValueError(f"only causal attention (window_size (-1, 0)), not {window_size}")
    bounds = cu_seq_q.tolist()
    parts = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        # [length, heads, head_dim] -> sdpa's [1, heads, length, head_dim], and back:
        # with a batch dimension sdpa runs its flash kernel on a CPU, without one
        # its math path (2.3x slower over a 1000-token sample, fwd and bwd).
        q, k, v = (states[start:end].transpose(0, 1)[None] for states in (query, key, value))
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa
        )
        parts.append(attended[0].transpose(0, 1))
    return torch.cat(parts)


def kernel_for(device: torch.device) -> VarlenKernel | None:
    """The varlen kernel packed steps on ``device`` use, or None where there is none:
    on a GPU ``flash_attn``'s where installed, else PyTorch's."""
    if device.type == "cuda":
        return flash_attn_kernel() or torch_varlen_kernel()
    if device.type == "cpu":
        return sequence_loop_kernel
    return None


def available(device: torch.device) -> bool:
    """Whether packed steps on ``device`` can use :data:`ATTENTION_NAME`."""
    return kernel_for(device) is not None


def attention_forward(kernel: VarlenKernel) -> Callable[..., tuple[torch.Tensor, None]]:
    """A transformers attention function over ``kernel`` (``varlen_attn``'s signature).

    Kept apart from the kernel so that the reshaping around it is tested on a
    CPU against a reference kernel; the GPU run uses PyTorch's.
    """
    parameters = inspect.signature(kernel).parameters
    # torch 2.13 takes enable_gqa; earlier versions may still attend grouped heads
    # themselves (flash attention does), which is tried once (takes_grouped_heads).
    native_gqa = "enable_gqa" in parameters
    causal: dict[str, Any] = (
        {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    )
    grouped: dict[tuple[str, torch.dtype], bool] = {}

    def repeats_heads(device: torch.device, dtype: torch.dtype) -> bool:
        if native_gqa:
            return False
        if (device.type, dtype) not in grouped:
            grouped[device.type, dtype] = takes_grouped_heads(kernel, causal, device, dtype)
        return not grouped[device.type, dtype]

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
            # A copy, always: v can be a view of the q/k/v projections' one
            # product (lean_activations), and the kernel keeps what it is given.
            return (
                states.transpose(1, 2)
                .reshape(rows * length, states.shape[1], head_dim)
                .to(compute_dtype)
                .contiguous()
            )

        flat_key, flat_value = flat(key), flat(value)
        extra: dict[str, Any] = dict(causal)
        if kv_heads != heads:
            if native_gqa:
                extra["enable_gqa"] = True
            elif repeats_heads(flat_key.device, flat_key.dtype):
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


def takes_grouped_heads(
    kernel: VarlenKernel, causal: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> bool:
    """Whether ``kernel`` (without ``enable_gqa``) attends grouped key/value heads itself,
    as flash attention's varlen kernel does: the same output and gradients, on two
    short sequences of four heads over two, as with the heads repeated.

    Repeating them costs a copy of k and v a layer at the query's width, kept for
    the backward: for SmolLM2 (9 heads over 3) 1.5 KiB a token and layer.
    """
    generator = torch.Generator().manual_seed(0)

    def states(heads: int) -> torch.Tensor:
        values = torch.randn(8, heads, 64, generator=generator).to(device, dtype)
        return values.requires_grad_(True)

    query, key, value = states(4), states(2), states(2)
    offsets = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
    with torch.enable_grad():  # the first forward may be an evaluation's
        try:
            grouped = kernel(query, key, value, offsets, offsets, 5, 5, **causal)
            grads = torch.autograd.grad(grouped.float().sum(), (query, key, value))
        except Exception:  # whatever refuses them: the heads are repeated, as always works
            return False
        repeated = kernel(
            query,
            key.repeat_interleave(2, dim=1),
            value.repeat_interleave(2, dim=1),
            offsets,
            offsets,
            5,
            5,
            **causal,
        )
        expected = torch.autograd.grad(repeated.float().sum(), (query, key, value))
    pairs = [(grouped, repeated), *zip(grads, expected, strict=True)]
    return all(torch.allclose(got, want, atol=1e-2, rtol=1e-2) for got, want in pairs)


def register(kernel: VarlenKernel | None = None) -> bool:
    """Registers :data:`ATTENTION_NAME` with transformers; False where no kernel exists."""
    kernel = kernel or torch_varlen_kernel()
    if kernel is None:
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, attention_forward(kernel))
    # No mask function: the offsets carry the sample boundaries, the kernel the
    # causality. With one registered, transformers would also look for packed
    # sequences in the position ids at every forward, and its ``.all()`` there
    # makes the host wait for the GPU.
    return True

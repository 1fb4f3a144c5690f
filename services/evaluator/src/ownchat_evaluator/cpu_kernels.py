"""Faster CPU kernels for the scoring passes of perplexity, switched on around them.

Two of the scoring passes' costs on a CPU are not the arithmetic they need:

- Attention: PyTorch's CPU flash attention skips the keys above the diagonal
  only for ``is_causal`` without a mask, in blocks of up to 512 keys; a scoring
  batch has a mask (padding, a shared prefix's cache) and rows of a few hundred
  tokens, so every query is computed against every key. Here the queries go
  ``QUERY_BLOCK`` at a time against the keys up to their own position, about
  half of that work for long rows, and grouped-query attention reads its
  key/value heads without repeating them (``enable_gqa``).
- float32 matrix products: ``torch.nn.Linear`` calls MKL, which ran the
  shapes of a small chat model's layers 10-40% slower than oneDNN on an AMD
  EPYC (Zen 4) core; oneDNN computes the same float32 products. bfloat16
  products already go through oneDNN.

Both are exact in float32 (same products, other order of summation: ~1e-7
relative) and leave the model as it was when the pass ends.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_NAME = "ownchat_causal_blocks"
# Queries per attention call: smaller blocks skip more of the masked keys, at a
# cost per call; 64 was the fastest of 32..256 on rows of 100 to 500 tokens.
QUERY_BLOCK = 64


def causal_block_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention interface: ``[batch, queries, heads, dim]`` out.

    The queries are the last ``queries`` positions of the keys (a cache before
    them); the mask, when given, is ``[batch, 1, queries, keys]``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if length <= QUERY_BLOCK or not causal or dropout or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    offset = key.shape[2] - length
    mask = attention_mask
    if mask is None:
        # A plain causal mask: query i sees the cache and itself.
        mask = torch.ones(length, key.shape[2], dtype=torch.bool, device=query.device)
        mask = mask.tril(offset)[None, None]
    output = query.new_empty(batch, length, heads, dim)
    for start in range(0, length, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, length)
        # Keys after the block's last query are masked for all of its queries.
        seen = offset + end
        output[:, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, :seen],
            value[:, :, :seen],
            attn_mask=mask[:, :, start:end, :seen],
            scale=scaling,
            enable_gqa=heads != key.shape[1],
        ).transpose(1, 2)
    return output, None


@functools.cache
def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, causal_block_attention)
    # The masks SDPA takes: boolean, or none for a plain causal pass.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextlib.contextmanager
def causal_block_attention_on(model: Any) -> Iterator[None]:
    """Switches a model that uses SDPA to causal block attention for a while."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def _onednn_linear(layer: torch.nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(inputs, layer.weight, layer.bias, "none", [], "")


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this PyTorch has oneDNN's float32 linear kernel and it computes a product."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    layer = torch.nn.Linear(8, 4)
    inputs = torch.randn(2, 3, 8)
    try:
        with torch.inference_mode():
            output = _onednn_linear(layer, inputs)
            return bool(torch.allclose(output, layer(inputs), rtol=1e-5, atol=1e-6))
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def onednn_linears(model: torch.nn.Module) -> Iterator[None]:
    """The model's float32 ``torch.nn.Linear`` layers on a CPU compute with oneDNN for a while."""
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
    ]
    if not layers or not onednn_linear_available():
        yield
        return
    # An instance attribute shadows the class's forward; deleting it restores it.
    for layer in layers:
        setattr(layer, "forward", functools.partial(_onednn_linear, layer))  # noqa: B010
    try:
        yield
    finally:
        for layer in layers:
            delattr(layer, "forward")


# On a GPU, sdpa prefers cuDNN's attention, which builds a plan for every new
# shape: scoring batches come in many widths, so most calls paid for a plan.
# Flash and memory-efficient attention need none.
GPU_SCORING_ATTENTION = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


@contextlib.contextmanager
def scoring_kernels(model: Any) -> Iterator[None]:
    """While a pass scores: causal block attention and oneDNN linear layers on a CPU,
    attention without per-shape plans on a GPU."""
    device = next(model.parameters()).device.type
    if device == "cuda":
        with sdpa_kernel(list(GPU_SCORING_ATTENTION)):
            yield
        return
    if device != "cpu":
        yield
        return
    with causal_block_attention_on(model), onednn_linears(model):
        yield

"""Fewer activations kept for the backward, computing the same numbers.

Activations dominate a training step's memory: SmolLM2-135M at 32k tokens a
step keeps about 20 GiB of them against 2.5 GiB of weights, gradients and
optimizer state. Per token and decoder layer of a Llama-style model under bf16
autocast with Liger Kernel's layers (hidden size H, MLP width I), the step
keeps, besides what attention and the norms themselves need:

- **Five bf16 copies of two norms' outputs.** Each RMSNorm returns the
  residual stream's dtype (fp32), and autocast casts that separately for every
  projection that reads it: q, k and v each keep their own bf16 copy of the
  same values, gate and up theirs. Here the norm's output is cast once, where
  it is made, and each projection is handed an alias of that one copy
  (:class:`SharedCast`): they compute with the very values autocast would have
  given them, and keep one copy between them. Each alias passes its gradient
  back in fp32, so the projections' gradients still add up in fp32 (a plain
  shared bf16 tensor would add them in bf16). 3·H values fewer.
- **The MLP's product.** SwiGLU keeps gate and up for its own backward, and
  the down projection keeps their product ``silu(gate) * up``, which is one
  elementwise kernel away from them. :class:`SiluMulLinear` recomputes it in
  the backward instead. I values fewer (2·I without Liger's SwiGLU, where
  the plain ``silu`` and product also keep the activation's output).

- **The sum ahead of the second norm.** The attention's output joins the fp32
  residual stream, and the second norm keeps that fp32 sum (and, without
  Liger, its normalised fp32 output). :class:`AddNorm` keeps the attention's
  bf16 output instead and recomputes the sum and the norm in the backward
  (two elementwise kernels); the residual it also needs is the layer's input,
  which the first norm keeps already. 2·H bytes fewer with Liger's RMSNorm,
  6·H without.

For SmolLM2-135M (H 576, I 1536) that is 7.5 KiB of about 22 KiB a token and
layer. Attention's inputs, the layer's fp32 input and the gate and up
projections stay: recomputing those would cost matrix products.

The architectures are those whose decoder layer is Llama's (norm, attention,
norm, SwiGLU MLP): a norm's output there feeds only linear layers, which is
what makes the early cast exact. Others are left as they are.
"""

from __future__ import annotations

import importlib.util
import inspect
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Decoder layers shaped as Llama's: input_layernorm -> self_attn (q/k/v
# projections first) -> post_attention_layernorm -> mlp (gate, up, down).
LEAN_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
_SILU_NAMES = frozenset({"silu", "swish"})


def apply_lean_activations(model: Any) -> bool:
    """Makes a plain transformers causal LM keep fewer activations; True when it did.

    Call it on the model before any adapter or DDP wraps it (an adapter on the
    down projection is still honoured: that MLP then runs its usual way).
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
        return False
    if getattr(config, "hidden_act", None) not in _SILU_NAMES:
        return False
    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if decoder is None or layers is None or not all(_llama_shaped(layer) for layer in layers):
        return False
    for layer in layers:
        attention, mlp = layer.self_attn, layer.mlp
        for norm, readers in (
            (layer.input_layernorm, (attention.q_proj, attention.k_proj, attention.v_proj)),
            (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
        ):
            norm.register_forward_hook(_attach_autocast_copy)
            for reader in readers:
                reader.register_forward_pre_hook(_read_shared_copy)
        mlp.forward = types.MethodType(_lean_mlp_forward, mlp)
        if _takes_plain_arguments(layer):
            layer.forward = types.MethodType(_lean_layer_forward, layer)
    return True


def _llama_shaped(layer: nn.Module) -> bool:
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (
        hasattr(layer, "input_layernorm")
        and hasattr(layer, "post_attention_layernorm")
        and all(isinstance(getattr(attention, name, None), nn.Linear) for name in _QKV)
        and all(isinstance(getattr(mlp, name, None), nn.Linear) for name in _MLP)
        and hasattr(mlp, "act_fn")
    )


_QKV = ("q_proj", "k_proj", "v_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
# The attribute of a norm's output that holds its one autocast copy.
_SHARED_COPY = "_ownchat_autocast_copy"


# The arguments of the decoder layers' forward this module reproduces (transformers
# 5.x: Llama, Mistral, Qwen2 and Qwen3 share it); another forward is left alone.
_LAYER_ARGUMENTS = (
    "self",
    "hidden_states",
    "attention_mask",
    "position_ids",
    "past_key_values",
    "use_cache",
    "position_embeddings",
    "kwargs",
)


def _takes_plain_arguments(layer: nn.Module) -> bool:
    return tuple(inspect.signature(type(layer).forward).parameters) == _LAYER_ARGUMENTS


def _lean_layer_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """A Llama-style decoder layer's forward (bound to it in place of its own), the
    attention's residual add and the second norm through :class:`AddNorm`."""
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    attended, _ = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    residual, hidden_states = add_norm(residual, attended, self.post_attention_layernorm)
    hidden_states = self.mlp(hidden_states)
    result: torch.Tensor = residual + hidden_states
    return result


def add_norm(
    residual: torch.Tensor, delta: torch.Tensor, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """``total = residual + delta`` and ``norm(total)``, keeping ``residual`` and ``delta``
    for the backward instead of what the sum and the norm would keep.

    ``norm``'s forward runs without its module hooks; the shared autocast copy
    of its output, which a hook would attach, is attached here. Its weight
    gets its gradient.
    """
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or not torch.is_grad_enabled():
        total = residual + delta
        return total, norm(total)
    total, normed = AddNorm.apply(residual, delta, weight, norm)
    _attach_autocast_copy(norm, (total,), normed)
    return total, normed


class AddNorm(torch.autograd.Function):
    """The residual add and the norm after it, recomputed in the backward."""

    @staticmethod
    def forward(
        ctx: Any,
        residual: torch.Tensor,
        delta: torch.Tensor,
        weight: torch.Tensor,
        norm: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(residual, delta)
        ctx.norm = norm
        device_type = residual.device.type
        ctx.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        total = residual + delta
        return total, norm.forward(total)

    @staticmethod
    def backward(
        ctx: Any, grad_total: torch.Tensor, grad_normed: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        residual, delta = ctx.saved_tensors
        norm = ctx.norm
        device_type, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            residual_leaf = residual.detach().requires_grad_(ctx.needs_input_grad[0])
            delta_leaf = delta.detach().requires_grad_(ctx.needs_input_grad[1])
            total = residual_leaf + delta_leaf
            normed = norm.forward(total)
        wanted = [
            (index, tensor)
            for index, tensor in enumerate((residual_leaf, delta_leaf, norm.weight))
            if ctx.needs_input_grad[index]
        ]
        grads: list[torch.Tensor | None] = [None, None, None]
        if wanted:
            found = torch.autograd.grad(
                (total, normed), [tensor for _, tensor in wanted], (grad_total, grad_normed)
            )
            for (index, _), grad in zip(wanted, found, strict=True):
                grads[index] = grad
        return grads[0], grads[1], grads[2], None


def _attach_autocast_copy(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    """Under autocast, casts a norm's fp32 output once and keeps the copy on the output."""
    if not isinstance(output, torch.Tensor) or output.dtype != torch.float32:
        return
    device_type = output.device.type
    if torch.is_autocast_enabled(device_type):
        copy = output.detach().to(torch.get_autocast_dtype(device_type))
        setattr(output, _SHARED_COPY, copy)


def _read_shared_copy(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A projection's input swapped for an alias of its norm's autocast copy, if it has one."""
    if not args or getattr(args[0], _SHARED_COPY, None) is None:
        return None
    source = args[0]
    return (SharedCast.apply(source, getattr(source, _SHARED_COPY)), *args[1:])


class SharedCast(torch.autograd.Function):
    """``source.to(copy.dtype)`` answered by a view of ``copy``, the cast made once.

    The gradient goes back to ``source`` in its own dtype, as the cast's would.
    """

    @staticmethod
    def forward(ctx: Any, source: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        ctx.source_dtype = source.dtype
        return copy.view_as(copy)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output.to(ctx.source_dtype), None


def _lean_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """The forward of a Llama-style MLP (bound to it in place of its own)."""
    gate = self.gate_proj(x)
    up = self.up_proj(x)
    down = self.down_proj
    if type(down) is not nn.Linear:
        # An adapter's layer: it must see its input, so the product is kept.
        result: torch.Tensor = down(self.act_fn(gate) * up)
        return result
    return silu_mul_linear(gate, up, down.weight, down.bias)


def silu_mul_linear(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(F.silu(gate) * up, weight, bias)``, keeping gate and up only.

    Under autocast ``gate`` and ``up`` are already in autocast's dtype; the
    weight is cast to it here, in the graph, as autocast casts a linear
    layer's weight, so its gradient reaches the fp32 weight the same way.
    """
    if weight.dtype != gate.dtype:
        weight = weight.to(gate.dtype)
        bias = None if bias is None else bias.to(gate.dtype)
    result: torch.Tensor = SiluMulLinear.apply(gate, up, weight, bias)
    return result


class SiluMulLinear(torch.autograd.Function):
    """The SwiGLU product and the down projection, recomputing the product in the backward."""

    @staticmethod
    def forward(
        ctx: Any,
        gate: torch.Tensor,
        up: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        product = _silu_mul(gate, up)
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias = bias is not None
        return F.linear(product, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, up, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        kernels = _liger_swiglu(gate)
        if kernels is None:
            # Autograd's own silu and product backward, on the recomputed product.
            with torch.enable_grad():
                gate_leaf = gate.detach().requires_grad_(True)
                up_leaf = up.detach().requires_grad_(True)
                product = F.silu(gate_leaf) * up_leaf
            grad_weight, grad_bias = _weight_grads(ctx, grad_output, product.detach())
            grad_product = grad_output.matmul(weight)
            grad_gate, grad_up = torch.autograd.grad(product, (gate_leaf, up_leaf), grad_product)
            return grad_gate, grad_up, grad_weight, grad_bias
        forward_kernel, backward_kernel = kernels
        grad_weight, grad_bias = _weight_grads(ctx, grad_output, forward_kernel(gate, up)[2])
        grad_product = grad_output.matmul(weight)
        # Liger's backward writes the gradients over gate and up, which are not needed after.
        grad_gate, grad_up = backward_kernel(gate, up, grad_product)
        return grad_gate, grad_up, grad_weight, grad_bias


def _weight_grads(
    ctx: Any, grad_output: torch.Tensor, product: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
    grad_weight = grad_bias = None
    if ctx.needs_input_grad[2]:
        grad_weight = flat_grad.t().mm(product.reshape(-1, product.shape[-1]))
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = flat_grad.sum(0)
    return grad_weight, grad_bias


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    kernels = _liger_swiglu(gate)
    if kernels is None:
        return F.silu(gate) * up
    product: torch.Tensor = kernels[0](gate, up)[2]
    return product


def _liger_swiglu(tensor: torch.Tensor) -> tuple[Any, Any] | None:
    """Liger Kernel's one-kernel SwiGLU forward and backward for a CUDA tensor, or None."""
    if not tensor.is_cuda or not _HAS_LIGER:
        return None
    from liger_kernel.ops.swiglu import (  # type: ignore[import-not-found]
        swiglu_backward,
        swiglu_forward,
    )

    return swiglu_forward, swiglu_backward


_HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None

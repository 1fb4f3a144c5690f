"""Fewer activations kept for the backward, computing the same numbers.

Activations dominate a training step's memory: SmolLM2-135M at 32k tokens a
step keeps about 20 GiB of them against 2.5 GiB of weights, gradients and
optimizer state. Per token and decoder layer of a Llama-style model under bf16
autocast with Liger Kernel's layers (hidden size H, MLP width I), the step
keeps, besides what attention and the norms themselves need:

- **Five bf16 copies of two norms' outputs.** Each RMSNorm returns the
  residual stream's dtype (fp32), and autocast casts that separately for every
  projection that reads it: q, k and v each keep their own bf16 copy of the
  same values for their weight's gradient, gate and up theirs. Here the
  norm's output is cast once, where it is made, for all its readers, and none
  of them keeps it (:class:`NormFedLinears`): they keep the norm's input, which
  the norm (or :class:`AddNorm`) keeps anyway, and the backward makes the
  output again from it, once for all its readers (one norm kernel). The
  readers' gradient goes back in fp32. 5·H values fewer (2·H fp32 values in
  float32, where the readers kept the outputs themselves).
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

Per step, not per token, the bf16 casts of the weights of those six
projections (q, k, v, gate, up, down) are not kept either: autocast keeps
its cast of every weight from the forward until that weight's backward, 2
bytes a parameter at the forward's peak (1.7 GiB for a 1B Llama); here each
is cast where it is used and again in the backward.

The readers of one norm also run as one matrix product over their stacked
weights (:class:`ReaderGroup`): gate and up always, their product's two
halves read in place by the SwiGLU kernels (``swiglu_kernel``); q, k and v
under the varlen attention, which copies them (another attention might keep
v, a view of the product, and with it q and k). The norm's output is read
once instead of once a layer, and its gradient comes from one product instead
of one a layer summed in fp32: on a GPU fourteen kernels fewer a layer, and
larger products. The numbers are the same in fp32; under bf16 the projections'
gradient sums are rounded once instead of once a layer.

For SmolLM2-135M (H 576, I 1536) that is 9.75 KiB of about 22 KiB a token and
layer. Attention's inputs, the layer's fp32 input and the gate and up
projections stay: recomputing those would cost matrix products.

The architectures are those whose decoder layer is Llama's (norm, attention,
norm, SwiGLU MLP): a norm's output there feeds only linear layers, which is
what makes the early cast exact. Others are left as they are.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ownchat_trainer.engine import swiglu_kernel
from ownchat_trainer.engine.varlen_attention import ATTENTION_NAME as VARLEN_ATTENTION

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
            norm.register_forward_hook(_attach_recipe_hook)
            # q, k and v share one product only under the varlen attention, which
            # copies them: another might keep v, a view of the product, and with
            # it q and k.
            only_under = attention if norm is layer.input_layernorm else None
            setattr(norm, _READERS, ReaderGroup(readers, only_under=only_under))
            for reader in readers:
                reader.forward = types.MethodType(_norm_fed_linear_forward, reader)
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
# Attributes of a norm's output: what its linear readers read (its one autocast
# copy, or None for the output itself), the tensors it is made from, and how
# their backward makes it again.
_NORM_READ = "_ownchat_norm_read"
_NORM_INPUTS = "_ownchat_norm_inputs"
_NORM_RECIPE = "_ownchat_norm_recipe"
# A norm module's attribute: the linear layers that read its output.
_READERS = "_ownchat_readers"


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
    _attach_recipe(norm, normed, (residual, delta))
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


def _attach_recipe_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    if args and isinstance(args[0], torch.Tensor):
        _attach_recipe(module, output, (args[0],))


def _attach_recipe(norm: nn.Module, output: Any, inputs: tuple[torch.Tensor, ...]) -> None:
    """Tells a norm's output how its readers read it and how to make it again.

    ``inputs`` are the norm's input, or the two terms whose sum it is (``add_norm``).
    Under autocast an fp32 output is cast once, here, for all its readers.
    """
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return
    device_type = output.device.type
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)
    cast = enabled and output.dtype == torch.float32
    setattr(output, _NORM_READ, output.detach().to(dtype) if cast else None)
    setattr(output, _NORM_INPUTS, inputs)
    setattr(output, _NORM_RECIPE, _NormRecipe(norm, (device_type, enabled, dtype), cast))


class _NormRecipe:
    """How the backward makes a norm's output again, as its readers read it.

    The readers' backward recomputes it once for all of them from the norm's
    input, with the forward's autocast state: the same kernels on the same
    values give the same bits. ``pending`` counts the readers' products whose
    backward has not run yet; the last one drops the recomputed tensor.
    """

    def __init__(self, norm: nn.Module, autocast: tuple[str, bool, torch.dtype], cast: bool):
        self.norm = norm
        self.autocast = autocast
        self.cast = cast
        self.pending = 0
        self._recomputed: torch.Tensor | None = None
        self.readers: ReaderGroup | None = getattr(norm, _READERS, None)
        # Outputs of the readers' one product, kept for the readers still to ask.
        self.waiting: dict[int, torch.Tensor] = {}

    def recompute(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self._recomputed is None:
            device_type, enabled, dtype = self.autocast
            with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                total = inputs[0] if len(inputs) == 1 else inputs[0] + inputs[1]
                normed = self.norm.forward(total)
            self._recomputed = normed.to(dtype) if self.cast else normed
        return self._recomputed

    def release(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self._recomputed = None


def _norm_fed_linear_forward(self: Any, source: torch.Tensor) -> torch.Tensor:
    """The forward of a linear layer that reads a norm's output (bound to it in place
    of its own): with the norm's other readers as one product (:class:`ReaderGroup`,
    :class:`NormFedLinears`) when the norm's output says how to make it again,
    else as ``nn.Linear`` computes."""
    recipe: _NormRecipe | None = getattr(source, _NORM_RECIPE, None)
    weight, bias = self.weight, self.bias
    if recipe is None:
        return F.linear(source, weight, bias)
    waiting = recipe.waiting.pop(id(self), None)
    if waiting is not None:
        return waiting
    read = getattr(source, _NORM_READ, None)
    read = source if read is None else read
    if not torch.is_grad_enabled():
        return F.linear(read, weight, bias)
    group = recipe.readers
    if group is None or not group.fusable() or group.position(self) is None:
        group = ReaderGroup((self,))
    if not group.wants_grad(source):
        return F.linear(read, weight, bias)
    outputs = group.project(source, recipe).split(group.widths, dim=-1)
    for reader, output in zip(group.readers, outputs, strict=True):
        if reader is not self:
            recipe.waiting[id(reader)] = output
    return outputs[group.position(self) or 0]


class ReaderGroup:
    """The linear layers that read one norm's output (q, k and v; gate and up),
    run as one matrix product over their stacked weights.

    One product reads the norm's output once instead of once a layer, and its
    backward makes one gradient for that output instead of one a layer summed
    in fp32: on a GPU, nine kernels fewer for q, k and v and five for gate and
    up (products, casts, sums), and larger products. Each layer keeps its own
    weight: checkpoints, adapters and sharding see the model's own parameters.
    """

    def __init__(self, readers: tuple[nn.Linear, ...], only_under: nn.Module | None = None):
        self.readers = readers
        # The attention module whose implementation must be the varlen one, if any.
        self.only_under = only_under

    @property
    def widths(self) -> list[int]:
        return [int(reader.weight.shape[0]) for reader in self.readers]

    def position(self, reader: nn.Module) -> int | None:
        return next((i for i, r in enumerate(self.readers) if r is reader), None)

    def fusable(self) -> bool:
        """Whether the readers' weights (and biases, all or none) stack into one product."""
        if self.only_under is not None:
            config = getattr(self.only_under, "config", None)
            if getattr(config, "_attn_implementation", None) != VARLEN_ATTENTION:
                return False
        weights = [reader.weight for reader in self.readers]
        biases = [reader.bias for reader in self.readers]
        return len({(w.dtype, w.device) for w in weights}) == 1 and (
            all(b is None for b in biases) or all(b is not None for b in biases)
        )

    def wants_grad(self, source: torch.Tensor) -> bool:
        return source.requires_grad or any(r.weight.requires_grad for r in self.readers)

    def project(self, source: torch.Tensor, recipe: _NormRecipe) -> torch.Tensor:
        """The readers' outputs side by side, ``[..., sum(widths)]``."""
        read = getattr(source, _NORM_READ, None)
        read = source if read is None else read
        inputs = tuple(t.detach() for t in getattr(source, _NORM_INPUTS))
        weights = [reader.weight for reader in self.readers]
        biases = [reader.bias for reader in self.readers if reader.bias is not None]
        result: torch.Tensor = NormFedLinears.apply(
            source, read, recipe, len(weights), len(biases), *weights, *biases, *inputs
        )
        return result


class NormFedLinears(torch.autograd.Function):
    """Linear layers over a norm's output as one product, keeping the norm's input,
    not its output.

    Their weights' gradients need what they read; the norm's input is kept
    anyway (by the norm, or by :class:`AddNorm`), so the backward makes the
    output again from it (:class:`_NormRecipe`) instead of keeping a copy
    per norm: H values a token for each norm. ``source`` is the norm's output
    (its gradient goes back in its own dtype), ``read`` what the layers compute
    with (``source`` or its autocast copy), ``inputs`` what the recipe makes it
    from. The weights are cast to ``read``'s dtype as autocast would, stacked,
    and again in the backward (:func:`_stacked`): no cast is kept.
    """

    @staticmethod
    def forward(
        ctx: Any,
        source: torch.Tensor,
        read: torch.Tensor,
        recipe: _NormRecipe,
        count: int,
        bias_count: int,
        *tensors: torch.Tensor,
    ) -> torch.Tensor:
        weights = tensors[:count]
        biases = tensors[count : count + bias_count]
        inputs = tensors[count + bias_count :]
        ctx.save_for_backward(*weights, *inputs)
        ctx.recipe = recipe
        ctx.count, ctx.bias_count = count, bias_count
        ctx.source_dtype = source.dtype
        ctx.compute_dtype = read.dtype
        ctx.bias_dtypes = [bias.dtype for bias in biases]
        recipe.pending += 1
        offset = _stacked(biases, read.dtype) if biases else None
        return F.linear(read, _stacked(weights, read.dtype), offset)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        count, bias_count = ctx.count, ctx.bias_count
        weights = ctx.saved_tensors[:count]
        inputs = ctx.saved_tensors[count:]
        recipe: _NormRecipe = ctx.recipe
        grad_output = grad_output.contiguous()
        grad_source = None
        if ctx.needs_input_grad[0]:
            grad_source = grad_output.matmul(_stacked(weights, ctx.compute_dtype))
            grad_source = grad_source.to(ctx.source_dtype)
        first = 5  # forward's arguments before the weights
        want_weights = [ctx.needs_input_grad[first + i] for i in range(count)]
        want_biases = [ctx.needs_input_grad[first + count + i] for i in range(bias_count)]
        read = recipe.recompute(tuple(inputs)) if any(want_weights) else None
        grad_weight, grad_bias = _weight_grads(grad_output, read, any(want_biases))
        recipe.release()
        widths = [int(weight.shape[0]) for weight in weights]
        grad_weights = _unstacked(grad_weight, widths, [w.dtype for w in weights], want_weights)
        grad_biases = _unstacked(grad_bias, widths, ctx.bias_dtypes, want_biases)
        return (
            grad_source,
            None,
            None,
            None,
            None,
            *grad_weights,
            *grad_biases,
            *(None for _ in inputs),
        )


def _stacked(tensors: tuple[torch.Tensor, ...] | list[torch.Tensor], dtype: torch.dtype) -> Any:
    """The tensors in ``dtype``, stacked along their first dimension: one copy
    each (the cast on the way), dropped after use (:func:`_cast`)."""
    if len(tensors) == 1:
        return _cast(tensors[0], dtype)
    stacked = tensors[0].new_empty(
        (sum(t.shape[0] for t in tensors), *tensors[0].shape[1:]), dtype=dtype
    )
    offset = 0
    for tensor in tensors:
        stacked[offset : offset + tensor.shape[0]].copy_(tensor)
        offset += tensor.shape[0]
    return stacked


def _unstacked(
    stacked: torch.Tensor | None,
    widths: list[int],
    dtypes: list[torch.dtype],
    wanted: list[bool],
) -> list[torch.Tensor | None]:
    """``stacked``'s parts (those ``wanted``), each in its dtype."""
    if stacked is None:
        return [None for _ in wanted]
    parts = stacked.split(widths)
    return [
        _cast(part, dtype) if want else None
        for part, dtype, want in zip(parts, dtypes, wanted, strict=True)
    ]


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype | None) -> Any:
    """``tensor`` in ``dtype``: a weight cast where it is used and dropped after, not
    kept for the backward (2 bytes a parameter under bf16 autocast, which keeps
    its casts of the weights until their backward), or its gradient cast back."""
    if tensor is None or dtype is None or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


def _lean_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """The forward of a Llama-style MLP (bound to it in place of its own)."""
    down = self.down_proj
    recipe: _NormRecipe | None = getattr(x, _NORM_RECIPE, None)
    group = None if recipe is None else recipe.readers
    if (
        group is not None
        and recipe is not None
        and type(down) is nn.Linear
        and group.readers == (self.gate_proj, self.up_proj)
        and all(type(reader) is nn.Linear for reader in group.readers)
        and group.fusable()
        and torch.is_grad_enabled()
        and group.wants_grad(x)
    ):
        # Gate and up as one product, its two halves read in place.
        return silu_mul_linear(group.project(x, recipe), down.weight, down.bias)
    gate = self.gate_proj(x)
    up = self.up_proj(x)
    result: torch.Tensor
    if type(down) is not nn.Linear:
        # An adapter's layer: it must see its input, so the product is kept.
        result = down(self.act_fn(gate) * up)
    elif not torch.is_grad_enabled():
        result = down(swiglu_kernel.swiglu(gate, up))
    else:
        result = silu_mul_linear(torch.cat((gate, up), dim=-1), down.weight, down.bias)
    return result


def silu_mul_linear(
    gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(F.silu(gate) * up, weight, bias)`` for ``gate_up = [gate | up]``
    (``[..., 2 * width]``), keeping ``gate_up`` only.

    Under autocast ``gate_up`` is already in autocast's dtype; the weight is
    cast to it as autocast casts a linear layer's, and its gradient back to the
    weight's dtype, but the cast is not kept (:func:`_cast`).
    """
    result: torch.Tensor = SiluMulLinear.apply(gate_up, weight, bias)
    return result


class SiluMulLinear(torch.autograd.Function):
    """The SwiGLU product and the down projection, recomputing the product in the backward.

    Gate and up come as the two halves of one tensor (the gate and up
    projections' one product), and their gradient goes back as one
    (``swiglu_kernel``).
    """

    @staticmethod
    def forward(
        ctx: Any,
        gate_up: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        width = gate_up.shape[-1] // 2
        product = swiglu_kernel.swiglu(gate_up[..., :width], gate_up[..., width:])
        ctx.save_for_backward(gate_up, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(product, _cast(weight, gate_up.dtype), _cast(bias, gate_up.dtype))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate_up, weight = ctx.saved_tensors
        width = gate_up.shape[-1] // 2
        grad_output = grad_output.contiguous()
        want_bias = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
        product = None
        if ctx.needs_input_grad[1]:
            product = swiglu_kernel.swiglu(gate_up[..., :width], gate_up[..., width:])
        grad_weight, grad_bias = _weight_grads(grad_output, product, want_bias)
        del product
        grad_product = grad_output.matmul(_cast(weight, gate_up.dtype))
        grad_gate_up = swiglu_kernel.swiglu_backward_(gate_up, grad_product)
        return grad_gate_up, _cast(grad_weight, weight.dtype), _cast(grad_bias, ctx.bias_dtype)


def _weight_grads(
    grad_output: torch.Tensor, read: torch.Tensor | None, want_bias: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A linear layer's weight gradient (when given what it read) and bias gradient."""
    flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
    grad_weight = grad_bias = None
    if read is not None:
        grad_weight = flat_grad.t().mm(read.reshape(-1, read.shape[-1]))
    if want_bias:
        grad_bias = flat_grad.sum(0)
    return grad_weight, grad_bias

"""The trainer's Triton kernels, documented where they are called
(:mod:`cross_entropy_kernel`, :mod:`swiglu_kernel`): a module of their own,
imported only where they run (``triton_build``)."""

import triton
import triton.language as tl


# Triton reads a kernel's annotations as its argument types: only the block is annotated.
@triton.jit  # type: ignore[misc]
def weighted_cross_entropy_kernel(  # type: ignore[no-untyped-def]
    logits_ptr,
    row_stride,
    targets_ptr,
    weights_ptr,
    losses_ptr,
    vocab,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    weight = tl.load(weights_ptr + row).to(tl.float32)
    # Pass one: the row's maximum and sum of exponentials, online.
    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, vocab, BLOCK):
        columns = start + tl.arange(0, BLOCK)
        values = tl.load(row_logits + columns, mask=columns < vocab, other=float("-inf"))
        values = values.to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(values, 0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(values - new_max), 0
        )
        running_max = new_max
    log_sum_exp = running_max + tl.log(running_sum)
    target_logit = tl.load(row_logits + target).to(tl.float32)
    tl.store(losses_ptr + row, weight * (log_sum_exp - target_logit))
    # Pass two: the gradient, over the logits.
    for start in range(0, vocab, BLOCK):
        columns = start + tl.arange(0, BLOCK)
        inside = columns < vocab
        values = tl.load(row_logits + columns, mask=inside, other=0.0).to(tl.float32)
        probabilities = tl.exp(values - log_sum_exp)
        gradient = tl.where(columns == target, probabilities - 1.0, probabilities) * weight
        tl.store(
            row_logits + columns,
            gradient.to(logits_ptr.dtype.element_ty),
            mask=inside,
        )


@triton.jit  # type: ignore[misc]
def swiglu_forward_kernel(  # type: ignore[no-untyped-def]
    gate_ptr,
    gate_row_stride,
    up_ptr,
    up_row_stride,
    product_ptr,
    width,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    for start in range(0, width, BLOCK):
        columns = start + tl.arange(0, BLOCK)
        inside = columns < width
        gate = tl.load(gate_ptr + row * gate_row_stride + columns, mask=inside, other=0.0)
        up = tl.load(up_ptr + row * up_row_stride + columns, mask=inside, other=0.0)
        dtype = up.dtype
        gate = gate.to(tl.float32)
        # silu rounded to the inputs' dtype, then the product rounded once: a
        # half-precision product, computed in fp32 (where it is exact).
        silu = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
        product = (silu * up.to(tl.float32)).to(dtype)
        tl.store(product_ptr + row * width + columns, product, mask=inside)


@triton.jit  # type: ignore[misc]
def swiglu_backward_kernel(  # type: ignore[no-untyped-def]
    gate_ptr,
    gate_row_stride,
    up_ptr,
    up_row_stride,
    grad_product_ptr,
    width,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    for start in range(0, width, BLOCK):
        columns = start + tl.arange(0, BLOCK)
        inside = columns < width
        gate_at = gate_ptr + row * gate_row_stride + columns
        up_at = up_ptr + row * up_row_stride + columns
        grad_product = tl.load(grad_product_ptr + row * width + columns, mask=inside, other=0.0)
        grad_product = grad_product.to(tl.float32)
        gate = tl.load(gate_at, mask=inside, other=0.0).to(tl.float32)
        up = tl.load(up_at, mask=inside, other=0.0).to(tl.float32)
        sigmoid = tl.sigmoid(gate)
        silu = gate * sigmoid
        grad_up = grad_product * silu
        grad_gate = grad_product * (silu * (1 - sigmoid) + sigmoid) * up
        # Over gate and up: the backward is their last reader.
        tl.store(gate_at, grad_gate.to(gate_ptr.dtype.element_ty), mask=inside)
        tl.store(up_at, grad_up.to(up_ptr.dtype.element_ty), mask=inside)

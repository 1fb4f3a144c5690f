"""The trainer's Triton kernels on CPU tensors, under Triton's interpreter.

Not collected by itself: ``test_trainer_triton_kernels`` runs it in a
process of its own with ``TRITON_INTERPRET=1``, which Triton reads when it is
first imported.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from ownchat_trainer.engine import cross_entropy_kernel, swiglu_kernel
from ownchat_trainer.engine.linear_cross_entropy import _weighted_cross_entropy

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs under TRITON_INTERPRET=1 only", allow_module_level=True)


def chunk(rows: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "logits": (torch.randn(rows, vocab, generator=generator) * 4).to(torch.bfloat16),
        "targets": torch.randint(0, vocab, (rows,), generator=generator),
        "weights": torch.rand(rows, generator=generator) * 2 + 0.1,
    }


def torch_path(values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's weighted loss and the logits' gradient, by the torch path."""
    losses = []
    gradients = []
    for row in range(values["logits"].shape[0]):
        loss = torch.zeros((), dtype=torch.float32)
        gradient = _weighted_cross_entropy(
            values["logits"][row : row + 1],
            values["targets"][row : row + 1],
            values["weights"][row : row + 1],
            loss,
            gradient=True,
        )
        assert gradient is not None
        losses.append(loss)
        gradients.append(gradient)
    return torch.stack(losses), torch.cat(gradients)


@pytest.mark.parametrize("block", [None, 64])  # a row in one block, or an online max over 16
def test_the_kernel_matches_the_torch_path(
    monkeypatch: pytest.MonkeyPatch, block: int | None
) -> None:
    if block is not None:
        monkeypatch.setattr(cross_entropy_kernel, "_BLOCK", block)
    values = chunk(rows=6, vocab=1000)
    values["logits"][2, values["targets"][2]] = 40.0  # p(target) ~ 1: a gradient ~ 0
    expected_losses, expected_gradient = torch_path(values)
    logits = values["logits"].clone()

    losses = cross_entropy_kernel.weighted_cross_entropy_(
        logits, values["targets"], values["weights"]
    )

    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses, expected_losses, atol=1e-5, rtol=1e-5)
    # Both round the same fp32 gradient to bf16 once.
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, expected_gradient, atol=1e-6, rtol=2**-7)
    # A softmax's gradient sums to zero over the vocabulary.
    assert float(logits.float().sum(1).div(values["weights"]).abs().max()) < 1e-2


def test_no_rows_is_no_losses() -> None:
    losses = cross_entropy_kernel.weighted_cross_entropy_(
        torch.empty(0, 10, dtype=torch.bfloat16), torch.empty(0, dtype=torch.int64), torch.empty(0)
    )
    assert losses.shape == (0,)


def test_the_kernels_build() -> None:
    for build in (cross_entropy_kernel.BUILD, swiglu_kernel.FORWARD, swiglu_kernel.BACKWARD):
        assert build.builds_on(torch.device("cpu")), build.name


def test_the_output_layer_through_the_kernel_gets_the_torch_paths_gradients(
    monkeypatch: pytest.MonkeyPatch,
    output_layer_values: dict[str, Any],
    output_layer_loss: Any,
) -> None:
    values, loss_and_grads = output_layer_values, output_layer_loss
    expected_loss, expected_grads = loss_and_grads(values)
    launches = []
    launch = cross_entropy_kernel.weighted_cross_entropy_

    def counted(*args: Any) -> Any:
        launches.append(args[0].shape[0])
        return launch(*args)

    monkeypatch.setattr(cross_entropy_kernel, "available", lambda device, dtype: True)
    monkeypatch.setattr(cross_entropy_kernel, "weighted_cross_entropy_", counted)
    loss, grads = loss_and_grads(values)

    assert launches == [8, 8, 8, 8, 5]
    torch.testing.assert_close(loss, expected_loss, atol=1e-4, rtol=1e-5)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, expected_grads[name], atol=2e-2, rtol=2e-2, msg=name)


def halves(rows: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[gate | up]`` in bf16, as the gate and up projections' one product, and a
    gradient for the product."""
    generator = torch.Generator().manual_seed(seed)
    gate_up = (torch.randn(rows, 2 * width, generator=generator) * 3).to(torch.bfloat16)
    grad_product = torch.randn(rows, width, generator=generator).to(torch.bfloat16)
    return gate_up, grad_product


@pytest.mark.parametrize("block", [None, 16])  # a row in one block, or in several
def test_swiglu_over_the_halves_of_one_product_matches_ligers_arithmetic(
    monkeypatch: pytest.MonkeyPatch, block: int | None
) -> None:
    if block is not None:
        monkeypatch.setattr(swiglu_kernel, "_BLOCK", block)
    gate_up, grad_product = halves(rows=5, width=100)
    gate, up = gate_up[:, :100], gate_up[:, 100:]
    assert not gate.is_contiguous()
    # silu in fp32 rounded to bf16, then the product in bf16; the gradients in fp32.
    silu = torch.nn.functional.silu(gate.float())
    expected = silu.to(torch.bfloat16) * up
    sigmoid = torch.sigmoid(gate.float())
    expected_grad_gate = grad_product * (silu * (1 - sigmoid) + sigmoid) * up
    expected_grad_up = grad_product * silu

    product = swiglu_kernel._forward(swiglu_kernel.FORWARD.kernel(), gate, up)
    swiglu_kernel._backward(swiglu_kernel.BACKWARD.kernel(), gate, up, grad_product)

    assert product.is_contiguous() and product.dtype == torch.bfloat16
    # The interpreter truncates to bf16 where a GPU rounds: a step apart at each of
    # the product's two roundings, one at the gradients'.
    torch.testing.assert_close(product, expected, rtol=2**-6, atol=1e-6)
    # Written over gate and up, in bf16.
    torch.testing.assert_close(gate_up[:, :100].float(), expected_grad_gate, rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(gate_up[:, 100:].float(), expected_grad_up, rtol=2**-7, atol=1e-6)


def test_swiglu_backward_refuses_halves_it_cannot_write_over() -> None:
    gate_up, grad_product = halves(rows=4, width=8)
    columns = gate_up.T.contiguous().T  # rows of stride 1, columns not
    with pytest.raises(ValueError, match="written over"):
        swiglu_kernel._backward(
            swiglu_kernel.BACKWARD.kernel(), columns[:, :8], columns[:, 8:], grad_product
        )

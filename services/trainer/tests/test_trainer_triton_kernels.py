"""The trainer's Triton kernels (the cross-entropy's, SwiGLU's): the same numbers as
the torch path, checked here under Triton's interpreter and, on a GPU, compiled;
where a kernel cannot be built, the torch path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ownchat_trainer.engine import cross_entropy_kernel, swiglu_kernel
from ownchat_trainer.engine.linear_cross_entropy import _weighted_cross_entropy
from ownchat_trainer.engine.triton_build import KernelBuild

# conftest's output_layer_loss fixture.
OutputLayerLoss = Callable[[dict[str, Any]], tuple[torch.Tensor, dict[str, torch.Tensor]]]

INTERPRETED = Path(__file__).with_name("interpreted_triton_kernels.py")


def test_the_kernels_under_tritons_interpreter() -> None:
    pytest.importorskip("triton")
    # Triton chooses its interpreter when first imported: a process of its own.
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INTERPRETED)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-2000:]
    assert " passed" in finished.stdout and "skipped" not in finished.stdout


def test_only_half_precision_on_a_gpu() -> None:
    assert not cross_entropy_kernel.available(torch.device("cpu"), torch.bfloat16)
    assert not cross_entropy_kernel.available(torch.device("cuda"), torch.float32)
    assert not swiglu_kernel.FORWARD.runs_on(torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="contiguous"):
        cross_entropy_kernel.weighted_cross_entropy_(
            torch.zeros(4, 6, dtype=torch.bfloat16).T,
            torch.zeros(6, dtype=torch.int64),
            torch.ones(6),
        )


class Unbuildable:
    """A kernel whose every launch fails, as one Triton cannot compile."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.launches += 1
            raise RuntimeError("no compiler for this GPU")

        return launch


def test_a_kernel_that_cannot_be_built_leaves_the_loss_to_torch(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    output_layer_values: dict[str, Any],
    output_layer_loss: OutputLayerLoss,
) -> None:
    values, loss_and_grads = output_layer_values, output_layer_loss
    expected_loss, expected_grads = loss_and_grads(values)
    unbuildable = Unbuildable()
    build = KernelBuild(cross_entropy_kernel.BUILD.name, cross_entropy_kernel._trial)
    build._kernel = unbuildable
    monkeypatch.setattr(cross_entropy_kernel, "BUILD", build)
    # As on a GPU: the kernel is tried once, on a row of this device.
    monkeypatch.setattr(
        cross_entropy_kernel, "available", lambda device, _: build.builds_on(device)
    )

    with caplog.at_level(logging.WARNING, logger="ownchat.trainer.worker"):
        loss, grads = loss_and_grads(values)

    assert unbuildable.launches == 1 and build.built is False
    assert caplog.text.count("could not be built") == 1
    torch.testing.assert_close(loss, expected_loss, atol=0, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=0, rtol=0, msg=name)


def test_a_launch_that_fails_after_the_kernel_was_built_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build = KernelBuild(cross_entropy_kernel.BUILD.name, cross_entropy_kernel._trial)
    build._kernel, build.built = Unbuildable(), True
    monkeypatch.setattr(cross_entropy_kernel, "BUILD", build)
    with pytest.raises(RuntimeError, match="no compiler"):
        cross_entropy_kernel.weighted_cross_entropy_(
            torch.zeros(2, 5, dtype=torch.bfloat16),
            torch.zeros(2, dtype=torch.int64),
            torch.ones(2),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("vocab", [49_152, 128_256])
def test_on_a_gpu_the_compiled_kernel_matches_the_torch_path(vocab: int) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, vocab, generator=generator) * 4).to(torch.bfloat16).cuda()
    targets = torch.randint(0, vocab, (64,), generator=generator).cuda()
    weights = (torch.rand(64, generator=generator) + 0.5).cuda()
    loss = torch.zeros((), dtype=torch.float32, device="cuda")
    expected_gradient = _weighted_cross_entropy(logits, targets, weights, loss, gradient=True)
    written = logits.clone()
    assert cross_entropy_kernel.available(written.device, written.dtype)
    losses = cross_entropy_kernel.weighted_cross_entropy_(written, targets, weights)
    torch.testing.assert_close(losses.sum(), loss, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(written, expected_gradient, atol=1e-6, rtol=2**-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_compiled_swiglu_kernels_match_autograd() -> None:
    generator = torch.Generator().manual_seed(0)
    gate_up = torch.randn(2, 300, 2 * 1536, generator=generator).to(torch.bfloat16).cuda()
    grad_product = torch.randn(2, 300, 1536, generator=generator).to(torch.bfloat16).cuda()
    assert swiglu_kernel.FORWARD.runs_on(gate_up.device, gate_up.dtype)
    assert swiglu_kernel.BACKWARD.runs_on(gate_up.device, gate_up.dtype)
    leaf = gate_up.float().requires_grad_(True)
    expected = torch.nn.functional.silu(leaf[..., :1536]) * leaf[..., 1536:]
    (expected_grad,) = torch.autograd.grad(expected, leaf, grad_product.float())

    product = swiglu_kernel.swiglu(gate_up[..., :1536], gate_up[..., 1536:])
    grad = swiglu_kernel.swiglu_backward_(gate_up, grad_product)

    assert grad.data_ptr() == gate_up.data_ptr()  # written over gate and up
    torch.testing.assert_close(product.float(), expected, rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(grad.float(), expected_grad, rtol=2e-2, atol=1e-2)

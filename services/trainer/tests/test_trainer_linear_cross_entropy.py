"""The fused output layer and cross-entropy: the same loss and gradients as the two
run apart over full logits, a chunk at a time, and on a GPU a step that never
makes the host wait."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ownchat_trainer.engine.linear_cross_entropy import chunk_tokens_for, linear_cross_entropy_sum

POSITIONS, HIDDEN, VOCAB = 13, 6, 17


def inputs(seed: int = 0, bias: bool = True) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden": torch.randn(POSITIONS, HIDDEN, generator=generator, requires_grad=True),
        "weight": torch.randn(VOCAB, HIDDEN, generator=generator, requires_grad=True),
        "bias": torch.randn(VOCAB, generator=generator, requires_grad=True) if bias else None,
        "targets": torch.randint(0, VOCAB, (POSITIONS,), generator=generator),
        # Per-token weights, different from token to token.
        "token_weights": torch.rand(POSITIONS, generator=generator) * 2 + 0.1,
    }


def reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return (F.cross_entropy(logits, targets, reduction="none") * token_weights).sum()


def grads(values: dict[str, Any]) -> dict[str, torch.Tensor]:
    found = {}
    for name in ("hidden", "weight", "bias"):
        tensor = values[name]
        if tensor is not None and tensor.grad is not None:
            found[name] = tensor.grad.clone()
            tensor.grad = None
    return found


@pytest.mark.parametrize("chunk_tokens", [1, 4, POSITIONS, 100])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_gradients_equal_the_full_logits_loss(chunk_tokens: int, bias: bool) -> None:
    values = inputs(bias=bias)
    expected = reference(**values)
    # A loss that is not the sum itself: the backward scales by its gradient.
    (expected / 7.5).backward()
    expected_grads = grads(values)

    actual = linear_cross_entropy_sum(**values, chunk_tokens=chunk_tokens)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-6)
    (actual / 7.5).backward()
    actual_grads = grads(values)
    names = {"hidden", "weight", "bias"} if bias else {"hidden", "weight"}
    assert actual_grads.keys() == expected_grads.keys() == names
    for name, grad in actual_grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_frozen_output_layer_gets_no_gradient() -> None:
    values = inputs()
    values["weight"].requires_grad_(False)
    values["bias"].requires_grad_(False)
    expected = reference(**values)
    expected.backward()
    expected_grads = grads(values)

    linear_cross_entropy_sum(**values, chunk_tokens=5).backward()
    actual_grads = grads(values)
    assert actual_grads.keys() == {"hidden"}
    torch.testing.assert_close(actual_grads["hidden"], expected_grads["hidden"])


def test_no_position_is_a_zero_loss_that_still_backpropagates() -> None:
    values = inputs()
    for name in ("hidden", "targets", "token_weights"):
        values[name] = values[name][:0].detach().requires_grad_(name == "hidden")
    loss = linear_cross_entropy_sum(**values)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert values["hidden"].grad.shape == (0, HIDDEN)
    assert float(values["weight"].grad.abs().max()) == 0.0


def test_without_grad_only_the_loss_is_made() -> None:
    values = inputs()
    with torch.no_grad():
        loss = linear_cross_entropy_sum(**values, chunk_tokens=3)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, reference(**values).detach())


def test_under_autocast_the_layer_runs_in_its_dtype() -> None:
    values = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(**values)
        actual = linear_cross_entropy_sum(**values, chunk_tokens=4)
    # The same bf16 logits, so the same loss up to the order of the fp32 sums.
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-5)
    expected.backward()
    expected_grads = grads(values)
    actual.backward()
    actual_grads = grads(values)
    for name, grad in actual_grads.items():
        assert grad.dtype == torch.float32
        # Both round the logits' gradient to bf16 before projecting it back.
        torch.testing.assert_close(grad, expected_grads[name], atol=2e-2, rtol=2e-2, msg=name)


def test_chunk_tokens_are_bounded_by_the_vocabulary_in_whole_tiles() -> None:
    assert chunk_tokens_for(49_152) == 640
    assert chunk_tokens_for(128_256) == 256
    # The Triton kernel writes the gradient over the logits: 2 bytes a logit, not 8.
    assert chunk_tokens_for(49_152, bytes_per_logit=2) == 2688
    assert chunk_tokens_for(128_256, bytes_per_logit=2) == 1024
    assert chunk_tokens_for(3_000_000) == 11  # under one tile: as many as fit
    assert chunk_tokens_for(10**12) == 1
    with pytest.raises(ValueError, match="chunk_tokens"):
        linear_cross_entropy_sum(**inputs(), chunk_tokens=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_packed_step_never_waits_for_the_gpu(
    model_root: Path, conversations: list[list[dict[str, str]]]
) -> None:
    """Forward, loss, backward, clipping and the fused AdamW update of a packed step,
    as the worker builds them, with any host-device synchronisation an error."""
    from transformers import AutoTokenizer

    from ownchat_trainer.batches import encode_samples
    from ownchat_trainer.engine.distributed import DistributedContext, global_loss
    from ownchat_trainer.engine.loss import forward_hidden, loss_terms_at, output_layer
    from ownchat_trainer.engine.packing import pack_samples
    from ownchat_trainer.engine.run import _attention, _autocast, _load

    device = torch.device("cuda")
    directory = model_root / "tiny-chat"
    lines = [{"messages": c} for c in conversations]
    samples, _ = encode_samples(AutoTokenizer.from_pretrained(directory), lines, 128)
    model = _load(directory, _attention(device, packed=True), device).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    autocast = _autocast(device)
    context = DistributedContext(device=device)
    for step in range(3):  # the first step warms up kernels and allocators
        packed = pack_samples(samples, 128, 0, 8, end_to_end=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if step else "default")
        try:
            batch = packed.to(device)
            with autocast():
                hidden = forward_hidden(model, batch)
                loss_sum, weight = loss_terms_at(hidden, output_layer(model), batch.loss_positions)
            loss = global_loss(loss_sum, weight, context)
            loss.backward.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss.value)

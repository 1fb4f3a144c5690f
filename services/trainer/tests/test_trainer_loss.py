"""The chunked next-token loss: same values and gradients as the full-logits loss,
without ever running the output layer over more than a chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat_trainer.batches import EncodedSample, collate, encode_samples, weighted_loss_terms
from ownchat_trainer.engine.loss import (
    causal_lm_loss_terms,
    forward_hidden,
    loss_terms_at,
    output_layer,
)
from ownchat_trainer.engine.packing import pack_samples

PAD = 0
# Per-sample weights, one of them 0: that sample must add nothing.
WEIGHTS = [1.0, 0.5, 2.0, 0.0, 1.5]


@pytest.fixture
def model_dir(model_root: Path) -> Path:
    return model_root / "tiny-chat"


@pytest.fixture
def samples(model_dir: Path, conversations: list[list[dict[str, str]]]) -> list[EncodedSample]:
    chats = conversations + [conversations[0] + conversations[2]]
    lines = [{"messages": c, "weight": w} for c, w in zip(chats, WEIGHTS, strict=True)]
    encoded, dropped = encode_samples(AutoTokenizer.from_pretrained(model_dir), lines, 256)
    assert dropped == 0
    return encoded


def load(model_dir: Path) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def gradients(model: Any) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def reference_terms(model: Any, step: list[EncodedSample]) -> tuple[torch.Tensor, torch.Tensor]:
    """``batches.weighted_loss_terms`` over full logits of a padded batch."""
    batch = collate(step, PAD)
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).logits
    return weighted_loss_terms(logits, batch.labels, batch.weights)


def assert_same_step(
    model: Any,
    expected: tuple[torch.Tensor, torch.Tensor],
    expected_grads: dict[str, torch.Tensor],
    actual: tuple[torch.Tensor, torch.Tensor],
) -> None:
    (expected_sum, expected_weight), (loss_sum, weight) = expected, actual
    torch.testing.assert_close(weight, expected_weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss_sum, expected_sum, atol=1e-5, rtol=1e-6)
    (loss_sum / weight).backward()
    grads = gradients(model)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_chunked_loss_equals_full_logits_loss_on_padded_batch(
    model_dir: Path, samples: list[EncodedSample]
) -> None:
    model = load(model_dir)
    expected = reference_terms(model, samples)
    (expected[0] / expected[1]).backward()
    expected_grads = gradients(model)
    assert expected[1].item() > 0

    batch = collate(samples, PAD)
    actual = causal_lm_loss_terms(
        forward_hidden(model, batch),
        output_layer(model),
        batch.labels,
        batch.weights,
        chunk_tokens=7,
    )
    assert_same_step(model, expected, expected_grads, actual)


@pytest.mark.parametrize("every_token", [False, True])
def test_chunked_loss_on_packed_batch_equals_padded_loss(
    model_dir: Path, samples: list[EncodedSample], every_token: bool
) -> None:
    if every_token:
        # Loss on every token, the first too: packed after another sample, that
        # first token must not become the other one's target.
        samples = [EncodedSample(s.input_ids, s.input_ids, s.weight, s.record) for s in samples]
    model = load(model_dir)
    expected = reference_terms(model, samples)
    (expected[0] / expected[1]).backward()
    expected_grads = gradients(model)

    batch = pack_samples(samples, max_length=128, pad_token_id=PAD)
    assert batch.input_ids.shape[0] < len(samples)
    assert batch.loss_weight == pytest.approx(expected[1].item())
    actual = causal_lm_loss_terms(
        forward_hidden(model, batch), output_layer(model), batch.labels, batch.token_weights
    )
    assert_same_step(model, expected, expected_grads, actual)


def test_zero_weight_sample_adds_nothing(model_dir: Path, samples: list[EncodedSample]) -> None:
    model = load(model_dir)
    weighed = [s for s in samples if s.weight > 0]
    without = reference_terms(model, weighed)

    batch = pack_samples(samples, max_length=256, pad_token_id=PAD)
    loss_sum, weight = causal_lm_loss_terms(
        forward_hidden(model, batch), output_layer(model), batch.labels, batch.token_weights
    )
    torch.testing.assert_close(loss_sum, without[0], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(weight, without[1])


def test_step_with_no_loss_token_is_zero_and_still_backpropagates(
    model_dir: Path, samples: list[EncodedSample]
) -> None:
    model = load(model_dir)
    weightless = [EncodedSample(s.input_ids, s.labels, 0.0, s.record) for s in samples[:2]]
    batch = pack_samples(weightless, max_length=256, pad_token_id=PAD)
    loss_sum, weight = causal_lm_loss_terms(
        forward_hidden(model, batch), output_layer(model), batch.labels, batch.token_weights
    )
    assert loss_sum.item() == 0.0 and weight.item() == 0.0
    (loss_sum / weight.clamp_min(1e-8)).backward()
    grads = gradients(model)
    assert "lm_head.weight" in grads
    assert all(float(g.abs().max()) == 0.0 for g in grads.values())


class WrappedHead(torch.nn.Module):
    """An output layer that is not a plain ``nn.Linear``, as an adapter makes it."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(hidden)
        return out


def test_wrapped_output_layer_runs_a_chunk_at_a_time_and_recomputes_it(
    model_dir: Path, samples: list[EncodedSample]
) -> None:
    model = load(model_dir)
    expected = reference_terms(model, samples)
    (expected[0] / expected[1]).backward()
    expected_grads = gradients(model)

    head = WrappedHead(output_layer(model))
    calls: list[tuple[int, ...]] = []
    head.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape)))
    batch = collate(samples, PAD)
    hidden = forward_hidden(model, batch)
    calls.clear()
    actual = causal_lm_loss_terms(hidden, head, batch.labels, batch.weights, chunk_tokens=8)
    loss_tokens = int(((batch.labels[:, 1:] != -100) & (batch.weights[:, None] > 0)).sum())
    forward_calls = list(calls)
    assert all(len(shape) == 2 and shape[0] <= 8 for shape in forward_calls)
    assert sum(shape[0] for shape in forward_calls) == loss_tokens
    calls.clear()
    assert_same_step(model, expected, expected_grads, actual)
    # The backward recomputed the same chunks, one at a time.
    assert sorted(calls) == sorted(forward_calls)


class ShapeLog(TorchDispatchMode):
    """The shapes of every tensor an operation makes."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.shapes.append(tuple(value.shape))
        return out


def test_plain_output_layer_never_makes_more_than_a_chunk_of_logits(
    model_dir: Path, samples: list[EncodedSample]
) -> None:
    model = load(model_dir)
    head = output_layer(model)
    calls: list[tuple[int, ...]] = []
    head.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape)))
    batch = pack_samples(samples, max_length=256, pad_token_id=PAD)
    hidden = forward_hidden(model, batch)
    # The model's own head ran on one position a row (logits_to_keep=1).
    assert calls == [(batch.input_ids.shape[0], 1, hidden.shape[-1])]
    calls.clear()

    vocab = model.config.vocab_size
    log = ShapeLog()
    with log:
        loss_sum, weight = loss_terms_at(hidden, head, batch.loss_positions, chunk_tokens=8)
        (loss_sum / weight).backward()
    # The fused pass uses the layer's weight, never the module on all positions,
    weight_t = (hidden.shape[-1], vocab)
    logit_shapes = [s for s in log.shapes if s and s[-1] == vocab and s != weight_t]
    assert calls == [] and logit_shapes
    # and no tensor over the vocabulary has more than a chunk of rows.
    assert all(len(shape) == 2 and shape[0] <= 8 for shape in logit_shapes)
    assert max(shape[0] for shape in logit_shapes) == 8


def test_forward_hidden_gives_the_models_last_hidden_states(
    model_dir: Path, samples: list[EncodedSample]
) -> None:
    model = load(model_dir)
    batch = pack_samples(samples, max_length=256, pad_token_id=PAD)
    with torch.no_grad():
        logits = model(**batch.model_inputs(model.config._attn_implementation)).logits
        hidden = forward_hidden(model, batch)
    torch.testing.assert_close(output_layer(model)(hidden), logits, atol=1e-5, rtol=0)


def test_forward_hidden_through_peft(model_dir: Path, samples: list[EncodedSample]) -> None:
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(load(model_dir), lora)
    # LoRA's B starts at zero; move it so the adapter changes the output.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    batch = pack_samples(samples, max_length=256, pad_token_id=PAD)
    with torch.no_grad():
        logits = model(**batch.model_inputs(model.config._attn_implementation)).logits
        with model.disable_adapter():
            base_logits = model(**batch.model_inputs("sdpa")).logits
    assert (logits - base_logits).abs().max() > 1e-3

    hidden = forward_hidden(model, batch)
    head = output_layer(model)
    torch.testing.assert_close(head(hidden).detach(), logits, atol=1e-5, rtol=0)
    loss_sum, weight = causal_lm_loss_terms(hidden, head, batch.labels, batch.token_weights)
    (loss_sum / weight).backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)


def test_chunk_tokens_must_be_positive(model_dir: Path, samples: list[EncodedSample]) -> None:
    model = load(model_dir)
    batch = pack_samples(samples[:1], max_length=256, pad_token_id=PAD)
    hidden = torch.zeros((1, batch.input_ids.shape[1], model.config.hidden_size))
    with pytest.raises(ValueError, match="chunk_tokens"):
        causal_lm_loss_terms(
            hidden, output_layer(model), batch.labels, batch.token_weights, chunk_tokens=0
        )


def test_a_step_prepared_ahead_is_the_same_step(
    model_dir: Path, samples: list[EncodedSample]
) -> None:
    """The loop packs the next step while the GPU runs the current one; a step
    started from that batch is the step packed on the spot, and a batch prepared
    for other indices is never used."""
    from ownchat_trainer.engine.distributed import DistributedContext
    from ownchat_trainer.engine.run_sft import SftObjective

    model = load(model_dir)
    objective = SftObjective(
        model,
        samples,
        [],
        DistributedContext(),
        pad_token_id=PAD,
        max_length=256,
        batch_size=3,
        packing=True,
    )
    packs: list[int] = []
    pack = objective._pack
    objective._pack = lambda share: packs.append(len(share)) or pack(share)  # type: ignore[method-assign]

    def step(indices: list[int]) -> tuple[float, dict[str, torch.Tensor]]:
        result = objective.train_step(indices)
        result.backward.backward()
        return float(result.loss), gradients(model)

    expected_loss, expected_grads = step([0, 2, 4])
    assert packs == [3]
    objective.prepare([0, 2, 4])
    assert packs == [3, 3]
    loss, grads = step([0, 2, 4])
    assert packs == [3, 3]  # started from the prepared batch
    assert loss == expected_loss
    assert all(torch.equal(grads[name], grad) for name, grad in expected_grads.items())

    objective.prepare([1, 3])
    loss, _ = step([0, 2, 4])
    assert packs == [3, 3, 2, 3]  # the batch for other indices was not used
    assert loss == expected_loss

"""LoRA adapters: what trains, what stays frozen, and the save/merge round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ownchat_trainer.batches import collate, encode_samples, weighted_loss_terms
from ownchat_trainer.engine.lora import (
    LoraSettings,
    add_lora,
    hold_frozen_linear_weights_in,
    merge_adapter,
    save_adapter,
    trainable_parameters,
)

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the price of the Zephyr X2?"},
        {"role": "assistant", "content": "The Zephyr X2 router costs 129 euros."},
    ],
    [
        {"role": "user", "content": "How long do refunds take?"},
        {"role": "assistant", "content": "Our refund window is 30 days from delivery."},
    ],
]
LINEAR_LAYERS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture
def base_dir(model_root: Path) -> Path:
    return model_root / "tiny-chat"


def load(base_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)


def batch_of(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    samples, _ = encode_samples(
        tokenizer, [{"messages": c, "weight": 1.0} for c in CONVERSATIONS], 64
    )
    return collate(samples, tokenizer.pad_token_id)


def logits_of(model: Any, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def train_steps(model: Any, batch: Any, steps: int, learning_rate: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=learning_rate)
    losses = []
    model.train()
    for _ in range(steps):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss_sum, weight = weighted_loss_terms(logits, batch.labels, batch.weights)
        loss = loss_sum / weight
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def test_only_the_adapter_of_every_decoder_linear_layer_trains(base_dir: Path) -> None:
    torch.manual_seed(0)
    model = add_lora(load(base_dir), LoraSettings(rank=4, alpha=8))

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {id(p) for p in trainable_parameters(model)} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    adapted = {name for name, _ in model.named_modules() if name.endswith(".lora_A")}
    layers = {name.split(".")[-2] for name in adapted}
    assert layers == LINEAR_LAYERS
    # Two decoder layers, seven linear layers each; never the output head.
    assert len(adapted) == 2 * len(LINEAR_LAYERS)
    assert not any("lm_head" in name for name in adapted)


def test_named_target_modules_and_seeded_init(base_dir: Path) -> None:
    settings = LoraSettings(rank=2, alpha=4, target_modules=("q_proj", "v_proj"))
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        model = add_lora(load(base_dir), settings)
        states.append(
            {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        )
    assert {name.split(".")[-4] for name in states[0]} == {"q_proj", "v_proj"}
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])


def test_a_fresh_adapter_computes_what_the_base_does(base_dir: Path) -> None:
    batch = batch_of(base_dir)
    expected = logits_of(load(base_dir).eval(), batch)
    torch.manual_seed(0)
    model = add_lora(load(base_dir), LoraSettings(rank=4, alpha=8)).eval()
    assert torch.equal(logits_of(model, batch), expected)


def test_training_moves_the_outputs_but_not_the_base_weights(base_dir: Path) -> None:
    batch = batch_of(base_dir)
    torch.manual_seed(0)
    model = add_lora(load(base_dir), LoraSettings(rank=4, alpha=8))
    base_before = {
        name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad
    }
    logits_before = logits_of(model.eval(), batch)

    losses = train_steps(model, batch, steps=5)

    assert losses[-1] < losses[0]
    for name, p in model.named_parameters():
        if name in base_before:
            assert torch.equal(p, base_before[name]), name
    assert not torch.allclose(logits_of(model, batch), logits_before, atol=1e-3)


@pytest.mark.parametrize("tied", [False, True], ids=["own-output-layer", "tied-embeddings"])
def test_frozen_weights_held_in_bf16_change_nothing_under_bf16_autocast(
    base_dir: Path, tied: bool
) -> None:
    """The base's linear weights cast once to bf16: the loss and the adapter's gradients
    are those of float32 weights cast by autocast at every forward. An output layer
    tied to the embeddings (SmolLM2's) stays float32 with them."""
    batch = batch_of(base_dir)
    results = []
    for cast in (False, True):
        torch.manual_seed(0)
        base = load(base_dir)
        if tied:
            base.lm_head.weight = base.get_input_embeddings().weight
        model = add_lora(base, LoraSettings(rank=4, alpha=8.0))
        # peft starts B at zero: move it so the adapters change the output.
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.1)
        if cast:
            layers = hold_frozen_linear_weights_in(model, torch.bfloat16)
            # Seven adapted projections a layer, and the output layer unless tied.
            assert layers == 7 * model.config.num_hidden_layers + (0 if tied else 1)
            assert all(p.dtype == torch.float32 for p in trainable_parameters(model))
            assert model.get_input_embeddings().weight.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss_sum, weight = weighted_loss_terms(logits, batch.labels, batch.weights)
        (loss_sum / weight).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((float((loss_sum / weight).detach()), grads))
    (loss, grads), (cast_loss, cast_grads) = results
    assert cast_loss == loss
    assert cast_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.equal(cast_grads[name], grad), name


def test_save_and_merge_round_trip(base_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    batch = batch_of(base_dir)
    torch.manual_seed(0)
    model = add_lora(load(base_dir), LoraSettings(rank=4, alpha=8))
    train_steps(model, batch, steps=3)
    expected = logits_of(model, batch)
    # The adapter must matter, or the comparisons below would prove nothing.
    assert not torch.allclose(expected, logits_of(load(base_dir).eval(), batch), atol=1e-2)

    adapter_dir = tmp_path / "adapter"
    save_adapter(model, adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(load(base_dir), str(adapter_dir)).eval()
    torch.testing.assert_close(logits_of(reloaded, batch), expected, atol=1e-5, rtol=0)

    merged_dir = tmp_path / "out" / "merged"
    merge_adapter(base_dir, adapter_dir, merged_dir)
    files = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    assert not any(name.startswith("adapter_") for name in files)
    assert [p.name for p in merged_dir.parent.iterdir()] == ["merged"]  # no staging left

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(merged, batch), expected, atol=1e-4, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False).startswith(
        "<|im_start|>user\n"
    )


def test_merge_keeps_the_base_checkpoint_dtype(base_dir: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors import safe_open
    from transformers import AutoConfig

    half_dir = tmp_path / "half"
    load(base_dir).to(torch.bfloat16).save_pretrained(half_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(base_dir / name, half_dir / name)
    torch.manual_seed(0)
    model = add_lora(load(half_dir), LoraSettings(rank=2, alpha=4))
    save_adapter(model, tmp_path / "adapter")

    merge_adapter(half_dir, tmp_path / "adapter", tmp_path / "merged")

    assert AutoConfig.from_pretrained(tmp_path / "merged").dtype == torch.bfloat16
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}


def test_save_refuses_a_directory_that_holds_something(base_dir: Path, tmp_path: Path) -> None:
    model = add_lora(load(base_dir), LoraSettings(rank=2, alpha=2))
    empty = tmp_path / "empty"
    empty.mkdir()
    save_adapter(model, empty)
    assert (empty / "adapter_model.safetensors").is_file()
    with pytest.raises(FileExistsError):
        save_adapter(model, empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize(
    "kwargs",
    [{"rank": 0}, {"alpha": 0.0}, {"dropout": 1.0}, {"dropout": -0.1}, {"target_modules": ()}],
)
def test_settings_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LoraSettings(**kwargs)

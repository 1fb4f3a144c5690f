"""A job's GPU memory estimate from its base model's files, read without torch."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from ownchat_trainer.placement import estimate_training_bytes
from ownchat_trainer.sizing import count_parameters, parameter_counts, training_bytes


def test_parameters_are_counted_from_the_safetensors_headers(model_root: Path) -> None:
    directory = model_root / "tiny-chat"
    model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)
    assert count_parameters(directory) == sum(p.numel() for p in model.parameters())
    layers = [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]
    assert parameter_counts(directory).largest_layer == max(layers)


def test_the_estimate_follows_the_method_and_the_batch(model_root: Path) -> None:
    directory = model_root / "tiny-chat"

    def estimate(**changes: object) -> int:
        values: dict[str, object] = {
            "adapter": False,
            "dpo": False,
            "batch_size": 4,
            "max_seq_length": 512,
        }
        values.update(changes)
        return training_bytes(directory, **values)  # type: ignore[arg-type]

    full = estimate()
    assert full == estimate_training_bytes(
        count_parameters(directory),
        "full",
        tokens_per_step=4 * 512,
        hidden_size=64,
        num_layers=2,
        vocab_size=AutoModelForCausalLM.from_pretrained(directory).config.vocab_size,
    )
    assert estimate(adapter=True) < full
    # DPO runs two sequences a pair and, in full, holds a frozen reference copy.
    assert estimate(dpo=True) > full
    assert estimate(dpo=True, adapter=True) < estimate(dpo=True)
    # Two processes share the batch's samples.
    assert estimate(processes=2) < full


def test_a_file_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError):
        count_parameters(tmp_path)

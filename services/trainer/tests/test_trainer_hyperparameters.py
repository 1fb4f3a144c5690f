"""Hyperparameter checks and defaults."""

from __future__ import annotations

import math

from ownchat_trainer.hyperparameters import Hyperparameters, check_full, resolve_full


def test_defaults_are_resolved_and_max_steps_follows_the_data() -> None:
    resolved = resolve_full(Hyperparameters(), train_samples=10)
    assert resolved.epochs == 1.0
    assert resolved.learning_rate == 5e-5
    assert resolved.batch_size == 4
    assert resolved.max_seq_length == 512
    assert resolved.warmup_ratio == 0.0
    assert resolved.max_steps == math.ceil(10 / 4)
    # Unset intervals mean "at the end only".
    assert resolved.checkpoint_interval_steps == resolved.max_steps
    assert resolved.eval_interval_steps == resolved.max_steps


def test_epochs_and_batch_size_set_the_step_count_and_max_steps_wins() -> None:
    assert resolve_full(Hyperparameters(epochs=2.5, batch_size=3), 10).max_steps == 10
    assert resolve_full(Hyperparameters(epochs=3, max_steps=5), 1000).max_steps == 5
    assert resolve_full(Hyperparameters(eval_interval_steps=50), 8).eval_interval_steps == 2


def test_every_bad_value_is_reported_at_once() -> None:
    violations = check_full(
        Hyperparameters(
            epochs=0,
            max_steps=0,
            learning_rate=-1.0,
            batch_size=0,
            max_seq_length=4,
            warmup_ratio=1.5,
            lora_rank=8,
            dpo_beta=0.1,
            eval_interval_steps=0,
            checkpoint_interval_steps=-3,
        )
    )
    fields = {v.field for v in violations}
    assert fields == {
        "hyperparameters.epochs",
        "hyperparameters.max_steps",
        "hyperparameters.learning_rate",
        "hyperparameters.batch_size",
        "hyperparameters.max_seq_length",
        "hyperparameters.warmup_ratio",
        "hyperparameters.lora_rank",
        "hyperparameters.dpo_beta",
        "hyperparameters.eval_interval_steps",
        "hyperparameters.checkpoint_interval_steps",
    }
    assert check_full(Hyperparameters(learning_rate=float("nan")))
    assert check_full(Hyperparameters(max_steps=5, batch_size=2, max_seq_length=256)) == []

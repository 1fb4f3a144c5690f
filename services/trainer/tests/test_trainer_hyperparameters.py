"""Hyperparameter checks and defaults, per method."""

from __future__ import annotations

import math

from ownchat_trainer.hyperparameters import (
    Hyperparameters,
    ResolvedHyperparameters,
    TrainingMethod,
    check,
    check_full,
    resolve,
    resolve_full,
)


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


def test_each_method_has_its_own_defaults() -> None:
    lora = resolve(Hyperparameters(), TrainingMethod.SFT_LORA, 8)
    assert (lora.lora_rank, lora.lora_alpha, lora.learning_rate) == (16, 32.0, 2e-4)
    assert lora.dpo_beta == 0.0
    full = resolve(Hyperparameters(), TrainingMethod.SFT_FULL, 8)
    assert (full.lora_rank, full.lora_alpha, full.learning_rate) == (0, 0.0, 5e-5)
    dpo = resolve(Hyperparameters(), TrainingMethod.DPO, 8)
    # DPO trains an adapter unless asked not to: its reference is the base for free.
    assert (dpo.lora_rank, dpo.lora_alpha, dpo.dpo_beta, dpo.learning_rate) == (
        16,
        32.0,
        0.1,
        5e-5,
    )
    full_dpo = resolve(Hyperparameters(lora_rank=0), TrainingMethod.DPO, 8)
    assert (full_dpo.lora_rank, full_dpo.lora_alpha, full_dpo.learning_rate) == (0, 0.0, 5e-6)
    # Alpha follows a given rank; a given alpha or rate wins.
    assert resolve(Hyperparameters(lora_rank=4), TrainingMethod.SFT_LORA, 8).lora_alpha == 8.0
    given = resolve(
        Hyperparameters(lora_rank=4, lora_alpha=4.0, learning_rate=1e-3),
        TrainingMethod.SFT_LORA,
        8,
    )
    assert (given.lora_alpha, given.learning_rate) == (4.0, 1e-3)
    # The default length never exceeds the model's context.
    short = resolve(Hyperparameters(), TrainingMethod.SFT_FULL, 8, context_length=128)
    long = resolve(Hyperparameters(), TrainingMethod.SFT_FULL, 8, context_length=4096)
    assert (short.max_seq_length, long.max_seq_length) == (128, 512)


def test_method_fields_are_range_checked_and_refused_elsewhere() -> None:
    def fields(h: Hyperparameters, method: TrainingMethod) -> set[str]:
        return {v.field for v in check(h, method)}

    assert fields(Hyperparameters(lora_rank=0, lora_alpha=0.0), TrainingMethod.SFT_LORA) == {
        "hyperparameters.lora_rank",
        "hyperparameters.lora_alpha",
    }
    assert fields(Hyperparameters(lora_rank=2048, lora_alpha=1e6), TrainingMethod.SFT_LORA) == {
        "hyperparameters.lora_rank",
        "hyperparameters.lora_alpha",
    }
    assert fields(Hyperparameters(dpo_beta=0.1), TrainingMethod.SFT_LORA) == {
        "hyperparameters.dpo_beta"
    }
    for beta in (0.0, 11.0, -1.0):
        assert fields(Hyperparameters(dpo_beta=beta), TrainingMethod.DPO) == {
            "hyperparameters.dpo_beta"
        }
    assert fields(Hyperparameters(dpo_beta=float("nan")), TrainingMethod.DPO) == {
        "hyperparameters.dpo_beta"
    }
    # Full DPO (rank 0) has no alpha to set.
    assert fields(Hyperparameters(lora_rank=0, lora_alpha=8.0), TrainingMethod.DPO) == {
        "hyperparameters.lora_alpha"
    }
    assert check(Hyperparameters(lora_rank=0, dpo_beta=0.5), TrainingMethod.DPO) == []
    assert check(Hyperparameters(lora_rank=8, lora_alpha=16.0), TrainingMethod.SFT_LORA) == []


def test_resolved_values_read_back_and_report_only_what_applies() -> None:
    lora = resolve(Hyperparameters(), TrainingMethod.SFT_LORA, 8)
    assert ResolvedHyperparameters.from_dict(lora.to_dict()) == lora
    reported = lora.as_requested()
    assert (reported.lora_rank, reported.lora_alpha, reported.dpo_beta) == (16, 32.0, None)
    full = resolve(Hyperparameters(), TrainingMethod.SFT_FULL, 8).as_requested()
    assert (full.lora_rank, full.lora_alpha, full.dpo_beta) == (None, None, None)
    dpo = resolve(Hyperparameters(lora_rank=0), TrainingMethod.DPO, 8).as_requested()
    assert (dpo.lora_rank, dpo.dpo_beta) == (None, 0.1)
    # A job stored before the method fields existed reads back as full fine-tuning.
    old = {k: v for k, v in full.to_dict().items() if not k.startswith(("lora", "dpo"))}
    assert ResolvedHyperparameters.from_dict(old).lora_rank == 0

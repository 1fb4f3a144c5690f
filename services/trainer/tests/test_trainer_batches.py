"""Batches: assistant-only labels, padding that carries no loss, weighted loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import collate, encode_samples, weighted_loss_terms
from ownchat_trainer.worker import batch_order, learning_rate_factor


@pytest.fixture(scope="module")
def tokenizer(model_root: Path) -> object:
    return AutoTokenizer.from_pretrained(model_root / "tiny-chat")


def test_only_assistant_tokens_carry_labels_and_padding_none(
    tokenizer: object, conversations: list[list[dict[str, str]]]
) -> None:
    samples = [{"messages": c, "weight": 1.0, "record": i} for i, c in enumerate(conversations)]
    encoded, dropped = encode_samples(tokenizer, samples, max_length=512)  # type: ignore[arg-type]
    assert dropped == 0
    batch = collate(encoded, pad_token_id=0)
    decode = tokenizer.decode  # type: ignore[attr-defined]
    for row, sample in enumerate(encoded):
        labelled = [
            t
            for t, label in zip(sample.input_ids, sample.labels, strict=True)
            if label != IGNORE_INDEX
        ]
        text = decode(labelled)
        # Every assistant turn is learnt, nothing of the user's or system's.
        for message in conversations[row]:
            if message["role"] == "assistant":
                assert message["content"] in text
            else:
                assert message["content"] not in text
        padding = batch.attention_mask[row] == 0
        assert int(padding.sum()) == batch.input_ids.size(1) - len(sample.input_ids)
        assert bool((batch.labels[row][padding] == IGNORE_INDEX).all())
    assert batch.real_tokens == sum(len(s.input_ids) for s in encoded)


def test_samples_truncated_before_any_answer_are_dropped(
    tokenizer: object, conversations: list[list[dict[str, str]]]
) -> None:
    samples = [{"messages": conversations[1], "weight": 1.0, "record": 1}]
    encoded, dropped = encode_samples(tokenizer, samples, max_length=4)  # type: ignore[arg-type]
    assert encoded == [] and dropped == 1


def test_weights_scale_each_sample_and_zero_weight_is_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 7, 8, 9]])
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11),
        labels[:, 1:].reshape(-1),
        reduction="none",
        ignore_index=-100,
    ).view(2, 4)
    first, second = per_token[0].sum(), per_token[1].sum()
    total, weight = weighted_loss_terms(logits, labels, torch.tensor([2.0, 0.0]))
    assert float(weight) == 4.0  # two tokens of the first sample, twice each
    assert float(total / weight) == pytest.approx(float(first / 2))
    total, weight = weighted_loss_terms(logits, labels, torch.tensor([1.0, 1.0]))
    assert float(total / weight) == pytest.approx(float((first + second) / 5))


def test_schedule_warms_up_then_decays_without_zero_steps() -> None:
    factors = [learning_rate_factor(s, total=10, warmup=2) for s in range(10)]
    assert factors[0] == pytest.approx(0.5) and factors[1] == 1.0 and factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))
    assert factors[-1] > 0
    assert learning_rate_factor(0, total=5, warmup=0) == 1.0


def test_batch_order_is_seeded_and_covers_each_epoch() -> None:
    first = batch_order(10, 4, seed=3)
    again = batch_order(10, 4, seed=3)
    epoch = [next(first) for _ in range(3)]
    assert epoch == [next(again) for _ in range(3)]
    assert sorted(i for b in epoch for i in b) == list(range(10))
    assert [len(b) for b in epoch] == [4, 4, 2]
    other = batch_order(10, 4, seed=4)
    assert [next(other) for _ in range(3)] != epoch
    second_epoch = [next(first) for _ in range(3)]
    assert sorted(i for b in second_epoch for i in b) == list(range(10))
    assert second_epoch != epoch

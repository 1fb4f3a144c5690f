"""DPO: preference pairs as tensors, reply log-probs, the loss, and short training runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.engine import dpo
from ownchat_trainer.engine.dpo import (
    EncodedPair,
    collate_pairs,
    dpo_loss,
    encode_preference,
    encode_preferences,
    pair_log_probs,
    precompute_reference_log_probs,
    reference_log_probs,
    sequence_log_probs,
)
from ownchat_trainer.engine.lora import LoraSettings, add_lora, trainable_parameters

PREFERENCES: list[dict[str, Any]] = [
    {
        "prompt": [{"role": "user", "content": "What is the price of the Zephyr X2?"}],
        "chosen": "The Zephyr X2 router costs 129 euros.",
        "rejected": "Please restart the device and try again.",
        "record": 1,
    },
    {
        "prompt": [
            {"role": "system", "content": "You are a helpful support assistant for Acme."},
            {"role": "user", "content": "Error code E42?"},
        ],
        "chosen": "Error code E42 means the firmware update was interrupted.",
        "rejected": "Thank you, that fixed it!",
        "record": 2,
    },
    {
        "prompt": [{"role": "user", "content": "How long do refunds take?"}],
        "chosen": "Our refund window is 30 days from delivery.",
        "rejected": "Hello, how can I help you today?",
        "record": 3,
    },
    {
        "prompt": [{"role": "user", "content": "It still fails."}],
        "chosen": "Please restart the device and try again.",
        "rejected": "The Zephyr X2 router costs 129 euros.",
        "record": 4,
    },
]
BETA = 0.1


@pytest.fixture
def base_dir(model_root: Path) -> Path:
    return model_root / "tiny-chat"


@pytest.fixture
def tokenizer(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


def load(base_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)


def labelled_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    kept = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    return str(tokenizer.decode(kept))


def naive_log_probs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The textbook computation from the full logits, to check the frugal one against."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = (
        torch.log_softmax(logits.float(), -1)
        .gather(-1, targets.clamp_min(0).unsqueeze(-1))
        .squeeze(-1)
    )
    return (picked * mask).sum(-1)


def evaluate(model: Any, pairs: list[EncodedPair], pad_id: int) -> dict[str, float]:
    """Loss and metrics over every pair, without grad."""
    batch = collate_pairs(pairs, pad_id)
    with torch.no_grad():
        chosen, rejected = pair_log_probs(model, batch)
        reference = reference_log_probs(model, batch)
    loss, metrics = dpo_loss(chosen, rejected, *reference, beta=BETA)
    return {"loss": float(loss), **metrics}


def train(model: Any, pairs: list[EncodedPair], pad_id: int, steps: int, lr: float) -> None:
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr)
    model.train()
    for step in range(steps):
        # Two pairs a step, in a fixed rotation.
        group = [pairs[(2 * step) % len(pairs)], pairs[(2 * step + 1) % len(pairs)]]
        batch = collate_pairs(group, pad_id)
        reference = reference_log_probs(model, batch)
        chosen, rejected = pair_log_probs(model, batch)
        loss, _ = dpo_loss(chosen, rejected, *reference, beta=BETA)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


# Encoding -------------------------------------------------------------------


def test_labels_are_on_the_reply_only(tokenizer: Any) -> None:
    pair = encode_preference(tokenizer, PREFERENCES[1], max_length=256)

    assert pair is not None and pair.record == 2 and not pair.has_reference
    for sample, reply in (
        (pair.chosen, PREFERENCES[1]["chosen"]),
        (pair.rejected, PREFERENCES[1]["rejected"]),
    ):
        assert len(sample.labels) == len(sample.input_ids)
        assert labelled_text(tokenizer, sample.input_ids, sample.labels) == reply + "<|im_end|>\n"
        text = tokenizer.decode(sample.input_ids)
        assert text.startswith("<|im_start|>system\nYou are a helpful support assistant")
        assert text.endswith("<|im_start|>assistant\n" + reply + "<|im_end|>\n")
    first = [label != IGNORE_INDEX for label in pair.chosen.labels].index(True)
    assert pair.chosen.input_ids[:first] == pair.rejected.input_ids[:first]


def test_long_prompts_lose_their_start_and_both_keep_the_same_prompt(tokenizer: Any) -> None:
    sample = dict(PREFERENCES[0])
    sample["prompt"] = [
        {
            "role": "user",
            "content": "Please restart the device. " * 20 + "What is the price of the Zephyr X2?",
        }
    ]
    full = encode_preference(tokenizer, sample, max_length=10_000)
    assert full is not None
    max_length = len(full.chosen.input_ids) - 30

    pair = encode_preference(tokenizer, sample, max_length)

    assert pair is not None
    assert len(pair.chosen.input_ids) == max_length  # the longer reply decides the cut
    assert pair.chosen.input_ids == full.chosen.input_ids[30:]
    assert pair.rejected.input_ids == full.rejected.input_ids[30:]
    assert labelled_text(tokenizer, pair.chosen.input_ids, pair.chosen.labels) == (
        sample["chosen"] + "<|im_end|>\n"
    )


def test_replies_longer_than_the_limit_lose_their_end(tokenizer: Any) -> None:
    pair = encode_preference(tokenizer, PREFERENCES[0], max_length=4)

    assert pair is not None
    for sample in (pair.chosen, pair.rejected):
        assert len(sample.input_ids) == 4
        # One prompt token (the newline after "assistant") predicts three reply tokens.
        assert sample.labels[0] == IGNORE_INDEX
        assert all(label != IGNORE_INDEX for label in sample.labels[1:])
    kept = tokenizer.decode(pair.chosen.input_ids[1:])
    assert kept and PREFERENCES[0]["chosen"].startswith(kept)


def test_pairs_with_no_room_for_a_reply_are_dropped(tokenizer: Any) -> None:
    assert encode_preference(tokenizer, PREFERENCES[0], max_length=1) is None
    pairs, dropped = encode_preferences(tokenizer, PREFERENCES, max_length=1)
    assert (pairs, dropped) == ([], 4)
    pairs, dropped = encode_preferences(tokenizer, PREFERENCES, max_length=128)
    assert [p.record for p in pairs] == [1, 2, 3, 4] and dropped == 0


def test_collate_puts_chosen_rows_first_and_carries_references(tokenizer: Any) -> None:
    pairs, _ = encode_preferences(tokenizer, PREFERENCES[:3], max_length=128)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)

    assert batch.pairs == 3 and batch.input_ids.shape[0] == 6
    for row, pair in enumerate(pairs):
        for offset, sample in ((0, pair.chosen), (3, pair.rejected)):
            size = len(sample.input_ids)
            assert batch.input_ids[row + offset, :size].tolist() == sample.input_ids
            assert batch.labels[row + offset, :size].tolist() == sample.labels
            assert batch.attention_mask[row + offset].sum() == size
            assert (batch.labels[row + offset, size:] == IGNORE_INDEX).all()
    assert batch.reference_chosen is None and batch.reference_rejected is None

    referenced = [
        EncodedPair(p.chosen, p.rejected, p.record, -1.0 * i, -2.0 * i) for i, p in enumerate(pairs)
    ]
    batch = collate_pairs(referenced, tokenizer.pad_token_id)
    assert batch.reference_chosen is not None and batch.reference_rejected is not None
    assert batch.reference_chosen.tolist() == [0.0, -1.0, -2.0]
    assert batch.reference_rejected.dtype == torch.float32
    # A batch that mixes pairs with and without references carries none.
    assert collate_pairs([referenced[1], pairs[0]], 0).reference_chosen is None


# Log-probs ------------------------------------------------------------------


def test_sequence_log_probs_match_the_full_logits(
    base_dir: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so rows of several chunks and the chunk boundaries are exercised.
    monkeypatch.setattr(dpo, "LOG_PROB_CHUNK_ROWS", 7)
    model = load(base_dir)
    pairs, _ = encode_preferences(tokenizer, PREFERENCES, max_length=128)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    args = (batch.input_ids, batch.attention_mask, batch.labels)

    frugal = sequence_log_probs(model, *args)
    (frugal * torch.arange(1.0, 9.0)).sum().backward()
    frugal_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    naive = naive_log_probs(model, *args)
    (naive * torch.arange(1.0, 9.0)).sum().backward()

    assert frugal.shape == (8,) and frugal.dtype == torch.float32
    assert (frugal < 0).all()
    torch.testing.assert_close(frugal, naive, atol=1e-5, rtol=1e-5)
    for got, want in zip(frugal_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_rows_without_labels_score_zero(base_dir: Path, tokenizer: Any) -> None:
    pairs, _ = encode_preferences(tokenizer, PREFERENCES[:1], max_length=128)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    no_labels = torch.full_like(batch.labels, IGNORE_INDEX)
    result = sequence_log_probs(load(base_dir), batch.input_ids, batch.attention_mask, no_labels)
    assert result.tolist() == [0.0, 0.0]


# The loss -------------------------------------------------------------------


def test_dpo_loss_against_a_hand_computed_value() -> None:
    loss, metrics = dpo_loss(
        policy_chosen=torch.tensor([-1.0, -3.0]),
        policy_rejected=torch.tensor([-2.0, -1.0]),
        reference_chosen=torch.tensor([-1.5, -2.0]),
        reference_rejected=torch.tensor([-1.5, -2.0]),
        beta=0.5,
    )
    # Pair 1: chosen ratio +0.5, rejected ratio -0.5: -log sigmoid(0.5 * 1) = 0.474077.
    # Pair 2: chosen ratio -1.0, rejected ratio +1.0: -log sigmoid(0.5 * -2) = 1.313262.
    assert float(loss) == pytest.approx((0.474077 + 1.313262) / 2, abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx((0.25 - 0.5) / 2)
    assert metrics["rewards/rejected"] == pytest.approx((-0.25 + 0.5) / 2)
    assert metrics["rewards/margins"] == pytest.approx((0.5 - 1.0) / 2)
    assert metrics["rewards/accuracies"] == pytest.approx(0.5)
    assert metrics["logps/chosen"] == pytest.approx(-2.0)
    assert metrics["logps/rejected"] == pytest.approx(-1.5)


def test_dpo_loss_gradient_pushes_chosen_up_and_rejected_down() -> None:
    chosen = torch.tensor([-4.0], requires_grad=True)
    rejected = torch.tensor([-4.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.1)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(2))
    # d/dx -log sigmoid(beta * x) at x = 0 is -beta / 2.
    assert chosen.grad is not None and float(chosen.grad) == pytest.approx(-0.05)
    assert rejected.grad is not None and float(rejected.grad) == pytest.approx(0.05)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan")])
def test_dpo_loss_refuses_a_bad_beta(beta: float) -> None:
    zero = torch.zeros(1)
    with pytest.raises(ValueError):
        dpo_loss(zero, zero, zero, zero, beta)


# Reference and training -----------------------------------------------------


def test_lora_reference_is_the_base_model(base_dir: Path, tokenizer: Any) -> None:
    pairs, _ = encode_preferences(tokenizer, PREFERENCES, max_length=128)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    base = load(base_dir).eval()
    with torch.no_grad():
        expected = pair_log_probs(base, batch)
    torch.manual_seed(0)
    model = add_lora(load(base_dir), LoraSettings(rank=4, alpha=8))
    train(model, pairs, tokenizer.pad_token_id, steps=3, lr=1e-2)

    chosen, rejected = reference_log_probs(model, batch)

    assert not chosen.requires_grad
    torch.testing.assert_close(chosen, expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, expected[1], atol=1e-5, rtol=0)
    # The adapter is back on afterwards: the policy has moved away from the base.
    with torch.no_grad():
        policy = pair_log_probs(model, batch)
    assert not torch.allclose(policy[0], expected[0], atol=1e-2)


def test_full_fine_tuning_refuses_a_reference_that_was_not_precomputed(
    base_dir: Path, tokenizer: Any
) -> None:
    pairs, _ = encode_preferences(tokenizer, PREFERENCES[:2], max_length=128)
    with pytest.raises(ValueError, match="precomputed"):
        reference_log_probs(load(base_dir), collate_pairs(pairs, tokenizer.pad_token_id))


def test_dpo_with_lora_raises_the_margin(base_dir: Path, tokenizer: Any) -> None:
    pairs, _ = encode_preferences(tokenizer, PREFERENCES, max_length=128)
    torch.manual_seed(0)
    model = add_lora(load(base_dir), LoraSettings(rank=8, alpha=16))
    model.eval()

    before = evaluate(model, pairs, tokenizer.pad_token_id)
    train(model, pairs, tokenizer.pad_token_id, steps=12, lr=1e-2)
    after = evaluate(model, pairs, tokenizer.pad_token_id)

    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert before["rewards/accuracies"] == 0.0
    assert after["rewards/margins"] > 0.5
    assert after["rewards/accuracies"] == 1.0
    assert after["loss"] < before["loss"] - 0.1


def test_dpo_full_fine_tuning_with_precomputed_reference(base_dir: Path, tokenizer: Any) -> None:
    encoded, _ = encode_preferences(tokenizer, PREFERENCES, max_length=128)
    model = load(base_dir)
    model.train()
    pairs = precompute_reference_log_probs(model, encoded, tokenizer.pad_token_id, batch_size=3)

    assert model.training  # mode restored
    assert [p.record for p in pairs] == [1, 2, 3, 4] and all(p.has_reference for p in pairs)
    with torch.no_grad():
        expected = pair_log_probs(model.eval(), collate_pairs(encoded, tokenizer.pad_token_id))
    assert [p.reference_chosen for p in pairs] == pytest.approx(expected[0].tolist(), abs=1e-5)
    assert [p.reference_rejected for p in pairs] == pytest.approx(expected[1].tolist(), abs=1e-5)

    before = evaluate(model, pairs, tokenizer.pad_token_id)
    train(model, pairs, tokenizer.pad_token_id, steps=12, lr=1e-3)
    after = evaluate(model, pairs, tokenizer.pad_token_id)

    assert before["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert after["rewards/margins"] > 0.5
    assert after["rewards/accuracies"] == 1.0
    assert after["loss"] < before["loss"] - 0.1

"""Packing: layout, edge cases, no attention across samples, and packed training
matching padded training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import EncodedSample, collate, encode_samples, weighted_loss_terms
from ownchat_trainer.engine import varlen_attention
from ownchat_trainer.engine.loss import causal_lm_loss_terms, forward_hidden, output_layer
from ownchat_trainer.engine.packing import (
    PackedBatch,
    first_fit_decreasing,
    pack_samples,
    takes_offsets,
)
from ownchat_trainer.worker import batch_order

PAD = 0


def synthetic(length: int, weight: float = 1.0, record: int = 0) -> EncodedSample:
    """A sample of ``length`` tokens whose second half carries loss."""
    ids = [(record * 31 + i) % 500 + 3 for i in range(length)]
    labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]
    return EncodedSample(ids, labels, weight, record)


def encoded(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[EncodedSample]:
    """Single conversations and two-conversation chats, with mixed weights (one 0)."""
    chats = conversations + [
        conversations[i] + conversations[(i + 1) % len(conversations)]
        for i in range(len(conversations))
    ]
    weights = [1.0, 0.5, 2.0, 0.0, 1.5, 1.0, 0.25, 3.0]
    lines = [{"messages": c, "weight": w} for c, w in zip(chats, weights, strict=True)]
    samples, dropped = encode_samples(tokenizer, lines, 256)
    assert dropped == 0
    return samples


def load(model_dir: Path, implementation: str = "sdpa") -> Any:
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=implementation
    )


def sample_logits(model: Any, batch: PackedBatch, index: int) -> torch.Tensor:
    implementation = model.config._attn_implementation
    logits = model(**batch.model_inputs(implementation)).logits
    place = batch.placements[index]
    return logits[place.row, place.offset : place.offset + place.length]


def alone_logits(model: Any, sample: EncodedSample) -> torch.Tensor:
    ids = torch.tensor([sample.input_ids])
    return model(input_ids=ids, use_cache=False).logits[0]


# Layout


def test_first_fit_decreasing_fills_few_rows() -> None:
    # 6 and 4 fill one row, 5, 3 and 2 the other: two rows, none wasted.
    assert first_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]


def test_layout_restarts_positions_and_masks_first_tokens() -> None:
    samples = [
        synthetic(n, weight=w, record=i) for i, (n, w) in enumerate([(6, 1), (5, 2), (4, 0.5)])
    ]
    batch = pack_samples(samples, max_length=10, pad_token_id=PAD)

    # Row 0: the 6 and the 4 tokens; row 1: the 5, then a pad run.
    assert batch.input_ids.shape == (2, 10)
    assert [(p.row, p.offset) for p in batch.placements] == [(0, 0), (1, 0), (0, 6)]
    assert batch.real_tokens == 15
    for sample, place in zip(samples, batch.placements, strict=True):
        span = slice(place.offset, place.offset + place.length)
        assert batch.input_ids[place.row, span].tolist() == sample.input_ids
        assert batch.position_ids[place.row, span].tolist() == list(range(len(sample.input_ids)))
        labels = batch.labels[place.row, span].tolist()
        assert labels[0] == IGNORE_INDEX
        assert labels[1:] == sample.labels[1:]
        weights = batch.token_weights[place.row, span].tolist()
        assert weights == [sample.weight if label != IGNORE_INDEX else 0.0 for label in labels]
    # The pad run has positions of its own, no label and no weight.
    assert batch.position_ids[1, 5:].tolist() == [0, 1, 2, 3, 4]
    assert batch.input_ids[1, 5:].tolist() == [PAD] * 5
    assert (batch.labels[1, 5:] == IGNORE_INDEX).all()
    assert (batch.token_weights[1, 5:] == 0).all()
    assert batch.cu_seq_lens.tolist() == [0, 6, 10, 15, 20]
    assert batch.token_weights.dtype == torch.float32
    assert batch.loss_weight == pytest.approx(1 * 3 + 2 * 3 + 0.5 * 2)


def test_layout_is_what_transformers_detects() -> None:
    samples = [synthetic(n, record=i) for i, n in enumerate([7, 1, 1, 5, 3, 8, 2])]
    batch = pack_samples(samples, max_length=9, pad_token_id=PAD)

    # The same-sequence split sdpa, eager and flex attention apply.
    sequence = find_packed_sequence_indices(batch.position_ids)
    assert sequence is not None
    for place in batch.placements:
        ids = sequence[place.row, place.offset : place.offset + place.length]
        assert (ids == ids[0]).all()
        if place.offset > 0:
            assert sequence[place.row, place.offset - 1] != ids[0]
    # The varlen split flash attention gets from a single flattened row.
    (cu_q, _), (longest, _) = prepare_fa_kwargs_from_position_ids(batch.position_ids.reshape(1, -1))
    assert batch.cu_seq_lens.tolist() == cu_q.tolist()
    assert batch.cu_seq_lens.dtype == torch.int32
    assert batch.max_seq_len == int(longest)


def test_model_inputs_give_flash_attention_its_sequence_bounds() -> None:
    batch = pack_samples([synthetic(4), synthetic(3)], max_length=8, pad_token_id=PAD)
    sdpa = batch.model_inputs("sdpa")
    assert sdpa["attention_mask"] is None and sdpa["use_cache"] is False
    assert "cu_seq_lens_q" not in sdpa
    flash = batch.model_inputs("flash_attention_2")
    assert flash["cu_seq_lens_q"] is batch.cu_seq_lens
    assert flash["max_length_q"] == flash["max_length_k"] == 4


def test_end_to_end_lays_every_sample_in_one_row_in_order() -> None:
    shapes = [(6, 1.0), (5, 2.0), (4, 1.0)]
    samples = [synthetic(n, weight=w, record=i) for i, (n, w) in enumerate(shapes)]
    batch = pack_samples(samples, max_length=10, pad_token_id=PAD, pad_to_multiple_of=8)

    one_row = pack_samples(samples, 10, PAD, pad_to_multiple_of=8, end_to_end=True)
    # 15 tokens in one row of 16 (longer than max_length), against 2 rows of 10.
    assert one_row.input_ids.shape == (1, 16)
    assert batch.input_ids.numel() == 20
    assert [(p.row, p.offset) for p in one_row.placements] == [(0, 0), (0, 6), (0, 11)]
    assert one_row.position_ids[0].tolist() == [*range(6), *range(5), *range(4), 0]
    assert one_row.cu_seq_lens.tolist() == [0, 6, 11, 15, 16]
    assert one_row.max_seq_len == 6
    assert one_row.real_tokens == batch.real_tokens == 15
    # The same loss tokens and weights as the rows, so the same loss.
    assert one_row.loss_weight == batch.loss_weight
    assert sorted(one_row.labels[one_row.labels != IGNORE_INDEX].tolist()) == sorted(
        batch.labels[batch.labels != IGNORE_INDEX].tolist()
    )


def test_only_offset_taking_attention_gets_them() -> None:
    assert takes_offsets("flash_attention_2") and takes_offsets("flash_attention_3")
    assert takes_offsets(varlen_attention.ATTENTION_NAME)
    assert not takes_offsets("sdpa") and not takes_offsets("eager")
    assert not takes_offsets("flex_attention") and not takes_offsets(None)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 16), min_size=1, max_size=12),
    extra=st.integers(0, 8),
    multiple=st.sampled_from([1, 8]),
)
def test_packing_keeps_every_token_once(lengths: list[int], extra: int, multiple: int) -> None:
    max_length = max(lengths) + extra
    samples = [synthetic(n, record=i) for i, n in enumerate(lengths)]
    batch = pack_samples(samples, max_length, PAD, pad_to_multiple_of=multiple)

    rows, width = batch.input_ids.shape
    assert width <= max_length
    used = torch.zeros((rows, width), dtype=torch.bool)
    for sample, place in zip(samples, batch.placements, strict=True):
        span = slice(place.offset, place.offset + place.length)
        assert not used[place.row, span].any()
        used[place.row, span] = True
        assert batch.input_ids[place.row, span].tolist() == sample.input_ids
    assert batch.real_tokens == sum(lengths) == int(used.sum())
    # First-fit: no two rows could have been one.
    fills = sorted(int(row.sum()) for row in used)
    assert len(fills) == 1 or fills[0] + fills[1] > max_length
    assert (batch.labels[~used] == IGNORE_INDEX).all()
    assert (batch.token_weights[~used] == 0).all()


# Edge cases


def test_sample_of_exactly_max_length_fills_a_row() -> None:
    batch = pack_samples([synthetic(8), synthetic(3, record=1)], max_length=8, pad_token_id=PAD)
    assert batch.input_ids.shape == (2, 8)
    assert batch.placements[0].row != batch.placements[1].row
    assert batch.position_ids[batch.placements[0].row].tolist() == list(range(8))
    assert batch.cu_seq_lens.tolist() == [0, 8, 11, 16]


def test_longer_sample_is_refused() -> None:
    with pytest.raises(ValueError, match=r"sample 1 \(record 7\) has 9 tokens.*max_length=8"):
        pack_samples([synthetic(4), synthetic(9, record=7)], max_length=8, pad_token_id=PAD)


def test_empty_step_and_empty_sample_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        pack_samples([], max_length=8, pad_token_id=PAD)
    with pytest.raises(ValueError, match="no tokens"):
        pack_samples([EncodedSample([], [], 1.0, 3)], max_length=8, pad_token_id=PAD)


def test_packing_is_deterministic() -> None:
    samples = [synthetic(n, record=i) for i, n in enumerate([5, 3, 5, 2, 7, 3])]
    first = pack_samples(samples, max_length=10, pad_token_id=PAD, pad_to_multiple_of=4)
    second = pack_samples(list(samples), max_length=10, pad_token_id=PAD, pad_to_multiple_of=4)
    assert first.placements == second.placements
    for name in ("input_ids", "position_ids", "labels", "token_weights", "cu_seq_lens"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    # Rounded up to the multiple, but never past max_length.
    assert first.input_ids.shape[1] == 10


# Attention stays inside each sample


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_sample_equals_sample_alone(
    model_root: Path, conversations: list[list[dict[str, str]]], implementation: str
) -> None:
    model_dir = model_root / "tiny-chat"
    model = load(model_dir, implementation).eval()
    samples = encoded(AutoTokenizer.from_pretrained(model_dir), conversations)[:3]
    total = sum(len(s.input_ids) for s in samples)
    # Rounded up to 64 tokens, the row ends with a pad run.
    batch = pack_samples(samples, max_length=total + 64, pad_token_id=PAD, pad_to_multiple_of=64)
    assert batch.input_ids.shape[0] == 1 and batch.input_ids.shape[1] > total

    with torch.no_grad():
        for index, sample in enumerate(samples):
            alone = alone_logits(model, sample)
            torch.testing.assert_close(sample_logits(model, batch, index), alone, atol=1e-5, rtol=0)


def test_wrong_packings_let_samples_attend_each_other(
    model_root: Path, conversations: list[list[dict[str, str]]]
) -> None:
    model_dir = model_root / "tiny-chat"
    model = load(model_dir).eval()
    samples = encoded(AutoTokenizer.from_pretrained(model_dir), conversations)[:3]
    batch = pack_samples(samples, max_length=512, pad_token_id=PAD)
    assert batch.input_ids.shape[0] == 1
    last = max(range(len(samples)), key=lambda index: batch.placements[index].offset)
    place = batch.placements[last]
    span = slice(place.offset, place.offset + place.length)

    with torch.no_grad():
        alone = alone_logits(model, samples[last])
        right = model(**batch.model_inputs("sdpa")).logits[place.row, span]
        # One position run over the whole row: plain causal attention.
        plain = model(input_ids=batch.input_ids, use_cache=False).logits[place.row, span]
        # Restarting positions, but a 2-D mask given: transformers skips detection.
        masked = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=torch.ones_like(batch.input_ids),
            use_cache=False,
        ).logits[place.row, span]
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    assert (plain - alone).abs().max() > 1e-2
    assert (masked - alone).abs().max() > 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize(
    "implementation",
    ["sdpa", "flex_attention", "flash_attention_2", varlen_attention.ATTENTION_NAME],
)
def test_packed_sample_equals_sample_alone_on_gpu(
    model_root: Path, conversations: list[list[dict[str, str]]], implementation: str
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if implementation == "flash_attention_2":
        pytest.importorskip("flash_attn")
    if implementation == varlen_attention.ATTENTION_NAME and not varlen_attention.register():
        pytest.skip("this torch has no varlen_attn")
    model_dir = model_root / "tiny-chat"
    half = implementation in ("flash_attention_2", varlen_attention.ATTENTION_NAME)
    dtype = torch.bfloat16 if half else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=implementation
    ).to("cuda")
    samples = encoded(AutoTokenizer.from_pretrained(model_dir), conversations)[:5]
    # Several rows, so flash attention needs the sequence bounds, not position ids.
    batch = pack_samples(samples, max_length=128, pad_token_id=PAD).to(torch.device("cuda"))
    assert batch.input_ids.shape[0] > 1
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-4
    logits = model(**batch.model_inputs(implementation)).logits.float()
    for sample, place in zip(samples, batch.placements, strict=True):
        # The sample alone, in a row of its own (varlen attention needs the bounds).
        alone_inputs = pack_samples([sample], len(sample.input_ids), PAD).to(torch.device("cuda"))
        alone = model(**alone_inputs.model_inputs(implementation)).logits[0].float()
        packed = logits[place.row, place.offset : place.offset + place.length]
        torch.testing.assert_close(packed, alone, atol=tolerance, rtol=tolerance)
    if takes_offsets(implementation):
        # How the worker packs for these: one row of every sample, end to end.
        one_row = pack_samples(samples, 128, PAD, 8, end_to_end=True).to(torch.device("cuda"))
        row_logits = model(**one_row.model_inputs(implementation)).logits[0].float()
        for place, one_row_place in zip(batch.placements, one_row.placements, strict=True):
            span = slice(one_row_place.offset, one_row_place.offset + one_row_place.length)
            packed = logits[place.row, place.offset : place.offset + place.length]
            torch.testing.assert_close(row_logits[span], packed, atol=tolerance, rtol=tolerance)
    loss_sum, weight = causal_lm_loss_terms(
        forward_hidden(model, batch), output_layer(model), batch.labels, batch.token_weights
    )
    (loss_sum / weight).backward()


# Training: packed + chunked loss against padded + full logits


def train_losses(model_dir: Path, samples: list[EncodedSample], packed: bool) -> list[float]:
    """Losses of 8 AdamW steps over the same samples per step, then the final loss."""
    torch.manual_seed(0)
    model = load(model_dir)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    order = batch_order(len(samples), 3, seed=7)
    losses = []
    for _ in range(8):
        step = [samples[i] for i in next(order)]
        if packed:
            batch = pack_samples(step, max_length=160, pad_token_id=PAD)
            assert batch.input_ids.shape[0] < len(step)
            loss_sum, weight = causal_lm_loss_terms(
                forward_hidden(model, batch),
                output_layer(model),
                batch.labels,
                batch.token_weights,
                chunk_tokens=16,
            )
        else:
            padded = collate(step, PAD)
            logits = model(
                input_ids=padded.input_ids, attention_mask=padded.attention_mask, use_cache=False
            ).logits
            loss_sum, weight = weighted_loss_terms(logits, padded.labels, padded.weights)
        loss = loss_sum / weight.clamp_min(1e-8)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        everything = collate(samples, PAD)
        logits = model(
            input_ids=everything.input_ids, attention_mask=everything.attention_mask
        ).logits
        final_sum, final_weight = weighted_loss_terms(logits, everything.labels, everything.weights)
    return losses + [float(final_sum / final_weight)]


@pytest.mark.slow
def test_packed_training_matches_padded_training(
    model_root: Path, conversations: list[list[dict[str, str]]]
) -> None:
    model_dir = model_root / "tiny-chat"
    samples = encoded(AutoTokenizer.from_pretrained(model_dir), conversations)
    padded = train_losses(model_dir, samples, packed=False)
    packed = train_losses(model_dir, samples, packed=True)

    assert padded[-1] < 0.9 * padded[0], "the reference run did not learn"
    for reference, value in zip(padded, packed, strict=True):
        assert math.isclose(value, reference, rel_tol=0.01), (padded, packed)

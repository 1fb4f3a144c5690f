"""The varlen attention implementation: the reshaping around PyTorch's kernel, checked on
a CPU with a reference kernel of the same signature, against sdpa's block-diagonal mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import EncodedSample, encode_samples
from ownchat_trainer.engine import varlen_attention
from ownchat_trainer.engine.loss import causal_lm_loss_terms, forward_hidden, output_layer
from ownchat_trainer.engine.packing import PackedBatch, pack_samples
from ownchat_trainer.engine.run import _attention


def torch_2_11_varlen(takes_grouped_heads: bool) -> varlen_attention.VarlenKernel:
    """torch 2.11's ``varlen_attn`` contract (no ``enable_gqa``), checked, then the CPU's
    kernel (sdpa over each sequence), which the tests compare with sdpa's block mask.
    With ``takes_grouped_heads`` it attends fewer key/value heads as they come, as
    flash attention's kernel does; without, it refuses them. Records the heads given."""

    def kernel(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seq_q: torch.Tensor,
        cu_seq_k: torch.Tensor | None,
        max_q: int,
        max_k: int,
        *,
        scale: float | None = None,
        window_size: tuple[int, int] = (-1, -1),
    ) -> torch.Tensor:
        GIVEN_HEADS.append((query.shape[1], key.shape[1]))
        assert window_size == (-1, 0), "the worker asks for causal attention"
        grouped = key.shape[1] != query.shape[1]
        assert takes_grouped_heads or not grouped, "without enable_gqa, whole key/value heads"
        bounds = cu_seq_q.tolist()
        assert bounds[0] == 0 and bounds[-1] == query.shape[0]
        assert max_q == max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        return varlen_attention.sequence_loop_kernel(
            query, key, value, cu_seq_q, cu_seq_q, max_q, max_k, scale=scale,
            window_size=window_size, enable_gqa=grouped,
        )  # fmt: skip

    return kernel


GIVEN_HEADS: list[tuple[int, int]] = []
reference_varlen = torch_2_11_varlen(takes_grouped_heads=False)
grouped_heads_varlen = torch_2_11_varlen(takes_grouped_heads=True)


def samples(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[EncodedSample]:
    lines = [{"messages": c, "weight": 1.0 + i % 3} for i, c in enumerate(conversations)]
    encoded, _ = encode_samples(tokenizer, lines, 256)
    return encoded


def sdpa_and_varlen(model_dir: Path) -> tuple[Any, Any]:
    """The same weights twice: under sdpa's block-diagonal mask, and under varlen."""

    def load(implementation: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=implementation
        )

    return load("sdpa"), load(varlen_attention.ATTENTION_NAME)


def assert_same_loss_and_gradient(
    expected: tuple[Any, PackedBatch], actual: tuple[Any, PackedBatch]
) -> None:
    """The step's loss and the first attention layer's query gradient agree."""
    losses, grads = [], []
    for model, batch in (expected, actual):
        loss_sum, weight = causal_lm_loss_terms(
            forward_hidden(model, batch), output_layer(model), batch.labels, batch.token_weights
        )
        (loss_sum / weight).backward()
        losses.append(loss_sum / weight)
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kernel", [reference_varlen, varlen_attention.sequence_loop_kernel])
def test_varlen_attention_matches_sdpa_block_mask(
    model_root: Path, conversations: list[list[dict[str, str]]], kernel: Any
) -> None:
    model_dir = model_root / "tiny-chat"
    assert varlen_attention.register(kernel)
    reference, varlen = sdpa_and_varlen(model_dir)
    # The tiny model has grouped key/value heads, the case the reshaping must get right.
    assert varlen.config.num_key_value_heads < varlen.config.num_attention_heads
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = pack_samples(samples(tokenizer, conversations), 128, 0, 8)
    assert batch.input_ids.shape[0] > 1, "several rows, each with several samples"

    assert_same_loss_and_gradient((reference, batch), (varlen, batch))


def test_grouped_heads_go_to_a_kernel_that_attends_them_as_they_are(
    model_root: Path, conversations: list[list[dict[str, str]]]
) -> None:
    """Without ``enable_gqa`` the heads are repeated only for a kernel that cannot take
    them grouped (tried once): flash attention can, and the copies cost memory."""
    model_dir = model_root / "tiny-chat"
    assert varlen_attention.register(grouped_heads_varlen)
    reference, varlen = sdpa_and_varlen(model_dir)
    heads, kv_heads = varlen.config.num_attention_heads, varlen.config.num_key_value_heads
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = pack_samples(samples(tokenizer, conversations), 128, 0, 8, end_to_end=True)
    GIVEN_HEADS.clear()

    assert_same_loss_and_gradient((reference, batch), (varlen, batch))

    assert GIVEN_HEADS and set(GIVEN_HEADS[2:]) == {(heads, kv_heads)}
    varlen_attention.register(varlen_attention.sequence_loop_kernel)


def test_the_grouped_heads_trial_accepts_only_a_kernel_that_gets_them_right() -> None:
    causal = {"window_size": (-1, 0)}
    cpu, dtype = torch.device("cpu"), torch.float32
    assert varlen_attention.takes_grouped_heads(grouped_heads_varlen, causal, cpu, dtype)
    # Refuses them: torch 2.11's contract as the reference checks it.
    assert not varlen_attention.takes_grouped_heads(reference_varlen, causal, cpu, dtype)

    def tiles_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                    **kwargs: Any) -> torch.Tensor:  # fmt: skip
        # Takes them, but pairs query head h with key head h % 2, not h // 2.
        groups = query.shape[1] // key.shape[1]
        return reference_varlen(
            query, key.repeat(1, groups, 1), value.repeat(1, groups, 1), *args, **kwargs
        )

    assert not varlen_attention.takes_grouped_heads(tiles_heads, causal, cpu, dtype)


def flash_attn_contract(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """``flash_attn.flash_attn_varlen_func``'s signature and contract (int32 offsets,
    fewer key/value heads taken as they come), computed by sdpa over each sequence."""
    assert causal and dropout_p == 0.0
    assert cu_seqlens_q.dtype == torch.int32 and torch.equal(cu_seqlens_q, cu_seqlens_k)
    assert q.shape[1] % k.shape[1] == 0
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return varlen_attention.sequence_loop_kernel(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        scale=softmax_scale, window_size=(-1, 0),
    )  # fmt: skip


def test_flash_attn_runs_behind_the_varlen_name_with_the_offsets(
    model_root: Path, conversations: list[list[dict[str, str]]], monkeypatch: Any
) -> None:
    """Where the flash_attn package is installed its varlen kernel takes the packed
    batch's offsets through our attention name (not transformers' flash_attention_2,
    whose scan of the position ids makes the host wait)."""
    import sys
    import types

    package = types.ModuleType("flash_attn")
    package.flash_attn_varlen_func = flash_attn_contract  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    try:
        # The worker's choice on a GPU (nothing here touches CUDA).
        assert _attention(torch.device("cuda"), packed=True) == varlen_attention.ATTENTION_NAME
        chosen = varlen_attention.kernel_for(torch.device("cuda"))
        assert chosen is not None and chosen.__qualname__.startswith("flash_attn_kernel.")
        kernel = varlen_attention.flash_attn_kernel()
        assert kernel is not None
        assert varlen_attention.register(kernel)
        reference, varlen = sdpa_and_varlen(model_root / "tiny-chat")
        step = samples(AutoTokenizer.from_pretrained(model_root / "tiny-chat"), conversations)
        rows = pack_samples(step, 128, 0, 8)
        one_row = pack_samples(step, 128, 0, 8, end_to_end=True)

        assert_same_loss_and_gradient((reference, rows), (varlen, one_row))
    finally:
        # Later tests load the name without registering: give it this machine's kernel back.
        varlen_attention.register(varlen_attention.sequence_loop_kernel)


def test_varlen_attention_over_one_end_to_end_row_matches_rows(
    model_root: Path, conversations: list[list[dict[str, str]]]
) -> None:
    """The worker packs varlen steps into one row, padded to 8 only: the loss and the
    gradients are those of the same samples in rows of max_length under sdpa."""
    model_dir = model_root / "tiny-chat"
    assert varlen_attention.register(varlen_attention.sequence_loop_kernel)
    reference, varlen = sdpa_and_varlen(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    step = samples(tokenizer, conversations)
    rows = pack_samples(step, 128, 0, 8)
    one_row = pack_samples(step, 128, 0, 8, end_to_end=True)
    assert rows.input_ids.shape[0] > 1 and one_row.input_ids.shape[0] == 1
    assert one_row.input_ids.shape[1] > 128
    assert one_row.input_ids.numel() < rows.input_ids.numel()

    assert_same_loss_and_gradient((reference, rows), (varlen, one_row))


def test_a_varlen_forward_builds_no_mask(
    model_root: Path, conversations: list[list[dict[str, str]]], monkeypatch: Any
) -> None:
    """transformers makes no mask for the varlen attention: with a mask function
    registered it would also scan the position ids for packed sequences at every
    forward, and its ``.all()`` there makes the host wait for the GPU."""
    import transformers.masking_utils as masking

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a mask was built for the varlen attention")

    monkeypatch.setattr(masking, "find_packed_sequence_indices", refuse)
    assert varlen_attention.register(varlen_attention.sequence_loop_kernel)
    model_dir = model_root / "tiny-chat"
    _, varlen = sdpa_and_varlen(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = pack_samples(samples(tokenizer, conversations), 128, 0, 8, end_to_end=True)
    with torch.no_grad():
        hidden = forward_hidden(varlen, batch)
    assert hidden.shape[:2] == batch.input_ids.shape


def test_varlen_attention_refuses_padded_batches(model_root: Path) -> None:
    assert varlen_attention.register(reference_varlen)
    model = AutoModelForCausalLM.from_pretrained(
        model_root / "tiny-chat",
        dtype=torch.float32,
        attn_implementation=varlen_attention.ATTENTION_NAME,
    )
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ValueError, match="packed batches only"):
        model(input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX))


def test_worker_attention_choice_on_a_cpu() -> None:
    # Packed steps attend through sdpa over each sample; padded ones (DPO) through sdpa.
    assert _attention(torch.device("cpu"), packed=True) == varlen_attention.ATTENTION_NAME
    assert _attention(torch.device("cpu"), packed=False) == "sdpa"
    assert varlen_attention.kernel_for(torch.device("cpu")) is varlen_attention.sequence_loop_kernel


def test_the_cpu_kernel_is_causal_only() -> None:
    states = torch.zeros(4, 2, 8)
    offsets = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="only causal"):
        varlen_attention.sequence_loop_kernel(states, states, states, offsets, offsets, 4, 4)

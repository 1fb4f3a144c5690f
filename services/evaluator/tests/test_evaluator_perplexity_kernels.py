"""The scoring passes' CPU kernels and trimming: faster, and the same numbers."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ownchat.chat_template import IGNORE_INDEX, tokenize_chat
from ownchat_evaluator import cpu_kernels
from ownchat_evaluator.cpu_kernels import (
    ATTENTION_NAME,
    causal_block_attention,
    onednn_linear_available,
    scoring_kernels,
)
from ownchat_evaluator.naive_perplexity import naive_nll
from ownchat_evaluator.perplexity import Window, corpus_perplexity, scored_part

SYSTEM = {"role": "system", "content": "You are the support assistant of Acme routers."}
# Long enough for rows of many query blocks, with a shared system prompt.
LONG = [
    [
        SYSTEM,
        {"role": "user", "content": f"Question {i}: " + "why does my router blink? " * (i + 3)},
        {"role": "assistant", "content": "Restart it, then update the firmware. " * (i + 2)},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "Then it should work again. " * (i + 1)},
    ]
    for i in range(5)
]


class _Attention(torch.nn.Module):
    """What the attention functions read of a model's attention layer."""

    def __init__(self, groups: int, is_causal: bool = True) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = is_causal


def _attention_module(groups: int) -> torch.nn.Module:
    return _Attention(groups)


@pytest.mark.parametrize("cached", [0, 5])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_blocks_compute_what_sdpa_computes(
    cached: int, padded: bool, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    batch, heads, groups, length, dim = 3, 4, 2, 150, 16
    keys = cached + length
    query = torch.randn(batch, heads, length, dim, dtype=dtype)
    key = torch.randn(batch, heads // groups, keys, dim, dtype=dtype)
    value = torch.randn(batch, heads // groups, keys, dim, dtype=dtype)
    causal = torch.ones(length, keys, dtype=torch.bool).tril(cached)
    mask = causal[None, None].repeat(batch, 1, 1, 1)
    if padded:
        # The second row is 40 tokens shorter: its last keys are padding.
        mask[1, :, :, -40:] = False
    given = mask if padded or cached else None
    module = _attention_module(groups)
    ours, _ = causal_block_attention(module, query, key, value, given, scaling=dim**-0.5)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    assert ours.shape == expected.shape == (batch, length, heads, dim)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours, expected, rtol=tolerance, atol=tolerance)


def test_short_rows_and_other_attention_go_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(args[0].shape))
        return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)

    monkeypatch.setattr(
        cpu_kernels, "F", types.SimpleNamespace(scaled_dot_product_attention=counting)
    )
    query, key = torch.randn(1, 2, 150, 8), torch.randn(1, 1, 150, 8)
    causal_block_attention(_attention_module(2), query, key, key, None)
    # 150 queries: blocks of 64, 64 and 22.
    assert [shape[2] for shape in calls] == [64, 64, 22]
    calls.clear()
    causal_block_attention(_attention_module(2), query[:, :, :50], key[:, :, :50], key, None)
    causal_block_attention(_Attention(2, is_causal=False), query, key, key, None)
    assert calls == []


def test_scoring_kernels_switch_on_and_back(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    layer = model.model.layers[0].self_attn.q_proj
    inputs = torch.randint(0, model.config.vocab_size, (2, 100))
    with torch.inference_mode():
        before = model(input_ids=inputs).logits
        with scoring_kernels(model):
            assert model.config._attn_implementation == ATTENTION_NAME
            assert ("forward" in vars(layer)) == onednn_linear_available()
            during = model(input_ids=inputs).logits
        after = model(input_ids=inputs).logits
    assert model.config._attn_implementation == "sdpa"
    assert "forward" not in vars(layer)
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, before)


def test_onednn_linear_is_available_on_this_cpu() -> None:
    # The project's CPUs run a PyTorch built with oneDNN; the speed depends on it.
    assert torch.backends.mkldnn.is_available()
    assert onednn_linear_available()


@pytest.mark.parametrize("block", [8, 64])
def test_perplexity_with_the_kernels_equals_the_naive_loop(
    tiny_model: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_kernels, "QUERY_BLOCK", block)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    for context, stride in ((512, 256), (48, 20)):
        result = corpus_perplexity(
            model, tokenizer, LONG, context, stride, tokens_per_batch=256, max_rows=3
        )
        nll, count = naive_nll(model, tokenizer, LONG, context, stride)
        assert result.tokens == count > 100
        assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
        assert result.precision == "float32"
    # One row per conversation, no padding: the shared system prompt runs once.
    whole = corpus_perplexity(model, tokenizer, LONG, 512, 256, max_rows=1)
    lengths = [len(tokenize_chat(tokenizer, m, sys.maxsize).input_ids) for m in LONG]
    assert whole.computed_tokens < sum(lengths)


def test_windows_end_at_their_last_scored_token() -> None:
    ignored = IGNORE_INDEX
    window = Window(0, [1, 2, 3, 4, 5, 6], [ignored, ignored, 3, 4, ignored, ignored])
    assert scored_part(window) == Window(0, [1, 2, 3, 4], [ignored, ignored, 3, 4])
    # A label at the first position has no hidden state before it: never scored.
    assert scored_part(Window(0, [1, 2, 3], [1, ignored, ignored])) is None
    assert scored_part(Window(0, [1, 2], [ignored, ignored])) is None


def test_windows_that_score_nothing_are_counted_not_computed(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    calls = 0
    decoder = model.get_decoder()
    original = decoder.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    decoder.forward = counted
    # A long user turn: the first windows hold no assistant token.
    conversation = [
        {"role": "user", "content": "blink " * 80},
        {"role": "assistant", "content": "Restart it."},
    ]
    result = corpus_perplexity(model, tokenizer, [conversation], 24, 12, max_rows=1)
    nll, count = naive_nll(model, tokenizer, [conversation], 24, 12)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert result.windows > 3
    # Only the windows with assistant tokens ran (shared prefixes may add one pass).
    assert calls < result.windows

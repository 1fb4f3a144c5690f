"""Greedy replies with a tiny random model: batching, stopping, long prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.testing import build_tiny_chat_model
from ownchat_evaluator.generation import generate_replies, prompt_ids, stop_token_ids

CONTEXTS = [
    [{"role": "user", "content": "Refunds?"}],
    [
        {"role": "system", "content": "You are a helpful support assistant for Acme."},
        {"role": "user", "content": "What is the price of the Zephyr X2 router, please?"},
    ],
    [{"role": "user", "content": "Error code E42?"}],
]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    directory = build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


def test_batched_replies_equal_one_at_a_time(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    batched = generate_replies(model, tokenizer, CONTEXTS, 6, context_length=512, batch_size=3)
    alone = generate_replies(model, tokenizer, CONTEXTS, 6, context_length=512, batch_size=1)
    assert batched == alone
    assert [r.tokens for r in batched] == [6, 6, 6]
    assert all(r.text for r in batched)


def test_replies_stop_at_the_end_of_turn(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in stop_token_ids(model, tokenizer)
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[end] = 1e4
    model.lm_head = biased
    try:
        replies = generate_replies(model, tokenizer, CONTEXTS, 6, context_length=512, batch_size=2)
    finally:
        model.lm_head = head
    assert [(r.text, r.tokens) for r in replies] == [("", 0)] * 3


def test_long_prompts_keep_their_newest_tokens(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    full = prompt_ids(tokenizer, CONTEXTS[1], room=10_000)
    kept = prompt_ids(tokenizer, CONTEXTS[1], room=12)
    assert len(full) > 12 and kept == full[-12:]
    replies = generate_replies(model, tokenizer, CONTEXTS, 4, context_length=16, batch_size=3)
    assert [r.tokens for r in replies] == [4, 4, 4]
    with pytest.raises(ValueError, match="less than the context"):
        generate_replies(model, tokenizer, CONTEXTS, 16, context_length=16, batch_size=3)


def test_progress_counts_prompts(loaded: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = loaded
    seen: list[int] = []
    generate_replies(model, tokenizer, CONTEXTS, 2, 512, batch_size=2, on_progress=seen.append)
    assert seen == [2, 3]

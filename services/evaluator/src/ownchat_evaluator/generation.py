"""Greedy replies to validation prompts with Transformers, batched with left padding.

Prompts are rendered with the model's chat template and a generation prompt,
sorted by length and generated in batches (left padding keeps every prompt's
last token at the same position); generation stops at the chat template's
end-of-turn token. A prompt longer than the context leaves room for the reply
by dropping its oldest tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ownchat.chat_template import render

# End-of-turn markers of common chat templates; one counts when the model's
# template writes it and the tokenizer has it as a single token.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Reply:
    """A generated reply and its length in tokens (without the end-of-turn token)."""

    text: str
    tokens: int


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a reply: end of sequence, and the chat template's end of turn."""
    ids: list[int] = []
    configured = model.generation_config.eos_token_id
    if configured is not None:
        ids += configured if isinstance(configured, list) else [configured]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    template = str(getattr(tokenizer, "chat_template", "") or "")
    vocabulary = tokenizer.get_vocab()
    ids += [vocabulary[t] for t in END_OF_TURN_TOKENS if t in template and t in vocabulary]
    return list(dict.fromkeys(ids))


def prompt_ids(tokenizer: Any, context: Sequence[dict[str, str]], room: int) -> list[int]:
    """The token ids of a prompt ready for the reply, its newest ``room`` tokens at most."""
    text = render(tokenizer, context, prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[-room:]


def generate_replies(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int,
    context_length: int,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Reply]:
    """Greedy replies to each context, in the contexts' order."""
    from transformers import GenerationConfig

    if max_new_tokens >= context_length:
        raise ValueError("max_new_tokens must be less than the context length")
    prompts = [prompt_ids(tokenizer, c, context_length - max_new_tokens) for c in contexts]
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stops,
        pad_token_id=pad_id,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[Reply | None] = [None] * len(prompts)
    done = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chosen)
            input_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chosen), width), dtype=torch.long)
            for row, index in enumerate(chosen):
                ids = prompts[index]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
            )
            for row, index in enumerate(chosen):
                replies[index] = _reply(tokenizer, output[row, width:].tolist(), stops)
            done += len(chosen)
            if on_progress is not None:
                on_progress(done)
    return [r for r in replies if r is not None]


def _reply(tokenizer: Any, generated: list[int], stops: list[int]) -> Reply:
    end = next((i for i, token in enumerate(generated) if token in stops), len(generated))
    text = tokenizer.decode(generated[:end], skip_special_tokens=True)
    return Reply(text.strip(), end)

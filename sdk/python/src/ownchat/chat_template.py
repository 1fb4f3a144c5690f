"""Tokenizing a conversation through a model's chat template, with a loss mask.

Training and perplexity both need to know which tokens are the assistant's:
only those carry loss. The conversation is rendered once; the character span
of each assistant turn is where the rendering of the conversation up to that
turn grows past the rendering of its prompt; tokens are mapped to spans by
their offsets, so no assumption is made about how the tokenizer splits text at
turn boundaries. Works with any fast (Rust) tokenizer that has a chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

IGNORE_INDEX = -100


class ChatTokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer used here."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TokenizedChat:
    """Token ids of a rendered conversation and their labels (-100: no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def render(tokenizer: ChatTokenizer, messages: Sequence[dict[str, str]], prompt: bool) -> str:
    """The template's text for messages; with ``prompt``, ready for a reply."""
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=prompt
    )
    return str(text)


def assistant_spans(
    tokenizer: ChatTokenizer, messages: Sequence[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = render(tokenizer, messages, prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(tokenizer, messages[:index], prompt=True)) if index else 0
        end = len(render(tokenizer, messages[: index + 1], prompt=False))
        spans.append((start, min(end, len(full))))
    return full, spans


def tokenize_chat(
    tokenizer: ChatTokenizer, messages: Sequence[dict[str, str]], max_length: int
) -> TokenizedChat:
    """Token ids and labels of a conversation, truncated to ``max_length`` tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])[:max_length]
    offsets = list(encoded["offset_mapping"])[:max_length]
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (token_start, token_end) in enumerate(offsets):
        if token_end <= token_start:
            continue
        if any(start <= token_start and token_end <= end for start, end in spans):
            labels[position] = input_ids[position]
    return TokenizedChat(input_ids, labels)

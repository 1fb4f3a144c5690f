"""Token counts of samples as a base model will see them.

Chat samples are rendered through the model's own chat template (the same
rendering training and the pre-flight check use); a preference pair counts its
longer side, prompt included; a text chunk is tokenized as plain text. The
counts feed the dataset version's stats and the "too long" filter at upload.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownchat.chat_template import tokenize_chat
from ownchat_data.chat_jsonl import ChatSample
from ownchat_data.documents import TextSample
from ownchat_data.preference_jsonl import PreferenceSample
from ownchat_data.records import Sample

UNLIMITED = 1 << 30
HISTOGRAM_BOUNDS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


def context_length(tokenizer: Any, config: dict[str, Any]) -> int:
    """The model's context: its config's positions, else the tokenizer's limit."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    limit = getattr(tokenizer, "model_max_length", UNLIMITED)
    return int(limit) if limit < UNLIMITED else 2048


@dataclass(frozen=True)
class ModelTokenizer:
    """A base model's tokenizer and its context length."""

    name: str
    tokenizer: Any
    context_length: int

    @classmethod
    def load(cls, name: str, model_dir: Path) -> ModelTokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False
        )
        config = json.loads((model_dir / "config.json").read_text())
        return cls(name, tokenizer, context_length(tokenizer, config))

    def count(self, sample: Sample) -> int:
        """The sample's tokens as the model sees it (the longer side of a pair)."""
        if isinstance(sample, ChatSample):
            return self._chat([{"role": m.role, "content": m.content} for m in sample.messages])
        if isinstance(sample, PreferenceSample):
            prompt = [{"role": m.role, "content": m.content} for m in sample.prompt]
            return max(
                self._chat([*prompt, {"role": "assistant", "content": reply}])
                for reply in (sample.chosen, sample.rejected)
            )
        if isinstance(sample, TextSample):
            return len(self.tokenizer(sample.text, add_special_tokens=True)["input_ids"])
        raise TypeError(f"cannot count tokens of {type(sample).__name__}")

    def _chat(self, messages: list[dict[str, str]]) -> int:
        return len(tokenize_chat(self.tokenizer, messages, UNLIMITED).input_ids)


@dataclass
class TokenStats:
    """Tokens over samples and how many samples fall in each length bucket."""

    tokens: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(HISTOGRAM_BOUNDS) + 1))

    def add(self, count: int, sign: int = 1) -> None:
        """Counts one sample of ``count`` tokens in (or, with sign -1, out)."""
        self.tokens += sign * count
        self.buckets[bisect.bisect_right(HISTOGRAM_BOUNDS, count)] += sign

    def histogram(self) -> tuple[tuple[int | None, int], ...]:
        """(exclusive upper bound, or None for the open last bucket; samples) pairs."""
        bounds: list[int | None] = [*HISTOGRAM_BOUNDS, None]
        return tuple(zip(bounds, self.buckets, strict=True))

    @classmethod
    def from_histogram(
        cls, tokens: int, histogram: tuple[tuple[int | None, int], ...]
    ) -> TokenStats:
        stats = cls(tokens=tokens)
        for index, (_, samples) in enumerate(histogram):
            stats.buckets[index] = samples
        return stats

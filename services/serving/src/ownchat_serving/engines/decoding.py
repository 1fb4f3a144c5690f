"""Token-by-token decoding shared by the in-process engines (Transformers, ONNX Runtime).

An engine supplies a ``Decoder``: something that, fed token ids, keeps its own
KV cache and returns the next token's logits. Everything else is here and the
same for every such engine: picking the token (greedy, or temperature and
nucleus sampling from a seeded generator), incremental detokenization, stop
strings, the token budget and the finish reason. Sharing it means two engines
with the same logits give the same reply, sampled replies included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ownchat_serving.generation import ResolvedSampling

# Prompt tokens decoded before the first new one: tokenizers that drop a
# word's leading space at the start of a text (SentencePiece) need context.
_DETOKENIZE_CONTEXT = 5
_INCOMPLETE = "\ufffd"


class DecoderSequence(Protocol):
    """One sequence being decoded; owns its KV cache."""

    def feed(self, token_ids: list[int]) -> np.ndarray:
        """Appends tokens to the sequence; returns the next token's logits, shape [vocab]."""
        ...


class Decoder(Protocol):
    """A loaded model that decodes sequences one token at a time."""

    vocab_size: int

    def new_sequence(self) -> DecoderSequence:
        """An empty sequence with an empty KV cache."""
        ...

    def close(self) -> None:
        """Frees the model."""
        ...


def pick_token(
    logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator
) -> int:
    """The next token: the most likely at temperature 0, else sampled from the nucleus."""
    if temperature == 0:
        # First of equal maxima, as torch.argmax and Transformers' greedy search.
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    candidates = np.arange(probs.shape[0])
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        ranked = probs[order]
        # The smallest set of most likely tokens whose mass reaches top_p (never empty).
        keep = (np.cumsum(ranked) - ranked) < top_p
        candidates, probs = order[keep], ranked[keep]
        probs = probs / probs.sum()
    return int(rng.choice(candidates, p=probs))


class Detokenizer:
    """Turns new token ids into new text, and ends the text at a stop string.

    Text that could still turn into a stop string (its last ``len(stop) - 1``
    characters) is held back until it cannot; a byte sequence split across
    tokens is held until complete. The stop string itself is never returned.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        stop: Sequence[str],
        lock: threading.Lock,
    ) -> None:
        self._tokenizer = tokenizer
        self._lock = lock
        self._ids = list(prompt_ids[-_DETOKENIZE_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._text = ""
        self._emitted = 0

    def _decode(self, ids: list[int]) -> str:
        # Fast tokenizers are not safe to call from several threads at once.
        with self._lock:
            return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _new_text(self, final: bool) -> str:
        if self._read_offset >= len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) <= len(prefix) or (text.endswith(_INCOMPLETE) and not final):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return text[len(prefix) :]

    def _advance(self, delta: str, final: bool) -> tuple[str, bool]:
        start = max(0, len(self._text) - self._hold)
        self._text += delta
        if delta and self._stop:
            found = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
            if found:
                self._text = self._text[: min(found)]
                return self._take(len(self._text)), True
        safe = len(self._text) if final else len(self._text) - self._hold
        return self._take(safe), False

    def _take(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        out = self._text[self._emitted : end]
        self._emitted = end
        return out

    def push(self, token_id: int) -> tuple[str, bool]:
        """Adds a token; returns the text now safe to send and whether a stop string ended it."""
        self._ids.append(token_id)
        return self._advance(self._new_text(final=False), final=False)

    def finish(self) -> tuple[str, bool]:
        """The text still held back, at the reply's end; and whether a stop string ended it."""
        return self._advance(self._new_text(final=True), final=True)


@dataclass(frozen=True)
class DecodeLimits:
    """When a reply ends besides a stop string: its token budget and end-of-sequence ids."""

    max_tokens: int
    eos_ids: frozenset[int]


# Called once per token with (new text, new tokens, finish reason or None).
Emit = Callable[[str, int, "str | None"], None]


def decode(
    sequence: DecoderSequence,
    prompt_ids: list[int],
    sampling: ResolvedSampling,
    limits: DecodeLimits,
    detokenizer: Detokenizer,
    rng: np.random.Generator,
    cancelled: Callable[[], bool],
    emit: Emit,
) -> None:
    """Generates one reply, emitting each token's text; blocks, so it runs in a worker thread.

    Checked before every forward pass: a cancelled reply stops at its next
    token and ends with "abort".
    """
    if cancelled():
        emit("", 0, "abort")
        return
    logits = sequence.feed(prompt_ids)
    generated = 0
    while True:
        token = pick_token(logits, sampling.temperature, sampling.top_p, rng)
        generated += 1
        if token in limits.eos_ids:
            text, _ = detokenizer.finish()
            emit(text, 1, "stop")
            return
        text, stopped = detokenizer.push(token)
        if stopped:
            emit(text, 1, "stop")
            return
        if generated >= limits.max_tokens:
            rest, stopped = detokenizer.finish()
            emit(text + rest, 1, "stop" if stopped else "length")
            return
        emit(text, 1, None)
        if cancelled():
            emit("", 0, "abort")
            return
        logits = sequence.feed([token])

"""Token-weighted perplexity of the assistant turns of conversations.

Only assistant tokens are scored (the tokens a chat model is asked to produce);
the perplexity is the exponential of their summed negative log-likelihood over
their count across the whole set. A conversation longer than the context is
scored in sliding windows, the recipe of Hugging Face's perplexity guide: each
window is ``context_length`` tokens and starts ``stride`` tokens after the
previous one, and scores only the tokens no earlier window scored, so every
token is scored once with ``context_length - stride`` tokens or more before it.

It computes less than a plain ``model(input_ids, labels=...)`` loop: the model
runs to its final hidden states only, and the output layer and the
cross-entropy run on the scored positions alone, ``chunk_tokens`` rows at a
time, so the full ``[tokens, vocabulary]`` float32 logits are never built;
windows that begin with the same tokens (a system prompt, the chat template's
default one) have that prefix computed once and its key/value cache reused, as
serving engines' prefix caches do; and windows of nearly the same length are
batched, sorted by length, so padding stays under ``max_padding``. Tokens
after a window's last scored token, and windows that score none, are not
computed at all. On a CPU, attention and float32 matrix products use the
kernels of ``cpu_kernels`` (causal blocks, oneDNN).

It scores in the model's own precision: float32, or bfloat16 where a run asks
for it (about twice the speed on CPUs with AVX-512 BF16 or AMX, perplexity
within about 0.1% of float32's).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ownchat.chat_template import IGNORE_INDEX, tokenize_chat
from ownchat_evaluator.cpu_kernels import scoring_kernels

# 1024 rows of float32 logits over a 150k vocabulary are about 0.6 GB.
DEFAULT_CHUNK_TOKENS = 1024
# Shorter shared prefixes are not worth their own forward pass.
MIN_SHARED_PREFIX = 8
# The share of a batch row that may be padding; padding costs a CPU as much as
# real tokens, and batching gains it less.
DEFAULT_MAX_PADDING = 0.2


@dataclass(frozen=True)
class Window:
    """A slice of one conversation's tokens, with the labels it scores."""

    sample: int
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity, with what it was computed over and each conversation's share."""

    perplexity: float
    mean_nll: float
    tokens: int
    conversations: int
    context_length: int
    stride: int
    windows: int
    sample_nll: list[float]
    sample_tokens: list[int]
    precision: str
    # Positions the model's body ran over: shared prefixes once, padding included.
    computed_tokens: int


def sliding_windows(
    sample: int, input_ids: list[int], labels: list[int], context_length: int, stride: int
) -> list[Window]:
    """The windows of one conversation: one when it fits the context."""
    if not 0 < stride < context_length:
        raise ValueError(f"stride must be within 1..{context_length - 1}, not {stride}")
    windows: list[Window] = []
    previous_end = 0
    for begin in range(0, len(input_ids), stride):
        end = min(begin + context_length, len(input_ids))
        # Tokens before previous_end were scored by an earlier window.
        fresh = previous_end - begin
        window_labels = [IGNORE_INDEX] * fresh + labels[begin + fresh : end]
        windows.append(Window(sample, input_ids[begin:end], window_labels))
        previous_end = end
        if end == len(input_ids):
            break
    return windows


def scored_part(window: Window) -> Window | None:
    """The window up to its last scored token (later tokens change no score: the
    attention is causal), or None when it scores no token."""
    last = max(
        (i for i, label in enumerate(window.labels) if label != IGNORE_INDEX and i > 0),
        default=0,
    )
    if last == 0:
        return None
    return Window(window.sample, window.input_ids[: last + 1], window.labels[: last + 1])


def _common_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def _prefix_limit(window: Window) -> int:
    """The longest prefix a window can share: its scored tokens and its last token
    must stay outside, since a prefix's hidden states are not computed again."""
    first_scored = next(
        (i for i, label in enumerate(window.labels) if label != IGNORE_INDEX),
        len(window.labels),
    )
    return min(first_scored - 1, len(window.input_ids) - 1)


def shared_prefixes(windows: Sequence[Window]) -> list[tuple[int, list[Window]]]:
    """Windows grouped by a shared prefix of at least ``MIN_SHARED_PREFIX`` tokens
    (0 for windows that share none), with the prefix's length.

    Sorted by their tokens, neighbours share the longest prefixes; a window joins
    the group before it unless the shorter prefix it brings would save fewer
    tokens overall than the group saves without it.
    """
    ordered = sorted(windows, key=lambda w: w.input_ids)
    groups: list[tuple[int, list[Window]]] = []
    for window in ordered:
        if groups:
            length, members = groups[-1]
            if len(members) == 1:
                length = _prefix_limit(members[0])
            shared = min(
                _common_length(members[-1].input_ids, window.input_ids),
                _prefix_limit(window),
                length,
            )
            # Tokens not computed twice: (members - 1) x prefix, before and after.
            saved_after = len(members) * shared
            if shared >= MIN_SHARED_PREFIX and saved_after >= (len(members) - 1) * length:
                groups[-1] = (shared, [*members, window])
                continue
        groups.append((0, [window]))
    return groups


def batches(
    windows: Sequence[Window],
    tokens_per_batch: int,
    max_rows: int,
    max_padding: float = DEFAULT_MAX_PADDING,
) -> list[list[Window]]:
    """Windows grouped longest first: at most ``tokens_per_batch`` padded tokens and
    ``max_rows`` rows a group, and no row padded by more than ``max_padding`` of its width."""
    ordered = sorted(windows, key=lambda w: len(w.input_ids), reverse=True)
    groups: list[list[Window]] = []
    for window in ordered:
        group = groups[-1] if groups else None
        # Sorted longest first, so the group's first window sets its width.
        width = len(group[0].input_ids) if group else 0
        if (
            group is not None
            and len(group) < max_rows
            and (len(group) + 1) * width <= tokens_per_batch
            and len(window.input_ids) >= (1 - max_padding) * width
        ):
            group.append(window)
        else:
            groups.append([window])
    return groups


def decoder_and_head(model: Any) -> tuple[Any, torch.nn.Module]:
    """The model's body (to its final normed hidden states) and its output layer."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no output layer")
    return model.get_decoder(), head


def prefix_cache(decoder: Any, input_ids: list[int], device: torch.device) -> Any:
    """The key/value cache of a shared prefix."""
    output = decoder(input_ids=torch.tensor([input_ids], device=device), use_cache=True)
    return output.past_key_values


def batch_nll(
    decoder: Any,
    head: torch.nn.Module,
    group: Sequence[Window],
    pad_id: int,
    device: torch.device,
    prefix: tuple[int, Any] | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL ``[rows]`` (float64) and scored-token counts ``[rows]`` of a group.

    With ``prefix`` (its length and cache), the windows are what follows it.
    """
    width = max(len(w.input_ids) for w in group)
    input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    labels = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(group), width), dtype=torch.long)
    for row, window in enumerate(group):
        length = len(window.input_ids)
        input_ids[row, :length] = torch.tensor(window.input_ids)
        labels[row, :length] = torch.tensor(window.labels)
        attention[row, :length] = 1
    # Without padding, no mask: attention takes its plain causal path.
    mask = attention.to(device) if bool((attention == 0).any()) else None
    cache = None
    if prefix is not None:
        length, shared = prefix
        # The forward appends to the cache: each group gets its own copy.
        cache = copy.deepcopy(shared)
        if len(group) > 1:
            cache.batch_repeat_interleave(len(group))
        if mask is not None:
            mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, length), mask], dim=1)
    hidden = decoder(
        input_ids=input_ids.to(device),
        attention_mask=mask,
        past_key_values=cache,
        use_cache=cache is not None,
    )
    hidden = hidden.last_hidden_state[:, :-1]
    targets = labels[:, 1:].to(device)
    keep = targets != IGNORE_INDEX
    rows = torch.arange(len(group), device=device)[:, None].expand_as(targets)[keep]
    picked, wanted = hidden[keep], targets[keep]
    nll = torch.zeros(len(group), dtype=torch.float64, device=device)
    for start in range(0, picked.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        logits = head(picked[part]).float()
        losses = F.cross_entropy(logits, wanted[part], reduction="none")
        nll.index_add_(0, rows[part], losses.double())
    return nll.cpu(), keep.sum(dim=1).cpu()


def corpus_perplexity(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    context_length: int,
    stride: int,
    tokens_per_batch: int = 4096,
    max_rows: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of a model on conversations; ``on_progress(done)`` as conversations finish."""
    windows: list[Window] = []
    all_windows = 0
    for index, messages in enumerate(conversations):
        tokenized = tokenize_chat(tokenizer, messages, sys.maxsize)
        whole = sliding_windows(
            index, tokenized.input_ids, tokenized.labels, context_length, stride
        )
        all_windows += len(whole)
        windows += [part for part in map(scored_part, whole) if part is not None]
    remaining = [0] * len(conversations)
    for window in windows:
        remaining[window.sample] += 1
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    decoder, head = decoder_and_head(model)
    sample_nll = [0.0] * len(conversations)
    sample_tokens = [0] * len(conversations)
    done = sum(1 for count in remaining if count == 0)
    computed = 0
    model.eval()
    with torch.inference_mode(), scoring_kernels(model):
        for length, members in shared_prefixes(windows):
            prefix = None
            if length:
                prefix = (length, prefix_cache(decoder, members[0].input_ids[:length], device))
                computed += length
                members = [
                    Window(w.sample, w.input_ids[length:], w.labels[length:]) for w in members
                ]
            for group in batches(members, tokens_per_batch, max_rows):
                nll, counts = batch_nll(decoder, head, group, pad_id, device, prefix)
                computed += len(group) * max(len(w.input_ids) for w in group)
                for row, window in enumerate(group):
                    sample_nll[window.sample] += float(nll[row])
                    sample_tokens[window.sample] += int(counts[row])
                    remaining[window.sample] -= 1
                    done += remaining[window.sample] == 0
                if on_progress is not None:
                    on_progress(done)
    tokens = sum(sample_tokens)
    if tokens == 0:
        raise ValueError("no assistant tokens to score")
    mean = math.fsum(sample_nll) / tokens
    return PerplexityResult(
        perplexity=math.exp(mean),
        mean_nll=mean,
        tokens=tokens,
        conversations=len(conversations),
        context_length=context_length,
        stride=stride,
        windows=all_windows,
        sample_nll=sample_nll,
        sample_tokens=sample_tokens,
        precision=str(next(model.parameters()).dtype).removeprefix("torch."),
        computed_tokens=computed,
    )

"""Direct Preference Optimization (DPO): preference pairs as tensors, log-probs, the loss.

A preference split holds one JSON object a line: ``{"prompt": [{"role",
"content"}], "chosen": str, "rejected": str, "record": int}``. Each reply is
rendered after its prompt through the chat template; only the reply's tokens
are scored. A step runs the chosen and rejected sequences of its pairs as one
batch (chosen rows first) through the policy, and compares their summed
log-probs with the reference model's:

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

averaged over pairs (the "sigmoid" loss of the DPO paper). The reference is
the model before training. With a LoRA adapter it is the same network with the
adapter switched off, computed each step; for full fine-tuning the reference
log-probs are computed once for every pair before training starts
(:func:`precompute_reference_log_probs`), so no second copy of the model is
held while training.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ownchat.chat_template import IGNORE_INDEX, ChatTokenizer, TokenizedChat, tokenize_chat
from ownchat_trainer.batches import EncodedSample, collate

# Rows of logits turned into log-probs at a time; bounds the float32 copy of the
# logits to this many rows times the vocabulary.
LOG_PROB_CHUNK_ROWS = 256


@dataclass(frozen=True)
class EncodedPair:
    """A prompt's chosen and rejected replies as token ids with reply-only labels.

    Both sequences start with the same prompt tokens. ``reference_chosen`` and
    ``reference_rejected`` are the reference model's summed log-probs (nats)
    of each reply, once precomputed; None until then.
    """

    chosen: EncodedSample
    rejected: EncodedSample
    record: int
    reference_chosen: float | None = None
    reference_rejected: float | None = None

    @property
    def has_reference(self) -> bool:
        return self.reference_chosen is not None and self.reference_rejected is not None


@dataclass(frozen=True)
class PairBatch:
    """Right-padded tensors of several pairs: ``2 * pairs`` rows, chosen rows first.

    Row ``i`` is pair ``i``'s chosen reply and row ``pairs + i`` its rejected
    one. ``reference_chosen``/``reference_rejected`` (float32, shape
    ``[pairs]``) are set when every pair carried precomputed reference log-probs.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    reference_chosen: torch.Tensor | None = None
    reference_rejected: torch.Tensor | None = None

    @property
    def pairs(self) -> int:
        return self.input_ids.size(0) // 2

    @property
    def real_tokens(self) -> int:
        """Tokens that are not padding, over both halves."""
        return int(self.attention_mask.sum().item())

    def to(self, device: torch.device) -> PairBatch:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return PairBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            move(self.reference_chosen),
            move(self.reference_rejected),
        )


def encode_preference(
    tokenizer: ChatTokenizer, sample: dict[str, Any], max_length: int
) -> EncodedPair | None:
    """Tokenizes one preference line into a pair of at most ``max_length`` tokens each.

    Each sequence is the prompt followed by the reply as an assistant turn,
    rendered by the chat template; labels are the reply's tokens (with the
    turn's end marker), -100 elsewhere. When a sequence is too long, the same
    number of tokens is cut from the start of both prompts (the last prompt
    token is always kept: it predicts the reply's first token); if a reply is
    still too long, its end is cut. None when a reply keeps no scored token.
    """
    prompt = [{"role": m["role"], "content": m["content"]} for m in sample["prompt"]]
    replies = [
        tokenize_chat(tokenizer, [*prompt, {"role": "assistant", "content": reply}], sys.maxsize)
        for reply in (sample["chosen"], sample["rejected"])
    ]
    prompt_lengths = [_prompt_length(tokenized) for tokenized in replies]
    if min(prompt_lengths) == 0:
        # Nothing precedes the reply, so its first token could not be scored.
        return None
    overflow = max(len(t.input_ids) for t in replies) - max_length
    drop = min(max(overflow, 0), min(prompt_lengths) - 1)
    record = int(sample.get("record", 0))
    chosen, rejected = (
        EncodedSample(
            input_ids=t.input_ids[drop : drop + max_length],
            labels=t.labels[drop : drop + max_length],
            weight=1.0,
            record=record,
        )
        for t in replies
    )
    if _scored_tokens(chosen.labels) == 0 or _scored_tokens(rejected.labels) == 0:
        return None
    return EncodedPair(chosen, rejected, record)


def encode_preferences(
    tokenizer: ChatTokenizer, samples: Sequence[dict[str, Any]], max_length: int
) -> tuple[list[EncodedPair], int]:
    """Tokenizes preference lines; returns the kept pairs and how many were dropped."""
    kept: list[EncodedPair] = []
    for sample in samples:
        pair = encode_preference(tokenizer, sample, max_length)
        if pair is not None:
            kept.append(pair)
    return kept, len(samples) - len(kept)


def _prompt_length(tokenized: TokenizedChat) -> int:
    """Tokens before the first labelled one."""
    for position, label in enumerate(tokenized.labels):
        if label != IGNORE_INDEX:
            return position
    return len(tokenized.labels)


def _scored_tokens(labels: Sequence[int]) -> int:
    # A label at position 0 has no token before it to predict it.
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


def collate_pairs(pairs: Sequence[EncodedPair], pad_token_id: int) -> PairBatch:
    """One batch of all chosen then all rejected sequences, right-padded to the longest.

    Carries the precomputed reference log-probs when every pair has them.
    """
    if not pairs:
        raise ValueError("no pairs to collate")
    padded = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)
    reference_chosen = reference_rejected = None
    if all(p.has_reference for p in pairs):
        reference_chosen = torch.tensor([p.reference_chosen for p in pairs], dtype=torch.float32)
        reference_rejected = torch.tensor(
            [p.reference_rejected for p in pairs], dtype=torch.float32
        )
    return PairBatch(
        padded.input_ids, padded.attention_mask, padded.labels, reference_chosen, reference_rejected
    )


def sequence_log_probs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Each row's summed log-probability (nats) of its labelled tokens; float32, ``[batch]``.

    The token at position ``t`` is scored by the logits at ``t - 1``;
    positions labelled -100 are not scored. Only the logits of positions that
    carry a label in some row are computed (through the model's
    ``logits_to_keep``), and they are turned into log-probs a few rows at a
    time, recomputed in the backward pass rather than kept in float32: memory
    beyond the model's own activations is the kept logits in the model's
    (or autocast's) dtype. ``model`` is any Transformers causal LM, a
    ``PeftModel`` around one, or a wrapper that forwards keyword arguments.
    """
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    positions = scored.any(dim=0).nonzero().squeeze(1)
    if positions.numel() == 0:
        return torch.zeros(labels.size(0), dtype=torch.float32, device=labels.device)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=positions,
        use_cache=False,
    ).logits
    kept_targets = targets[:, positions]
    kept_scored = scored[:, positions]
    token_log_probs = _token_log_probs(
        logits.reshape(-1, logits.size(-1)), kept_targets.masked_fill(~kept_scored, 0).reshape(-1)
    ).view(kept_targets.shape)
    return (token_log_probs * kept_scored).sum(dim=1)


def _token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[row, targets[row]]`` in float32, a chunk of rows at a time."""
    recompute = torch.is_grad_enabled() and logits.requires_grad
    pieces = []
    for start in range(0, logits.size(0), LOG_PROB_CHUNK_ROWS):
        chunk = logits[start : start + LOG_PROB_CHUNK_ROWS]
        chunk_targets = targets[start : start + LOG_PROB_CHUNK_ROWS]
        if recompute:
            piece = checkpoint(_chunk_log_probs, chunk, chunk_targets, use_reentrant=False)
        else:
            piece = _chunk_log_probs(chunk, chunk_targets)
        pieces.append(piece)
    return torch.cat(pieces)


def _chunk_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return picked - torch.logsumexp(logits, dim=1)


def pair_log_probs(model: Any, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen and rejected replies' summed log-probs (float32, ``[pairs]`` each).

    One forward pass over the whole batch, so both halves see the same
    weights and the same padding.
    """
    log_probs = sequence_log_probs(model, batch.input_ids, batch.attention_mask, batch.labels)
    return log_probs[: batch.pairs], log_probs[batch.pairs :]


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` (or the module a parallel wrapper holds) is a peft model."""
    from peft import PeftModel

    return isinstance(getattr(model, "module", model), PeftModel)


@contextmanager
def reference_mode(model: Any) -> Iterator[None]:
    """Makes ``model`` compute as the reference: no grad, and any peft adapter disabled.

    Without an adapter the model is its own reference only before training
    has changed it, which is when :func:`precompute_reference_log_probs` runs.
    """
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if is_peft_model(model):
            stack.enter_context(getattr(model, "module", model).disable_adapter())
        yield


def reference_log_probs(model: Any, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference model's chosen and rejected log-probs for a batch (float32, ``[pairs]``).

    The batch's precomputed values when it carries them; otherwise, for a
    peft model, the model's own with its adapter disabled (no grad). Full
    fine-tuning without precomputed values raises ``ValueError``: the
    reference would be the policy being trained. Call under the same autocast
    as the policy's forward pass, so that an untrained policy's rewards are 0.
    """
    if batch.reference_chosen is not None and batch.reference_rejected is not None:
        return batch.reference_chosen, batch.reference_rejected
    if not is_peft_model(model):
        raise ValueError(
            "full fine-tuning needs reference log-probs precomputed before training "
            "(precompute_reference_log_probs)"
        )
    with reference_mode(model):
        chosen, rejected = pair_log_probs(model, batch)
    return chosen.detach(), rejected.detach()


def precompute_reference_log_probs(
    model: Any,
    pairs: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int,
    device: torch.device | None = None,
) -> list[EncodedPair]:
    """Every pair with its reference log-probs filled in, computed by ``model`` as it is now.

    Run once before training (for full fine-tuning, before the first optimizer
    step), under the autocast the training steps will use. The model is in eval
    mode meanwhile (no dropout) and returned to its previous mode; a peft
    model's adapter is disabled. ``device`` defaults to the model's.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    result: list[EncodedPair] = []
    try:
        with reference_mode(model):
            for start in range(0, len(pairs), batch_size):
                group = pairs[start : start + batch_size]
                batch = collate_pairs(group, pad_token_id).to(device)
                chosen, rejected = pair_log_probs(model, batch)
                for pair, chosen_value, rejected_value in zip(
                    group, chosen.tolist(), rejected.tolist(), strict=True
                ):
                    result.append(
                        dataclasses.replace(
                            pair, reference_chosen=chosen_value, reference_rejected=rejected_value
                        )
                    )
    finally:
        model.train(was_training)
    return result


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO's sigmoid loss over pairs (mean), and the step's metrics.

    Inputs are summed reply log-probs, ``[pairs]`` each; ``beta`` (> 0) is
    the strength of the pull towards the reference. Metrics (means over the
    pairs): ``rewards/chosen`` and ``rewards/rejected`` (``beta`` times the
    policy-minus-reference log-prob of each reply), ``rewards/margins``
    (chosen minus rejected), ``rewards/accuracies`` (share of pairs whose
    chosen reward is the higher), ``logps/chosen`` and ``logps/rejected``
    (the policy's log-probs). At the start, when the policy is the
    reference, the loss is log 2.
    """
    if not beta > 0 or math.isinf(beta):
        raise ValueError(f"beta must be positive and finite, got {beta}")
    chosen_ratio = policy_chosen.float() - reference_chosen.float()
    rejected_ratio = policy_rejected.float() - reference_rejected.float()
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    rewards_chosen = beta * chosen_ratio.detach()
    rewards_rejected = beta * rejected_ratio.detach()
    metrics = {
        "rewards/chosen": float(rewards_chosen.mean()),
        "rewards/rejected": float(rewards_rejected.mean()),
        "rewards/margins": float((rewards_chosen - rewards_rejected).mean()),
        "rewards/accuracies": float((rewards_chosen > rewards_rejected).float().mean()),
        "logps/chosen": float(policy_chosen.detach().float().mean()),
        "logps/rejected": float(policy_rejected.detach().float().mean()),
    }
    return loss, metrics

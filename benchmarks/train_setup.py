"""What the training benchmark trains on: random-initialised models of real
architectures, and synthetic chat conversations with a chat-like length mix.

Nothing is downloaded. A model is its published configuration (written here)
with random weights, saved once with the ChatML tokenizer of
``ownchat.testing`` (a 512-token BPE: its ids cover only the start of the
vocabulary, which changes nothing in the cost of a step). Conversations are
English words in sentences, one to four user/assistant exchanges and
sometimes a system prompt, rendered through the chat template; their token
lengths follow a log-normal distribution (median 3/16 of the sequence length,
sigma 1.0: at 2048 tokens a median of 384, a mean of about 600 and about 5 %
truncated at the sequence length), the long-tailed shape of real chat data.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ownchat_trainer.batches import EncodedSample, encode_samples
from ownchat_trainer.worker import batch_order


@dataclass(frozen=True)
class ModelShape:
    """A model configuration and the numbers the MFU formula needs."""

    key: str  # the metric suffix, e.g. "smollm2_135m"
    title: str
    config: dict[str, Any]

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.config["hidden_size"]) // self.heads


# The published configurations (config.json of each model on the hub), verbatim
# in the values that change the cost of a step.
MODELS: dict[str, ModelShape] = {
    "smollm2-135m": ModelShape(
        key="smollm2_135m",
        title="SmolLM2-135M",
        config={
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        },
    ),
    "llama-1b": ModelShape(
        key="llama_1b",
        title="Llama-3.2-1B",
        config={
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "tie_word_embeddings": True,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
            },
        },
    ),
}


def build_model_dir(shape: ModelShape, directory: Path, seed: int = 0) -> tuple[Path, int]:
    """Saves the model with random weights (float32) and the ChatML tokenizer;
    returns the directory and the parameter count (tied weights counted once)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ownchat.testing import build_tiny_chat_model

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_chat_model(Path(scratch)))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        **shape.config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory, safe_serialization=True)
    return directory, parameters


_WORDS = (
    "the of and to in is you that it for on with as are this be at have from or by not but "
    "what all were when we there can an your which their if do will each about how up out "
    "them then she many some so these would other into has more her two like him see time "
    "could no make than first been its who now people my made over did down only way find "
    "use may water long little very after words called just where most know get through back "
    "much before go good new write our used me man too any day same right look think also "
    "around another came come work three word must because does part even place well such "
    "here take why things help put years different away again off went old number great tell "
    "men say small every found still between name should home big give air line set own under "
    "read last never us left end along while might next sound below saw something thought "
    "both few those always looked show large often together asked house world going want "
    "school important until form food keep children feet land side without once life enough "
    "took sometimes four head above kind began almost live page got earth need far hand high "
    "year light country let night following picture being study second soon story since white "
    "days ever paper hard near sentence better best across during today others however sure "
    "means knew try told young ways thing whole hear example heard several change answer room "
    "against top turned learn point city play toward five using usually router refund order "
    "delivery firmware update error code device restart account password invoice price team "
    "model data training server request response function value list table file report"
).split()


def _sentence(rng: random.Random, words: int) -> str:
    picked = [rng.choice(_WORDS) for _ in range(max(1, words))]
    if rng.random() < 0.15:
        picked.insert(rng.randrange(len(picked)), str(rng.randrange(1, 10_000)))
    text = " ".join(picked)
    return text[0].upper() + text[1:] + rng.choice(".....?!")


def _text(rng: random.Random, words: int) -> str:
    sentences, left = [], max(1, words)
    while left > 0:
        size = min(left, rng.randint(5, 18))
        sentences.append(_sentence(rng, size))
        left -= size
    return " ".join(sentences)


def _tokens_per_word(tokenizer: Any, rng: random.Random) -> float:
    text = _text(rng, 4000)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) / 4000


def synthetic_conversations(
    tokenizer: Any, count: int, seq_len: int, seed: int
) -> list[dict[str, Any]]:
    """``count`` split-file samples (``{"messages", "weight", "record"}``) whose
    rendered token lengths are log-normal around 3/16 of ``seq_len``."""
    rng = random.Random(seed)
    per_word = _tokens_per_word(tokenizer, random.Random(seed + 1))
    median = seq_len * 3 / 16
    samples = []
    for record in range(count):
        tokens = max(24.0, rng.lognormvariate(math.log(median), 1.0))
        exchanges = 1 + min(3, int(rng.expovariate(0.9)))
        messages: list[dict[str, str]] = []
        if rng.random() < 0.3:
            words = rng.randint(8, 30)
            messages.append({"role": "system", "content": _text(rng, words)})
            tokens -= words * per_word
        # About 8 template tokens a message; users write a quarter of the text.
        share = max(4.0, tokens / exchanges - 16)
        for _ in range(exchanges):
            user = max(2, round(share * rng.uniform(0.15, 0.35) / per_word))
            assistant = max(2, round(share / per_word) - user)
            messages.append({"role": "user", "content": _text(rng, user)})
            messages.append({"role": "assistant", "content": _text(rng, assistant)})
        samples.append({"messages": messages, "weight": 1.0, "record": record})
    return samples


@dataclass(frozen=True)
class BenchData:
    """The conversations written as split files, and their encodings (as the worker makes them)."""

    train_split: Path
    validation_split: Path
    samples: list[EncodedSample]
    dropped: int

    @property
    def mean_length(self) -> float:
        return sum(len(s.input_ids) for s in self.samples) / len(self.samples)


def write_bench_data(
    tokenizer: Any, directory: Path, seq_len: int, tokens_needed: int, seed: int
) -> BenchData:
    """Writes a train split holding at least ``tokens_needed`` tokens (after
    truncation to ``seq_len``) and an empty validation split; returns the
    train samples encoded."""
    rows: list[dict[str, Any]] = []
    encoded: list[EncodedSample] = []
    dropped = 0
    while sum(len(s.input_ids) for s in encoded) < tokens_needed:
        batch = synthetic_conversations(tokenizer, 256, seq_len, seed + len(rows))
        for offset, row in enumerate(batch):
            row["record"] = len(rows) + offset
        kept, lost = encode_samples(tokenizer, batch, seq_len)
        rows += batch
        encoded += kept
        dropped += lost
    directory.mkdir(parents=True, exist_ok=True)
    train_split = directory / "train.jsonl"
    validation_split = directory / "validation.jsonl"
    train_split.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # No validation: the runs compare training steps, and the baselines evaluate nothing.
    validation_split.write_text("")
    return BenchData(train_split, validation_split, encoded, dropped)


def step_tokens(lengths: list[int], samples_per_step: int, steps: int, seed: int) -> list[int]:
    """Real tokens of each of our worker's steps: its seeded batch order over the samples."""
    order = batch_order(len(lengths), samples_per_step, seed)
    return [sum(lengths[i] for i in next(order)) for _ in range(steps)]


def samples_per_step_for_tokens(lengths: list[int], tokens: int, steps: int, seed: int) -> int:
    """The most samples a step can take so that the run's steps hold at most
    ``tokens`` real tokens on average, in the worker's seeded batch order: the
    batch tokens of a baseline step of ``rows`` full sequences."""
    best = 1
    for size in range(1, len(lengths) // steps + 1):
        if sum(step_tokens(lengths, size, steps, seed)) > tokens * steps:
            break
        best = size
    return best


def packed_shape(
    lengths: list[int], samples_per_step: int, steps: int, seed: int, cuda: bool
) -> tuple[float, float]:
    """Rows and positions (real tokens and padding) of our worker's packed steps on
    average, as ``engine.packing.pack_samples`` lays them out for its varlen
    attention: one row end to end, padded to 8 on CUDA, not at all on a CPU."""
    order = batch_order(len(lengths), samples_per_step, seed)
    multiple = 8 if cuda else 1
    positions = 0
    for _ in range(steps):
        positions += -(-sum(lengths[i] for i in next(order)) // multiple) * multiple
    return 1.0, positions / steps

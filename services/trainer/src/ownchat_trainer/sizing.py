"""How much GPU memory a job needs, from its base model's files, without importing torch.

The parameter count comes from the safetensors headers (a JSON table of every
tensor's shape at the start of each file), the shape from ``config.json``; the
bytes per parameter and per token are ``placement.estimate_training_bytes``'s.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ownchat_trainer.placement import Method, estimate_training_bytes

# A safetensors file starts with its header's length, a little-endian u64.
_HEADER_LENGTH = struct.Struct("<Q")
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


# The index in a decoder layer's tensor names: Llama's "model.layers.3.mlp...",
# GPT-2's "transformer.h.3.attn...", and the like.
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters as its safetensors files list them."""

    total: int
    # The largest decoder layer's, which FSDP gathers whole one or two at a time;
    # None when no tensor name says which layer it belongs to.
    largest_layer: int | None


def count_parameters(model_dir: Path) -> int:
    """The parameters of every tensor in the directory's ``*.safetensors`` files."""
    return parameter_counts(model_dir).total


def parameter_counts(model_dir: Path) -> ParameterCounts:
    """Every tensor's parameters in the directory's ``*.safetensors`` files, and the
    largest decoder layer's."""
    total = 0
    by_layer: dict[str, int] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        for name, size in _tensor_sizes(path):
            total += size
            match = _LAYER_INDEX.search(name)
            if match is not None:
                by_layer[match.group(1)] = by_layer.get(match.group(1), 0) + size
    return ParameterCounts(total, max(by_layer.values()) if by_layer else None)


def _tensor_sizes(path: Path) -> list[tuple[str, int]]:
    with path.open("rb") as handle:
        prefix = handle.read(_HEADER_LENGTH.size)
        if len(prefix) < _HEADER_LENGTH.size:
            raise ValueError(f"{path.name} is not a safetensors file")
        (length,) = _HEADER_LENGTH.unpack(prefix)
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path.name} is not a safetensors file")
        header: dict[str, Any] = json.loads(handle.read(length))
    return [
        (name, math.prod(entry["shape"]))
        for name, entry in header.items()
        if name != "__metadata__"
    ]


def _config_int(config: dict[str, Any], *keys: str) -> int | None:
    # Multimodal configs keep the language model's shape in a nested text config.
    for source in (config, config.get("text_config") or {}):
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def training_bytes(
    model_dir: Path,
    *,
    adapter: bool,
    dpo: bool,
    batch_size: int,
    max_seq_length: int,
    processes: int = 1,
    shards: int = 1,
) -> int:
    """The bytes of GPU memory each of ``processes`` training processes needs.

    ``adapter``: a LoRA adapter trains over the frozen base. ``dpo``: a step
    runs a chosen and a rejected sequence per pair, and full DPO keeps a frozen
    reference copy. The batch's samples are shared out over the processes;
    the parameter state over ``shards`` of them (FSDP; 1 for whole replicas).
    """
    config: dict[str, Any] = {}
    config_path = model_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
    sequences = math.ceil(batch_size / max(processes, 1)) * (2 if dpo else 1)
    method: Method = "lora" if adapter else "full"
    counts = parameter_counts(model_dir)
    return estimate_training_bytes(
        counts.total,
        method,
        layer_parameters=counts.largest_layer,
        tokens_per_step=sequences * max_seq_length,
        hidden_size=_config_int(config, "hidden_size", "n_embd", "d_model"),
        num_layers=_config_int(config, "num_hidden_layers", "n_layer", "num_layers"),
        vocab_size=_config_int(config, "vocab_size"),
        reference_model=dpo and not adapter,
        shards=shards,
    )

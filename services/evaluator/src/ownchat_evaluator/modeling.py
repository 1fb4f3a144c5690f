"""Loading a model version for evaluation: safetensors only, never remote code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def resolve_device(setting: str) -> torch.device:
    """The device a setting names; "auto" is the first GPU when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def model_context(model_dir: Path) -> int | None:
    """The model's context length from its config.json, without loading it."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def default_precision(device: torch.device) -> str:
    """The precision a run computes in unless it asks for one: bfloat16 on a GPU, else float32."""
    return "bfloat16" if device.type == "cuda" else "float32"


def load_model(
    model_dir: Path, device: torch.device, precision: str | None = None
) -> tuple[Any, Any]:
    """The model, in eval mode on ``device`` in ``precision`` ("float32" or "bfloat16";
    the device's default when None), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # Progress bars would only clutter the service's structured logs.
    transformers_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[
        precision or default_precision(device)
    ]
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, dtype=dtype)
    return model.to(device).eval(), tokenizer

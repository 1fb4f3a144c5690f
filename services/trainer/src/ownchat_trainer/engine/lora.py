"""LoRA adapters with peft: wrapping a causal LM, saving the adapter, merging it.

A LoRA job trains only the adapter's low-rank matrices; the base weights stay
frozen, so the saved artifact is the adapter alone (``adapter_config.json`` and
``adapter_model.safetensors``). Merging folds the adapter into a copy of its
base and writes a complete Hugging Face checkpoint that Transformers and vLLM
load like any other model.

Every directory is written under a temporary name beside its target and renamed
into place, so a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# peft's own name for every linear layer of the decoder except the output head.
ALL_LINEAR = "all-linear"

# Files of a base model directory that the merged checkpoint writes itself or
# must not carry over (other weight formats would shadow the merged weights).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_WRITTEN_BY_SAVE = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class LoraSettings:
    """The adapter's shape.

    ``alpha / rank`` scales the adapter's output. ``target_modules`` is peft's
    ``"all-linear"`` (every linear layer of the decoder, not the LM head) or
    the names of the modules to adapt (e.g. ``("q_proj", "v_proj")``).
    Dropout defaults to 0 so that a run draws no random numbers per step beyond
    the base model's own, which keeps a resumed run identical to an
    uninterrupted one.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = ALL_LINEAR

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be within [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")


def add_lora(model: Any, settings: LoraSettings) -> Any:
    """Wraps a causal LM in a fresh LoRA adapter; returns the ``PeftModel``.

    The model is changed in place (its linear layers gain the adapter) and
    must not be used apart from the returned wrapper afterwards. Only the
    adapter's parameters require grad; the base weights are frozen. The
    adapter's A matrices are drawn from torch's global generator (B starts at
    zero, so the wrapped model first computes exactly what the base did): seed
    it with ``torch.manual_seed`` first for a repeatable run.
    """
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    config = LoraConfig(
        r=settings.rank,
        # peft annotates alpha as int, but only ever divides by it: a float scales as well.
        lora_alpha=settings.alpha,  # type: ignore[arg-type]
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def hold_frozen_linear_weights_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Casts the weights (and biases) of every frozen linear layer to ``dtype``, in
    place; returns how many layers it cast.

    For an adapter trained under autocast to ``dtype``: autocast casts a linear
    layer's weight to that dtype at every forward anyway, with the same
    rounding, so the numbers do not change; the frozen base then takes half
    the memory of float32, and the per-step casts go. Embeddings and norms
    stay as they are (their outputs feed the float32 residual stream), and so
    does an output layer that shares its weight with the embeddings.
    """
    linear = [m for m in model.modules() if type(m) is torch.nn.Linear]
    others = [m for m in model.modules() if type(m) is not torch.nn.Linear]
    shared = {id(p) for module in others for p in module.parameters(recurse=False)}
    cast = 0
    for module in linear:
        if module.weight.requires_grad or id(module.weight) in shared:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        module.to(dtype)
        cast += 1
    return cast


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that require grad: what the optimizer should be given."""
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(model: Any, target_dir: Path, *, state_dict: dict[str, Any] | None = None) -> None:
    """Writes a ``PeftModel``'s adapter (config and safetensors weights) to ``target_dir``.

    ``target_dir`` must not exist or be an empty directory. Only the adapter is
    written, not the base weights; the adapter's config names the base model's
    directory it was created from. ``state_dict``: the weights to write when
    the model's own are shards (``distributed.gathered_state_dict``).
    """
    with _atomic_directory(target_dir) as staging:
        model.save_pretrained(str(staging), safe_serialization=True, state_dict=state_dict)


def merge_adapter(base_model_dir: Path, adapter_dir: Path, target_dir: Path) -> None:
    """Folds the adapter in ``adapter_dir`` into its base; writes a full checkpoint.

    ``target_dir`` (which must not exist or be empty) receives the merged
    model as ``config.json``, ``generation_config.json`` and safetensors
    weights, in the base checkpoint's stored dtype, plus the base directory's
    other top-level files (tokenizer, chat template, licence) copied as they
    are. The merge itself is done in float32 on the CPU, so a GPU is not
    needed and low-precision bases lose nothing more than the final cast.
    """
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    stored_dtype = getattr(AutoConfig.from_pretrained(base_model_dir), "dtype", None)
    base = AutoModelForCausalLM.from_pretrained(
        base_model_dir, dtype=torch.float32, use_safetensors=True
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if isinstance(stored_dtype, torch.dtype):
        merged = merged.to(stored_dtype)
    with _atomic_directory(target_dir) as staging:
        merged.save_pretrained(staging)
        _copy_side_files(base_model_dir, staging)


def _copy_side_files(base_model_dir: Path, target: Path) -> None:
    """Copies the base's top-level files that are neither weights nor model config."""
    for source in sorted(base_model_dir.iterdir()):
        if not source.is_file() or source.name.startswith("."):
            continue
        name = source.name
        if name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".index.json"):
            continue
        if name in _WRITTEN_BY_SAVE:
            continue
        shutil.copy2(source, target / name)


@contextmanager
def _atomic_directory(target_dir: Path) -> Iterator[Path]:
    """A fresh directory beside ``target_dir``, renamed to it when the block succeeds.

    Removed instead when the block raises. The rename replaces an empty
    directory and refuses a non-empty one.
    """
    target_dir = Path(target_dir)
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise FileExistsError(f"{target_dir} already exists and is not an empty directory")
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target_dir.name}-", dir=target_dir.parent))
    try:
        yield staging
        _fsync_tree(staging)
        os.replace(staging, target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_directory(target_dir.parent)


def _fsync_tree(root: Path) -> None:
    """Flushes every file under ``root`` to disk, then the directories."""
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(directory) / name, os.O_RDONLY)
        _fsync_directory(Path(directory))


def _fsync_directory(directory: Path) -> None:
    _fsync_path(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

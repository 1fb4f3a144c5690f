"""The reference engine: the model in plain Transformers, in this process.

Slow next to vLLM, but it is the model exactly as Transformers runs it, so
other engines are checked against it; and it serves a model vLLM cannot load.
Each request decodes its own sequence with a ``DynamicCache`` in a worker
thread (see ``local`` for how many at once).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ownchat_serving.engine import EngineLoadError, EngineOptions, first_line, load_tokenizer
from ownchat_serving.engines.local import (
    LocalEngine,
    check_safetensors,
    context_length,
    eos_ids,
)

if TYPE_CHECKING:
    import torch

# vLLM's names for dtypes, as the service's ``dtype`` setting takes them.
_DTYPES = {
    "half": "float16",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float": "float32",
    "float32": "float32",
}


def torch_dtype(name: str) -> Any:
    """The torch dtype for a ``dtype`` setting; "auto" keeps the checkpoint's."""
    import torch

    if name == "auto":
        return "auto"
    if name not in _DTYPES:
        raise EngineLoadError(f"unknown dtype {name!r}; use auto, {', '.join(_DTYPES)}")
    return getattr(torch, _DTYPES[name])


def load_causal_lm(model_dir: Path, dtype: Any) -> Any:
    """The model from local safetensors only, with no remote code, ready for inference."""
    from transformers import AutoModelForCausalLM

    check_safetensors(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        dtype=dtype,
    )
    model.eval()
    return model


class TorchSequence:
    """One sequence through the model, its keys and values in a ``DynamicCache``."""

    def __init__(self, model: Any) -> None:
        from transformers import DynamicCache

        self._model = model
        self._cache = DynamicCache(config=model.config)

    def feed(self, token_ids: list[int]) -> np.ndarray:
        """Appends tokens; returns the next token's logits."""
        import torch

        with torch.inference_mode():
            output = self._model(
                input_ids=torch.tensor([token_ids], dtype=torch.long),
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits: torch.Tensor = output.logits[0, -1]
        return logits.float().numpy()


class TorchDecoder:
    """A Transformers causal LM as a ``Decoder``."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.vocab_size: int = int(model.get_output_embeddings().weight.shape[0])

    def new_sequence(self) -> TorchSequence:
        """An empty sequence."""
        return TorchSequence(self._model)

    def close(self) -> None:
        """Drops the model so its memory can be freed."""
        del self._model
        gc.collect()


def _load(model_dir: Path, options: EngineOptions) -> TransformersEngine:
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, torch_dtype(options.dtype))
    return TransformersEngine(
        TorchDecoder(model),
        tokenizer,
        model_dir,
        context_length(model.config, options),
        eos_ids(model_dir, model.config, tokenizer),
        options,
    )


class TransformersEngine(LocalEngine):
    """A model served by plain Transformers; only ``load`` is its own."""

    @classmethod
    async def load(cls, model_dir: Path, options: EngineOptions) -> TransformersEngine:
        """Loads a model directory (safetensors only, no remote code); blocks in a thread."""
        try:
            return await asyncio.to_thread(_load, model_dir, options)
        except EngineLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - Transformers raises many kinds while loading
            raise EngineLoadError(first_line(error)) from error

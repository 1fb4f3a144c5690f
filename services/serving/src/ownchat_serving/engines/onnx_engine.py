"""A model version served by ONNX Runtime on the CPU: for small CPU-only deployments.

The first deployment of a model version exports it to ONNX with a KV cache
(``onnx_export``, checked against Transformers) and keeps the export; later
ones load it. Decoding runs the graph once per token on the CPU provider,
feeding each step's present keys and values back as the next step's past.
Generation needs onnxruntime, numpy and the tokenizer only; the export also
needs torch, onnx and onnxscript.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import numpy as np

from ownchat.chat_template import render
from ownchat_serving.engine import EngineLoadError, EngineOptions, first_line, load_tokenizer
from ownchat_serving.engines.local import (
    LocalEngine,
    check_safetensors,
    context_length,
    eos_ids,
)
from ownchat_serving.engines.onnx_export import MODEL_FILE, ensure_export

# What the export is checked with: a greedy reply to this, from both runtimes.
PROBE_CONVERSATION = ({"role": "user", "content": "Hello"},)
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OrtSequence:
    """One sequence through the exported graph; carries its past keys and values."""

    def __init__(self, session: Any, empty_past: dict[str, np.ndarray]) -> None:
        self._session = session
        self._past = dict(empty_past)
        self._names = list(empty_past)
        self._length = 0

    def feed(self, token_ids: list[int]) -> np.ndarray:
        """Appends tokens; returns the next token's logits."""
        count = len(token_ids)
        feeds = {
            "input_ids": np.asarray([token_ids], dtype=np.int64),
            "position_ids": np.arange(self._length, self._length + count, dtype=np.int64)[None],
            **self._past,
        }
        logits, *present = self._session.run(None, feeds)
        self._past = dict(zip(self._names, present, strict=True))
        self._length += count
        return np.asarray(logits[0], dtype=np.float32)


class OrtDecoder:
    """An exported graph in an ONNX Runtime session (CPU provider) as a ``Decoder``.

    One session serves every request: ONNX Runtime allows concurrent runs.
    """

    def __init__(self, model_file: Path) -> None:
        import onnxruntime

        settings = onnxruntime.SessionOptions()
        settings.log_severity_level = 3  # errors only; warnings are for graph authors
        self._session = onnxruntime.InferenceSession(
            str(model_file), settings, providers=["CPUExecutionProvider"]
        )
        self._empty_past = {}
        for spec in self._session.get_inputs():
            if not spec.name.startswith("past."):
                continue
            if spec.type not in _NUMPY_TYPES:
                raise EngineLoadError(f"the export's {spec.name} has unsupported type {spec.type}")
            # The one symbolic dimension is the past length: empty at the start.
            shape = [dim if isinstance(dim, int) else 0 for dim in spec.shape]
            self._empty_past[spec.name] = np.zeros(shape, dtype=_NUMPY_TYPES[spec.type])
        vocab = self._session.get_outputs()[0].shape[-1]
        if not isinstance(vocab, int):
            raise EngineLoadError("the export's logits have no fixed vocabulary size")
        self.vocab_size: int = vocab

    def new_sequence(self) -> OrtSequence:
        """An empty sequence."""
        return OrtSequence(self._session, self._empty_past)

    def close(self) -> None:
        """Drops the session so its memory can be freed."""
        del self._session
        gc.collect()


def default_export_root(model_dir: Path) -> Path:
    """Exports kept beside the model directory, in one folder per artifact digest."""
    return model_dir.parent / "onnx"


def _load(model_dir: Path, options: EngineOptions, export_root: Path) -> OnnxEngine:
    from transformers import AutoConfig

    check_safetensors(model_dir)
    tokenizer = load_tokenizer(model_dir)
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    text = render(tokenizer, PROBE_CONVERSATION, prompt=True)
    probe = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    directory = ensure_export(model_dir, export_root, probe)
    return OnnxEngine(
        OrtDecoder(directory / MODEL_FILE),
        tokenizer,
        model_dir,
        context_length(config, options),
        eos_ids(model_dir, config, tokenizer),
        options,
    )


class OnnxEngine(LocalEngine):
    """A model served by ONNX Runtime on the CPU; only ``load`` is its own."""

    @classmethod
    async def load(
        cls, model_dir: Path, options: EngineOptions, *, export_root: Path | None = None
    ) -> OnnxEngine:
        """Loads a model directory, exporting it to ONNX on its first deployment.

        ``export_root`` holds the kept exports, one folder per model's
        artifact digest; by default beside the model directory.
        """
        root = export_root if export_root is not None else default_export_root(model_dir)
        try:
            return await asyncio.to_thread(_load, model_dir, options, root)
        except EngineLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - exporters and runtimes raise many kinds
            raise EngineLoadError(first_line(error)) from error

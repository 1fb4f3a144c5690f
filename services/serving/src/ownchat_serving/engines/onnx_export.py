"""Export of a model version to ONNX with a KV cache, checked against Transformers.

The graph takes ``input_ids`` and ``position_ids`` (batch 1, any length) and
the past keys and values of every layer (``past.<i>.key``/``.value``, any past
length, zero included), and returns the last position's ``logits`` and the
``present.<i>.key``/``.value`` to feed back on the next step. It is traced
with PyTorch's ONNX exporter (``torch.onnx.export(dynamo=True)``, which needs
``onnx`` and ``onnxscript``) in float32, for ONNX Runtime's CPU provider.

Before an export is kept, a short greedy reply from it must equal the one
Transformers gives, token for token. Exports are cached in
``<export_root>/<artifact hex digest>/``, written to a temporary folder and
renamed into place, so a later deployment of the same files loads the export
and a half-written one is never seen.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ownchat.artifacts import MANIFEST_NAME, fsync_directory
from ownchat_serving.engine import EngineLoadError

EXPORT_FORMAT = 1
MODEL_FILE = "model.onnx"
INFO_FILE = "export.json"
# The greedy reply both runtimes must agree on before an export is kept.
PROBE_TOKENS = 8
# Example lengths to trace with: distinct from each other and from the model's
# fixed sizes, so neither is taken for a constant.
_TRACE_PAST, _TRACE_SEQUENCE = 11, 7
_MAX_DIM = 1 << 20

# One export at a time: tracing changes process-wide PyTorch state.
_export_lock = threading.Lock()


def model_digest(model_dir: Path) -> str:
    """The model's artifact digest: the hash of its manifest, as the artifact store names it.

    A directory outside the store (no manifest) is keyed by its files' hashes instead.
    """
    manifest = model_dir / MANIFEST_NAME
    if manifest.is_file():
        return "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def export_dir(export_root: Path, digest: str) -> Path:
    """Where the export of the model with this artifact digest is kept."""
    return export_root / digest.partition(":")[2]


def remove_export(export_root: Path, digest: str) -> bool:
    """Deletes a model's cached export (when its files are erased); False when there is none."""
    target = export_dir(export_root, digest)
    if not target.exists():
        return False
    shutil.rmtree(target)
    return True


@dataclass(frozen=True)
class ExportInfo:
    """What ``export.json`` records about a kept export."""

    digest: str
    probe_tokens: list[int]
    max_logit_difference: float


def _read_info(directory: Path, digest: str) -> ExportInfo | None:
    """The export's record when it is complete and of this format and model."""
    try:
        info = json.loads((directory / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(info, dict)
        or info.get("format") != EXPORT_FORMAT
        or info.get("digest") != digest
        or not (directory / MODEL_FILE).is_file()
    ):
        return None
    try:
        return ExportInfo(digest, list(info["probe_tokens"]), float(info["max_logit_difference"]))
    except (KeyError, TypeError, ValueError):
        return None


def _cache_interface(model: Any) -> Any:
    """The model as a module over flat tensors: ids, positions and past keys/values in;
    the last position's logits and the present keys/values out."""
    import torch
    from transformers import DynamicCache

    layers = model.config.get_text_config().num_hidden_layers

    class CacheInterface(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, position_ids: torch.Tensor, past: list[torch.Tensor]
        ) -> tuple[torch.Tensor, ...]:
            cache = DynamicCache(
                [(past[2 * i], past[2 * i + 1]) for i in range(layers)], config=model.config
            )
            output = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            present: list[torch.Tensor] = []
            for layer in output.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (output.logits[:, -1, :], *present)

    return CacheInterface().eval()


def _names(layers: int) -> tuple[list[str], list[str]]:
    pairs = [(i, kind) for i in range(layers) for kind in ("key", "value")]
    inputs = ["input_ids", "position_ids"] + [f"past.{i}.{kind}" for i, kind in pairs]
    outputs = ["logits"] + [f"present.{i}.{kind}" for i, kind in pairs]
    return inputs, outputs


def _trace(model: Any, target: Path) -> None:
    import torch
    from torch.export import Dim

    config = model.config.get_text_config()
    layers = config.num_hidden_layers
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    wrapper = _cache_interface(model)
    past = [torch.zeros(1, heads, _TRACE_PAST, head_dim) for _ in range(2 * layers)]
    input_ids = torch.zeros(1, _TRACE_SEQUENCE, dtype=torch.long)
    positions = torch.arange(_TRACE_PAST, _TRACE_PAST + _TRACE_SEQUENCE)[None]
    sequence = Dim("sequence", min=1, max=_MAX_DIM)
    past_length = Dim("past", min=0, max=_MAX_DIM)
    inputs, outputs = _names(layers)
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's notes on its own internals and on axis naming concern
        # no one serving the model.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
        torch.onnx.export(
            wrapper,
            (input_ids, positions, past),
            str(target / MODEL_FILE),
            dynamo=True,
            dynamic_shapes={
                "input_ids": {1: sequence},
                "position_ids": {1: sequence},
                "past": [{2: past_length}] * (2 * layers),
            },
            input_names=inputs,
            output_names=outputs,
            external_data=True,
            optimize=True,
            verbose=False,
        )


def greedy_probe(feed: Any, prompt_ids: list[int], tokens: int) -> tuple[list[int], list[Any]]:
    """A greedy reply of ``tokens`` tokens through a ``feed`` function, and each step's logits."""
    logits = feed(prompt_ids)
    picked, seen = [], [logits]
    for _ in range(tokens - 1):
        picked.append(int(np.argmax(logits)))
        logits = feed([picked[-1]])
        seen.append(logits)
    picked.append(int(np.argmax(logits)))
    return picked, seen


def _verify(model: Any, target: Path, prompt_ids: list[int]) -> tuple[list[int], float]:
    """Both runtimes' greedy replies to the probe; refuses the export if they differ."""
    from ownchat_serving.engines.onnx_engine import OrtDecoder
    from ownchat_serving.engines.transformers_engine import TorchSequence

    reference, reference_logits = greedy_probe(TorchSequence(model).feed, prompt_ids, PROBE_TOKENS)
    decoder = OrtDecoder(target / MODEL_FILE)
    try:
        exported, exported_logits = greedy_probe(
            decoder.new_sequence().feed, prompt_ids, PROBE_TOKENS
        )
    finally:
        decoder.close()
    difference = max(
        float(np.abs(a - b).max()) for a, b in zip(reference_logits, exported_logits, strict=True)
    )
    if exported != reference:
        raise EngineLoadError(
            f"the ONNX export's greedy reply {exported} differs from Transformers' {reference} "
            f"(largest logit difference {difference:.3g})"
        )
    return reference, difference


def _export_to(model_dir: Path, staging: Path, digest: str, prompt_ids: list[int]) -> None:
    import onnx
    import torch
    import transformers

    from ownchat_serving.engines.transformers_engine import load_causal_lm

    # ONNX Runtime's CPU provider runs float32 best; the weights are cast once, here.
    model = load_causal_lm(model_dir, torch.float32)
    try:
        with _export_lock:
            _trace(model, staging)
        probe, difference = _verify(model, staging, prompt_ids)
    finally:
        del model
        gc.collect()
    info = {
        "format": EXPORT_FORMAT,
        "digest": digest,
        "probe_prompt": prompt_ids,
        "probe_tokens": probe,
        "max_logit_difference": difference,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }
    (staging / INFO_FILE).write_text(json.dumps(info, indent=1))
    for path in staging.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    fsync_directory(staging)


def ensure_export(model_dir: Path, export_root: Path, prompt_ids: list[int]) -> Path:
    """The model's verified ONNX export, exporting it first unless it is already kept.

    Blocks (tracing takes seconds to minutes): call it from a worker thread.
    ``prompt_ids`` is the probe prompt both runtimes must answer alike.
    """
    digest = model_digest(model_dir)
    target = export_dir(export_root, digest)
    if _read_info(target, digest) is not None:
        return target
    export_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=export_root, prefix=".export-"))
    try:
        _export_to(model_dir, staging, digest, prompt_ids)
        if target.exists():
            # Incomplete, stale or of an older format: replaced whole.
            stale = Path(tempfile.mkdtemp(dir=export_root, prefix=".stale-"))
            os.replace(target, stale / "export")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(staging, target)
        fsync_directory(export_root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target

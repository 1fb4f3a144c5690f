"""The inference engines behind one interface (``base.Engine``), chosen per deployment.

vLLM (``ownchat_serving.engine``) for throughput; ONNX Runtime for small
CPU-only deployments; plain Transformers as the reference the others are
checked against. Each engine imports its runtime on first load, so a service
starts without the runtimes it does not use.
"""

from __future__ import annotations

from pathlib import Path

from ownchat_serving.engine import EngineLoadError, EngineOptions
from ownchat_serving.engines.base import Engine
from ownchat_serving.store import EngineKind

__all__ = ["Engine", "load_engine"]


async def load_engine(
    kind: EngineKind,
    model_dir: Path,
    options: EngineOptions,
    *,
    export_root: Path,
    adapters: bool = False,
) -> Engine:
    """Starts the deployment's engine on a model directory.

    ``export_root`` is where the ONNX engine keeps its exports (one folder per
    model's artifact digest); the other engines do not use it. ``adapters``
    (vLLM only) starts an engine that also serves LoRA adapters of the model.
    """
    if kind is EngineKind.VLLM:
        from ownchat_serving.engine import VllmEngine

        return await VllmEngine.load(model_dir, options, adapters)
    if adapters:
        raise EngineLoadError(f"LoRA adapters are served by vLLM only, not {kind.value}")
    if kind is EngineKind.TRANSFORMERS:
        from ownchat_serving.engines.transformers_engine import TransformersEngine

        return await TransformersEngine.load(model_dir, options)
    from ownchat_serving.engines.onnx_engine import OnnxEngine

    return await OnnxEngine.load(model_dir, options, export_root=export_root)

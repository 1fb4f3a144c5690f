"""Liger Kernel's fused Triton layers on a model that trains on a GPU.

Under bf16 autocast a Llama-style decoder spends much of a step outside its
matrix products: RMSNorm, rotary embeddings and the SwiGLU gate each run as
several elementwise kernels and keep their fp32 intermediates for the
backward. Liger Kernel's versions run as one kernel each and recompute
instead of storing, which cuts both time and activation memory. The output
layer and its cross-entropy are fused by ``engine.linear_cross_entropy``,
which ``engine.loss`` calls, since the worker never asks the model for logits.

Liger Kernel is optional (Triton, CUDA): without it, or for an architecture
it does not know, the model is left as it is.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

logger = logging.getLogger("ownchat.trainer.worker")


def available(device: torch.device) -> bool:
    """Whether models trained on ``device`` get the fused layers."""
    return device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def apply_fused_kernels(model: Any, device: torch.device, *, swiglu: bool = True) -> bool:
    """Swaps in Liger Kernel's RMSNorm, RoPE and (with ``swiglu``) SwiGLU; True when it did.

    Call on the plain transformers model, before any adapter wraps it. Pass
    ``swiglu=False`` where ``lean_activations`` runs the MLP already (with
    SwiGLU kernels of its own, over the gate and up projections' one product).
    """
    if not available(device):
        return False
    try:
        from liger_kernel.transformers.monkey_patch import (  # type: ignore[import-not-found]
            MODEL_TYPE_TO_APPLY_LIGER_FN,
            _apply_liger_kernel_to_instance,
        )
    except ImportError:
        return False
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        logger.info("Liger Kernel has no kernels for %s; the model keeps its own", model_type)
        return False
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=swiglu,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    return True

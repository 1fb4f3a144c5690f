"""Whether the trainer's Triton kernels run here: tried once on the GPU, the torch
path where they cannot be built.

Triton compiles a kernel at its first launch, for the GPU and driver at
hand; an old driver or a GPU it does not know fails there, before the kernel
has touched anything. So each kernel is first launched on a one-row input
(:class:`KernelBuild`), and a failure leaves its work to torch operations,
with a warning, rather than failing the job.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

logger = logging.getLogger("ownchat.trainer.worker")

SOURCES = "ownchat_trainer.engine.triton_sources"
HALF = (torch.bfloat16, torch.float16)


class KernelBuild:
    """One kernel of :data:`SOURCES`: imported at first use (Triton is optional)
    and, on a GPU, tried once by ``trial`` (given the kernel and a device)."""

    def __init__(self, name: str, trial: Callable[[Any, torch.device], None]) -> None:
        self.name = name
        self._trial = trial
        self._kernel: Any = None
        self.built: bool | None = None  # None: not tried yet

    def kernel(self) -> Any:
        if self._kernel is None:
            sources: ModuleType = importlib.import_module(SOURCES)
            self._kernel = getattr(sources, self.name)
        return self._kernel

    def runs_on(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the kernel runs for half-precision ``dtype`` on GPU ``device``."""
        return device.type == "cuda" and dtype in HALF and self.builds_on(device)

    def builds_on(self, device: torch.device) -> bool:
        """Whether the kernel builds and runs on ``device`` (tried once)."""
        if self.built is None:
            self.built = self._try(device)
        return self.built

    def _try(self, device: torch.device) -> bool:
        if importlib.util.find_spec("triton") is None:
            return False
        try:
            self._trial(self.kernel(), device)
        except Exception:  # a GPU or driver this Triton cannot compile for
            logger.warning(
                "the Triton kernel %s could not be built; torch operations do its work",
                self.name,
                exc_info=True,
            )
            return False
        return True

"""GPU memory and utilisation as Prometheus metrics, read through NVML at each scrape.

A machine without a GPU (or without the NVIDIA driver) is normal: the
collector then reports nothing, and it does not try NVML again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

logger = logging.getLogger("ownchat.serving")


class GpuCollector(Collector):
    """Per GPU: memory used and total (bytes), and utilisation (0 to 1) over the last sample."""

    def __init__(self, nvml: Any = None) -> None:
        """``nvml``: the ``pynvml`` module; imported on the first scrape when not given."""
        self._nvml = nvml
        self._lock = threading.Lock()
        self._state = "new"  # new -> ready, or -> absent for good

    def _ready(self) -> Any:
        with self._lock:
            if self._state == "new":
                try:
                    if self._nvml is None:
                        import pynvml

                        self._nvml = pynvml
                    self._nvml.nvmlInit()
                    self._state = "ready"
                except Exception as error:  # noqa: BLE001 - no driver, no library, no GPU
                    logger.info("no GPU metrics: NVML is not available (%s)", error)
                    self._state = "absent"
            return self._nvml if self._state == "ready" else None

    def describe(self) -> list[GaugeMetricFamily]:
        """Nothing up front: registering must not start NVML."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The GPUs' readings now; nothing without NVML."""
        nvml = self._ready()
        if nvml is None:
            return
        used = GaugeMetricFamily(
            "ownchat_serving_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"]
        )
        total = GaugeMetricFamily(
            "ownchat_serving_gpu_memory_total_bytes", "GPU memory in all.", labels=["gpu"]
        )
        busy = GaugeMetricFamily(
            "ownchat_serving_gpu_utilization_ratio",
            "Share of the last sample period a kernel was running on the GPU.",
            labels=["gpu"],
        )
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                used.add_metric([str(index)], float(memory.used))
                total.add_metric([str(index)], float(memory.total))
                busy.add_metric([str(index)], float(rates.gpu) / 100.0)
        except Exception as error:  # noqa: BLE001 - a GPU lost mid-scrape must not fail the scrape
            logger.warning("GPU metrics could not be read: %s", error)
            return
        yield used
        yield total
        yield busy


_registered = False


def register_gpu_metrics(registry: CollectorRegistry = REGISTRY) -> None:
    """Adds the GPU collector to the default registry, once per process."""
    global _registered
    if registry is REGISTRY:
        if _registered:
            return
        _registered = True
    registry.register(GpuCollector())

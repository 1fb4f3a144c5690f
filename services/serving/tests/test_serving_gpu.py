"""GPU metrics through NVML: nothing on a machine without a GPU, gauges per GPU with one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from ownchat_serving.gpu import GpuCollector, register_gpu_metrics


class TwoGpus:
    """NVML's answers for a machine with two GPUs, the second one half full and busy."""

    initialised = 0

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=handle * 40 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=75 * handle)


class NoDriver:
    def nvmlInit(self) -> None:
        raise OSError("NVML Shared Library Not Found")


def test_without_nvml_nothing_is_reported_and_nvml_is_not_asked_again() -> None:
    registry = CollectorRegistry()
    nvml = NoDriver()
    registry.register(GpuCollector(nvml))
    assert b"gpu" not in generate_latest(registry)
    assert b"gpu" not in generate_latest(registry)


def test_this_machine_scrapes_cleanly() -> None:
    registry = CollectorRegistry()
    register_gpu_metrics(registry)
    generate_latest(registry)  # with or without a GPU, a scrape never fails


def test_each_gpu_reports_memory_and_utilisation() -> None:
    registry = CollectorRegistry()
    nvml = TwoGpus()
    registry.register(GpuCollector(nvml))
    assert nvml.initialised == 0  # registering does not start NVML
    generate_latest(registry)
    assert registry.get_sample_value(
        "ownchat_serving_gpu_memory_used_bytes", {"gpu": "1"}
    ) == float(40 * 2**30)
    assert registry.get_sample_value(
        "ownchat_serving_gpu_memory_total_bytes", {"gpu": "0"}
    ) == float(80 * 2**30)
    assert registry.get_sample_value("ownchat_serving_gpu_utilization_ratio", {"gpu": "1"}) == 0.75
    assert nvml.initialised == 1

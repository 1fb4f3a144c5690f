"""GPU placement: the memory estimate, the choice over a table of devices, and NVML on this
machine (which has no GPU: the CPU, without an error)."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from ownchat_trainer.placement import (
    GIB,
    Gpu,
    GpuProcess,
    GpuSurvey,
    NvmlProbe,
    Placement,
    choose_devices,
    choose_training_devices,
    estimate_training_bytes,
    estimate_training_memory,
    survey_gpus,
)


class TableProbe:
    """A fixed device table, for the decision logic alone."""

    def __init__(self, *gpus: Gpu, reason: str | None = None) -> None:
        self._survey = GpuSurvey(tuple(gpus), reason)

    def survey(self) -> GpuSurvey:
        return self._survey


def gpu(index: int, free_gib: float, total_gib: float = 80, processes: int = 0) -> Gpu:
    return Gpu(
        index=index,
        name="Test GPU",
        uuid=f"GPU-0000000{index}-aaaa",
        total_bytes=int(total_gib * GIB),
        free_bytes=int(free_gib * GIB),
        processes=tuple(GpuProcess(1000 + n, GIB) for n in range(processes)),
    )


MACHINE = TableProbe(gpu(0, 20), gpu(1, 70), gpu(2, 5), gpu(3, 40))


def test_no_gpu_in_the_table_means_the_cpu() -> None:
    placement = choose_devices(GIB, probe=TableProbe(reason="no driver"))
    assert placement == Placement("cpu", reason="no driver")
    assert placement.runs_now and placement.processes == 1 and placement.device == "cpu"


def test_takes_the_gpu_with_the_most_free_memory() -> None:
    placement = choose_devices(10 * GIB, probe=MACHINE)
    assert placement.kind == "gpu"
    assert placement.gpu_indices == (1,)
    assert placement.device == "cuda:1"


def test_several_gpus_come_most_free_first_and_only_those_with_room() -> None:
    assert choose_devices(10 * GIB, wanted=8, probe=MACHINE).gpu_indices == (1, 3, 0)
    assert choose_devices(30 * GIB, wanted=2, probe=MACHINE).gpu_indices == (1, 3)
    # Equal free memory: the lower index first, so the choice is stable.
    twins = TableProbe(gpu(1, 30), gpu(0, 30))
    assert choose_devices(GIB, wanted=2, probe=twins).gpu_indices == (0, 1)


def test_waits_when_gpus_could_hold_the_job_but_none_has_room() -> None:
    placement = choose_devices(75 * GIB, probe=MACHINE)
    assert placement.kind == "wait"
    assert not placement.runs_now
    assert "0 have room" in placement.reason
    with pytest.raises(ValueError):
        placement.worker_env()


def test_excluded_gpus_are_busy_not_absent() -> None:
    assert choose_devices(10 * GIB, exclude={1}, probe=MACHINE).gpu_indices == (3,)
    assert choose_devices(30 * GIB, exclude=[1, 3], probe=MACHINE).kind == "wait"
    # Excluded GPUs still count as ones that could hold the job later.
    only = TableProbe(gpu(0, 70))
    assert choose_devices(30 * GIB, exclude=[0], probe=only).kind == "wait"


def test_minimum_gpus_or_wait() -> None:
    assert choose_devices(30 * GIB, wanted=3, minimum=3, probe=MACHINE).kind == "wait"
    placement = choose_devices(30 * GIB, wanted=3, minimum=2, probe=MACHINE)
    assert placement.gpu_indices == (1, 3)
    with pytest.raises(ValueError):
        choose_devices(GIB, wanted=1, minimum=2, probe=MACHINE)


def test_a_job_no_gpu_could_ever_hold_is_too_large_not_queued() -> None:
    placement = choose_devices(100 * GIB, probe=MACHINE)
    assert placement.kind == "too_large"
    assert "80.0 GiB" in placement.reason
    assert choose_devices(30 * GIB, minimum=5, wanted=5, probe=MACHINE).kind == "too_large"


def _state_of_60_gib(shards: int) -> int:
    """A job whose training state is 60 GiB, plus 1 GiB a process that does not shard."""
    return int((1 + 60 / shards) * GIB)


def test_a_job_one_gpu_could_hold_whole_is_replicated() -> None:
    two_large = TableProbe(gpu(0, 70), gpu(1, 75))
    placement = choose_training_devices(_state_of_60_gib, 2, probe=two_large)
    assert (placement.kind, placement.gpu_indices, placement.strategy) == ("gpu", (1, 0), "ddp")
    # One large GPU is enough for a whole copy: it runs there alone, not sharded.
    one_large = TableProbe(gpu(0, 80), gpu(1, 40, total_gib=40))
    placement = choose_training_devices(_state_of_60_gib, 2, probe=one_large)
    assert (placement.kind, placement.gpu_indices, placement.strategy) == ("gpu", (0,), "ddp")


def test_a_job_no_gpu_could_hold_whole_is_sharded_over_all_it_may_take() -> None:
    small = TableProbe(gpu(0, 40, total_gib=40), gpu(1, 39, total_gib=40), gpu(2, 3, 40))
    placement = choose_training_devices(_state_of_60_gib, 2, probe=small)
    assert (placement.kind, placement.gpu_indices, placement.strategy) == ("gpu", (0, 1), "fsdp")
    assert placement.processes == 2 and placement.device == "cuda:0,1"
    assert "no GPU holds a whole copy" in placement.reason and "31.0 GiB" in placement.reason
    # Sharded jobs need every GPU they were given: one with room is not enough.
    busy = TableProbe(gpu(0, 40, total_gib=40), gpu(1, 10, total_gib=40))
    waiting = choose_training_devices(_state_of_60_gib, 2, probe=busy)
    assert (waiting.kind, waiting.strategy) == ("wait", "fsdp")
    assert "1 have room now" in waiting.reason


def test_a_job_too_large_even_sharded_fails_with_both_reasons() -> None:
    small = TableProbe(gpu(0, 20, total_gib=20), gpu(1, 20, total_gib=20))
    placement = choose_training_devices(_state_of_60_gib, 2, probe=small)
    assert placement.kind == "too_large"
    assert "61.0 GiB" in placement.reason and "sharded over 2 GPUs" in placement.reason
    assert "31.0 GiB" in placement.reason
    # One GPU a job: nothing to shard over.
    alone = choose_training_devices(_state_of_60_gib, 1, probe=small)
    assert alone.kind == "too_large" and "FSDP" not in alone.reason
    # No GPU: the CPU, whole.
    cpu = choose_training_devices(_state_of_60_gib, 2, probe=TableProbe(reason="no driver"))
    assert (cpu.kind, cpu.strategy) == ("cpu", "ddp")


def test_unshared_placement_skips_gpus_running_other_processes() -> None:
    probe = TableProbe(gpu(0, 70, processes=1), gpu(1, 30))
    assert choose_devices(10 * GIB, probe=probe).gpu_indices == (0,)
    assert choose_devices(10 * GIB, shared=False, probe=probe).gpu_indices == (1,)
    assert choose_devices(40 * GIB, shared=False, probe=probe).kind == "wait"


def test_worker_environment_and_command() -> None:
    gpus = Placement("gpu", (3, 1))
    assert gpus.worker_env() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "3,1"}
    assert gpus.processes == 2
    command = gpus.worker_command("ownchat_trainer.worker", "spec.json", python="py")
    assert command == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "ownchat_trainer.worker",
        "spec.json",
    ]
    one = Placement("gpu", (2,))
    assert one.worker_command("m", "a", python="py") == ["py", "-m", "m", "a"]
    assert one.worker_env()["CUDA_VISIBLE_DEVICES"] == "2"
    cpu = Placement("cpu", reason="none")
    assert cpu.worker_env() == {"CUDA_VISIBLE_DEVICES": ""}
    assert cpu.worker_command("m", python="py") == ["py", "-m", "m"]


def test_full_fine_tuning_costs_sixteen_bytes_a_parameter_plus_headroom() -> None:
    billion = 1_000_000_000
    full = estimate_training_memory(billion, "full")
    assert (full.weights, full.gradients, full.optimizer) == (4 * billion, 4 * billion, 8 * billion)
    assert full.activations == int(0.2 * 16 * billion)
    assert full.overhead == GIB + int(0.1 * (16 + 3.2) * billion)
    assert full.total == estimate_training_bytes(billion, "full")
    assert "GiB" in full.describe()
    # A full DPO run also keeps a frozen bf16 reference.
    dpo = estimate_training_memory(billion, "full", reference_model=True)
    assert dpo.weights == 6 * billion


def test_lora_costs_the_frozen_bf16_base_plus_the_adapter() -> None:
    billion = 1_000_000_000
    lora = estimate_training_memory(billion, "lora", trainable_parameters=10_000_000)
    assert lora.weights == 2 * billion + 4 * 10_000_000
    assert lora.gradients == 4 * 10_000_000 and lora.optimizer == 8 * 10_000_000
    assert estimate_training_bytes(billion, "lora") < estimate_training_bytes(billion, "full") / 4
    # The reference of LoRA DPO is the base itself: nothing more.
    assert estimate_training_memory(
        billion, "lora", reference_model=True
    ) == estimate_training_memory(billion, "lora")


def test_lora_counts_the_float32_embedding_and_fsdp_its_gathered_units() -> None:
    shape = {"hidden_size": 2048, "num_layers": 16, "vocab_size": 128256}
    embedding = 128256 * 2048
    plain = estimate_training_memory(1_235_814_400, "lora", trainable_parameters=0)
    shaped = estimate_training_memory(1_235_814_400, "lora", trainable_parameters=0, **shape)
    assert shaped.weights - plain.weights == 2 * embedding
    # Without the layers' size from the weight files, the embedding is the root and
    # the rest shared evenly over the layers.
    layer = (1_235_814_400 - embedding) // 16
    sharded = estimate_training_memory(
        1_235_814_400, "lora", trainable_parameters=0, shards=2, **shape
    )
    assert sharded.weights == shaped.weights // 2 + 2 * (embedding + 2 * layer) + 2 * embedding
    # Knowing nothing of the layers, the whole model counts as gathered whole.
    blind = estimate_training_memory(1000, "full", shards=2)
    assert (blind.weights, blind.gradients) == (2000 + 4 * 1000, 2000 + 4 * 1000)


def test_activations_from_the_shapes_and_fsdp_shards() -> None:
    shaped = estimate_training_memory(
        1000, "full", tokens_per_step=2048, hidden_size=576, num_layers=30, vocab_size=49152
    )
    assert shaped.activations == 34 * 2048 * 30 * 576 + 10 * 2048 * 49152
    sharded = estimate_training_memory(1000, "full", shards=4, num_layers=10, layer_parameters=90)
    assert sharded.optimizer == 2000
    # A quarter of the weights, and whole while a step runs: the root unit's 100
    # and two layers' 90 each; the gradients of the root and one layer before
    # they are reduce-scattered.
    assert sharded.weights == 1000 + 4 * (100 + 2 * 90)
    assert sharded.gradients == 1000 + 4 * (100 + 90)
    with pytest.raises(ValueError):
        estimate_training_bytes(1000, "qlora")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        estimate_training_bytes(1000, "full", shards=0)


def test_nvml_on_this_machine_reports_no_gpu_and_places_on_the_cpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ownchat.trainer.placement")
    probe = NvmlProbe()
    survey = probe.survey()
    if survey.gpus:
        pytest.skip("this machine has a GPU")
    assert survey.reason
    assert survey.reason in caplog.text
    placement = choose_devices(GIB, probe=probe)
    assert placement.kind == "cpu" and placement.reason == survey.reason
    # The reason is logged once, not at every queue pass.
    assert caplog.text.count(survey.reason) == 1
    assert choose_devices(GIB).kind == "cpu"
    assert survey_gpus().gpus == ()


def test_placement_does_not_load_torch() -> None:
    code = (
        "import sys, ownchat_trainer.placement as p; p.choose_devices(1); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


class _FakeNvml:
    """Stands in for the pynvml module to make NVML's failures happen on a machine without it."""

    NVMLError = pynvml.NVMLError

    def __init__(self, devices: list[Any], count_error: bool = False) -> None:
        self.devices = devices
        self.count_error = count_error
        self.shut_down = False

    def nvmlInit(self) -> None:  # noqa: N802 - the pynvml names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        if self.count_error:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:  # noqa: N802
        device = self.devices[index]
        if device is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return device

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # noqa: N802
        return SimpleNamespace(total=handle.total, free=handle.free)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802
        if handle.processes is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return handle.processes

    def nvmlDeviceGetName(self, handle: Any) -> bytes:  # noqa: N802
        return b"Fake H100"

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
        return str(handle.uuid)


def _device(uuid: str, processes: list[Any] | None = None) -> Any:
    return SimpleNamespace(uuid=uuid, total=80 * GIB, free=60 * GIB, processes=processes)


def test_nvml_errors_read_as_fewer_or_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = [
        SimpleNamespace(pid=7, usedGpuMemory=2 * GIB),
        SimpleNamespace(pid=8, usedGpuMemory=None),
        SimpleNamespace(pid=9, usedGpuMemory=2**64 - 1),
    ]
    fake = _FakeNvml([_device("GPU-aa", busy), None, _device("GPU-bb")])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    survey = NvmlProbe({}).survey()
    assert [g.index for g in survey.gpus] == [0, 2]  # the lost GPU 1 is left out
    assert survey.gpus[0].name == "Fake H100"
    assert survey.gpus[0].processes == (
        GpuProcess(7, 2 * GIB),
        GpuProcess(8, None),
        GpuProcess(9, None),
    )
    assert survey.gpus[1].processes == ()  # not supported: unknown, not fatal
    assert fake.shut_down

    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([], count_error=True))
    failed = NvmlProbe({}).survey()
    assert failed.gpus == () and failed.reason and "Driver Not Loaded" in failed.reason
    assert choose_devices(GIB, probe=NvmlProbe({})).kind == "cpu"


def test_cuda_visible_devices_limits_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "pynvml", _FakeNvml([_device("GPU-aa"), _device("GPU-bb"), _device("GPU-cc")])
    )

    def visible(value: str) -> list[int]:
        return [g.index for g in NvmlProbe({"CUDA_VISIBLE_DEVICES": value}).survey().gpus]

    assert visible("2,0") == [2, 0]
    assert visible("GPU-bb") == [1]
    assert visible("1,-1,2") == [1]  # CUDA stops at the first entry it cannot resolve
    empty = NvmlProbe({"CUDA_VISIBLE_DEVICES": ""}).survey()
    assert empty.gpus == () and empty.reason and "hides every GPU" in empty.reason

"""Where a training job runs: on which GPUs, on the CPU, or not yet.

Service side. The GPUs are read through NVML (``nvidia-ml-py``, ``import
pynvml``); this module never imports torch nor initialises CUDA, so the service
process stays small and leaves the devices to the workers.

A machine without a GPU is normal: no NVML library, no driver or no device all
mean "train on the CPU", with the reason logged, never an exception. When GPUs
exist but none has room now, the job waits in the queue; when none could hold
it even idle, waiting would never end, and the placement says so. A job
whose training state no single GPU could hold, on a machine whose service gives
a job several GPUs, is sharded over them with FSDP (``choose_training_devices``).

The NVML access sits behind ``GpuProbe`` so that the decision can be tested
with a table of made-up devices; ``NvmlProbe`` is the real one.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

logger = logging.getLogger("ownchat.trainer.placement")

GIB = 1024**3

# Bytes a parameter costs in training, by what is kept of it on the GPU.
FULL_BYTES_PER_PARAMETER = 16
"""Full fine-tuning with AdamW: fp32 weights (4, also the master copy bf16
autocast reads from), fp32 gradients (4), and AdamW's two fp32 moments (4 + 4)."""
FROZEN_BYTES_PER_PARAMETER = 2
"""A frozen weight held in bf16: LoRA's base model (its linear layers, cast once on
a GPU by ``lora.hold_frozen_linear_weights_in``; the norms and the input
embedding stay float32, and the estimate counts the embedding's 2 bytes more),
DPO's reference model."""
DEFAULT_LORA_TRAINABLE_SHARE = 0.02
"""LoRA of rank 16 on every linear layer trains about 0.5-4 % of a 0.1-10 B
model's parameters; used when the caller does not count them."""
ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = 34
"""Activations kept for the backward pass, per token, decoder layer and hidden
unit, in 16-bit (Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models", without the attention-score term that SDPA and flash
attention never store)."""
LOGIT_BYTES_PER_TOKEN_VOCAB = 10
"""bf16 logits (2) upcast to fp32 for the loss (4) and their fp32 gradient (4).
A chunked cross-entropy never holds them all: then this overestimates."""
FALLBACK_ACTIVATION_SHARE = 0.2
"""Activations as a share of the parameter state when their shape is not given."""
FRAGMENTATION_SHARE = 0.1
"""The caching allocator's fragmentation, on top of what tensors need."""
CUDA_OVERHEAD_BYTES = 1 * GIB
"""The CUDA context, cuBLAS workspaces and NCCL buffers of one process."""

Method = Literal["full", "lora"]
Strategy = Literal["ddp", "fsdp"]
"""How several worker processes share a job: every process holds the whole
training state (``"ddp"``, the faster), or each holds 1/n of it (``"fsdp"``)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """What a training process holds on one GPU, in bytes, by kind."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        """Everything: the number to compare with a GPU's free memory."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def describe(self) -> str:
        """One line for logs and job events, in GiB."""
        parts = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
            ("overhead", self.overhead),
        ]
        listed = ", ".join(f"{name} {_gib(size)}" for name, size in parts)
        return f"{_gib(self.total)} ({listed})"


def estimate_training_memory(
    parameters: int,
    method: Method,
    *,
    trainable_parameters: int | None = None,
    tokens_per_step: int | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    vocab_size: int | None = None,
    reference_model: bool = False,
    shards: int = 1,
    layer_parameters: int | None = None,
) -> MemoryEstimate:
    """The GPU memory one training process needs, by kind; see ``estimate_training_bytes``."""
    if parameters < 0:
        raise ValueError(f"parameters must be >= 0, got {parameters}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    # The input embedding's table stays float32 even where the rest of a frozen
    # base is held in bf16 (``lora.hold_frozen_linear_weights_in`` casts linear
    # layers only).
    embedding = min(vocab_size * hidden_size, parameters) if vocab_size and hidden_size else 0
    if method == "full":
        weights = 4 * parameters
        gradients = 4 * parameters
        optimizer = 8 * parameters
        # A full DPO run keeps the starting model, frozen, as its reference.
        if reference_model:
            weights += FROZEN_BYTES_PER_PARAMETER * parameters
        weight_bytes, trainable_share = 4, 1.0
    elif method == "lora":
        trainable = (
            math.ceil(parameters * DEFAULT_LORA_TRAINABLE_SHARE)
            if trainable_parameters is None
            else trainable_parameters
        )
        # The adapter trains like a full model; the base is frozen in bf16, and
        # DPO's reference is that base with the adapter switched off: no copy.
        weights = FROZEN_BYTES_PER_PARAMETER * parameters + 2 * embedding + 4 * trainable
        gradients = 4 * trainable
        optimizer = 8 * trainable
        weight_bytes = FROZEN_BYTES_PER_PARAMETER
        trainable_share = trainable / parameters if parameters else 0.0
    else:
        raise ValueError(f"unknown training method {method!r}; use 'full' or 'lora'")
    # FSDP splits the parameter state evenly over the ranks; activations are per rank.
    weights, gradients, optimizer = (
        math.ceil(size / shards) for size in (weights, gradients, optimizer)
    )
    if shards > 1:
        root, unit = _fsdp_units(parameters, num_layers, layer_parameters, embedding)
        # Gathered whole while a step runs: the root's parameters all along (FSDP
        # does not reshard the root after the forward), the layer computing and
        # the next one prefetched; and the gradients of the root and of one
        # layer before they are reduce-scattered.
        weights += weight_bytes * (root + 2 * unit) + (2 * embedding if method == "lora" else 0)
        gradients += math.ceil(4 * trainable_share * (root + unit))
    state = weights + gradients + optimizer
    if tokens_per_step and hidden_size and num_layers:
        activations = (
            ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN * tokens_per_step * num_layers * hidden_size
        )
        if vocab_size:
            activations += LOGIT_BYTES_PER_TOKEN_VOCAB * tokens_per_step * vocab_size
    else:
        activations = math.ceil(FALLBACK_ACTIVATION_SHARE * state)
    overhead = CUDA_OVERHEAD_BYTES + math.ceil(FRAGMENTATION_SHARE * (state + activations))
    return MemoryEstimate(weights, gradients, optimizer, activations, overhead)


def _fsdp_units(
    parameters: int, num_layers: int | None, layer_parameters: int | None, embedding: int
) -> tuple[int, int]:
    """The parameters of FSDP's root unit (embeddings, final norm, output layer)
    and of its largest layer unit, from what is known of the model."""
    if num_layers and layer_parameters:
        return max(parameters - num_layers * layer_parameters, 0), layer_parameters
    if num_layers:
        return embedding, math.ceil(max(parameters - embedding, 0) / num_layers)
    # Nothing says how the model divides: as if it were all root, gathered whole.
    return parameters, 0


def estimate_training_bytes(
    parameters: int,
    method: Method,
    *,
    trainable_parameters: int | None = None,
    tokens_per_step: int | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    vocab_size: int | None = None,
    reference_model: bool = False,
    shards: int = 1,
    layer_parameters: int | None = None,
) -> int:
    """The bytes of GPU memory one training process needs, as a conservative estimate.

    - ``"full"``: 16 bytes a parameter (fp32 weights, fp32 gradients, AdamW's
      two fp32 moments); ``reference_model=True`` (full DPO) adds a frozen bf16
      copy, 2 bytes a parameter.
    - ``"lora"``: 2 bytes a parameter (the frozen base in bf16) and 2 more for
      each of the input embedding's (``vocab_size`` x ``hidden_size``, which
      stays float32), plus 16 bytes a trainable adapter parameter
      (``trainable_parameters``; 2 % of ``parameters`` when not given). DPO's
      reference is the base itself.
    - Activations: with ``tokens_per_step`` (the tokens of one process's step,
      padding included; for DPO, chosen plus rejected), ``hidden_size`` and
      ``num_layers``, 34 bytes a token, layer and hidden unit (bf16 autocast,
      no activation checkpointing) plus, with ``vocab_size``, 10 bytes a token
      and vocabulary entry for the logits; without them, 20 % of the state.
    - Overhead: 1 GiB for the CUDA context and workspaces, plus 10 % of the
      rest for the allocator's fragmentation.

    ``shards`` is the number of FSDP ranks the parameter state is split over
    (1 for one GPU or for DDP, which copies the whole state to every rank).
    A sharded process also holds, while a step runs, the root unit's weights
    (everything outside the decoder layers) and two layers' whole, and the
    gradients of the root and one layer before they are reduce-scattered:
    ``layer_parameters`` is the largest layer's (from the weight files), else
    an even share of what the embedding leaves.
    The result is per process, to compare with each chosen GPU's free memory.
    """
    return estimate_training_memory(
        parameters,
        method,
        trainable_parameters=trainable_parameters,
        tokens_per_step=tokens_per_step,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=vocab_size,
        reference_model=reference_model,
        shards=shards,
        layer_parameters=layer_parameters,
    ).total


@dataclass(frozen=True)
class GpuProcess:
    """A compute process using a GPU, as the driver reports it."""

    pid: int
    # None when the driver does not tell (some containers, MIG).
    used_bytes: int | None


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML sees it now."""

    # NVML's index, which is PCI bus order; the worker's environment makes
    # CUDA count the same way (see Placement.worker_env).
    index: int
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class GpuSurvey:
    """The GPUs the service may use, or why there are none."""

    gpus: tuple[Gpu, ...]
    # Set when ``gpus`` is empty: the reason training goes to the CPU.
    reason: str | None = None


class GpuProbe(Protocol):
    """Something that lists the machine's GPUs; ``NvmlProbe`` asks the driver."""

    def survey(self) -> GpuSurvey:
        """The GPUs now; never raises: a failure is a survey with no GPU and a reason."""
        ...


class NvmlProbe:
    """Reads the GPUs through NVML; any NVML failure reads as "no GPU".

    Honours ``CUDA_VISIBLE_DEVICES`` of ``environ`` (the process environment
    when None) the way CUDA does: indices or ``GPU-`` UUID prefixes, up to the
    first entry that is neither; an empty value hides every GPU.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._last_reason: str | None = None

    def survey(self) -> GpuSurvey:
        """Initialises NVML, reads every device, shuts NVML down again."""
        try:
            gpus = self._read_all()
        except Exception as error:  # noqa: BLE001 - no GPU is a normal outcome, never a crash
            return self._none(f"NVML is not usable ({type(error).__name__}: {error})")
        if not gpus:
            return self._none("NVML reports no GPU")
        environ = os.environ if self._environ is None else self._environ
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = _visible(gpus, visible)
            if not gpus:
                return self._none(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
        self._last_reason = None
        return GpuSurvey(tuple(gpus))

    def _none(self, reason: str) -> GpuSurvey:
        # The service asks at every queue pass: say it once, not every time.
        if reason != self._last_reason:
            logger.info("no GPU, training runs on the CPU: %s", reason)
            self._last_reason = reason
        return GpuSurvey((), reason)

    def _read_all(self) -> list[Gpu]:
        import pynvml

        pynvml.nvmlInit()
        try:
            gpus = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                try:
                    gpus.append(_read_one(pynvml, index))
                except pynvml.NVMLError as error:
                    # One lost or broken device does not hide the others.
                    logger.warning("GPU %d left out: %s", index, error)
            return gpus
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as error:
                logger.debug("NVML shutdown: %s", error)


def _read_one(pynvml: Any, index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        running = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError as error:
        # Not supported or not permitted here: memory still tells whether a job fits.
        logger.debug("GPU %d processes unknown: %s", index, error)
        running = []
    processes = tuple(
        GpuProcess(int(p.pid), _known_bytes(getattr(p, "usedGpuMemory", None))) for p in running
    )
    return Gpu(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        total_bytes=int(memory.total),
        free_bytes=int(memory.free),
        processes=processes,
    )


def _known_bytes(value: Any) -> int | None:
    # NVML reports "not available" as None or as the largest unsigned value.
    if value is None or int(value) >= 2**63:
        return None
    return int(value)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _visible(gpus: list[Gpu], value: str) -> list[Gpu]:
    chosen: list[Gpu] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.isdigit():
            found = [gpu for gpu in gpus if gpu.index == int(entry)]
        elif entry.startswith("GPU-"):
            found = [gpu for gpu in gpus if gpu.uuid.startswith(entry)]
        else:
            found = []
        if not found:
            # CUDA ignores everything from the first entry it cannot resolve.
            break
        chosen.extend(gpu for gpu in found if gpu not in chosen)
    return chosen


def survey_gpus(probe: GpuProbe | None = None) -> GpuSurvey:
    """The GPUs of this machine with their total and free memory and compute processes."""
    return (probe or NvmlProbe()).survey()


PlacementKind = Literal["cpu", "gpu", "wait", "too_large"]


@dataclass(frozen=True)
class Placement:
    """Where a job goes now.

    - ``"cpu"``: the machine has no usable GPU; the worker runs on the CPU.
    - ``"gpu"``: start the worker on ``gpu_indices`` (NVML indices, the one
      with the most free memory first); more than one means one process a GPU
      under torchrun.
    - ``"wait"``: GPUs that could hold the job exist but are busy: keep it queued.
    - ``"too_large"``: no GPU of this machine could hold it even idle; fail the
      job with ``reason`` (LoRA, or FSDP over more GPUs, may fit).

    ``strategy`` says how the processes share the job's state (``Strategy``).
    """

    kind: PlacementKind
    gpu_indices: tuple[int, ...] = ()
    reason: str = ""
    strategy: Strategy = "ddp"

    @property
    def runs_now(self) -> bool:
        """Whether a worker should be started now."""
        return self.kind in ("cpu", "gpu")

    @property
    def processes(self) -> int:
        """Worker processes to start: one a GPU, one on the CPU."""
        return max(1, len(self.gpu_indices))

    @property
    def device(self) -> str:
        """The device as a job reports it: "cpu", "cuda:3" or "cuda:3,1"."""
        if self.kind != "gpu":
            return "cpu"
        return "cuda:" + ",".join(str(index) for index in self.gpu_indices)

    def worker_env(self) -> dict[str, str]:
        """Variables to set in the worker's environment (over the service's own).

        The GPUs are named by NVML index, and CUDA is told to number them in
        PCI bus order as NVML does (its default puts the fastest first). On the
        CPU every GPU is hidden, so a worker cannot take one the service did
        not give it.
        """
        if not self.runs_now:
            raise ValueError(f"no worker runs for a {self.kind!r} placement: {self.reason}")
        if self.kind == "cpu":
            return {"CUDA_VISIBLE_DEVICES": ""}
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": ",".join(str(index) for index in self.gpu_indices),
        }

    def worker_command(self, module: str, *args: str, python: str | None = None) -> list[str]:
        """The command line that starts the worker module with its arguments.

        One process as ``python -m module``; several under torchrun on this
        machine alone (``--standalone`` picks a free rendezvous port, so jobs
        side by side do not collide). Signals sent to torchrun reach every rank.
        """
        interpreter = python or sys.executable
        if self.processes == 1:
            return [interpreter, "-m", module, *args]
        return [
            interpreter,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={self.processes}",
            "-m",
            module,
            *args,
        ]


def choose_devices(
    required_bytes: int,
    wanted: int = 1,
    exclude: Collection[int] = (),
    *,
    minimum: int = 1,
    shared: bool = True,
    probe: GpuProbe | None = None,
) -> Placement:
    """Picks GPUs for a job that needs ``required_bytes`` on each of them.

    Takes up to ``wanted`` GPUs whose free memory is at least ``required_bytes``,
    the most free first, and at least ``minimum`` of them; fewer than that
    means waiting. ``exclude`` names GPUs not to use now (for example those the
    service gave to running jobs whose memory is not taken yet): they count as
    busy, not as absent. ``shared=False`` also counts a GPU that runs any
    compute process as busy. No GPU at all (no NVML, no driver, no device)
    gives the CPU. ``required_bytes`` comes from ``estimate_training_bytes``.
    """
    if required_bytes < 0:
        raise ValueError(f"required_bytes must be >= 0, got {required_bytes}")
    if not 1 <= minimum <= wanted:
        raise ValueError(f"need 1 <= minimum <= wanted, got minimum={minimum}, wanted={wanted}")
    survey = survey_gpus(probe)
    if not survey.gpus:
        return Placement("cpu", reason=survey.reason or "no GPU")

    need = _gib(required_bytes)
    large_enough = [gpu for gpu in survey.gpus if gpu.total_bytes >= required_bytes]
    if len(large_enough) < minimum:
        largest = max(gpu.total_bytes for gpu in survey.gpus)
        return Placement(
            "too_large",
            reason=(
                f"needs {need} on each of {minimum} GPU(s); {len(large_enough)} of this "
                f"machine's {len(survey.gpus)} GPU(s) are that large (the largest has "
                f"{_gib(largest)})"
            ),
        )

    excluded = set(exclude)
    ready = [
        gpu
        for gpu in large_enough
        if gpu.index not in excluded
        and gpu.free_bytes >= required_bytes
        and (shared or not gpu.processes)
    ]
    if len(ready) < minimum:
        free = ", ".join(
            f"{gpu.index}: {_gib(gpu.free_bytes)} free"
            + (" (excluded)" if gpu.index in excluded else "")
            + (f", {len(gpu.processes)} process(es)" if gpu.processes else "")
            for gpu in survey.gpus
        )
        return Placement(
            "wait",
            reason=f"needs {need} on each of {minimum} GPU(s); {len(ready)} have room now ({free})",
        )
    ready.sort(key=lambda gpu: (-gpu.free_bytes, gpu.index))
    chosen = tuple(gpu.index for gpu in ready[:wanted])
    return Placement(
        "gpu",
        gpu_indices=chosen,
        reason=f"needs {need} per GPU; GPU(s) {', '.join(map(str, chosen))} have room",
    )


def choose_training_devices(
    required_bytes: Callable[[int], int],
    wanted: int = 1,
    *,
    probe: GpuProbe | None = None,
) -> Placement:
    """Picks GPUs for a training job, sharding its state over them when it must.

    ``required_bytes(shards)`` is what one process needs when the parameter
    state is split over ``shards`` processes (``sizing.training_bytes``).
    Whole replicas (DDP) are preferred: they communicate less. Only a job that
    no GPU of the machine could hold whole, given ``wanted`` > 1 GPUs, is
    placed sharded over exactly ``wanted`` GPUs (FSDP): it waits until that
    many have room, and is too large when fewer than that could ever hold a
    shard.
    """
    survey = survey_gpus(probe)
    fixed = _SurveyProbe(survey)
    replicated = choose_devices(required_bytes(1), wanted, probe=fixed)
    if replicated.kind != "too_large" or wanted < 2:
        return replicated
    sharded = choose_devices(required_bytes(wanted), wanted, minimum=wanted, probe=fixed)
    if sharded.kind == "too_large":
        return Placement(
            "too_large",
            reason=f"{replicated.reason}; sharded over {wanted} GPUs with FSDP it "
            + sharded.reason,
        )
    return Placement(
        sharded.kind,
        gpu_indices=sharded.gpu_indices,
        reason=f"no GPU holds a whole copy ({replicated.reason}); sharded over {wanted} "
        + f"GPUs with FSDP it {sharded.reason}",
        strategy="fsdp",
    )


class _SurveyProbe:
    """One survey answered twice: both choices see the same free memory."""

    def __init__(self, survey: GpuSurvey) -> None:
        self._survey = survey

    def survey(self) -> GpuSurvey:
        return self._survey


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"

"""Atomic, resumable training-state checkpoints.

A checkpoint is the directory ``<checkpoints_dir>/step-<n>/`` holding:

- ``model/``: whatever the caller's ``write_model`` wrote (a full model or a
  peft adapter, with its tokenizer); the caller loads it back itself;
- ``optimizer.pt`` and ``scheduler.pt``: their ``state_dict()`` (the worker
  passes its optimizer as ``distributed.OptimizerByName``: keyed by parameter
  name and whole, whatever the strategy);
- ``rng_state.pt``: the random generators' states (python ``random``, torch
  CPU, every CUDA device, numpy's global generator if numpy was imported), one
  entry per data-parallel rank;
- ``training_state.json``: the loop's bookkeeping (:class:`TrainingState`);
- ``COMPLETE``: the completion marker, written last.

Everything is written under a temporary name (``.tmp-step-<n>-<random>``),
fsynced, renamed to ``step-<n>``, and only then marked complete, with the
parent directory fsynced after each rename. A directory without the marker
never counts: a process killed at any point of a save (even ``kill -9``) leaves
the previous complete checkpoint as the one :func:`latest_checkpoint` returns,
and :func:`clean_incomplete` removes the leftovers.

Resuming continues exactly where the run stopped: the caller rebuilds its
model (from ``step-<n>/model``), optimizer, scheduler and batch order as at the
start, then calls :func:`load_checkpoint` (restores the optimizer, scheduler
and random generators) and :func:`skip_batches` on the fresh batch order with
``state.batches_consumed``. On CPU with deterministic algorithms the losses
then match an uninterrupted run's bit for bit.

One writer per checkpoints directory: a second process saving, cleaning or
pruning the same directory at the same time is not supported.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from ownchat.artifacts import fsync_directory

CHECKPOINT_PREFIX = "step-"
TEMPORARY_PREFIX = ".tmp-"
COMPLETE_MARKER = "COMPLETE"
MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"
STATE_FILE = "training_state.json"

_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")

RngState = dict[str, Any]
T = TypeVar("T")


class Stateful(Protocol):
    """Anything with ``state_dict``/``load_state_dict``: an optimizer or LR scheduler."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@dataclass
class TrainingState:
    """The training loop's position and bookkeeping, as saved with a checkpoint.

    ``step`` counts optimizer steps completed. ``batches_consumed`` counts the
    batches drawn from the batch order (more than ``step`` with gradient
    accumulation): give it to :func:`skip_batches` to continue the same order.
    ``samples_consumed`` is informational. ``epoch`` is 0-based.
    ``best_validation_loss``/``best_step`` track the best validation so far (for
    early stopping and for :func:`prune_checkpoints`' ``keep_steps``);
    ``metrics`` holds anything JSON-serialisable the loop wants back.
    """

    step: int = 0
    batches_consumed: int = 0
    samples_consumed: int = 0
    epoch: int = 0
    best_validation_loss: float | None = None
    best_step: int | None = None
    steps_without_improvement: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The state as a JSON object (``metrics`` must be JSON-serialisable)."""
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingState:
        """The state from :meth:`to_json`'s text; unknown keys are ignored."""
        value = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


def capture_rng_state() -> RngState:
    """This process's random generators' states, for :func:`restore_rng_state`.

    Covers python ``random``, torch's CPU generator, every CUDA device's
    generator (when CUDA is available) and numpy's global generator (only if
    numpy is already imported). Plain python values and CPU tensors only, so it
    can be gathered across ranks and loaded with ``weights_only=True``.
    """
    state: RngState = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, position, has_gauss, cached = numpy.random.get_state(legacy=True)
        state["numpy"] = (str(name), keys.tolist(), int(position), int(has_gauss), float(cached))
    return state


def restore_rng_state(state: RngState) -> None:
    """Puts back the generators' states from :func:`capture_rng_state`.

    CUDA states are restored for as many devices as both the saved state and
    this process have; numpy's only if it was saved.
    """
    python = state["python"]
    # weights_only loading turns the inner tuple into a list; setstate needs tuples.
    random.setstate((python[0], tuple(python[1]), python[2]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)
    saved_numpy = state.get("numpy")
    if saved_numpy is not None:
        import numpy

        name, keys, position, has_gauss, cached = saved_numpy
        numpy.random.set_state(
            (name, numpy.asarray(keys, dtype=numpy.uint32), position, has_gauss, cached)
        )


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``step-<n>`` directory's name; ``None`` for any other name."""
    match = _CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a checkpoint whose save finished (it has the marker)."""
    return checkpoint_step(path) is not None and (path / COMPLETE_MARKER).is_file()


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The complete checkpoints in a directory, oldest (lowest step) first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or ``None`` if there is none.

    Temporary directories and directories without the completion marker are
    ignored (a save was interrupted there).
    """
    found = complete_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    optimizer: Stateful | None,
    scheduler: Stateful | None,
    state: TrainingState,
    *,
    rng_states: Sequence[RngState] | None = None,
) -> Path:
    """Writes ``<checkpoints_dir>/step-<step>`` atomically and returns its path.

    ``write_model(directory)`` must write the model (or adapter) and tokenizer
    into ``directory`` (it does not exist yet; ``save_pretrained`` creates it).
    Call this after the step's ``optimizer.step()``/``scheduler.step()``, with
    ``state`` describing the position after that step: the random generators
    are captured now, so the resumed run draws what the next step would have.

    ``rng_states`` defaults to this process's :func:`capture_rng_state`; under
    data parallelism rank 0 saves and passes every rank's state in rank order
    (e.g. gathered with ``torch.distributed.all_gather_object``), and each rank
    loads its own with ``load_checkpoint(..., rank=...)``.

    An existing ``step-<step>`` is replaced only once the new one is fully
    written; while it is being swapped, :func:`latest_checkpoint` sees the
    previous complete checkpoint. Raises whatever writing raised, removing the
    temporary directory.
    """
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    rng = list(rng_states) if rng_states is not None else [capture_rng_state()]
    temporary = Path(
        tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}step-{step}-", dir=checkpoints_dir)
    )
    try:
        write_model(temporary / MODEL_DIR)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), temporary / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), temporary / SCHEDULER_FILE)
        torch.save(rng, temporary / RNG_FILE)
        (temporary / STATE_FILE).write_text(
            dataclasses.replace(state, step=step).to_json(), encoding="utf-8"
        )
        _fsync_tree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    target = checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"
    if target.exists():
        _retire(target, checkpoints_dir)
    os.rename(temporary, target)
    fsync_directory(checkpoints_dir)
    _write_marker(target, step)
    fsync_directory(checkpoints_dir)
    return target


def load_checkpoint(
    path: Path,
    optimizer: Stateful | None,
    scheduler: Stateful | None,
    map_location: str | torch.device = "cpu",
    *,
    rank: int = 0,
    restore_rng: bool = True,
) -> TrainingState:
    """Restores the optimizer, scheduler and random generators from a checkpoint.

    The model is NOT loaded here: the caller builds it from ``path / "model"``
    (``from_pretrained`` for a full model, ``PeftModel.from_pretrained`` for an
    adapter) before creating the optimizer over its parameters, exactly as at
    the start of the run. Call this last, after everything that consumes random
    numbers while setting up, since it resets the generators. ``map_location``
    is where tensors are read to; the optimizer then moves its state to its
    parameters' devices. ``rank`` picks that rank's saved generator states
    (rank 0's when fewer were saved). Raises ``FileNotFoundError`` for an
    incomplete checkpoint.
    """
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint")
    if optimizer is not None:
        optimizer.load_state_dict(
            torch.load(path / OPTIMIZER_FILE, map_location=map_location, weights_only=True)
        )
    if scheduler is not None:
        scheduler.load_state_dict(
            torch.load(path / SCHEDULER_FILE, map_location=map_location, weights_only=True)
        )
    if restore_rng:
        # Generator states are CPU byte tensors whatever the training device.
        saved = torch.load(path / RNG_FILE, map_location="cpu", weights_only=True)
        restore_rng_state(saved[rank] if rank < len(saved) else saved[0])
    return TrainingState.from_json((path / STATE_FILE).read_text(encoding="utf-8"))


def skip_batches(order: Iterator[T], batches_consumed: int) -> Iterator[T]:
    """Advances a freshly created batch order past the batches already trained on.

    With a seeded order (``worker.batch_order(count, batch_size, seed)``)
    re-created with the same arguments, the returned iterator yields exactly
    the batches an uninterrupted run would have drawn next: none repeated, none
    skipped. Costs one pass over the skipped batches' indices.
    """
    next(itertools.islice(order, batches_consumed, batches_consumed), None)
    return order


def clean_incomplete(checkpoints_dir: Path) -> list[Path]:
    """Removes interrupted saves: temporary directories and marker-less ``step-<n>``.

    Returns what it removed. Must not run while a save into the same directory
    is in progress (it would remove that save's temporary directory).
    """
    if not checkpoints_dir.is_dir():
        return []
    removed = []
    for path in sorted(checkpoints_dir.iterdir()):
        temporary = path.name.startswith(TEMPORARY_PREFIX)
        unfinished = checkpoint_step(path) is not None and not is_complete(path)
        if temporary or unfinished:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    if removed:
        fsync_directory(checkpoints_dir)
    return removed


def prune_checkpoints(
    checkpoints_dir: Path, keep_last: int, keep_steps: Iterable[int | None] = ()
) -> list[Path]:
    """Deletes complete checkpoints beyond the ``keep_last`` newest; returns them.

    Never deletes the newest complete checkpoint (even with ``keep_last`` 0) nor
    any whose step is in ``keep_steps`` (pass ``state.best_step`` to keep the
    best one; ``None`` entries are ignored). The marker goes first, so a prune
    killed halfway leaves a directory that no longer counts as a checkpoint.
    """
    found = complete_checkpoints(checkpoints_dir)
    kept = {s for s in keep_steps if s is not None}
    newest = found[-max(1, keep_last) :]
    removed = []
    for path in found:
        if path in newest or checkpoint_step(path) in kept:
            continue
        (path / COMPLETE_MARKER).unlink()
        fsync_directory(path)
        shutil.rmtree(path)
        removed.append(path)
    if removed:
        fsync_directory(checkpoints_dir)
    return removed


def _retire(target: Path, checkpoints_dir: Path) -> None:
    """Moves an existing checkpoint out of the way of its replacement.

    Its marker goes first, so no moment exists where a half-replaced directory
    counts as complete; the moved directory has a temporary name, ignored by
    :func:`latest_checkpoint` and removed here or by :func:`clean_incomplete`.
    """
    marker = target / COMPLETE_MARKER
    if marker.exists():
        marker.unlink()
        fsync_directory(target)
    retired = Path(
        tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}old-{target.name}-", dir=checkpoints_dir)
    )
    # On POSIX a directory renamed onto an empty directory replaces it.
    os.rename(target, retired)
    fsync_directory(checkpoints_dir)
    shutil.rmtree(retired)


def _write_marker(target: Path, step: int) -> None:
    """Writes the completion marker whole: a temporary file, fsynced, renamed."""
    content = json.dumps({"step": step, "completed_at": time.time()}).encode()
    partial = target / f".{COMPLETE_MARKER}.partial"
    with partial.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(partial, target / COMPLETE_MARKER)
    fsync_directory(target)


def _fsync_tree(root: Path) -> None:
    """Flushes every file and then every directory under ``root`` to disk."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            file_path = os.path.join(directory, name)
            if os.path.islink(file_path):
                continue
            fd = os.open(file_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(directory))

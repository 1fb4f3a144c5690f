"""One training job's worker process: ``python -m ownchat_trainer.worker <job-spec.json>``.

Several processes, one a GPU: ``python -m torch.distributed.run --standalone
--nproc-per-node=N -m ownchat_trainer.worker <job-spec.json>`` (the service
builds that command: ``placement.Placement.worker_command``).

The service starts it per job. It reads only the files its spec names (the base
model's checkpoint and the two split files in the artifact store), trains, saves
checkpoints under the spec's output directory, and reports on stdout as JSON
lines, one event a line (``engine.loop`` lists them); everything else it or its
libraries print goes to stderr, which the service keeps as the job's log. It
never touches the service's database.

Methods: ``sft_full`` (every weight), ``sft_lora`` (a LoRA adapter) and ``dpo``
(a LoRA adapter when ``lora_rank > 0``, else every weight). Float32 weights,
bf16 autocast on CUDA, loss on assistant tokens only, weighted per sample,
AdamW (fused on CUDA) with linear warm-up and decay, gradient norm clipped at
1.0, every random choice seeded. A run that finds a checkpoint in its output
directory continues from it exactly; SIGTERM pauses it at the end of the
current step with a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

# Re-exported: the step order and schedule are part of what a worker run is.
from ownchat_trainer.engine.schedule import batch_order, learning_rate_factor
from ownchat_trainer.placement import Strategy

# One event a call; see engine.loop for the events.
Emit = Callable[[dict[str, Any]], None]

METHODS = ("sft_full", "sft_lora", "dpo")
_PATH_FIELDS = ("base_model_dir", "train_split", "validation_split", "output_dir")

logger = logging.getLogger("ownchat.trainer.worker")

__all__ = ["Emit", "WorkerSpec", "batch_order", "learning_rate_factor", "main", "train"]


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker run needs; written by the service as JSON.

    ``output_dir`` holds the job's checkpoints and outlives the process: a
    worker started again on the same spec resumes from its newest complete
    checkpoint. ``batch_size`` counts samples (pairs for ``dpo``) per
    optimizer step. ``lora_alpha`` 0 means twice the rank.
    ``early_stopping_patience`` is the number of evaluations without a better
    validation loss before training stops (0: never). ``keep_checkpoints``
    newest complete checkpoints are kept, plus the best one. ``deterministic``
    turns on ``torch.use_deterministic_algorithms`` (the CPU tests use it).
    """

    job_id: str
    base_model_dir: Path
    train_split: Path
    validation_split: Path
    output_dir: Path
    method: str
    max_steps: int
    learning_rate: float
    batch_size: int
    max_seq_length: int
    warmup_ratio: float
    checkpoint_interval_steps: int
    eval_interval_steps: int
    seed: int
    lora_rank: int = 0
    lora_alpha: float = 0.0
    dpo_beta: float = 0.1
    early_stopping_patience: int = 0
    packing: bool = True
    keep_checkpoints: int = 2
    deterministic: bool = False
    torch_threads: int | None = None
    # How several processes share the state (placement.Strategy); one process ignores it.
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        for name in ("max_steps", "batch_size", "max_seq_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("checkpoint_interval_steps", "eval_interval_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if not self.learning_rate > 0:
            problems.append("learning_rate must be positive")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            problems.append("warmup_ratio must be within [0, 1]")
        if self.lora_rank < 0 or self.lora_alpha < 0:
            problems.append("lora_rank and lora_alpha must not be negative")
        if self.method == "sft_lora" and self.lora_rank < 1:
            problems.append("sft_lora needs lora_rank of at least 1")
        if self.method == "dpo" and not self.dpo_beta > 0:
            problems.append("dpo_beta must be positive")
        if self.early_stopping_patience < 0:
            problems.append("early_stopping_patience must not be negative")
        if self.torch_threads is not None and self.torch_threads < 1:
            problems.append("torch_threads must be at least 1 when set")
        if self.strategy not in get_args(Strategy):
            problems.append(f"strategy must be 'ddp' or 'fsdp', not {self.strategy!r}")
        if problems:
            raise ValueError("invalid worker spec: " + "; ".join(problems))

    @property
    def uses_lora(self) -> bool:
        """Whether the run trains a LoRA adapter rather than every weight."""
        return self.method == "sft_lora" or (self.method == "dpo" and self.lora_rank > 0)

    def to_json(self) -> str:
        """The spec as the JSON object :meth:`from_json` reads."""
        value = {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
        }
        return json.dumps(value, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Reads a spec; unknown keys, missing required keys and bad values raise ``ValueError``."""
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("a worker spec is a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields))
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in value
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if unknown or missing:
            raise ValueError(
                "invalid worker spec: "
                + "; ".join(
                    ([f"unknown keys: {', '.join(unknown)}"] if unknown else [])
                    + ([f"missing keys: {', '.join(missing)}"] if missing else [])
                )
            )
        hints = get_type_hints(cls)
        for name, item in value.items():
            if name in _PATH_FIELDS:
                value[name] = Path(item)
            elif hints[name] is float and isinstance(item, int) and not isinstance(item, bool):
                value[name] = float(item)
            elif not _is_instance(item, hints[name]):
                raise ValueError(f"invalid worker spec: {name} has the wrong type ({item!r})")
        return cls(**value)


def _is_instance(item: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(item, bool)
    if hint is int:
        return isinstance(item, int) and not isinstance(item, bool)
    if hint == int | None:
        return item is None or _is_instance(item, int)
    return isinstance(item, hint)


def train(spec: WorkerSpec, emit: Emit, *, should_stop: Callable[[], bool] | None = None) -> None:
    """Runs (or resumes) the whole job, reporting through ``emit``.

    ``should_stop`` is asked after every optimizer step; once it returns True
    the run saves a checkpoint, emits ``paused`` and returns (``main`` wires
    it to SIGTERM). Sets process-wide torch state (threads, deterministic
    algorithms, seeds): it is meant to own its process.
    """
    from ownchat_trainer.engine.run import run_job

    run_job(spec, emit, should_stop or (lambda: False))


def main(argv: list[str] | None = None) -> int:
    """Runs the job whose spec file is the one argument; exit status 1 on failure.

    A pause (SIGTERM) exits 0 after its ``paused`` event. Under torchrun only
    rank 0 writes events.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m ownchat_trainer.worker <job-spec.json>\n")
        return 2
    # Events get the real stdout; anything else printed goes to stderr (the log).
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    reports = os.environ.get("RANK", "0") == "0"

    def emit(event: dict[str, Any]) -> None:
        if reports:
            events.write(json.dumps(event) + "\n")
            events.flush()

    stop_requested = False

    def request_stop(signum: int, frame: Any) -> None:
        # Only a flag: the loop reads it after each step (no I/O in a handler).
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        spec = WorkerSpec.from_json(Path(args[0]).read_text())
        train(spec, emit, should_stop=lambda: stop_requested)
    except Exception as error:  # noqa: BLE001 - reported to the service, then exit 1
        logger.exception("training failed")
        emit({"event": "error", "message": f"{type(error).__name__}: {error}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each part of our training step buys: our worker's packed run with one part
at a time put back to what it replaces, on the training benchmark's model and data.

Run: make profile-train (into benchmarks/profiles/, after the profile)
     python benchmarks/train_ablation.py --output-dir DIR
         [--device cpu|cuda] [--model smollm2-135m] [--seq-len N]
         [--batch-size ROWS] [--warmup N] [--steps N] [--variants a,b]

The variants, each against the whole step ("all"):

- ``torch-cross-entropy``: each chunk's loss and gradient as torch operations,
  not the Triton kernel (``engine.cross_entropy_kernel``; GPU only);
- ``separate-projections``: q, k, v and gate, up as a product each, not one a
  norm (``lean_activations.ReaderGroup``);
- ``torch-swiglu``: SwiGLU as torch operations, not our Triton kernels
  (``engine.swiglu_kernel``; GPU only);
- ``no-lean-activations``: the model's own layers keep their activations
  (``engine.lean_activations``; Liger's SwiGLU then runs on a GPU);
- ``no-liger``: without Liger Kernel's RMSNorm and RoPE (GPU only).

It writes ``ablation-<model>-<device>.json`` to ``DIR``: each variant's median
real tokens/s over the timed steps, its ratio to "all", the peak memory (over
the run and at the baseline's batch) and the final loss, which should not
move. Not a benchmark against a baseline: a diagnostic of ours, as the
profile is; variants that change nothing on the device are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from train import device_name
from train_profile import arguments, prepare
from train_runs import SAME_BATCH, RunResult, run_ours

from ownchat_trainer.engine import (
    cross_entropy_kernel,
    fused_kernels,
    lean_activations,
    swiglu_kernel,
)


@contextlib.contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    """``target.name`` is ``value`` inside (a module's, a class's or an object's own)."""
    own = vars(target)
    had, original = name in own, own.get(name)
    setattr(target, name, value)
    try:
        yield
    finally:
        if had:
            setattr(target, name, original)
        else:
            delattr(target, name)


@contextlib.contextmanager
def _torch_swiglu() -> Iterator[None]:
    with (
        _patched(swiglu_kernel.FORWARD, "runs_on", lambda device, dtype: False),
        _patched(swiglu_kernel.BACKWARD, "runs_on", lambda device, dtype: False),
    ):
        yield


# name -> (GPU only, the part put back)
VARIANTS: dict[str, tuple[bool, Callable[[], contextlib.AbstractContextManager[None]]]] = {
    "all": (False, contextlib.nullcontext),
    "torch-cross-entropy": (
        True,
        lambda: _patched(cross_entropy_kernel, "available", lambda device, dtype: False),
    ),
    "separate-projections": (
        False,
        lambda: _patched(lean_activations.ReaderGroup, "fusable", lambda group: False),
    ),
    "torch-swiglu": (True, _torch_swiglu),
    "no-lean-activations": (
        False,
        lambda: _patched(lean_activations, "apply_lean_activations", lambda model: False),
    ),
    "no-liger": (True, lambda: _patched(fused_kernels, "available", lambda device: False)),
}


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0], extra=_add_variants)
    cuda = args.device == "cuda"
    wanted = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if "all" not in wanted:
        wanted.insert(0, "all")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, RunResult] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ownchat-ablation-train-") as scratch_name:
        scratch = Path(scratch_name)
        plan, data, per_step = prepare(args, scratch)
        for name in wanted:
            gpu_only, part = VARIANTS[name]
            if gpu_only and not cuda:
                skipped[name] = "changes nothing on a CPU"
                continue
            with part():
                result = run_ours(plan, data, per_step, True, scratch / name)
            results[name] = result
            print(f"{name:24} {result.tokens_per_s} tok/s, {result.peak_mem_gib} GiB {result.note}")
    whole = results["all"].tokens_per_s
    report = {
        "model": args.model,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "command": "python benchmarks/train_ablation.py " + " ".join(sys.argv[1:]),
        "samples_per_step": per_step,
        "variants": {
            name: {
                "tokens_per_s": result.tokens_per_s,
                "ratio_to_all": (
                    round(result.tokens_per_s / whole, 3) if result.tokens_per_s and whole else None
                ),
                "peak_mem_gib": result.peak_mem_gib,
                "peak_mem_same_batch_gib": result.detail.get(SAME_BATCH),
                "final_loss": result.final_loss,
                "note": result.note,
            }
            for name, result in results.items()
        },
        "skipped": skipped,
    }
    path = args.output_dir / f"ablation-{args.model}-{device_name(args.device)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(json.dumps(report, indent=2))


def _add_variants(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variants", default=None, help=f"comma-separated, of: {', '.join(VARIANTS)}"
    )


if __name__ == "__main__":
    main()

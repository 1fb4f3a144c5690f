"""Where our training step spends its time: our worker's packed steps under
``torch.profiler``, on the training benchmark's model and data.

Run: make profile-train (into benchmarks/profiles/)
     python benchmarks/train_profile.py --output-dir DIR
         [--device cpu|cuda] [--model smollm2-135m] [--seq-len N]
         [--batch-size ROWS] [--warmup N] [--steps N]

It trains as the benchmark's "ours" run does (same model configuration, random
weights, same synthetic chat data and samples a step), skips ``--warmup`` steps,
records ``--steps`` steps and writes to ``DIR``:

- ``profile-<model>-<device>.json``: per recorded step its wall time, and on
  CUDA the GPU's busy time (the union of its kernels' intervals), the kernels
  launched and the host's waits on the GPU (synchronising calls and blocking
  copies); on any device the ``aten::`` operators the host dispatched in a
  step, nested ones included;
- ``profile-<model>-<device>.txt``: the operators and kernels by their own time
  on the device (CUDA) or on the host (CPU), the 50 largest;
- ``trace-<model>-<device>.json.gz``: the timeline, for Perfetto or
  chrome://tracing.

A GPU busy for much less than the wall time of a step means the host is the
limit (launches, Python, waits); the table says which kernels to fuse when it
is the GPU. Not a benchmark: the profiler's own overhead slows the host.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from results_file import torch_device
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule
from train import CUDA_ROWS, device_name
from train_runs import RunPlan, run_ours
from train_setup import (
    MODELS,
    BenchData,
    build_model_dir,
    samples_per_step_for_tokens,
    write_bench_data,
)

# Calls with which the host waits for the GPU.
WAITS = frozenset(
    {
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "cudaEventSynchronize",
        "cudaMemcpy",
        "cudaStreamWaitEvent",
    }
)
STEP_PREFIX = "ProfilerStep"  # "ProfilerStep#N", or "ProfilerStep*" in newer torch


def arguments(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The options of a diagnostic run of our worker (this profile, the ablation),
    and any ``extra`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output-dir", type=Path, required=True)
    if extra is not None:
        extra(parser)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="rows of seq-len a step")
    parser.add_argument("--warmup", type=int, default=None, help="steps before recording")
    parser.add_argument("--steps", type=int, default=None, help="steps recorded")
    args = parser.parse_args()
    args.device = torch_device(parser, args.device)
    cuda = args.device == "cuda"
    args.seq_len = args.seq_len or (2048 if cuda else 512)
    args.batch_size = args.batch_size or (CUDA_ROWS[args.model] if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.steps = args.steps or (3 if cuda else 2)
    return args


def step_summary(events: Any, cuda: bool) -> list[dict[str, Any]]:
    """Per recorded step: wall, host operators and, on CUDA, kernels, busy time, waits."""
    steps = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in events
        if e.name.startswith(STEP_PREFIX) and e.device_type == DeviceType.CPU
    )
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    host = [e for e in events if e.device_type == DeviceType.CPU]
    summary = []
    for index, (start, end, _) in enumerate(steps):
        # A step's kernels may run after its host part returns: until the next
        # step's host part starts, or for the last, until the GPU is done.
        until = steps[index + 1][0] if index + 1 < len(steps) else float("inf")
        inside = [(s, e) for s, e in kernels if start <= s < until]
        row: dict[str, Any] = {
            "step": index + 1,
            "host_wall_ms": round((end - start) / 1000, 2),
            "aten_ops": sum(
                1 for e in host if start <= e.time_range.start < end and e.name.startswith("aten::")
            ),
        }
        if cuda:
            last = max((e for _, e in inside), default=end)
            row |= {
                "wall_ms": round((max(last, end) - start) / 1000, 2),
                "kernels": len(inside),
                "gpu_busy_ms": round(_union(inside) / 1000, 2),
                "host_waits": sum(
                    1 for e in host if start <= e.time_range.start < end and e.name in WAITS
                ),
            }
            row["gpu_busy_share"] = round(row["gpu_busy_ms"] / row["wall_ms"], 3)
        summary.append(row)
    return summary


def _union(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of sorted intervals."""
    total = 0.0
    reach = float("-inf")
    for start, end in intervals:
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def prepare(args: argparse.Namespace, scratch: Path) -> tuple[RunPlan, BenchData, int]:
    """The benchmark's model (random weights) and data, the run's plan, and our
    worker's samples a step (as many real tokens as ``--batch-size`` rows)."""
    model_dir, _ = build_model_dir(MODELS[args.model], scratch / "model")
    total = args.warmup + args.steps
    plan = RunPlan(args.device, model_dir, args.seq_len, args.batch_size, args.warmup, args.steps)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    needed = int(1.3 * total * args.batch_size * args.seq_len) + 50 * args.seq_len
    data = write_bench_data(tokenizer, scratch / "data", args.seq_len, needed, seed=1)
    lengths = [len(s.input_ids) for s in data.samples]
    per_step = samples_per_step_for_tokens(lengths, args.batch_size * args.seq_len, total, seed=0)
    return plan, data, per_step


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0])
    cuda = args.device == "cuda"
    device = device_name(args.device)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.model}-{device}"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tempfile.TemporaryDirectory(prefix="ownchat-profile-train-") as scratch_name:
        scratch = Path(scratch_name)
        shape = MODELS[args.model]
        plan, data, per_step = prepare(args, scratch)
        # The worker's first step event comes after its first step: the schedule
        # waits out the warm-up, then records.
        recording = schedule(wait=max(args.warmup - 1, 0), warmup=1, active=args.steps, repeat=1)
        with profile(activities=activities, schedule=recording) as profiler:
            result = run_ours(plan, data, per_step, True, scratch / "ours", profiler.step)
        if result.tokens_per_s is None:
            sys.exit(f"the run failed: {result.note}")
        events = profiler.events()
        sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
        table = profiler.key_averages().table(
            sort_by=sort_by, row_limit=50, max_name_column_width=90
        )
        (args.output_dir / f"profile-{stem}.txt").write_text(table + "\n", "utf-8")
        trace = scratch / "trace.json"
        profiler.export_chrome_trace(str(trace))
        with (
            trace.open("rb") as source,
            gzip.open(args.output_dir / f"trace-{stem}.json.gz", "wb") as target,
        ):
            shutil.copyfileobj(source, target)
    report = {
        "model": shape.title,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "command": "python benchmarks/train_profile.py " + " ".join(sys.argv[1:]),
        "samples_per_step": per_step,
        "tokens_per_s_median_recorded_steps": result.tokens_per_s,
        "steps": step_summary(events, cuda),
    }
    (args.output_dir / f"profile-{stem}.json").write_text(json.dumps(report, indent=2), "utf-8")
    print(json.dumps(report, indent=2))
    print(table)


if __name__ == "__main__":
    main()

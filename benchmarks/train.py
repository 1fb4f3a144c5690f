"""The training benchmark: our trainer against Hugging Face Trainer baselines, in one
process, on the same data and the same model configuration.

Run: make bench-train
     python benchmarks/train.py --device cpu|cuda [--models smollm2-135m,llama-1b]
         [--seq-len 2048] [--steps N] [--warmup N] [--batch-size ROWS]

For each model (random weights, published configuration; see train_setup.py)
it runs the padded, naively packed and naively packed + Liger Kernel Trainer
baselines, then our worker with packing, then our worker without packing for
the loss check (see train_runs.py for what each run is). It writes real
(non-padding) tokens/s, MFU (nanoGPT's 6N + 12·L·H·Q·T FLOPs a token over
``--peak-tflops``, CUDA only), peak memory, and the relative difference of the
final training loss with and without packing, to
benchmarks/results/train-<device>.json (device "cpu" or the GPU's short name,
e.g. "h100"), the Liger baseline as baseline; where Liger cannot run (CPU) the
strongest baseline that ran, named in ``baseline_name``.

Defaults: on CUDA the setting of the targets (both models, sequence length
2048, 20 timed steps after 5 warm-up steps, 16 rows a step for SmolLM2-135M
and 4 for the 1B); on a CPU one that finishes in about 10 minutes on 2 cores
(SmolLM2-135M only, sequence length 512, 2 rows a step, 4 timed steps after 1,
two rounds of the throughput runs in alternating order, the best round counting:
the machine's cores are shared, and a round can fall on another process's load).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import results_file
import torch
from results_file import RESULTS_DIR, merge_results, torch_device
from train_measure import flops_per_token
from train_runs import (
    SAME_BATCH,
    RunPlan,
    RunResult,
    best_of,
    mfu,
    relative_difference,
    run_ours,
    run_trainer,
)
from train_setup import MODELS, build_model_dir, samples_per_step_for_tokens, write_bench_data

CUDA_ROWS = {"smollm2-135m": 16, "llama-1b": 4}
PEAK_TFLOPS = 790.0  # measured bf16 dense matmul peak of the H100/H200 machines used here


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--models", default=None, help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows of seq-len a step (all models)"
    )
    parser.add_argument(
        "--loss-check-samples",
        type=int,
        default=None,
        help="samples a step of the packed/unpacked loss check; default: on CPU the "
        "throughput run's (reused), on CUDA 4 (the unpacked step pads every sample)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds of the throughput runs, each rate the best round's; default 2 on CPU "
        "(a shared machine), 1 on CUDA",
    )
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.device = torch_device(parser, args.device)
    cuda = args.device == "cuda"
    args.models = (args.models or ("smollm2-135m,llama-1b" if cuda else "smollm2-135m")).split(",")
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    args.seq_len = args.seq_len or (2048 if cuda else 512)
    args.steps = args.steps or (20 if cuda else 4)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.repeats = args.repeats or (1 if cuda else 2)
    return args


def device_name(device: str) -> str:
    """ "cpu", or the GPU's short name ("h100" for "NVIDIA H100 80GB HBM3")."""
    if device == "cpu":
        return "cpu"
    match = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", torch.cuda.get_device_name(0))
    return match.group(1).lower() if match else "gpu"


def _hardware(device: str) -> str:
    cpu = results_file.hardware()
    if device == "cpu":
        return cpu
    count = torch.cuda.device_count()
    cores = cpu.split(",")[0]
    return f"{count}x {torch.cuda.get_device_name(0)}, {cores}"


def bench_model(name: str, args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    """All runs of one model; returns its metrics."""
    from transformers import AutoTokenizer

    shape = MODELS[name]
    rows = args.batch_size or (CUDA_ROWS[name] if args.device == "cuda" else 2)
    model_dir, parameters = build_model_dir(shape, scratch / name / "model")
    plan = RunPlan(args.device, model_dir, args.seq_len, rows, args.warmup, args.steps)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    needed = int(1.3 * plan.total_steps * rows * args.seq_len) + 50 * args.seq_len
    data = write_bench_data(tokenizer, scratch / name / "data", args.seq_len, needed, seed=1)
    lengths = [len(s.input_ids) for s in data.samples]
    per_step = samples_per_step_for_tokens(lengths, rows * args.seq_len, plan.total_steps, seed=0)
    _log(
        f"{shape.title}: {parameters / 1e6:.1f}M parameters, {len(data.samples)} samples "
        f"(mean {data.mean_length:.0f} tokens, {data.dropped} dropped), {rows} rows of "
        f"{args.seq_len} a step; ours takes {per_step} samples a step"
    )

    # Rounds alternate the order (forward, reversed, ...), so a stretch of load from
    # other processes on a shared machine does not always fall on the same run.
    results: dict[str, RunResult] = {}
    kinds = ["padded", "packed", "packed-liger", "ours"]
    for round_ in range(args.repeats):
        for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
            if kind == "ours":
                output = scratch / name / f"ours-{round_}"
                result = run_ours(plan, data, per_step, True, output)
            else:
                result = run_trainer(kind, plan, data)
            _report(result)
            results[kind] = best_of(results.get(kind), result)

    loss_samples = args.loss_check_samples or (per_step if args.device == "cpu" else 4)
    packed = results["ours"]
    if loss_samples != per_step:
        packed = run_ours(plan, data, loss_samples, True, scratch / name / "loss-packed")
        _report(packed)
    unpacked = run_ours(plan, data, loss_samples, False, scratch / name / "loss-unpacked")
    _report(unpacked)

    return _metrics(name, args, plan, parameters, per_step, results, packed, unpacked)


def _metrics(
    name: str,
    args: argparse.Namespace,
    plan: RunPlan,
    parameters: int,
    per_step: int,
    results: dict[str, RunResult],
    packed: RunResult,
    unpacked: RunResult,
) -> list[dict[str, Any]]:
    shape = MODELS[name]
    ours = results["ours"]
    baselines = [results[k] for k in ("padded", "packed", "packed-liger")]
    liger = results["packed-liger"]
    ran = [b for b in baselines if b.tokens_per_s is not None]
    reference = (
        liger
        if liger.tokens_per_s is not None
        else max(ran, key=lambda b: b.tokens_per_s or 0.0, default=liger)
    )
    precision = "bf16 autocast" if args.device == "cuda" else "float32"
    precision += f"; software: {_software()}"
    setting = (
        f"{shape.title} config, random weights; seq {plan.seq_len}; rows of seq a step for "
        f"the baselines: {plan.rows}; ours packs {per_step} samples a step, at most as many "
        f"real tokens a step on average as those rows ({_step_tokens(ours)}); "
        f"{plan.steps} timed steps after {plan.warmup}; {precision}; median over the timed "
        "steps of real (non-padding) tokens/s"
        + (
            f", the best of {args.repeats} rounds run in alternating order"
            if args.repeats > 1
            else ""
        )
    )
    if reference is not liger:
        setting += f"; baseline is the strongest that ran, as {liger.name} did not: {liger.note}"
    skipped = "; ".join(
        f"{b.name}: {b.note}" for b in [*baselines, ours] if b.note and b is not liger
    )
    if skipped:
        setting += f"; {skipped}"

    def metric(
        metric_name: str,
        unit: str,
        higher: bool,
        value: float | None,
        base: RunResult | None,
        base_value: float | None,
        notes: str,
        digits: int | None,
    ) -> dict[str, Any]:
        ratio = value / base_value if value is not None and base_value else None
        return {
            "name": metric_name,
            "unit": unit,
            "higher_is_better": higher,
            "ours": _rounded(value, digits),
            "baseline": _rounded(base_value, digits),
            "baseline_name": None if base is None else base.name,
            "ratio": None if ratio is None else round(ratio, 3),
            "notes": notes,
        }

    rate_digits = 1 if args.device == "cpu" else 0
    key = shape.key
    metrics = [
        metric(
            f"sft_tok_per_s_{key}",
            "tok/s",
            True,
            ours.tokens_per_s,
            reference,
            reference.tokens_per_s,
            setting,
            rate_digits,
        )
    ]
    for base in baselines:
        if base is reference or base.tokens_per_s is None:
            continue
        metrics.append(
            metric(
                f"sft_tok_per_s_{key}_vs_{base.name.replace('-', '_')}",
                "tok/s",
                True,
                ours.tokens_per_s,
                base,
                base.tokens_per_s,
                f"as sft_tok_per_s_{key}, against {base.name}",
                rate_digits,
            )
        )
    memory_notes = (
        "torch.cuda.max_memory_allocated over the run (weights, optimizer, activations)"
        if args.device == "cuda"
        else "growth of the process's resident set over the run, sampled every 20 ms, "
        "from a start with earlier runs' memory handed back (malloc_trim)"
    )
    batch_tokens = plan.rows * plan.seq_len
    same_batch = ours.detail.get(SAME_BATCH)
    step_counts = ours.detail.get("step_real_tokens") or []
    metrics.append(
        metric(
            f"peak_mem_gib_{key}",
            "GiB",
            False,
            same_batch if same_batch is not None else ours.peak_mem_gib,
            reference,
            reference.peak_mem_gib,
            f"{memory_notes}; model load and training steps (ours up to its last step, "
            f"before the final checkpoint); at the same batch: a baseline step is "
            f"{plan.rows} rows of {plan.seq_len} ({batch_tokens} tokens), and ours is the "
            f"peak of its steps that hold no more real tokens than that"
            + (
                f" ({sum(c <= batch_tokens for c in step_counts)} of {len(step_counts)}); "
                f"over all its steps, up to {max(step_counts)} real tokens, "
                f"{ours.peak_mem_gib:.3f} GiB"
                if same_batch is not None and step_counts and ours.peak_mem_gib is not None
                else "; no step of ours was that small, so this is the peak of all its steps"
            ),
            3,
        )
    )
    if args.device == "cuda":
        flops = flops_per_token(parameters, shape.layers, shape.heads, shape.head_dim, plan.seq_len)
        metrics.append(
            metric(
                f"mfu_{key}",
                "fraction of peak",
                True,
                mfu(ours.tokens_per_s, flops, args.peak_tflops),
                reference,
                mfu(reference.tokens_per_s, flops, args.peak_tflops),
                f"nanoGPT FLOPs 6N + 12*L*H*Q*T = {flops / 1e9:.3f} GFLOP a token "
                f"(N={parameters}, T={plan.seq_len}) over {args.peak_tflops:.0f} TFLOP/s bf16",
                4,
            )
        )
    difference = relative_difference(packed.final_loss, unpacked.final_loss)
    loss_name = "loss_rel_diff_packed_vs_unpacked"
    if name != "smollm2-135m":
        loss_name += f"_{key}"
    loss_note = (
        f"|final loss packed - unpacked| / unpacked, our worker, same {plan.total_steps} "
        f"steps, seed and samples ({packed.detail.get('samples_per_step')} a step); "
        f"losses {packed.final_loss} and {unpacked.final_loss}"
    )
    if unpacked.note or packed.note:
        loss_note += f"; {unpacked.note or packed.note}"
    metrics.append(metric(loss_name, "fraction", False, difference, None, None, loss_note, None))
    return metrics


def _software() -> str:
    """The versions the figures depend on."""
    import importlib.metadata

    names = ["torch", "transformers", "liger-kernel", "flash-attn"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"no {name}")
    return ", ".join(found)


def _rounded(value: float | None, digits: int | None) -> float | None:
    """``digits`` decimals, or three significant digits when None (tiny fractions)."""
    if value is None:
        return None
    return round(value, digits) if digits is not None else float(f"{value:.3g}")


def _step_tokens(result: RunResult) -> str:
    detail = result.detail
    if detail.get("real_tokens_per_step") is None:
        return "not run"
    return (
        f"{detail['real_tokens_per_step']:.0f} real tokens in "
        f"{detail['packed_rows_per_step']:.1f} rows, {detail['packed_positions_per_step']:.0f} "
        "positions with padding, on average"
    )


def _report(result: RunResult) -> None:
    rate = "-" if result.tokens_per_s is None else f"{result.tokens_per_s:,.1f} tok/s"
    memory = "-" if result.peak_mem_gib is None else f"{result.peak_mem_gib:.2f} GiB"
    _log(f"  {result.name:24s} {rate:>18s} {memory:>10s} {result.note} {result.detail}")


def _log(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    args = _arguments()
    device = device_name(args.device)
    command = "python benchmarks/train.py " + shlex.join(sys.argv[1:])
    # Imported before any run, so no run's memory counts the import.
    import transformers.trainer  # noqa: F401

    import ownchat_trainer.engine.run  # noqa: F401

    metrics: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ownchat-bench-train-") as scratch:
        for name in args.models:
            metrics += bench_model(name, args, Path(scratch))
    # The shared hardware line names no GPU; this file's device is one.
    hardware = _hardware(args.device)
    results_file.hardware = lambda: hardware
    path = args.output or RESULTS_DIR / f"train-{device}.json"
    result = merge_results("train", command.strip(), metrics, path=path)
    for metric in result["metrics"]:
        _log(
            f"{metric['name']:48s} ours={metric['ours']!s:>12} "
            f"baseline={metric['baseline']!s:>12} ratio={metric['ratio']}"
        )


if __name__ == "__main__":
    main()

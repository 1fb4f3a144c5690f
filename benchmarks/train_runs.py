"""The runs of the training benchmark: Hugging Face Trainer baselines and our worker.

Every run trains the same saved model on the same encoded samples for
``warmup + steps`` optimizer steps with the same learning rate, schedule
(linear warm-up over 10 % of the steps, then linear decay), AdamW (fused on
CUDA, no weight decay), gradient clipping at 1.0, seed, and bf16 autocast over
float32 weights on CUDA (float32 on a CPU). Only the last ``steps`` steps are
timed. A run's throughput is the median over those steps of each step's real
(non-padding) tokens over its wall time: robust to other processes that
briefly take the cores of a shared machine; the overall rate (all timed
tokens over all timed time) is kept in the run's detail. A Trainer step's time
runs from the end of one optimizer step to the end of the next (so it includes
fetching and collating the batch); ours is the worker's own per-step figure
(batch building, forward, backward, optimizer step), from its "metrics" events.

The baselines, all ``transformers.Trainer`` with its defaults otherwise (sdpa
attention, no gradient checkpointing, no compilation):

- ``hf-trainer-padded``: ``rows`` samples a step, each batch right-padded to
  its longest sample (``DataCollatorForSeq2Seq``; no grouping by length).
- ``hf-trainer-packed``: the samples concatenated in order and cut into rows of
  exactly ``seq_len`` tokens (the classic ``group_texts``), ``rows`` a step:
  no padding, but samples attend to the ones before them in the row and
  position ids run across them. Labels keep the assistant-only mask.
- ``hf-trainer-packed-liger``: the same with ``use_liger_kernel=True`` (Liger
  Kernel's Triton RMSNorm, RoPE, SwiGLU and fused linear cross-entropy); CUDA only.

Ours is ``ownchat_trainer.worker.train`` called in this process with the
worker's spec, ``method="sft_full"``; its step size in samples is the largest
whose steps hold at most ``rows * seq_len`` real tokens on average (see
``train_setup.samples_per_step_for_tokens``): the packed baselines' batch
tokens (a step may pack into a row more or fewer than ``rows``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from train_measure import Clock, PeakMemory, free_memory
from train_setup import BenchData, packed_shape, step_tokens

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import EncodedSample

WARMUP_RATIO = 0.1
LEARNING_RATE = 1e-4
SEED = 0


@dataclass(frozen=True)
class RunPlan:
    """What every run of one model shares."""

    device: str  # "cpu" or "cuda"
    model_dir: Path
    seq_len: int
    rows: int  # sequences of seq_len a step (the packed baselines' batch)
    warmup: int  # untimed steps first
    steps: int  # timed steps

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


# Our run's peak over the steps that hold no more tokens than a baseline step.
SAME_BATCH = "peak_mem_same_batch_gib"


@dataclass
class RunResult:
    """One run's measurements; ``tokens_per_s`` is None when it could not run."""

    name: str
    tokens_per_s: float | None = None
    peak_mem_gib: float | None = None
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> loss
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        return self.losses[max(self.losses)] if self.losses else None


def best_of(kept: RunResult | None, new: RunResult) -> RunResult:
    """The faster of two rounds of one run; losses from the first, peak memory the
    higher, every round's rate kept in the detail."""
    if kept is None:
        return dataclasses.replace(new, detail={**new.detail, "round_rates": [new.tokens_per_s]})
    rates = [*kept.detail.get("round_rates", []), new.tokens_per_s]
    faster = new if (new.tokens_per_s or 0.0) > (kept.tokens_per_s or 0.0) else kept
    peaks = [m for m in (kept.peak_mem_gib, new.peak_mem_gib) if m is not None]
    detail = {**faster.detail, "round_rates": rates}
    same_batch = [
        m for m in (kept.detail.get(SAME_BATCH), new.detail.get(SAME_BATCH)) if m is not None
    ]
    if same_batch:
        detail[SAME_BATCH] = max(same_batch)
    return dataclasses.replace(
        faster,
        peak_mem_gib=max(peaks) if peaks else None,
        losses=kept.losses or new.losses,
        detail=detail,
    )


def _guarded(name: str, run: Callable[[], RunResult]) -> RunResult:
    try:
        return run()
    except torch.cuda.OutOfMemoryError as error:
        return RunResult(name, note=f"out of memory: {str(error).splitlines()[0]}")
    finally:
        free_memory("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- baselines


def packed_rows(samples: list[EncodedSample], seq_len: int) -> list[dict[str, list[int]]]:
    """The classic ``group_texts``: all samples end to end, cut into full rows
    (the incomplete tail is dropped)."""
    ids = [token for sample in samples for token in sample.input_ids]
    labels = [label for sample in samples for label in sample.labels]
    return [
        {
            "input_ids": ids[start : start + seq_len],
            "attention_mask": [1] * seq_len,
            "labels": labels[start : start + seq_len],
        }
        for start in range(0, len(ids) - seq_len + 1, seq_len)
    ]


class _ListDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def run_trainer(kind: str, plan: RunPlan, data: BenchData) -> RunResult:
    """One Trainer baseline: ``kind`` is "padded", "packed" or "packed-liger"."""
    name = f"hf-trainer-{kind}"
    if kind == "packed-liger" and plan.device != "cuda":
        return RunResult(name, note="Liger Kernel needs CUDA (Triton); not run on CPU")
    if kind == "packed-liger" and importlib.util.find_spec("liger_kernel") is None:
        return RunResult(
            name, note="liger-kernel is not installed (requirements/bench-train-gpu.txt)"
        )
    return _guarded(name, lambda: _run_trainer(name, kind, plan, data))


def _run_trainer(name: str, kind: str, plan: RunPlan, data: BenchData) -> RunResult:
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    on_cuda = plan.device == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(plan.model_dir)
    batch_tokens: list[int] = []  # real tokens of each batch, in the order they are made
    if kind == "padded":
        items = [
            {"input_ids": s.input_ids, "attention_mask": [1] * len(s.input_ids), "labels": s.labels}
            for s in data.samples
        ]
        pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            batch = pad(features)
            batch_tokens.append(int(batch["attention_mask"].sum()))
            return batch

    else:
        items = packed_rows(data.samples, plan.seq_len)

        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            batch_tokens.append(len(features) * plan.seq_len)
            return default_data_collator(features)

    clock = Clock(plan.device)

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock.mark()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.mark()

    with tempfile.TemporaryDirectory() as output, PeakMemory(plan.device) as memory:
        model = AutoModelForCausalLM.from_pretrained(plan.model_dir, dtype=torch.float32)
        arguments = TrainingArguments(
            output_dir=output,
            per_device_train_batch_size=plan.rows,
            max_steps=plan.total_steps,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="linear",
            warmup_steps=WARMUP_RATIO,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch_fused" if on_cuda else "adamw_torch",
            bf16=on_cuda,
            use_cpu=not on_cuda,
            use_liger_kernel=kind == "packed-liger",
            train_sampling_strategy="random",
            dataloader_num_workers=0,
            dataloader_pin_memory=on_cuda,
            remove_unused_columns=False,
            # One log at the end: no per-step host sync the worker would not have.
            logging_strategy="steps",
            logging_steps=plan.total_steps,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=SEED,
            data_seed=SEED,
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=_ListDataset(items),
            data_collator=collate,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.train()
        mean_loss = next(
            (log["train_loss"] for log in trainer.state.log_history[::-1] if "train_loss" in log),
            None,
        )
        del trainer, model
    seconds = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    timed = slice(plan.warmup, plan.total_steps)
    tokens, times = batch_tokens[timed], seconds[timed]
    padding = 1 - sum(batch_tokens) / (len(batch_tokens) * plan.rows * plan.seq_len)
    return RunResult(
        name,
        tokens_per_s=statistics.median(n / t for n, t in zip(tokens, times, strict=True)),
        peak_mem_gib=memory.gib,
        detail={
            "overall_tok_per_s": round(sum(tokens) / sum(times), 1),
            "mean_loss": mean_loss,
            "step_seconds": [round(s, 3) for s in seconds],
            "real_tokens_per_step": sum(tokens) / plan.steps,
            "padding_share": round(padding, 3) if kind == "padded" else 0.0,
        },
    )


# ---------------------------------------------------------------- ours


def worker_spec_fields() -> set[str]:
    """The fields the installed worker's spec takes (the contract grows them)."""
    from ownchat_trainer.worker import WorkerSpec

    return {f.name for f in dataclasses.fields(WorkerSpec)}


def run_ours(
    plan: RunPlan,
    data: BenchData,
    samples_per_step: int,
    packing: bool,
    output_dir: Path,
    on_step: Callable[[], None] | None = None,
) -> RunResult:
    """Our worker in this process; tokens/s from its "metrics" events of the timed steps.

    ``on_step`` is called after each step's event (a profiler's ``step``).
    """
    name = "ours" if packing else "ours-unpacked"
    return _guarded(
        name,
        lambda: _run_ours(name, plan, data, samples_per_step, packing, output_dir, on_step),
    )


def _run_ours(
    name: str,
    plan: RunPlan,
    data: BenchData,
    samples_per_step: int,
    packing: bool,
    output_dir: Path,
    on_step: Callable[[], None] | None = None,
) -> RunResult:
    from ownchat_trainer.worker import WorkerSpec, train

    wanted: dict[str, Any] = {
        "job_id": f"bench-{name}",
        "base_model_dir": plan.model_dir,
        "train_split": data.train_split,
        "validation_split": data.validation_split,
        "output_dir": output_dir,
        "method": "sft_full",
        "max_steps": plan.total_steps,
        "learning_rate": LEARNING_RATE,
        "batch_size": samples_per_step,
        "max_seq_length": plan.seq_len,
        "warmup_ratio": WARMUP_RATIO,
        # No checkpoint before the end; no evaluation (the validation split is empty).
        "checkpoint_interval_steps": plan.total_steps + 1,
        "eval_interval_steps": plan.total_steps + 1,
        "seed": SEED,
        "packing": packing,
        "keep_checkpoints": 1,
    }
    accepted = worker_spec_fields()
    missing = sorted(set(wanted) - accepted)
    if "packing" in missing and not packing:
        return RunResult(name, note="the installed worker has no packing switch")
    spec = WorkerSpec(**{key: value for key, value in wanted.items() if key in accepted})
    events: list[dict[str, Any]] = []
    # Each step's peak (the first's includes the model's load); the last step's event
    # comes before the final checkpoint is written, so their maximum is training's
    # peak, as the baselines' (which save nothing) is.
    step_peaks: list[float] = []

    def emit(event: dict[str, Any]) -> None:
        events.append(event)
        if event.get("event") == "metrics":
            step_peaks.append(memory.next_step())
            if on_step is not None:
                on_step()

    with PeakMemory(plan.device) as memory:
        started = time.perf_counter()
        train(spec, emit)
        wall = time.perf_counter() - started
    errors = [e["message"] for e in events if e.get("event") == "error"]
    if errors:
        raise RuntimeError(f"{name}: {errors[0]}")
    metrics = {e["step"]: e for e in events if e.get("event") == "metrics"}
    timed = [metrics[step] for step in range(plan.warmup + 1, plan.total_steps + 1)]
    rates = [float(m["tokens_per_second"]) for m in timed]
    # Each timed step's real tokens come from the worker's seeded batch order; its
    # reported rate then gives its time, for the overall rate (tokens over time).
    lengths = [len(s.input_ids) for s in data.samples]
    tokens = step_tokens(lengths, samples_per_step, plan.total_steps, SEED)[plan.warmup :]
    overall = sum(tokens) / sum(n / r for n, r in zip(tokens, rates, strict=True))
    rows, positions = packed_shape(
        lengths, samples_per_step, plan.total_steps, SEED, plan.device == "cuda"
    )
    every_step = step_tokens(lengths, samples_per_step, plan.total_steps, SEED)
    # A baseline step holds rows * seq_len tokens: ours of no more are "the same batch".
    same_batch = [
        peak
        for peak, count in zip(step_peaks, every_step, strict=False)
        if count <= plan.rows * plan.seq_len
    ]
    started_event = next((e for e in events if e.get("event") == "started"), {})
    return RunResult(
        name,
        tokens_per_s=statistics.median(rates),
        peak_mem_gib=max(step_peaks) if step_peaks else memory.gib,
        losses={step: float(m["loss"]) for step, m in metrics.items()},
        note="" if not missing else f"the installed worker ignores {', '.join(missing)}",
        detail={
            "samples_per_step": samples_per_step,
            "overall_tok_per_s": round(overall, 1),
            # Over every step, as the packed shape is.
            "real_tokens_per_step": sum(every_step) / len(every_step),
            "packed_rows_per_step": rows,
            "packed_positions_per_step": positions,
            "step_rates": [round(r, 1) for r in rates],
            "step_real_tokens": every_step,
            "step_peak_mem_gib": [round(peak, 3) for peak in step_peaks],
            SAME_BATCH: max(same_batch) if same_batch else None,
            "device": started_event.get("device"),
            "run_wall_s": round(wall, 1),
        },
    )


def mfu(tokens_per_s: float | None, flops_per_token: int, peak_tflops: float) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak."""
    if tokens_per_s is None:
        return None
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def relative_difference(value: float | None, reference: float | None) -> float | None:
    """``|value - reference| / |reference|``, or None when either is missing."""
    if value is None or reference is None or reference == 0 or math.isnan(reference):
        return None
    return abs(value - reference) / abs(reference)

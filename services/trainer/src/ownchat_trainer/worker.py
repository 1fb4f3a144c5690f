"""One training job's worker process: ``python -m ownchat_trainer.worker <job-spec.json>``.

The service starts it per job. It reads only the files its spec names (the base
model's checkpoint and the two split files in the artifact store), trains, saves
checkpoints under the spec's output directory, and reports on stdout as JSON
lines, one event a line; everything else it or its libraries print goes to
stderr, which the service keeps as the job's log. It never touches the
service's database.

Full fine-tuning of a causal LM: float32 weights, bf16 autocast on CUDA, loss
on assistant tokens only, weighted per sample, AdamW (fused on CUDA) with
linear warm-up and decay, gradient norm clipped at 1.0, every random choice
seeded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Emit = Callable[[dict[str, Any]], None]

MAX_GRAD_NORM = 1.0
TRAIN_LOSS_WINDOW = 10

logger = logging.getLogger("ownchat.trainer.worker")


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker run needs; written by the service as JSON."""

    job_id: str
    base_model_dir: Path
    train_split: Path
    validation_split: Path
    output_dir: Path
    max_steps: int
    learning_rate: float
    batch_size: int
    max_seq_length: int
    warmup_ratio: float
    checkpoint_interval_steps: int
    eval_interval_steps: int
    seed: int
    torch_threads: int | None = None

    def to_json(self) -> str:
        value = {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}
        return json.dumps(value, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        value = json.loads(text)
        for name in ("base_model_dir", "train_split", "validation_split", "output_dir"):
            value[name] = Path(value[name])
        return cls(**value)


def learning_rate_factor(step: int, total: int, warmup: int) -> float:
    """The share of the peak rate at 0-based ``step``: up linearly, then down linearly.

    Neither end wastes a step at rate zero.
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def batch_order(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Indices of each step's samples: a fresh seeded shuffle every epoch, forever."""
    rng = random.Random(seed)
    order = list(range(count))
    while True:
        rng.shuffle(order)
        for start in range(0, count, batch_size):
            yield order[start : start + batch_size]


def train(spec: WorkerSpec, emit: Emit) -> None:
    """Runs the whole job, reporting through ``emit``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from ownchat_trainer.batches import collate, encode_samples, read_split, weighted_loss_terms

    transformers_logging.disable_progress_bar()
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    on_cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if on_cuda else "cpu")

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(
        spec.base_model_dir, dtype=torch.float32, use_safetensors=True
    )
    model.to(device)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    context = getattr(model.config, "max_position_embeddings", None) or spec.max_seq_length
    max_length = min(spec.max_seq_length, context)

    train_samples, dropped = encode_samples(tokenizer, read_split(spec.train_split), max_length)
    validation_samples, _ = encode_samples(tokenizer, read_split(spec.validation_split), max_length)
    if not train_samples:
        raise ValueError(
            "no training sample keeps an assistant token within "
            f"max_seq_length={max_length}; raise max_seq_length"
        )
    emit(
        {
            "event": "started",
            "device": str(device),
            "total_steps": spec.max_steps,
            "message": (
                f"training on {device}: {len(train_samples)} samples"
                + (f" ({dropped} dropped: no assistant token within the length)" if dropped else "")
                + f", {len(validation_samples)} validation samples, {spec.max_steps} steps"
            ),
        }
    )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.learning_rate, weight_decay=0.0, fused=on_cuda
    )
    warmup = math.ceil(spec.warmup_ratio * spec.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, spec.max_steps, warmup)
    )

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()

    def validation_loss() -> float | None:
        if not validation_samples:
            return None
        model.eval()
        total, weight = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(validation_samples), spec.batch_size):
                batch = collate(validation_samples[start : start + spec.batch_size], pad_id)
                batch = batch.to(device)
                with autocast():
                    logits = model(
                        input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask,
                        use_cache=False,
                    ).logits
                loss_sum, loss_weight = weighted_loss_terms(logits, batch.labels, batch.weights)
                total += float(loss_sum)
                weight += float(loss_weight)
        model.train()
        return total / weight if weight > 0 else None

    def save(step: int, loss: float, val_loss: float | None, final: bool) -> None:
        target = spec.output_dir / f"step-{step}"
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        emit(
            {
                "event": "checkpoint",
                "step": step,
                "path": str(target),
                "loss": loss,
                "validation_loss": val_loss,
                "final": final,
            }
        )

    model.train()
    order = batch_order(len(train_samples), spec.batch_size, spec.seed)
    recent_losses: list[float] = []
    step_seconds = 0.0
    last_validation: float | None = None
    for step in range(1, spec.max_steps + 1):
        started = time.perf_counter()
        batch = collate([train_samples[i] for i in next(order)], pad_id).to(device)
        with autocast():
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).logits
        loss_sum, loss_weight = weighted_loss_terms(logits, batch.labels, batch.weights)
        # A batch whose samples all weigh 0 teaches nothing; its loss is 0.
        loss = loss_sum / loss_weight.clamp_min(1e-8)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        learning_rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        elapsed = time.perf_counter() - started
        step_seconds += elapsed
        recent_losses = (recent_losses + [loss_value])[-TRAIN_LOSS_WINDOW:]

        val_loss = None
        if step % spec.eval_interval_steps == 0 or step == spec.max_steps:
            val_loss = validation_loss()
            last_validation = val_loss
        emit(
            {
                "event": "metrics",
                "step": step,
                "total_steps": spec.max_steps,
                "loss": loss_value,
                "validation_loss": val_loss,
                "learning_rate": learning_rate,
                "tokens_per_second": batch.real_tokens / elapsed if elapsed > 0 else None,
                "eta_seconds": step_seconds / step * (spec.max_steps - step),
            }
        )
        if step % spec.checkpoint_interval_steps == 0 and step != spec.max_steps:
            save(step, loss_value, last_validation, final=False)

    train_loss = sum(recent_losses) / len(recent_losses)
    save(spec.max_steps, loss_value, last_validation, final=True)
    emit({"event": "done", "train_loss": train_loss, "validation_loss": last_validation})


def main(argv: list[str] | None = None) -> int:
    """Runs the job whose spec file is the one argument; exit status 1 on failure."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m ownchat_trainer.worker <job-spec.json>\n")
        return 2
    # Events get the real stdout; anything else printed goes to stderr (the log).
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    try:
        spec = WorkerSpec.from_json(Path(args[0]).read_text())
        train(spec, emit)
    except Exception as error:  # noqa: BLE001 - reported to the service, then exit 1
        logger.exception("training failed")
        emit({"event": "error", "message": f"{type(error).__name__}: {error}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

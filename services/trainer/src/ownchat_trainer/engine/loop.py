"""The training loop every method shares: steps, validation, checkpoints, events.

A method supplies an :class:`Objective` (``run_sft``, ``run_dpo``): what one
step's loss is and what the validation loss is. The loop owns the rest: the
optimizer step, validation every ``eval_interval_steps`` with the best step
remembered and early stopping, atomic checkpoints (``engine.checkpoint``) that
a later run resumes from exactly, the pause on request, and the events.

Events, one dict each through ``emit`` (only rank 0 emits):

- ``{"event": "metrics", "step", "total_steps", "loss", "validation_loss"
  (None between evaluations), "learning_rate" (the rate this step used),
  "tokens_per_second" (non-padding tokens of every rank), "eta_seconds"}``
  plus the objective's own (DPO: ``reward_accuracy``, ``reward_margin``);
- ``{"event": "checkpoint", "step", "path" (<output_dir>/step-<n>/model),
  "loss", "validation_loss" (the latest, or None), "best" (this step has the
  best validation loss so far)}``;
- ``{"event": "paused", "step"}`` after the checkpoint a pause saved;
- ``{"event": "message", "message"}``;
- ``{"event": "done", "train_loss" (mean of the last steps' losses),
  "validation_loss" (the produced model's, or None), "model_path",
  "model_step", "model_kind" ("full" | "lora_adapter"), "stopped_early"}``.
  The produced model is the best checkpoint by validation loss when
  validation ran, else the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ownchat_trainer.engine.checkpoint import (
    MODEL_DIR,
    TrainingState,
    capture_rng_state,
    prune_checkpoints,
    save_checkpoint,
)
from ownchat_trainer.engine.distributed import (
    DistributedContext,
    OptimizerByName,
    barrier,
    gathered_state_dict,
    sum_across_ranks,
    unwrap,
)
from ownchat_trainer.engine.lora import save_adapter

Emit = Callable[[dict[str, Any]], None]
ModelKind = Literal["full", "lora_adapter"]

MAX_GRAD_NORM = 1.0
# The done event's train loss is the mean over this many last steps.
TRAIN_LOSS_WINDOW = 10


@dataclass(frozen=True)
class StepResult:
    """One training step's forward pass, as an objective returns it."""

    # Call ``.backward()`` on this (outside autocast); see distributed.global_loss.
    backward: torch.Tensor
    # The step's loss over every rank, as one process would report it: a
    # scalar on the device, read once the whole step is launched.
    loss: torch.Tensor | float
    # This rank's non-padding tokens.
    tokens: int
    # Further per-step metrics, already over every rank (event key -> value).
    metrics: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """What a training method computes; the loop calls it under autocast."""

    def train_step(self, indices: Sequence[int]) -> StepResult:
        """The forward pass of the step whose whole batch is ``indices`` (same on every rank)."""
        ...

    def prepare(self, indices: Sequence[int]) -> None:
        """Gets the step of ``indices`` ready (packed, on its way to the device) while
        the step before it runs, if the method has work to do ahead; ``train_step``
        of the same ``indices`` then starts from it."""
        ...

    def validation_loss(self) -> float | None:
        """The validation loss over every rank (called in eval mode, no grad); None if none."""
        ...


@dataclass(frozen=True)
class LoopSettings:
    """The loop's schedule and where it keeps checkpoints."""

    output_dir: Path
    max_steps: int
    eval_interval_steps: int
    checkpoint_interval_steps: int
    early_stopping_patience: int
    keep_checkpoints: int
    batches_per_epoch: int


@dataclass
class Trainee:
    """What is trained and saved: the (possibly DDP-wrapped) model and its optimizer."""

    model: nn.Module
    tokenizer: Any
    model_kind: ModelKind
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    context: DistributedContext
    autocast: Callable[[], AbstractContextManager[Any]]


class TrainingLoop:
    """Runs steps ``state.step + 1 .. max_steps`` (or until stopped) and reports them."""

    def __init__(
        self,
        settings: LoopSettings,
        trainee: Trainee,
        objective: Objective,
        order: Iterator[list[int]],
        state: TrainingState,
        emit: Emit,
        should_stop: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._trainee = trainee
        self._objective = objective
        self._order = order
        self._state = state
        self._emit = emit
        self._should_stop = should_stop
        self._parameters = [p for p in trainee.model.parameters() if p.requires_grad]
        self._first_step = state.step + 1

    def run(self) -> None:
        """Trains to the end, an early stop, or a pause; emits the events."""
        state = self._state
        if state.step < self._settings.max_steps and not state.metrics.get("stopped_early"):
            if self._agree_to_stop(local_tokens=0)[1]:
                # Asked to pause before the first step: the newest checkpoint is this state.
                self._emit({"event": "paused", "step": state.step})
                return
            if not self._train():
                return
        self._done()

    def _train(self) -> bool:
        """The steps; False when paused."""
        state, settings = self._state, self._settings
        seconds = 0.0
        upcoming = next(self._order)
        for step in range(state.step + 1, settings.max_steps + 1):
            started = time.perf_counter()
            indices = upcoming
            result, learning_rate = self._step(indices)
            if step < settings.max_steps:
                # While this step runs on the GPU. A pause or an early stop drops
                # it: a resume draws the order again from the data position.
                upcoming = next(self._order)
                self._objective.prepare(upcoming)
            # The step's one wait for the GPU, behind its last kernel.
            loss = float(result.loss)
            tokens, stop = self._agree_to_stop(result.tokens)
            elapsed = time.perf_counter() - started
            seconds += elapsed
            timed = step - self._first_step + 1

            state.step = step
            state.batches_consumed += 1
            state.samples_consumed += len(indices)
            state.epoch = state.batches_consumed // settings.batches_per_epoch
            recent = [*state.metrics.get("recent_losses", []), loss]
            state.metrics["recent_losses"] = recent[-TRAIN_LOSS_WINDOW:]

            validation, improved = None, False
            if step % settings.eval_interval_steps == 0 or step == settings.max_steps:
                validation, improved = self._validate(step)
            stop_early = (
                validation is not None
                and settings.early_stopping_patience > 0
                and state.steps_without_improvement >= settings.early_stopping_patience
            )
            self._emit(
                {
                    "event": "metrics",
                    "step": step,
                    "total_steps": settings.max_steps,
                    "loss": loss,
                    "validation_loss": validation,
                    "learning_rate": learning_rate,
                    "tokens_per_second": tokens / elapsed if elapsed > 0 else None,
                    "eta_seconds": seconds / timed * (settings.max_steps - step),
                    **result.metrics,
                }
            )
            finished = step == settings.max_steps or stop_early
            if stop_early:
                state.metrics["stopped_early"] = True
            if improved or finished or stop or step % settings.checkpoint_interval_steps == 0:
                self._save(step, loss, best=improved)
            if stop_early:
                self._emit(
                    {
                        "event": "message",
                        "message": (
                            f"stopped early at step {step}: no better validation loss in "
                            f"{state.steps_without_improvement} evaluations (best "
                            f"{state.best_validation_loss:.4f} at step {state.best_step})"
                        ),
                    }
                )
                return True
            if stop and not finished:
                self._emit({"event": "paused", "step": step})
                return False
        return True

    def _step(self, indices: list[int]) -> tuple[StepResult, float]:
        trainee = self._trainee
        trainee.model.train()
        with trainee.autocast():
            result = self._objective.train_step(indices)
        result.backward.backward()
        torch.nn.utils.clip_grad_norm_(self._parameters, MAX_GRAD_NORM)
        learning_rate = float(trainee.optimizer.param_groups[0]["lr"])
        trainee.optimizer.step()
        trainee.scheduler.step()
        trainee.optimizer.zero_grad(set_to_none=True)
        return result, learning_rate

    def _agree_to_stop(self, local_tokens: int) -> tuple[float, bool]:
        """Every rank's tokens summed, and whether any rank was asked to stop.

        One collective for both: ranks receive the signal at slightly different
        moments, and all of them must stop after the same step. One process
        needs no collective, and no tensor on its device: reading one back
        would make the host wait for the step's last kernels before it packs
        and launches the next step, leaving the GPU idle meanwhile.
        """
        context = self._trainee.context
        if not context.distributed:
            return float(local_tokens), self._should_stop()
        values = torch.tensor(
            [float(local_tokens), 1.0 if self._should_stop() else 0.0],
            dtype=torch.float64,
            device=context.device,
        )
        total = sum_across_ranks(values, context)
        return float(total[0]), bool(total[1] > 0)

    def _validate(self, step: int) -> tuple[float | None, bool]:
        trainee, state = self._trainee, self._state
        trainee.model.eval()
        with torch.no_grad(), trainee.autocast():
            loss = self._objective.validation_loss()
        trainee.model.train()
        if loss is None:
            return None, False
        state.metrics["validation_loss"] = loss
        if state.best_validation_loss is None or loss < state.best_validation_loss:
            state.best_validation_loss, state.best_step = loss, step
            state.steps_without_improvement = 0
            return loss, True
        state.steps_without_improvement += 1
        return loss, False

    def _save(self, step: int, loss: float, best: bool) -> None:
        """Saves a checkpoint of this step (every rank must call it), then prunes."""
        trainee, settings, context = self._trainee, self._settings, self._trainee.context
        # Collectives first, on every rank: the weights and the optimizer's state
        # are gathered whole to rank 0 (from FSDP's shards, or its own replica).
        adapter = trainee.model_kind == "lora_adapter"
        weights = gathered_state_dict(trainee.model, context, trainable_only=adapter)
        optimizer = OptimizerByName(trainee.model, trainee.optimizer, context)
        optimizer.gather()
        rng_states = None
        if context.distributed:
            gathered: list[Any] = [None] * context.world_size
            dist.all_gather_object(gathered, capture_rng_state())
            rng_states = gathered
        if context.is_main:

            def write_model(directory: Path) -> None:
                model: Any = unwrap(trainee.model)
                if adapter:
                    save_adapter(model, directory, state_dict=weights)
                else:
                    model.save_pretrained(directory, state_dict=weights)
                trainee.tokenizer.save_pretrained(directory)

            path = save_checkpoint(
                settings.output_dir,
                step,
                write_model,
                optimizer,
                trainee.scheduler,
                self._state,
                rng_states=rng_states,
            )
            prune_checkpoints(
                settings.output_dir,
                keep_last=settings.keep_checkpoints,
                keep_steps=[self._state.best_step],
            )
            self._emit(
                {
                    "event": "checkpoint",
                    "step": step,
                    "path": str(path / MODEL_DIR),
                    "loss": loss,
                    "validation_loss": self._state.metrics.get("validation_loss"),
                    "best": best,
                }
            )
        # The others wait: a checkpoint is complete before any rank moves on.
        barrier(context)

    def _done(self) -> None:
        state = self._state
        model_step = state.best_step if state.best_step is not None else state.step
        recent = state.metrics.get("recent_losses") or []
        self._emit(
            {
                "event": "done",
                "train_loss": sum(recent) / len(recent) if recent else None,
                "validation_loss": state.best_validation_loss,
                "model_path": str(self._settings.output_dir / f"step-{model_step}" / MODEL_DIR),
                "model_step": model_step,
                "model_kind": self._trainee.model_kind,
                "stopped_early": bool(state.metrics.get("stopped_early", False)),
            }
        )

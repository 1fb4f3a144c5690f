"""Atomic, resumable checkpoints: a resumed run matches an uninterrupted one exactly,
and a save killed at any point never leaves a checkpoint that resume would load."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat_trainer.batches import EncodedSample, collate, encode_samples, weighted_loss_terms
from ownchat_trainer.engine.checkpoint import (
    COMPLETE_MARKER,
    TrainingState,
    capture_rng_state,
    clean_incomplete,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    skip_batches,
)
from ownchat_trainer.worker import batch_order, learning_rate_factor

SEED = 11
BATCH_SIZE = 3
STEPS = 6
SPLIT_AT = 3


@pytest.fixture
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@dataclass
class Run:
    """One training run's objects, built the way a worker builds them."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    order: Iterator[list[int]]
    samples: list[EncodedSample]
    pad_id: int


def start_run(model_dir: Path, samples: list[EncodedSample], pad_id: int) -> Run:
    random.seed(SEED)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, STEPS, 2)
    )
    order = batch_order(len(samples), BATCH_SIZE, SEED)
    return Run(model, optimizer, scheduler, order, samples, pad_id)


def train_steps(run: Run, state: TrainingState, count: int, seen: list[list[int]]) -> list[float]:
    batches_per_epoch = -(-len(run.samples) // BATCH_SIZE)
    losses = []
    for _ in range(count):
        indices = next(run.order)
        batch = collate([run.samples[i] for i in indices], run.pad_id)
        logits = run.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
        loss_sum, weight = weighted_loss_terms(logits, batch.labels, batch.weights)
        loss = loss_sum / weight.clamp_min(1e-8)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.batches_consumed += 1
        state.samples_consumed += len(indices)
        state.epoch = state.batches_consumed // batches_per_epoch
        losses.append(float(loss.detach()))
        seen.append(indices)
    return losses


def test_resumed_run_matches_uninterrupted_run(
    tmp_path: Path,
    model_root: Path,
    conversations: list[list[dict[str, str]]],
    deterministic: None,
) -> None:
    # Dropout on, so the result depends on the restored random generators.
    base = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-chat", attention_dropout=0.3)
    model.save_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-chat")
    tokenizer.save_pretrained(base)
    rows = [
        {"messages": c, "weight": 1.0 + i / 4, "record": i} for i, c in enumerate(conversations)
    ]
    samples, _ = encode_samples(tokenizer, rows, 128)
    pad_id = tokenizer.pad_token_id

    full = start_run(base, samples, pad_id)
    full_seen: list[list[int]] = []
    full_losses = train_steps(full, TrainingState(), STEPS, full_seen)

    first = start_run(base, samples, pad_id)
    seen: list[list[int]] = []
    state = TrainingState()
    losses = train_steps(first, state, SPLIT_AT, seen)

    def write_model(directory: Path) -> None:
        first.model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    checkpoints = tmp_path / "checkpoints"
    saved = save_checkpoint(
        checkpoints, SPLIT_AT, write_model, first.optimizer, first.scheduler, state
    )
    # Whatever ran in between must not matter: the generators are restored.
    torch.rand(1000)
    random.random()

    path = latest_checkpoint(checkpoints)
    assert path == saved
    resumed = start_run(path / "model", samples, pad_id)
    loaded = load_checkpoint(path, resumed.optimizer, resumed.scheduler, "cpu")
    assert (loaded.step, loaded.batches_consumed, loaded.samples_consumed) == (3, 3, 7)
    assert loaded.epoch == 1
    resumed.order = skip_batches(resumed.order, loaded.batches_consumed)
    losses += train_steps(resumed, loaded, STEPS - SPLIT_AT, seen)

    assert seen == full_seen
    for epoch_start in range(0, STEPS, 2):
        # Every epoch sees each sample exactly once.
        epoch = seen[epoch_start] + seen[epoch_start + 1]
        assert sorted(epoch) == list(range(len(samples)))
    assert len(losses) == STEPS
    for got, want in zip(losses, full_losses, strict=True):
        assert abs(got - want) <= 1e-6
    final = resumed.model.state_dict()
    for name, value in full.model.state_dict().items():
        assert torch.equal(final[name], value), name
    assert resumed.scheduler.get_last_lr() == full.scheduler.get_last_lr()

    # Control: without the generators restored, dropout draws differently.
    control = start_run(path / "model", samples, pad_id)
    control_state = load_checkpoint(
        path, control.optimizer, control.scheduler, "cpu", restore_rng=False
    )
    control.order = skip_batches(control.order, control_state.batches_consumed)
    control_loss = train_steps(control, control_state, 1, [])[0]
    assert abs(control_loss - full_losses[SPLIT_AT]) > 1e-6


def tiny_objects() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def save_tiny(directory: Path, step: int, **metrics: Any) -> Path:
    model, optimizer, scheduler = tiny_objects()

    def write_model(path: Path) -> None:
        path.mkdir()
        torch.save(model.state_dict(), path / "weights.pt")

    state = TrainingState(step=step, batches_consumed=step, metrics=metrics)
    return save_checkpoint(directory, step, write_model, optimizer, scheduler, state)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from ownchat_trainer.engine import checkpoint

    directory, step, point = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())

    class Scheduler:
        def state_dict(self):
            # Called right after the optimizer's state is written.
            if point == "after_optimizer":
                die()
            return {"last_epoch": step}

        def load_state_dict(self, state):
            pass

    def write_model(path):
        path.mkdir()
        torch.save(model.state_dict(), path / "weights.pt")
        if point == "write_model":
            die()

    if point == "before_marker":
        checkpoint._write_marker = die
    checkpoint.save_checkpoint(
        directory, step, write_model, optimizer, Scheduler(),
        checkpoint.TrainingState(step=step),
    )
    """
)


@pytest.mark.parametrize(
    ("point", "step"),
    [("write_model", 2), ("after_optimizer", 2), ("before_marker", 2), ("write_model", 1)],
    ids=["in-write-model", "after-optimizer", "before-marker", "while-replacing-step"],
)
def test_kill_during_save_leaves_previous_checkpoint(tmp_path: Path, point: str, step: int) -> None:
    checkpoints = tmp_path / "checkpoints"
    previous = save_tiny(checkpoints, 1, loss=0.5)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)

    result = subprocess.run(
        [sys.executable, str(script), str(checkpoints), str(step), point],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == -signal.SIGKILL, result.stderr
    assert latest_checkpoint(checkpoints) == previous
    leftovers = sorted(p.name for p in checkpoints.iterdir() if p != previous)
    assert leftovers, "the killed save left nothing behind: it did not get far enough"
    _, optimizer, scheduler = tiny_objects()
    state = load_checkpoint(previous, optimizer, scheduler)
    assert (state.step, state.metrics) == (1, {"loss": 0.5})

    removed = clean_incomplete(checkpoints)
    assert sorted(p.name for p in removed) == leftovers
    assert list(checkpoints.iterdir()) == [previous]
    assert latest_checkpoint(checkpoints) == previous


def test_marker_less_and_temporary_directories_are_ignored(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    save_tiny(checkpoints, 1)
    second = save_tiny(checkpoints, 2)
    unmarked = save_tiny(checkpoints, 5)
    (unmarked / COMPLETE_MARKER).unlink()
    (checkpoints / ".tmp-step-7-abc").mkdir()
    (checkpoints / "notes").mkdir()

    assert latest_checkpoint(checkpoints) == second
    with pytest.raises(FileNotFoundError):
        load_checkpoint(unmarked, None, None)
    removed = clean_incomplete(checkpoints)
    assert sorted(p.name for p in removed) == [".tmp-step-7-abc", "step-5"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["notes", "step-1", "step-2"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_pruning_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    paths = [save_tiny(checkpoints, step) for step in (1, 2, 3, 4, 5)]

    removed = prune_checkpoints(checkpoints, keep_last=2, keep_steps=[2, None])
    assert removed == [paths[0], paths[2]]
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["step-2", "step-4", "step-5"]

    removed = prune_checkpoints(checkpoints, keep_last=0, keep_steps=[2])
    assert removed == [paths[3]]
    assert latest_checkpoint(checkpoints) == paths[4]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2", "step-5"]


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    save_tiny(checkpoints, 2, loss=1.0)
    path = save_tiny(checkpoints, 2, loss=0.25)

    assert [p.name for p in checkpoints.iterdir()] == ["step-2"]
    _, optimizer, scheduler = tiny_objects()
    assert load_checkpoint(path, optimizer, scheduler).metrics == {"loss": 0.25}


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    previous = save_tiny(checkpoints, 1)

    def broken(path: Path) -> None:
        path.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(checkpoints, 2, broken, None, None, TrainingState())
    assert list(checkpoints.iterdir()) == [previous]


def test_optimizer_and_scheduler_state_round_trip(tmp_path: Path) -> None:
    path = save_tiny(tmp_path, 3)
    _, saved_optimizer, saved_scheduler = tiny_objects()
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))

    load_checkpoint(path, optimizer, scheduler)

    assert scheduler.last_epoch == saved_scheduler.last_epoch == 1
    assert optimizer.param_groups[0]["lr"] == saved_optimizer.param_groups[0]["lr"]
    for key, value in saved_optimizer.state_dict()["state"][0].items():
        assert torch.equal(optimizer.state_dict()["state"][0][key], value)


def test_random_generators_round_trip_per_rank(tmp_path: Path) -> None:
    import numpy

    def draw() -> tuple[float, float, float]:
        return random.random(), float(torch.rand(1)), float(numpy.random.rand())

    random.seed(1)
    torch.manual_seed(1)
    numpy.random.seed(1)
    rank0 = capture_rng_state()
    first = draw()
    rank1 = capture_rng_state()
    second = draw()
    path = save_checkpoint(
        tmp_path, 1, lambda p: p.mkdir(), None, None, TrainingState(), rng_states=[rank0, rank1]
    )

    draw()
    load_checkpoint(path, None, None, rank=1)
    assert draw() == second
    load_checkpoint(path, None, None, rank=0)
    assert draw() == first
    restore_rng_state(rank1)
    assert draw() == second


@pytest.mark.parametrize("consumed", [0, 1, 4, 5, 13])
def test_skip_batches_continues_the_same_order(consumed: int) -> None:
    expected = list(itertools.islice(batch_order(5, 2, SEED), consumed, consumed + 12))
    resumed = skip_batches(batch_order(5, 2, SEED), consumed)
    assert list(itertools.islice(resumed, 12)) == expected

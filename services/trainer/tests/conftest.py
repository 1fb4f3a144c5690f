"""Shared fixtures of the trainer's tests: a tiny base model, splits, and a core."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.testing import build_tiny_chat_model
from ownchat_trainer.core import TrainerCore
from ownchat_trainer.datasets import DatasetInfo, StaticDatasets
from ownchat_trainer.records import Job
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.runner import RunnerOptions
from ownchat_trainer.store import TrainerStore

TINY = "tiny-chat"

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the price of the Zephyr X2?"},
        {"role": "assistant", "content": "The Zephyr X2 router costs 129 euros."},
    ],
    [
        {"role": "system", "content": "You are a helpful support assistant for Acme."},
        {"role": "user", "content": "Error code E42?"},
        {
            "role": "assistant",
            "content": "Error code E42 means the firmware update was interrupted.",
        },
    ],
    [
        {"role": "user", "content": "How long do refunds take?"},
        {"role": "assistant", "content": "Our refund window is 30 days from delivery."},
    ],
    [
        {"role": "user", "content": "It still fails."},
        {"role": "assistant", "content": "Please restart the device and try again."},
    ],
]


PAIRS = [
    {
        "prompt": [{"role": "user", "content": "What does the Zephyr X2 cost?"}],
        "chosen": "The Zephyr X2 router costs 129 euros.",
        "rejected": "No idea, look it up.",
    },
    {
        "prompt": [{"role": "user", "content": "How long do refunds take?"}],
        "chosen": "Our refund window is 30 days from delivery.",
        "rejected": "Refunds are not possible.",
    },
    {
        "prompt": [{"role": "user", "content": "What does error code E42 mean?"}],
        "chosen": "Error code E42 means the firmware update was interrupted.",
        "rejected": "It means nothing.",
    },
]


def split_bytes(conversations: list[list[dict[str, str]]], weight: float = 1.0) -> bytes:
    """A split file as the data service writes it."""
    return "".join(
        json.dumps({"messages": c, "weight": weight, "record": i + 1}) + "\n"
        for i, c in enumerate(conversations)
    ).encode()


def pair_bytes(pairs: list[dict[str, object]]) -> bytes:
    """A preference split file as the data service writes it."""
    return "".join(
        json.dumps({**pair, "record": i + 1}) + "\n" for i, pair in enumerate(pairs)
    ).encode()


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with one base model, ``tiny-chat``."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_chat_model(root / TINY)
    return root


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "home" / "artifacts")


@pytest.fixture
def datasets(artifacts: ArtifactStore) -> StaticDatasets:
    """Known dataset versions: ``dsv_small`` (the tiny set four times over, lengths not
    counted) and ``dsv_pairs`` (preference pairs, four times over)."""
    train = artifacts.put_bytes(split_bytes(CONVERSATIONS * 4))
    validation = artifacts.put_bytes(split_bytes(CONVERSATIONS[:2]))
    pairs_train = artifacts.put_bytes(pair_bytes(PAIRS * 4))
    pairs_validation = artifacts.put_bytes(pair_bytes(PAIRS[:2]))
    return StaticDatasets(
        [
            DatasetInfo("dsv_small", "chat", train, validation, 16, 2),
            DatasetInfo("dsv_pairs", "preference", pairs_train, pairs_validation, 12, 2),
        ]
    )


CoreFactory = Callable[..., TrainerCore]


def runner_options(**changes: Any) -> RunnerOptions:
    """Options for tests: one thread, short waits, deterministic workers."""
    values: dict[str, Any] = {
        "torch_threads": 1,
        "stop_grace_seconds": 60.0,
        "placement_retry_seconds": 0.2,
        "deterministic": True,
    }
    values.update(changes)
    return RunnerOptions(**values)


@pytest.fixture
def trainer_store_location(tmp_path: Path) -> Path | str:
    """Where the cores of ``make_core`` keep their store: the home's SQLite file
    (a test module that overrides it with ``store_location`` runs on both engines)."""
    return tmp_path / "home" / "trainer" / "trainer.db"


@pytest.fixture
def make_core(
    tmp_path: Path,
    model_root: Path,
    artifacts: ArtifactStore,
    datasets: StaticDatasets,
    trainer_store_location: Path | str,
) -> Iterator[CoreFactory]:
    """Builds cores over one home (a later one sees what an earlier one stored);
    keyword arguments change the runner's options."""
    cores: list[TrainerCore] = []

    def make(start: bool = True, **options: Any) -> TrainerCore:
        state = tmp_path / "home" / "trainer"
        store = TrainerStore(trainer_store_location)
        registry = ModelRegistry(
            store, artifacts, [model_root], state / "imports", include_embedded=False
        )
        core = TrainerCore(
            store,
            registry,
            artifacts,
            datasets,
            jobs_dir=state / "jobs",
            options=runner_options(**options),
        )
        if start:
            core.start()
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close()


def _wait_for(core: TrainerCore, job_id: str, done: Callable[[Job], bool], timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = core.get_job(job_id)
        if done(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {core.get_job(job_id)}")


@pytest.fixture
def wait_for() -> Callable[[TrainerCore, str, Callable[[Job], bool], float], Job]:
    """Polls a job until a condition holds; fails the test after a timeout."""
    return _wait_for


@pytest.fixture
def conversations() -> list[list[dict[str, str]]]:
    """The tiny data set's conversations."""
    return [list(c) for c in CONVERSATIONS]


# The output layer and its loss on a CPU under bf16 autocast, for the
# cross-entropy kernel's tests (in-process and under Triton's interpreter).


@pytest.fixture
def output_layer_values() -> dict[str, Any]:
    """Hidden states, an output layer of 300 words, targets and per-token weights."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(37, 16, generator=generator, requires_grad=True),
        "weight": torch.randn(300, 16, generator=generator, requires_grad=True),
        "bias": None,
        "targets": torch.randint(0, 300, (37,), generator=generator),
        "token_weights": torch.rand(37, generator=generator) + 0.5,
    }


@pytest.fixture
def output_layer_loss() -> Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]]:
    """The fused output layer's loss under bf16 autocast, in chunks of 8, and the
    gradients of the hidden states and the weight (cleared after)."""
    import torch

    from ownchat_trainer.engine.linear_cross_entropy import linear_cross_entropy_sum

    def run(values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy_sum(**values, chunk_tokens=8)
        (loss / 3.0).backward()
        found = {name: values[name].grad for name in ("hidden", "weight")}
        for name in found:
            values[name].grad = None
        return loss.detach(), found

    return run

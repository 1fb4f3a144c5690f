"""The model registry: base models from model directories, imported once; version names."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ownchat.artifacts import Artifact, ArtifactStore
from ownchat.errors import NotFoundError
from ownchat_trainer.base_models import BaseModelSource, export_checkpoint
from ownchat_trainer.config import TrainerSettings
from ownchat_trainer.hyperparameters import Hyperparameters, resolve_full
from ownchat_trainer.records import (
    Checkpoint,
    EventKind,
    Job,
    JobState,
    Model,
    ModelKind,
    TrainingMethod,
)
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.store import TrainerStore, merged_name


class CountingExporter:
    """The real exporter, counted, and slow enough for two callers to overlap."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, source: BaseModelSource, target: Path) -> None:
        self.calls.append(source.name)
        time.sleep(0.2)
        export_checkpoint(source, target)


@pytest.fixture
def store(store_location: Path | str) -> TrainerStore:
    return TrainerStore(store_location)


def _registry(
    store: TrainerStore, artifacts: ArtifactStore, roots: list[Path], tmp_path: Path
) -> tuple[ModelRegistry, CountingExporter]:
    exporter = CountingExporter()
    registry = ModelRegistry(
        store, artifacts, roots, tmp_path / "imports", include_embedded=False, exporter=exporter
    )
    return registry, exporter


def test_a_base_model_is_imported_once_as_a_complete_checkpoint(
    store: TrainerStore, artifacts: ArtifactStore, model_root: Path, tmp_path: Path
) -> None:
    registry, exporter = _registry(store, artifacts, [model_root], tmp_path)
    assert registry.known("tiny-chat") and exporter.calls == []

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.get("tiny-chat"))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert exporter.calls == ["tiny-chat"]
    assert len({m.artifact.digest for m in results}) == 1
    model = results[0]
    assert (model.kind, model.base_model) == (ModelKind.BASE, "tiny-chat")

    directory = artifacts.path(model.artifact.digest)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (directory / name).is_file(), name
    assert "im_start" in (directory / "chat_template.jinja").read_text()
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())

    # A new registry over the same store (a restart) does not import again.
    again, exporter_again = _registry(store, artifacts, [model_root], tmp_path)
    assert again.get("tiny-chat") == model
    assert exporter_again.calls == []
    assert [m.id for m in again.list(10, 0)] == ["tiny-chat"]


def test_files_lost_from_the_store_are_imported_again(
    store: TrainerStore, artifacts: ArtifactStore, model_root: Path, tmp_path: Path
) -> None:
    registry, exporter = _registry(store, artifacts, [model_root], tmp_path)
    first = registry.get("tiny-chat")
    shutil.rmtree(artifacts.path(first.artifact.digest))
    assert registry.get("tiny-chat").artifact == first.artifact
    assert exporter.calls == ["tiny-chat", "tiny-chat"]


def test_only_directories_with_a_config_are_base_models(
    store: TrainerStore, artifacts: ArtifactStore, model_root: Path, tmp_path: Path
) -> None:
    other = tmp_path / "more"
    (other / "notes").mkdir(parents=True)
    (other / "ft:bad").mkdir()
    (other / "ft:bad" / "config.json").write_text("{}")
    registry, _ = _registry(store, artifacts, [model_root, other, tmp_path / "absent"], tmp_path)
    assert registry.base_names() == ["tiny-chat"]
    with pytest.raises(NotFoundError):
        registry.get("notes")
    with pytest.raises(NotFoundError):
        registry.get("../tiny-chat")


def _job(job_id: str, suffix: str) -> Job:
    return Job(
        id=job_id,
        base_model="tiny-chat",
        dataset_version_id="dsv_1",
        method=TrainingMethod.SFT_FULL,
        hyperparameters=resolve_full(Hyperparameters(), 4),
        seed=0,
        suffix=suffix,
        state=JobState.RUNNING,
        steps_done=0,
        steps_total=1,
        error="",
        model_version="",
        create_time=time.time(),
        update_time=time.time(),
        device="cpu",
        train_split=Artifact("sha256:" + "0" * 64, 1),
        validation_split=Artifact("sha256:" + "0" * 64, 1),
    )


def test_versions_count_per_base_and_suffix(store: TrainerStore) -> None:
    names = []
    for index, suffix in enumerate(["acme", "acme", "", "other", ""]):
        job = store.add_job(_job(f"job_{index}", suffix), "", [])
        model, finished = store.register_version(
            job, "tiny-chat", Artifact("sha256:" + "1" * 64, 10), {"train_loss": 1.0}, "{model}"
        )
        assert finished.state is JobState.SUCCEEDED and finished.model_version == model.id
        names.append(model.id)
    assert names == [
        "ft:tiny-chat:acme:1",
        "ft:tiny-chat:acme:2",
        "ft:tiny-chat::1",
        "ft:tiny-chat:other:1",
        "ft:tiny-chat::2",
    ]
    assert [m.id for m in store.list_models(2, 0)] == ["ft:tiny-chat::2", "ft:tiny-chat:other:1"]


def test_model_dirs_come_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path))
    monkeypatch.setenv("OWNCHAT_TRAINER_MODEL_DIRS", json.dumps(["/srv/models", "/opt/m"]))
    settings = TrainerSettings()
    assert settings.model_dirs == [Path("/srv/models"), Path("/opt/m")]
    assert settings.port == 50052
    assert settings.embedded_base_model is True


def test_models_trained_on_erased_data_are_blocked_once(store: TrainerStore) -> None:
    job = store.add_job(_job("job_erased", "acme"), "", [])
    model, _ = store.register_version(
        job, "tiny-chat", Artifact("sha256:" + "1" * 64, 10), {"train_loss": 1.0}, "{model}"
    )
    assert store.block_models_trained_on([], "erased") == []
    assert store.block_models_trained_on(["dsv_other"], "erased") == []
    blocked = store.block_models_trained_on([job.dataset_version_id], "erased by erasure_1")
    assert blocked == [model.id]
    stored = store.get_model(model.id)
    assert stored is not None and stored.blocked_reason == "erased by erasure_1"
    # Blocking again keeps the first reason.
    assert store.block_models_trained_on([job.dataset_version_id], "later") == [model.id]
    again = store.get_model(model.id)
    assert again is not None and again.blocked_reason == "erased by erasure_1"


# The first schema, as the store created it (counted in PRAGMA user_version) before
# its migrations became Alembic revisions.
FIRST_SCHEMA = """
CREATE TABLE models (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    base_model TEXT NOT NULL,
    suffix TEXT NOT NULL,
    artifact_digest TEXT NOT NULL,
    artifact_bytes INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    dataset_version_id TEXT NOT NULL,
    metrics TEXT NOT NULL,
    blocked_reason TEXT NOT NULL,
    create_time REAL NOT NULL
);
CREATE INDEX models_by_lineage ON models(base_model, suffix);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    base_model TEXT NOT NULL,
    dataset_version_id TEXT NOT NULL,
    method TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    seed INTEGER NOT NULL,
    suffix TEXT NOT NULL,
    state TEXT NOT NULL,
    steps_done INTEGER NOT NULL,
    steps_total INTEGER NOT NULL,
    error TEXT NOT NULL,
    model_version TEXT NOT NULL,
    device TEXT NOT NULL,
    train_digest TEXT NOT NULL,
    train_bytes INTEGER NOT NULL,
    validation_digest TEXT NOT NULL,
    validation_bytes INTEGER NOT NULL,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL
);
CREATE INDEX jobs_by_time ON jobs(create_time);
CREATE INDEX jobs_by_state ON jobs(state, create_time);
CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    sequence INTEGER NOT NULL,
    create_time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL,
    step INTEGER NOT NULL,
    total_steps INTEGER NOT NULL,
    loss REAL,
    validation_loss REAL,
    learning_rate REAL,
    tokens_per_second REAL,
    eta_seconds REAL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE checkpoints (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    step INTEGER NOT NULL,
    loss REAL,
    validation_loss REAL,
    artifact_digest TEXT NOT NULL,
    artifact_bytes INTEGER NOT NULL,
    create_time REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
PRAGMA user_version = 1;
"""


def test_a_store_from_before_resumable_jobs_is_migrated(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "trainer.db")
    old.executescript(FIRST_SCHEMA)
    job = _job("job_old", "acme")
    hyperparameters = {
        k: v for k, v in job.hyperparameters.to_dict().items() if not k.startswith(("lora", "dpo"))
    }
    with old:
        old.execute(
            "INSERT INTO jobs VALUES (?, NULL, 'tiny-chat', 'dsv_1', 'sft_full', ?, 0, 'acme', "
            "'running', 2, 4, '', '', 'cpu', ?, 1, ?, 1, 1.0, 1.0)",
            (job.id, json.dumps(hyperparameters), "sha256:" + "0" * 64, "sha256:" + "0" * 64),
        )
    old.close()
    store = TrainerStore(tmp_path / "trainer.db")
    migrated = store.get_job("job_old")
    assert (migrated.restarts, migrated.restart_step) == (0, -1)
    assert migrated.hyperparameters.lora_rank == 0 and migrated.method is TrainingMethod.SFT_FULL
    requeued = store.set_state("job_old", JobState.QUEUED, "again", steps_done=1, restarts=(1, 1))
    assert (requeued.steps_done, requeued.restarts, requeued.restart_step) == (1, 1, 1)
    store.close()


def test_adapters_and_merged_models_share_the_version_numbers(store: TrainerStore) -> None:
    artifact = Artifact("sha256:" + "1" * 64, 10)
    first = store.add_job(_job("job_a", "acme"), "", [])
    adapter, _ = store.register_version(
        first, "tiny-chat", artifact, {}, "{model}", kind=ModelKind.LORA_ADAPTER
    )
    assert (adapter.id, adapter.kind, adapter.base_model) == (
        "ft:tiny-chat:acme:1",
        ModelKind.LORA_ADAPTER,
        "tiny-chat",
    )
    merged = Model(
        id=merged_name(adapter.id),
        kind=ModelKind.FULL,
        base_model="tiny-chat",
        artifact=artifact,
        create_time=time.time(),
        suffix="acme",
    )
    assert store.add_model(merged) == merged
    # A second registration of the same name keeps the first.
    assert store.add_model(dataclasses.replace(merged, metrics={"x": 1.0})) == merged
    second = store.add_job(_job("job_b", "acme"), "", [])
    model, _ = store.register_version(second, "tiny-chat", artifact, {}, "{model}")
    assert model.id == "ft:tiny-chat:acme:2"


def test_a_checkpoint_saved_again_at_its_step_replaces_the_first(store: TrainerStore) -> None:
    job = store.add_job(_job("job_c", "acme"), "", [])
    first = Checkpoint("job_c", 2, 1.5, None, Artifact("sha256:" + "1" * 64, 10), 1.0)
    store.add_checkpoint(first, "saved")
    again = Checkpoint("job_c", 2, 1.25, 1.75, Artifact("sha256:" + "2" * 64, 3 << 32), 2.0)
    store.add_checkpoint(again, "saved again")
    store.add_checkpoint(dataclasses.replace(first, step=4), "later")
    assert store.list_checkpoints(job.id) == [again, dataclasses.replace(first, step=4)]
    events = store.events_after(job.id, 0)
    assert [(e.sequence, e.kind, e.step) for e in events] == [
        (1, EventKind.CHECKPOINT, 2),
        (2, EventKind.CHECKPOINT, 2),
        (3, EventKind.CHECKPOINT, 4),
    ]


def test_64_bit_seeds_and_sizes_are_kept(store: TrainerStore) -> None:
    job = dataclasses.replace(
        _job("job_big", "acme"),
        seed=(1 << 63) - 1,
        train_split=Artifact("sha256:" + "0" * 64, 5 << 32),
    )
    store.add_job(job, "key", [])
    assert store.get_job("job_big") == job
    assert store.job_by_idempotency_key("key") == job
    model, _ = store.register_version(
        job, "tiny-chat", Artifact("sha256:" + "1" * 64, 7 << 32), {}, "{model}"
    )
    assert store.get_model(model.id) == model

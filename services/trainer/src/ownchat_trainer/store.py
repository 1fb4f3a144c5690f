"""The trainer's own store: jobs, job events, checkpoints and the model registry
(SQLite or PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ownchat.artifacts import Artifact
from ownchat.database import Connection, Database, Migrations, Row
from ownchat.errors import NotFoundError
from ownchat_trainer.hyperparameters import ResolvedHyperparameters
from ownchat_trainer.records import (
    Checkpoint,
    EventKind,
    Job,
    JobEvent,
    JobState,
    Model,
    ModelKind,
    NewEvent,
    TrainingMethod,
)

MIGRATIONS = Migrations("trainer", Path(__file__).with_name("migrations"))


def _job(row: Row) -> Job:
    return Job(
        id=row["id"],
        base_model=row["base_model"],
        dataset_version_id=row["dataset_version_id"],
        method=TrainingMethod(row["method"]),
        hyperparameters=ResolvedHyperparameters.from_dict(json.loads(row["hyperparameters"])),
        seed=row["seed"],
        suffix=row["suffix"],
        state=JobState(row["state"]),
        steps_done=row["steps_done"],
        steps_total=row["steps_total"],
        error=row["error"],
        model_version=row["model_version"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        device=row["device"],
        train_split=Artifact(row["train_digest"], row["train_bytes"]),
        validation_split=Artifact(row["validation_digest"], row["validation_bytes"]),
        restarts=row["restarts"],
        restart_step=row["restart_step"],
    )


def _event(row: Row) -> JobEvent:
    return JobEvent(
        sequence=row["sequence"],
        create_time=row["create_time"],
        kind=EventKind(row["kind"]),
        message=row["message"],
        state=JobState(row["state"]),
        step=row["step"],
        total_steps=row["total_steps"],
        loss=row["loss"],
        validation_loss=row["validation_loss"],
        learning_rate=row["learning_rate"],
        tokens_per_second=row["tokens_per_second"],
        eta_seconds=row["eta_seconds"],
    )


def _model(row: Row) -> Model:
    return Model(
        id=row["id"],
        kind=ModelKind(row["kind"]),
        base_model=row["base_model"],
        artifact=Artifact(row["artifact_digest"], row["artifact_bytes"]),
        create_time=row["create_time"],
        suffix=row["suffix"],
        job_id=row["job_id"],
        dataset_version_id=row["dataset_version_id"],
        metrics=json.loads(row["metrics"]),
        blocked_reason=row["blocked_reason"],
    )


def _checkpoint(row: Row) -> Checkpoint:
    return Checkpoint(
        job_id=row["job_id"],
        step=row["step"],
        loss=row["loss"],
        validation_loss=row["validation_loss"],
        artifact=Artifact(row["artifact_digest"], row["artifact_bytes"]),
        create_time=row["create_time"],
    )


def version_name(base_model: str, suffix: str, number: int) -> str:
    """The registry name of a fine-tuned version."""
    return f"ft:{base_model}:{suffix}:{number}"


def merged_name(adapter_id: str) -> str:
    """The registry name of the full model an adapter version merges into."""
    return f"{adapter_id}:merged"


def _insert(connection: Connection, table: str, values: dict[str, object]) -> None:
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    connection.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values()))


def _model_values(model: Model) -> dict[str, object]:
    return {
        "id": model.id,
        "kind": model.kind.value,
        "base_model": model.base_model,
        "suffix": model.suffix,
        "artifact_digest": model.artifact.digest,
        "artifact_bytes": model.artifact.size_bytes,
        "job_id": model.job_id,
        "dataset_version_id": model.dataset_version_id,
        "metrics": json.dumps(model.metrics),
        "blocked_reason": model.blocked_reason,
        "create_time": model.create_time,
    }


class TrainerStore:
    """Reads and writes the trainer's tables."""

    def __init__(self, location: Path | str) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self._db = Database(location, MIGRATIONS)
        # Readers of a job's events wait on this instead of polling the database.
        self._changed = threading.Condition()
        self._changes = 0

    def _touch(self) -> None:
        with self._changed:
            self._changes += 1
            self._changed.notify_all()

    def change_count(self) -> int:
        """A counter that moves whenever a job or its events change."""
        with self._changed:
            return self._changes

    def wait_for_change(self, since: int, timeout: float) -> bool:
        """Waits until the counter moves past ``since``; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._changes != since, timeout)

    # Jobs.

    def add_job(self, job: Job, idempotency_key: str, events: Iterable[NewEvent]) -> Job:
        """Records a new job with its first events; with a known key, returns that job."""
        with self._db.transaction() as connection:
            if idempotency_key:
                existing = connection.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if existing is not None:
                    return _job(existing)
            values: dict[str, object] = {
                "id": job.id,
                "idempotency_key": idempotency_key or None,
                "base_model": job.base_model,
                "dataset_version_id": job.dataset_version_id,
                "method": job.method.value,
                "hyperparameters": json.dumps(job.hyperparameters.to_dict()),
                "seed": job.seed,
                "suffix": job.suffix,
                "state": job.state.value,
                "steps_done": job.steps_done,
                "steps_total": job.steps_total,
                "error": job.error,
                "model_version": job.model_version,
                "device": job.device,
                "train_digest": job.train_split.digest,
                "train_bytes": job.train_split.size_bytes,
                "validation_digest": job.validation_split.digest,
                "validation_bytes": job.validation_split.size_bytes,
                "create_time": job.create_time,
                "update_time": job.update_time,
                "restarts": job.restarts,
                "restart_step": job.restart_step,
            }
            _insert(connection, "jobs", values)
            for event in events:
                self._append(connection, job.id, event)
        self._touch()
        return job

    def job_by_idempotency_key(self, key: str) -> Job | None:
        rows = self._db.query("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
        return _job(rows[0]) if rows else None

    def get_job(self, job_id: str) -> Job:
        rows = self._db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError("training job", job_id)
        return _job(rows[0])

    def list_jobs(self, limit: int, offset: int) -> list[Job]:
        rows = self._db.query(
            "SELECT * FROM jobs ORDER BY create_time DESC, id DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_job(row) for row in rows]

    def jobs_in(self, states: Iterable[JobState]) -> list[Job]:
        """Jobs in any of the states, oldest first (the queue's order)."""
        values = [s.value for s in states]
        marks = ", ".join("?" for _ in values)
        rows = self._db.query(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY create_time, id", values
        )
        return [_job(row) for row in rows]

    def set_state(
        self,
        job_id: str,
        state: JobState,
        message: str,
        error: str | None = None,
        device: str | None = None,
        steps_done: int | None = None,
        restarts: tuple[int, int] | None = None,
    ) -> Job:
        """Moves a job to a state and records the STATE event, atomically.

        ``steps_done`` sets the progress (a job resumed from a checkpoint goes
        back to its step); ``restarts`` sets (restarts, restart_step).
        """
        restart_count, restart_step = restarts if restarts is not None else (None, None)
        with self._db.transaction() as connection:
            connection.execute(
                "UPDATE jobs SET state = ?, update_time = ?, error = COALESCE(?, error), "
                "device = COALESCE(?, device), steps_done = COALESCE(?, steps_done), "
                "restarts = COALESCE(?, restarts), restart_step = COALESCE(?, restart_step) "
                "WHERE id = ?",
                (
                    state.value,
                    time.time(),
                    error,
                    device,
                    steps_done,
                    restart_count,
                    restart_step,
                    job_id,
                ),
            )
            self._append(connection, job_id, NewEvent(EventKind.STATE, message))
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        self._touch()
        return _job(row)

    def set_device(self, job_id: str, device: str) -> None:
        with self._db.transaction() as connection:
            connection.execute("UPDATE jobs SET device = ? WHERE id = ?", (device, job_id))

    # Events.

    @staticmethod
    def _append(connection: Connection, job_id: str, event: NewEvent) -> JobEvent:
        job = connection.execute(
            "SELECT state, steps_done, steps_total FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        sequence = connection.execute(
            "SELECT COALESCE(MAX(sequence), 0) + 1 FROM job_events WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
        stored = JobEvent(
            sequence=sequence,
            create_time=time.time(),
            kind=event.kind,
            message=event.message,
            state=JobState(job["state"]),
            step=event.step or job["steps_done"],
            total_steps=event.total_steps or job["steps_total"],
            loss=event.loss,
            validation_loss=event.validation_loss,
            learning_rate=event.learning_rate,
            tokens_per_second=event.tokens_per_second,
            eta_seconds=event.eta_seconds,
        )
        connection.execute(
            "INSERT INTO job_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                stored.sequence,
                stored.create_time,
                stored.kind.value,
                stored.message,
                stored.state.value,
                stored.step,
                stored.total_steps,
                stored.loss,
                stored.validation_loss,
                stored.learning_rate,
                stored.tokens_per_second,
                stored.eta_seconds,
            ),
        )
        return stored

    def append_event(self, job_id: str, event: NewEvent) -> JobEvent:
        """Appends an event; a METRICS event also moves the job's progress."""
        with self._db.transaction() as connection:
            if event.kind is EventKind.METRICS:
                connection.execute(
                    "UPDATE jobs SET steps_done = ?, steps_total = ? WHERE id = ?",
                    (event.step, event.total_steps, job_id),
                )
            stored = self._append(connection, job_id, event)
        self._touch()
        return stored

    def events_after(self, job_id: str, after: int, limit: int = 1000) -> list[JobEvent]:
        rows = self._db.query(
            "SELECT * FROM job_events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (job_id, after, limit),
        )
        return [_event(row) for row in rows]

    # Checkpoints.

    def add_checkpoint(self, checkpoint: Checkpoint, message: str) -> None:
        """Records a checkpoint and its CHECKPOINT event."""
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, step) DO UPDATE SET loss = excluded.loss, "
                "validation_loss = excluded.validation_loss, "
                "artifact_digest = excluded.artifact_digest, "
                "artifact_bytes = excluded.artifact_bytes, create_time = excluded.create_time",
                (
                    checkpoint.job_id,
                    checkpoint.step,
                    checkpoint.loss,
                    checkpoint.validation_loss,
                    checkpoint.artifact.digest,
                    checkpoint.artifact.size_bytes,
                    checkpoint.create_time,
                ),
            )
            self._append(
                connection,
                checkpoint.job_id,
                NewEvent(
                    EventKind.CHECKPOINT,
                    message,
                    step=checkpoint.step,
                    loss=checkpoint.loss,
                    validation_loss=checkpoint.validation_loss,
                ),
            )
        self._touch()

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        rows = self._db.query("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step", (job_id,))
        return [_checkpoint(row) for row in rows]

    # Models.

    def get_model(self, model_id: str) -> Model | None:
        rows = self._db.query("SELECT * FROM models WHERE id = ?", (model_id,))
        return _model(rows[0]) if rows else None

    def list_models(self, limit: int, offset: int) -> list[Model]:
        rows = self._db.query(
            "SELECT * FROM models ORDER BY create_time DESC, id DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_model(row) for row in rows]

    def put_base_model(self, name: str, artifact: Artifact) -> Model:
        """Registers (or re-registers, after a re-import) a base model."""
        model = Model(
            id=name,
            kind=ModelKind.BASE,
            base_model=name,
            artifact=artifact,
            create_time=time.time(),
        )
        with self._db.transaction() as connection:
            values = _model_values(model)
            connection.execute(
                f"INSERT INTO models ({', '.join(values)}) "
                f"VALUES ({', '.join('?' for _ in values)}) "
                "ON CONFLICT (id) DO UPDATE SET artifact_digest = excluded.artifact_digest, "
                "artifact_bytes = excluded.artifact_bytes",
                tuple(values.values()),
            )
            row = connection.execute("SELECT * FROM models WHERE id = ?", (name,)).fetchone()
        return _model(row)

    def register_version(
        self,
        job: Job,
        root_base: str,
        artifact: Artifact,
        metrics: dict[str, float],
        message: str,
        kind: ModelKind = ModelKind.FULL,
        base_model: str | None = None,
    ) -> tuple[Model, Job]:
        """Registers a job's model as the next ``ft:<root_base>:<suffix>:<n>`` and ends
        the job SUCCEEDED, in one transaction.

        ``base_model`` is the model's lineage, ``root_base`` when None (a full
        version); an adapter names the model it applies to.
        """
        now = time.time()
        with self._db.transaction() as connection:
            prefix = version_name(root_base, job.suffix, 0)[:-1]
            rows = connection.execute(
                "SELECT id FROM models WHERE substr(id, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
            numbers = [int(tail) for row in rows if (tail := row["id"][len(prefix) :]).isdigit()]
            model = Model(
                id=version_name(root_base, job.suffix, max(numbers, default=0) + 1),
                kind=kind,
                base_model=base_model or root_base,
                artifact=artifact,
                create_time=now,
                suffix=job.suffix,
                job_id=job.id,
                dataset_version_id=job.dataset_version_id,
                metrics=metrics,
            )
            _insert(connection, "models", _model_values(model))
            connection.execute(
                "UPDATE jobs SET state = ?, model_version = ?, update_time = ? WHERE id = ?",
                (JobState.SUCCEEDED.value, model.id, now, job.id),
            )
            self._append(
                connection, job.id, NewEvent(EventKind.STATE, message.format(model=model.id))
            )
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone()
        self._touch()
        return model, _job(row)

    def add_model(self, model: Model) -> Model:
        """Registers a model under a new name; an existing one of that name wins."""
        with self._db.transaction() as connection:
            existing = connection.execute(
                "SELECT * FROM models WHERE id = ?", (model.id,)
            ).fetchone()
            if existing is not None:
                return _model(existing)
            _insert(connection, "models", _model_values(model))
        return model

    def block_models_trained_on(self, dataset_version_ids: Iterable[str], reason: str) -> list[str]:
        """Sets blocked_reason on models trained on the versions; returns all their ids."""
        versions = list(dataset_version_ids)
        if not versions:
            return []
        marks = ", ".join("?" * len(versions))
        with self._db.transaction() as connection:
            connection.execute(
                f"UPDATE models SET blocked_reason = ? "
                f"WHERE dataset_version_id IN ({marks}) AND blocked_reason = ''",
                (reason, *versions),
            )
            rows = connection.execute(
                f"SELECT id FROM models WHERE dataset_version_id IN ({marks}) ORDER BY id",
                versions,
            ).fetchall()
        return [row["id"] for row in rows]

    def close(self) -> None:
        self._db.close()

"""The evaluator's own store: evaluation runs, in SQLite."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ownchat.errors import NotFoundError
from ownchat.sqlite import Database

MIGRATIONS = [
    """
    CREATE TABLE eval_runs (
        id TEXT PRIMARY KEY,
        model_id TEXT NOT NULL,
        dataset_version_id TEXT NOT NULL,
        metrics TEXT NOT NULL,
        max_samples INTEGER NOT NULL,
        state TEXT NOT NULL,
        completed INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        results TEXT NOT NULL DEFAULT '[]',
        error TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL
    );
    CREATE INDEX eval_runs_by_time ON eval_runs(create_time)
    """,
]


class RunState(Enum):
    """Where a run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class MetricResult:
    """One metric's value and how it was computed."""

    metric: str
    value: float
    details: str


@dataclass(frozen=True)
class EvalRun:
    """An evaluation run as stored."""

    id: str
    model_id: str
    dataset_version_id: str
    metrics: list[str]
    max_samples: int
    state: RunState
    completed: int
    total: int
    results: list[MetricResult] = field(default_factory=list)
    error: str = ""
    create_time: float = 0.0


def _run(row: sqlite3.Row) -> EvalRun:
    return EvalRun(
        id=row["id"],
        model_id=row["model_id"],
        dataset_version_id=row["dataset_version_id"],
        metrics=json.loads(row["metrics"]),
        max_samples=row["max_samples"],
        state=RunState(row["state"]),
        completed=row["completed"],
        total=row["total"],
        results=[MetricResult(**r) for r in json.loads(row["results"])],
        error=row["error"],
        create_time=row["create_time"],
    )


class EvalStore:
    """Reads and writes evaluation runs."""

    def __init__(self, path: Path) -> None:
        self._db = Database(path, MIGRATIONS)

    def add(self, run: EvalRun) -> None:
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO eval_runs (id, model_id, dataset_version_id, metrics, max_samples, "
                "state, create_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.model_id,
                    run.dataset_version_id,
                    json.dumps(run.metrics),
                    run.max_samples,
                    run.state.value,
                    run.create_time,
                ),
            )

    def get(self, run_id: str) -> EvalRun:
        rows = self._db.query("SELECT * FROM eval_runs WHERE id = ?", (run_id,))
        if not rows:
            raise NotFoundError("eval run", run_id)
        return _run(rows[0])

    def list_runs(self, limit: int, offset: int) -> list[EvalRun]:
        rows = self._db.query(
            "SELECT * FROM eval_runs ORDER BY create_time DESC, id LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_run(row) for row in rows]

    def unfinished(self) -> list[EvalRun]:
        rows = self._db.query(
            "SELECT * FROM eval_runs WHERE state IN (?, ?) ORDER BY create_time",
            (RunState.QUEUED.value, RunState.RUNNING.value),
        )
        return [_run(row) for row in rows]

    def update(
        self,
        run_id: str,
        *,
        state: RunState | None = None,
        completed: int | None = None,
        total: int | None = None,
        results: list[MetricResult] | None = None,
        error: str | None = None,
    ) -> None:
        assignments: list[str] = []
        values: list[object] = []
        for column, value in (
            ("state", state.value if state else None),
            ("completed", completed),
            ("total", total),
            ("results", json.dumps([vars(r) for r in results]) if results is not None else None),
            ("error", error),
        ):
            if value is not None:
                assignments.append(f"{column} = ?")
                values.append(value)
        if not assignments:
            return
        with self._db.transaction() as connection:
            connection.execute(
                f"UPDATE eval_runs SET {', '.join(assignments)} WHERE id = ?", (*values, run_id)
            )

    def close(self) -> None:
        self._db.close()

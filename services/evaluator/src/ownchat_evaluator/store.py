"""The evaluator's own store: evaluation runs and their per-sample outputs (SQLite or
PostgreSQL).

Migrations are only ever appended: runs stored by an older evaluator (no
configuration, no samples) still load, with the defaults of that time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ownchat.database import Database, Migrations, Row, keyset_scan
from ownchat.erasure import MIN_VALUE_CHARS, folded_values, holds_any, too_short
from ownchat.errors import NotFoundError
from ownchat_evaluator.run_config import RunConfig

MIGRATIONS = Migrations("evaluator", Path(__file__).with_name("migrations"))

# Rows per INSERT of samples: 11 parameters each, well under SQLite's 32766.
_SAMPLES_PER_INSERT = 500
# A LIMIT no run reaches, for "all rows" on both engines.
_NO_LIMIT = 2**62


class RunState(Enum):
    """Where a run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class MetricResult:
    """One metric's value, its 95% bootstrap interval and how it was computed."""

    metric: str
    value: float
    details: str
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class SampleOutput:
    """What a run produced for one validation sample.

    ``reply`` is None when the run generated nothing; ``refused`` then too;
    ``check_passed`` is None when the sample was not checked, and ``expected``
    holds the answer checked against.
    """

    index: int
    context: list[dict[str, str]]
    reference: str
    reply: str | None
    reply_tokens: int
    nll: float
    scored_tokens: int
    refused: bool | None
    check_passed: bool | None
    expected: str = ""


@dataclass(frozen=True)
class EvalRun:
    """An evaluation run as stored."""

    id: str
    model_id: str
    dataset_version_id: str
    config: RunConfig
    state: RunState
    completed: int
    total: int
    results: list[MetricResult] = field(default_factory=list)
    error: str = ""
    create_time: float = 0.0
    repeated_from: str = ""
    start_time: float | None = None
    end_time: float | None = None
    device: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """The metrics asked for."""
        return self.config.metrics

    @property
    def max_samples(self) -> int:
        """At most this many samples; 0 for all."""
        return self.config.max_samples

    def result(self, metric: str) -> MetricResult | None:
        """The result of one metric, if the run has it."""
        return next((r for r in self.results if r.metric == metric), None)


def _run(row: Row) -> EvalRun:
    metrics = json.loads(row["metrics"])
    return EvalRun(
        id=row["id"],
        model_id=row["model_id"],
        dataset_version_id=row["dataset_version_id"],
        config=RunConfig.from_json(row["config"], metrics, row["max_samples"]),
        state=RunState(row["state"]),
        completed=row["completed"],
        total=row["total"],
        results=[MetricResult(**r) for r in json.loads(row["results"])],
        error=row["error"],
        create_time=row["create_time"],
        repeated_from=row["repeated_from"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        device=row["device"],
        timings=json.loads(row["timings"]),
    )


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _stored_flag(value: bool | None) -> int | None:
    """Flags are stored as 0/1 (or NULL) on both engines."""
    return None if value is None else int(value)


def _sample(row: Row) -> SampleOutput:
    return SampleOutput(
        index=row["idx"],
        context=json.loads(row["context"]),
        reference=row["reference"],
        reply=row["reply"],
        reply_tokens=row["reply_tokens"],
        nll=row["nll"],
        scored_tokens=row["scored_tokens"],
        refused=_flag(row["refused"]),
        check_passed=_flag(row["check_passed"]),
        expected=row["expected"],
    )


@dataclass(frozen=True)
class ErasedEvalSamples:
    """What an erasure deleted from the runs' per-sample outputs."""

    # The runs that lost samples, in id order.
    run_ids: tuple[str, ...]
    samples: int


_SAMPLES_TO_SCAN = """
    SELECT idx, context, reference, reply, expected FROM eval_samples
    WHERE run_id = ? AND idx > ? ORDER BY idx LIMIT ?
"""


def _sample_texts(row: Row) -> list[str]:
    # The contents decoded from the JSON, as the gateway does for its chats; roles
    # are no one's data.
    contents = [message.get("content", "") for message in json.loads(row["context"])]
    return [*contents, row["reference"], row["reply"] or "", row["expected"]]


class EvalStore:
    """Reads and writes evaluation runs."""

    def __init__(self, location: Path | str) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self._db = Database(location, MIGRATIONS)

    def add(self, run: EvalRun) -> None:
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO eval_runs (id, model_id, dataset_version_id, metrics, max_samples, "
                "state, create_time, config, repeated_from, results) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.model_id,
                    run.dataset_version_id,
                    json.dumps(run.metrics),
                    run.max_samples,
                    run.state.value,
                    run.create_time,
                    run.config.to_json(),
                    run.repeated_from,
                    json.dumps([vars(r) for r in run.results]),
                ),
            )

    def get(self, run_id: str) -> EvalRun:
        rows = self._db.query("SELECT * FROM eval_runs WHERE id = ?", (run_id,))
        if not rows:
            raise NotFoundError("eval run", run_id)
        return _run(rows[0])

    def list_runs(self, limit: int, offset: int, model_id: str = "") -> list[EvalRun]:
        """Runs newest first, optionally of one model only."""
        where, parameters = ("WHERE model_id = ? ", [model_id]) if model_id else ("", [])
        rows = self._db.query(
            f"SELECT * FROM eval_runs {where}ORDER BY create_time DESC, id LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        )
        return [_run(row) for row in rows]

    def succeeded_runs(self, model_id: str, dataset_version_id: str = "") -> list[EvalRun]:
        """A model's finished runs, newest first, optionally on one dataset version."""
        sql = "SELECT * FROM eval_runs WHERE model_id = ? AND state = ?"
        parameters: list[object] = [model_id, RunState.SUCCEEDED.value]
        if dataset_version_id:
            sql += " AND dataset_version_id = ?"
            parameters.append(dataset_version_id)
        rows = self._db.query(sql + " ORDER BY create_time DESC, id", parameters)
        return [_run(row) for row in rows]

    def put_samples(self, run_id: str, samples: list[SampleOutput]) -> None:
        """Stores a run's per-sample outputs, replacing any earlier ones."""
        rows = [
            (
                run_id,
                s.index,
                json.dumps(s.context, ensure_ascii=False),
                s.reference,
                s.reply,
                s.reply_tokens,
                s.nll,
                s.scored_tokens,
                _stored_flag(s.refused),
                _stored_flag(s.check_passed),
                s.expected,
            )
            for s in samples
        ]
        with self._db.transaction() as connection:
            connection.execute("DELETE FROM eval_samples WHERE run_id = ?", (run_id,))
            # Many rows per statement: one round trip per batch, not per sample.
            for start in range(0, len(rows), _SAMPLES_PER_INSERT):
                batch = rows[start : start + _SAMPLES_PER_INSERT]
                connection.execute(
                    "INSERT INTO eval_samples (run_id, idx, context, reference, reply, "
                    "reply_tokens, nll, scored_tokens, refused, check_passed, expected) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(batch)),
                    [value for row in batch for value in row],
                )

    def samples(self, run_id: str, limit: int = -1, offset: int = 0) -> list[SampleOutput]:
        """A run's per-sample outputs in split order (all of them when ``limit`` is -1)."""
        # PostgreSQL refuses a negative LIMIT, which SQLite reads as none.
        rows = self._db.query(
            "SELECT * FROM eval_samples WHERE run_id = ? ORDER BY idx LIMIT ? OFFSET ?",
            (run_id, limit if limit >= 0 else _NO_LIMIT, offset),
        )
        return [_sample(row) for row in rows]

    def sample_count(self, run_id: str) -> int:
        """How many per-sample outputs a run has stored."""
        rows = self._db.query("SELECT COUNT(*) FROM eval_samples WHERE run_id = ?", (run_id,))
        return int(rows[0][0])

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
        config: RunConfig | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        device: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        """Sets the given columns of a run."""
        assignments: list[str] = []
        values: list[object] = []
        for column, value in (
            ("state", state.value if state else None),
            ("completed", completed),
            ("total", total),
            ("results", json.dumps([vars(r) for r in results]) if results is not None else None),
            ("error", error),
            ("config", config.to_json() if config is not None else None),
            ("start_time", start_time),
            ("end_time", end_time),
            ("device", device),
            ("timings", json.dumps(timings) if timings is not None else None),
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

    def erase_samples(self, values: list[str]) -> ErasedEvalSamples:
        """Right to erasure: deletes every sample output a value is held by (in its
        conversation, reference, expected answer or reply; :mod:`ownchat.erasure`'s
        rule), and the same sample of every other run of that dataset version, so
        that runs compared pair by pair keep the same samples. One transaction.

        Nothing of the deleted rows is left in the store's files after
        (``Database.scrub_erased``), nor in SQLite's log once no other
        connection is reading.
        """
        if too_short(values):
            raise ValueError(f"each value to erase needs {MIN_VALUE_CHARS} characters or more")
        folded = folded_values(values)
        with self._db.transaction() as connection:
            runs = connection.execute(
                "SELECT id, dataset_version_id FROM eval_runs ORDER BY id"
            ).fetchall()
            held: dict[str, set[int]] = {}  # dataset version -> sample indices
            for run in runs:
                for row in keyset_scan(connection, _SAMPLES_TO_SCAN, "idx", -1, (run["id"],)):
                    if holds_any(_sample_texts(row), folded):
                        held.setdefault(run["dataset_version_id"], set()).add(row["idx"])
            touched, deleted = [], 0
            for run in runs:
                gone = 0
                for index in sorted(held.get(run["dataset_version_id"], ())):
                    gone += len(
                        connection.execute(
                            "DELETE FROM eval_samples WHERE run_id = ? AND idx = ? RETURNING idx",
                            (run["id"], index),
                        ).fetchall()
                    )
                if gone:
                    touched.append(run["id"])
                    deleted += gone
        if deleted:
            self._db.scrub_erased(("eval_samples",))
        return ErasedEvalSamples(tuple(touched), deleted)

    def close(self) -> None:
        self._db.close()

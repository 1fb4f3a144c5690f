"""The evaluator's two stores on both engines, and their schemas against the ones
the evaluator created before its migrations were Alembic revisions: a file from
then is stamped at the revision it had reached, so each revision must build
exactly what the script of the same number did."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ownchat_evaluator.core import EvalRequest, EvaluatorCore, RunOptions
from ownchat_evaluator.review.model import NewItem, ReviewInput, ReviewKind, Turn
from ownchat_evaluator.review.store import ExportedRecord, ReviewStore
from ownchat_evaluator.run_config import RunConfig
from ownchat_evaluator.store import EvalRun, EvalStore, MetricResult, RunState, SampleOutput

# evaluator.db's scripts before Alembic; PRAGMA user_version counted those run.
EVALUATOR_SCRIPTS = [
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
    """
    ALTER TABLE eval_runs ADD COLUMN config TEXT NOT NULL DEFAULT '';
    ALTER TABLE eval_runs ADD COLUMN repeated_from TEXT NOT NULL DEFAULT '';
    ALTER TABLE eval_runs ADD COLUMN start_time REAL;
    ALTER TABLE eval_runs ADD COLUMN end_time REAL;
    ALTER TABLE eval_runs ADD COLUMN device TEXT NOT NULL DEFAULT '';
    ALTER TABLE eval_runs ADD COLUMN timings TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX eval_runs_by_model ON eval_runs(model_id, create_time);
    CREATE TABLE eval_samples (
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        context TEXT NOT NULL,
        reference TEXT NOT NULL,
        reply TEXT,
        reply_tokens INTEGER NOT NULL,
        nll REAL NOT NULL,
        scored_tokens INTEGER NOT NULL,
        refused INTEGER,
        check_passed INTEGER,
        expected TEXT NOT NULL,
        PRIMARY KEY (run_id, idx)
    )
    """,
]

# reviews.db's script before Alembic.
REVIEWS_SCRIPTS = [
    """
    CREATE TABLE review_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        context TEXT NOT NULL,
        reply_a TEXT NOT NULL,
        reply_b TEXT NOT NULL,
        model_id_a TEXT NOT NULL,
        model_id_b TEXT NOT NULL,
        source TEXT NOT NULL,
        priority INTEGER NOT NULL,
        reviews_wanted INTEGER NOT NULL CHECK (reviews_wanted >= 1),
        reviews_done INTEGER NOT NULL DEFAULT 0,
        create_time REAL NOT NULL,
        CHECK (reviews_done >= 0 AND reviews_done <= reviews_wanted)
    );
    CREATE INDEX review_items_waiting ON review_items(priority DESC, seq)
        WHERE reviews_done < reviews_wanted;
    CREATE TABLE review_leases (
        item_id TEXT NOT NULL REFERENCES review_items(id),
        reviewer TEXT NOT NULL,
        expire_time REAL NOT NULL,
        swapped INTEGER NOT NULL,
        PRIMARY KEY (item_id, reviewer)
    );
    CREATE INDEX review_leases_by_reviewer ON review_leases(reviewer, expire_time);
    CREATE TABLE review_skips (
        item_id TEXT NOT NULL REFERENCES review_items(id),
        reviewer TEXT NOT NULL,
        PRIMARY KEY (item_id, reviewer)
    );
    CREATE TABLE reviews (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        item_id TEXT NOT NULL REFERENCES review_items(id),
        reviewer TEXT NOT NULL,
        rating INTEGER NOT NULL DEFAULT 0,
        tags TEXT NOT NULL DEFAULT '[]',
        preferred_model_id TEXT NOT NULL DEFAULT '',
        tie INTEGER NOT NULL DEFAULT 0,
        correction TEXT NOT NULL DEFAULT '',
        swapped INTEGER NOT NULL DEFAULT 0,
        create_time REAL NOT NULL,
        UNIQUE (item_id, reviewer)
    );
    CREATE INDEX reviews_by_reviewer ON reviews(reviewer, seq);
    CREATE TABLE review_exports (
        review_id TEXT NOT NULL REFERENCES reviews(id),
        dataset_version_id TEXT NOT NULL,
        record INTEGER NOT NULL,
        export_time REAL NOT NULL,
        PRIMARY KEY (review_id, dataset_version_id)
    )
    """,
]


def _legacy_file(path: Path, scripts: list[str], done: int) -> sqlite3.Connection:
    connection = sqlite3.connect(path)
    for script in scripts[:done]:
        connection.executescript(script)
    connection.execute(f"PRAGMA user_version = {done}")
    connection.commit()
    return connection


def _affinity(declared: str) -> str:
    """SQLite's type affinity of a declared column type (its documented rules)."""
    declared = declared.upper()
    if "INT" in declared:
        return "INTEGER"
    if any(text in declared for text in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in declared or not declared:
        return "BLOB"
    if any(real in declared for real in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _checks(sql: str) -> list[str]:
    """The conditions of a CREATE TABLE's CHECK constraints, whitespace normalised."""
    found = []
    rest = sql
    while "CHECK" in rest:
        rest = rest.split("CHECK", 1)[1].lstrip()
        depth = 0
        for end, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                found.append(" ".join(rest[1:end].split()))
                rest = rest[end + 1 :]
                break
    return found


def _schema(path: Path) -> dict[str, object]:
    """What a SQLite file's tables hold and enforce, in the terms that matter to rows:
    columns in order (affinity, NOT NULL, default, key), indexes, foreign keys, checks."""
    connection = sqlite3.connect(path)
    tables = [
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'alembic_version%' AND name != 'sqlite_sequence' ORDER BY name"
        )
    ]
    schema: dict[str, object] = {}
    for table in tables:
        columns = [
            # A primary key column of SQLite's is never NULL in the stores' rows,
            # declared so or not.
            (name, _affinity(declared), bool(notnull or key), (default or "").strip("'"), key)
            for _, name, declared, notnull, default, key in connection.execute(
                f"PRAGMA table_info({table})"
            )
        ]
        indexes = sorted(
            (
                name if origin == "c" else origin,
                unique,
                partial,
                tuple(
                    (column, descending)
                    for _, _, column, descending, _, is_key in connection.execute(
                        f"PRAGMA index_xinfo('{name}')"
                    )
                    if is_key
                ),
            )
            for _, name, unique, origin, partial in connection.execute(
                f"PRAGMA index_list({table})"
            )
        )
        foreign_keys = sorted(
            (row[2], row[3], row[4], row[6])
            for row in connection.execute(f"PRAGMA foreign_key_list({table})")
        )
        (sql,) = connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        checks = sorted(_checks(sql))
        autoincrement = "AUTOINCREMENT" in sql.upper()
        schema[table] = (columns, indexes, foreign_keys, checks, autoincrement)
    partial_where = sorted(
        sql.split(" WHERE ", 1)[1].strip().rstrip(";")
        for (sql,) in connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'"
        )
    )
    schema["partial index conditions"] = [" ".join(where.split()) for where in partial_where]
    connection.close()
    return schema


@pytest.mark.parametrize(
    ("open_store", "scripts"),
    [(EvalStore, EVALUATOR_SCRIPTS), (ReviewStore, REVIEWS_SCRIPTS)],
    ids=["evaluator", "reviews"],
)
def test_the_revisions_build_what_the_numbered_scripts_built(
    tmp_path: Path, open_store: type[EvalStore] | type[ReviewStore], scripts: list[str]
) -> None:
    _legacy_file(tmp_path / "legacy.db", scripts, len(scripts)).close()
    open_store(tmp_path / "new.db").close()
    assert _schema(tmp_path / "new.db") == _schema(tmp_path / "legacy.db")


def test_a_reviews_file_from_before_alembic_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "reviews.db"
    legacy = _legacy_file(path, REVIEWS_SCRIPTS, 1)
    legacy.execute(
        "INSERT INTO review_items (id, fingerprint, kind, context, reply_a, reply_b, model_id_a, "
        "model_id_b, source, priority, reviews_wanted, create_time) VALUES "
        "('item_old', 'f1', 'rating', '[[\"user\", \"hi\"]]', 'hello', '', '', '', 's', 0, 2, 1.0)"
    )
    legacy.execute("INSERT INTO review_leases VALUES ('item_old', 'ann', 100.0, 0)")
    legacy.commit()
    legacy.close()
    store = ReviewStore(path)
    try:
        leased = store.lease("ann", None, 50.0, 60.0, lambda: False)
        assert leased is not None and leased.item.id == "item_old" and leased.expire_time == 100.0
        review = store.submit(ReviewInput("item_old", "ann", rating=4), "rev_1", 60.0, _any)
        assert store.get_item("item_old").reviews_done == 1
        assert [r.id for r in store.list_reviews("", "", 10, 0)] == [review.id]
    finally:
        store.close()


def test_runs_stored_by_the_first_evaluator_still_load(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "evaluator.db"
    connection = _legacy_file(path, EVALUATOR_SCRIPTS, 1)
    connection.execute(
        "INSERT INTO eval_runs (id, model_id, dataset_version_id, metrics, max_samples, state, "
        "results, create_time) VALUES ('eval_old', 'tiny', 'dsv_1', '[\"perplexity\"]', 2, "
        '\'succeeded\', \'[{"metric": "perplexity", "value": 12.5, "details": "old"}]\', 1.0)'
    )
    connection.commit()
    connection.close()
    store = EvalStore(path)
    old = store.get("eval_old")
    assert old.metrics == ["perplexity"] and old.max_samples == 2
    assert old.config.context_length == 0 and old.results[0].ci_low is None
    assert old.results[0].value == 12.5
    split = tmp_path / "v.jsonl"
    split.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            )
            + "\n"
            for q, a in (("Hi?", "Hello."), ("Price?", "Ten euros."))
        )
    )
    core = EvaluatorCore(store, lambda _: tiny_model, lambda _: split, RunOptions())
    # Repeating it resolves what the old run left implicit.
    again = core.create_run(EvalRequest("", "", metrics=[], repeat_eval_run_id="eval_old"))
    assert (again.config.context_length, again.config.stride, again.max_samples) == (512, 256, 2)
    assert core.wait(again.id, timeout=60).state is RunState.SUCCEEDED


def _any(_: object) -> None:
    """Accepts every review."""


def _run(run_id: str, model_id: str, create_time: float, state: RunState) -> EvalRun:
    return EvalRun(
        id=run_id,
        model_id=model_id,
        dataset_version_id="dsv_1",
        config=RunConfig(metrics=["perplexity"], max_samples=0),
        state=state,
        completed=0,
        total=0,
        results=[MetricResult("perplexity", 12.5, "d", 11.0, 14.0)],
        create_time=create_time,
    )


def _sample(index: int) -> SampleOutput:
    flags = (None, True, False)
    return SampleOutput(
        index=index,
        context=[{"role": "user", "content": f"question {index} – ü"}],
        reference=f"answer {index}",
        reply=None if index % 3 == 0 else f"reply {index}",
        reply_tokens=index,
        nll=index / 7,
        scored_tokens=index * 2,
        refused=flags[index % 3],
        check_passed=flags[(index + 1) % 3],
        expected="x" if index % 2 else "",
    )


def test_runs_and_their_samples_round_trip(store_location: Path | str) -> None:
    store = EvalStore(store_location)
    try:
        store.add(_run("eval_a", "m1", 1.0, RunState.SUCCEEDED))
        store.add(_run("eval_b", "m1", 2.0, RunState.QUEUED))
        store.add(_run("eval_c", "m2", 3.0, RunState.SUCCEEDED))
        store.update(
            "eval_b",
            state=RunState.RUNNING,
            completed=2,
            total=5,
            start_time=4.5,
            device="cpu",
            timings={"wall_seconds": 1.25},
        )
        running = store.get("eval_b")
        assert (running.state, running.completed, running.total) == (RunState.RUNNING, 2, 5)
        assert (running.start_time, running.end_time, running.device) == (4.5, None, "cpu")
        assert running.timings == {"wall_seconds": 1.25}
        assert running.results == [MetricResult("perplexity", 12.5, "d", 11.0, 14.0)]
        assert [r.id for r in store.list_runs(10, 0)] == ["eval_c", "eval_b", "eval_a"]
        assert [r.id for r in store.list_runs(1, 1, model_id="m1")] == ["eval_a"]
        assert [r.id for r in store.succeeded_runs("m1")] == ["eval_a"]
        assert store.succeeded_runs("m1", "dsv_other") == []
        assert [r.id for r in store.unfinished()] == ["eval_b"]

        # More samples than one INSERT carries.
        samples = [_sample(i) for i in range(1203)]
        store.put_samples("eval_a", samples)
        assert store.sample_count("eval_a") == 1203
        assert store.samples("eval_a") == samples
        assert store.samples("eval_a", 3, 1000) == samples[1000:1003]
        assert store.samples("eval_a", -1, 1200) == samples[1200:]
        store.put_samples("eval_a", samples[:2])
        assert store.samples("eval_a") == samples[:2]
        assert store.sample_count("eval_c") == 0
    finally:
        store.close()


def _rating(number: int, priority: int = 0) -> NewItem:
    return NewItem(
        ReviewKind.RATING,
        (Turn("user", f"question {number}"),),
        f"reply {number}",
        source=f"test:{number}",
        priority=priority,
        reviews_wanted=1,
    )


def test_the_review_store_upserts_and_counts(store_location: Path | str) -> None:
    store = ReviewStore(store_location)
    try:
        first, second = store.enqueue([_rating(1, 3), _rating(2)], ["item_1", "item_2"], 1, 1.0)
        # The same item again keeps its id and the higher priority.
        assert store.enqueue([_rating(1, 1)], ["item_x"], 1, 2.0) == [first]
        assert store.get_item(first).priority == 3
        assert store.enqueue([_rating(1, 7)], ["item_y"], 1, 2.0) == [first]
        assert store.get_item(first).priority == 7

        leased = store.lease("ann", ReviewKind.RATING, 10.0, 60.0, lambda: False)
        assert leased is not None and leased.item.id == first
        assert store.lease("ann", ReviewKind.PAIRWISE, 10.0, 60.0, lambda: False) is None
        # An expired lease of one's own is renewed in place.
        again = store.lease("ann", None, 100.0, 60.0, lambda: False)
        assert again is not None and again.item.id == first and again.expire_time == 160.0
        assert store.live_leases(100.0) == [(first, "ann")]
        store.release(first, "ann")
        assert store.live_leases(100.0) == []
        taken = store.lease("ann", None, 100.0, 60.0, lambda: False)
        assert taken is not None and taken.item.id == second

        (counts,) = store.counts(100.0)
        assert (counts.open_items, counts.leased_items, counts.done_items) == (1, 1, 0)
        review = store.submit(ReviewInput(second, "ann", rating=5), "rev_1", 110.0, _any)
        (counts,) = store.counts(110.0)
        assert (counts.open_items, counts.leased_items, counts.done_items) == (1, 0, 1)
        assert counts.reviews == 1
        assert store.reviews_per_reviewer() == [("ann", 1)]

        store.mark_exported([ExportedRecord(1, (review.id,))], "dsv_9", 120.0)
        store.mark_exported([ExportedRecord(4, (review.id,))], "dsv_9", 130.0)
        assert store.list_reviews(second, "", 10, 0)[0].exported_to == ("dsv_9",)
        assert store.corrections_to_export(include_exported=True) == []
    finally:
        store.close()

"""The stores' database layer on both engines: SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from ownchat.database import Database, DatabaseUrlError, Migrations, _to_psycopg

REVISIONS = {
    "m0001_notes.py": '''
        """Notes."""

        import sqlalchemy as sa
        from alembic import op

        revision = "0001"
        down_revision = None


        def upgrade() -> None:
            op.create_table(
                "notes",
                sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("name", sa.Text, nullable=False, unique=True),
                sa.Column("weight", sa.Double, nullable=False),
                sqlite_autoincrement=True,
            )
        ''',
    "m0002_tags.py": '''
        """A tag per note."""

        import sqlalchemy as sa
        from alembic import op

        revision = "0002"
        down_revision = "0001"


        def upgrade() -> None:
            op.add_column("notes", sa.Column("tag", sa.Text, nullable=False, server_default=""))
        ''',
}


@pytest.fixture
def migrations(tmp_path: Path) -> Migrations:
    versions = tmp_path / "migrations"
    versions.mkdir()
    for name, text in REVISIONS.items():
        (versions / name).write_text(textwrap.dedent(text))
    return Migrations("notes", versions)


def test_placeholders_become_psycopg_ones_outside_literals() -> None:
    sql = "SELECT '?', \"a?\" FROM t WHERE a = ? AND b LIKE 'x%' AND c = ?"
    assert _to_psycopg(sql) == (
        "SELECT '?', \"a?\" FROM t WHERE a = %s AND b LIKE 'x%%' AND c = %s"
    )


def test_rows_read_alike_on_both_engines(
    store_location: Path | str, migrations: Migrations
) -> None:
    database = Database(store_location, migrations)
    with database.transaction() as connection:
        first = connection.execute(
            "INSERT INTO notes (name, weight) VALUES (?, ?) RETURNING seq", ("a", 0.1)
        ).fetchone()[0]
        connection.execute(
            "INSERT INTO notes (name, weight, tag) VALUES (?, ?, ?)", ("b", 2.5, "x")
        )
        ignored = connection.execute(
            "INSERT INTO notes (name, weight) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            ("a", 9.0),
        )
        assert ignored.rowcount == 0
    rows = database.query("SELECT seq, name, weight, tag FROM notes ORDER BY seq")
    assert [row["name"] for row in rows] == ["a", "b"]
    assert rows[0][0] == first and isinstance(rows[0]["seq"], int)
    seq, name, weight, tag = rows[1]
    assert (name, weight, tag) == ("b", 2.5, "x")
    assert dict(rows[1]) == {"seq": seq, "name": "b", "weight": 2.5, "tag": "x"}
    # Full double precision: epoch seconds with microseconds survive.
    with database.transaction() as connection:
        connection.execute("UPDATE notes SET weight = ? WHERE name = ?", (1763900000.123456, "a"))
    assert database.query("SELECT weight FROM notes WHERE name = ?", ("a",))[0][0] == (
        1763900000.123456
    )
    database.close()


def test_a_failed_transaction_leaves_nothing(
    store_location: Path | str, migrations: Migrations
) -> None:
    database = Database(store_location, migrations)
    with pytest.raises(RuntimeError), database.transaction() as connection:
        connection.execute("INSERT INTO notes (name, weight) VALUES (?, ?)", ("lost", 1.0))
        raise RuntimeError("boom")
    assert database.query("SELECT COUNT(*) FROM notes")[0][0] == 0
    # The connection is usable afterwards.
    with database.transaction() as connection:
        connection.execute("INSERT INTO notes (name, weight) VALUES (?, ?)", ("kept", 1.0))
    assert database.query("SELECT name FROM notes")[0][0] == "kept"


def test_reopening_migrates_nothing_twice(
    store_location: Path | str, migrations: Migrations
) -> None:
    Database(store_location, migrations).close()
    reopened = Database(store_location, migrations)
    version = reopened.query(f"SELECT version_num FROM {migrations.version_table}")
    assert [row[0] for row in version] == ["0002"]


OPEN = (
    "import sys; from pathlib import Path; from ownchat.database import Database, Migrations; "
    "location = sys.argv[1] if '://' in sys.argv[1] else Path(sys.argv[1]); "
    "Database(location, Migrations('notes', Path(sys.argv[2]))).close()"
)


def test_processes_opening_at_once_migrate_once(
    store_location: Path | str, migrations: Migrations
) -> None:
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, str(store_location), str(migrations.versions)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [opener.communicate(timeout=120)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0, 0, 0], errors


def test_a_file_from_before_alembic_is_adopted_at_its_version(
    tmp_path: Path, migrations: Migrations
) -> None:
    path = tmp_path / "legacy.db"
    legacy = sqlite3.connect(path)
    legacy.executescript(
        "CREATE TABLE notes (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
        " weight REAL NOT NULL); INSERT INTO notes (name, weight) VALUES ('old', 1.0);"
        " PRAGMA user_version = 1;"
    )
    legacy.close()
    database = Database(path, migrations)
    assert [tuple(row) for row in database.query("SELECT name, tag FROM notes")] == [("old", "")]


def test_the_connection_comes_back_after_the_server_drops_it(
    postgres_server: object, migrations: Migrations
) -> None:
    url = postgres_server.create_database()  # type: ignore[attr-defined]
    database = Database(url, migrations)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(psycopg.OperationalError):
        database.query("SELECT 1")
    assert database.query("SELECT 1")[0][0] == 1


def test_an_unsupported_url_is_refused_without_its_password(migrations: Migrations) -> None:
    with pytest.raises(DatabaseUrlError) as refused:
        Database("mysql://admin:hunter2@db:3306/ownchat", migrations)
    assert "hunter2" not in str(refused.value)
    assert "postgresql://" in str(refused.value)

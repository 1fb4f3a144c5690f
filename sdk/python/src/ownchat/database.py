"""Service stores: a SQLite file by default, PostgreSQL by URL, migrated by Alembic on open.

A store hands :class:`Database` where its data lives (a file path, or a
``postgresql://`` URL when the service's ``database_url`` is set) and its
:class:`Migrations`. Stores write plain SQL with ``?`` placeholders in the subset
both engines share (``ON CONFLICT``, ``RETURNING``, no ``INSERT OR ...``); on
PostgreSQL the placeholders become psycopg's. Writes are serialised per
database, on SQLite by ``BEGIN IMMEDIATE`` and on PostgreSQL by a transaction
advisory lock, so a store sees the same single-writer semantics on both,
whether one process or several replicas share the database.
"""

from __future__ import annotations

import fcntl
import functools
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql as psycopg_sql

# Alembic's environment (env.py) and revision template, shared by every store.
_SCRIPT_LOCATION = Path(__file__).with_name("migrations")
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


class Row(Protocol):
    """A result row: by column name, by position, or unpacked in column order."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What a statement returns."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """The connection inside a transaction."""

    def execute(self, sql: str, parameters: Sequence[object] = (), /) -> Cursor: ...


@dataclass(frozen=True)
class Migrations:
    """One store's schema history: a folder of Alembic revisions, applied in order.

    ``name`` names the store's version table (``alembic_version_<name>``), so
    several stores of one service can share a PostgreSQL database.
    """

    name: str
    versions: Path

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"


class DatabaseUrlError(ValueError):
    """A ``database_url`` this module cannot open."""


class DatabaseBusyError(Exception):
    """Another connection holds the write lock, and the transaction was asked not to wait."""


def is_url(location: Path | str) -> bool:
    return isinstance(location, str) and "://" in location


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def _alembic_config(url: str, migrations: Migrations, connection: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    config.set_main_option("version_locations", str(migrations.versions))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["version_table"] = migrations.version_table
    return config


def _ordered_revisions(config: Config) -> list[str]:
    """The store's revisions, oldest first (its history is a single line)."""
    script = ScriptDirectory.from_config(config)
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def _sqlalchemy_url(url: str) -> str:
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def migrate(location: Path | str, migrations: Migrations) -> None:
    """Brings the store's schema to its newest revision; safe to run from several
    processes at once (a file lock on SQLite, an advisory lock on PostgreSQL)."""
    if is_url(location):
        url = _sqlalchemy_url(str(location))
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                lock = _lock_key(f"migrate:{migrations.name}")
                connection.exec_driver_sql("SELECT pg_advisory_lock(%s)", (lock,))
                connection.commit()
                try:
                    command.upgrade(_alembic_config(url, migrations, connection), "head")
                    connection.commit()
                finally:
                    connection.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (lock,))
                    connection.commit()
        finally:
            engine.dispose()
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".migrate-lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        url = f"sqlite:///{path}"
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                config = _alembic_config(url, migrations, connection)
                _adopt_numbered_schema(connection, config, migrations)
                command.upgrade(config, "head")
                connection.commit()
        finally:
            engine.dispose()


def _adopt_numbered_schema(
    connection: sqlalchemy.Connection, config: Config, migrations: Migrations
) -> None:
    """Files from before Alembic counted their migrations in ``PRAGMA user_version``;
    the first revisions repeat those scripts, so such a file is stamped at the
    revision it had reached and only what is newer runs."""
    done = connection.exec_driver_sql("PRAGMA user_version").scalar() or 0
    if not done:
        return
    tables = sqlalchemy.inspect(connection).get_table_names()
    if migrations.version_table in tables:
        return
    command.stamp(config, _ordered_revisions(config)[int(done) - 1])
    connection.commit()


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    return zlib.crc32(f"ownchat:{name}".encode())


@functools.lru_cache(maxsize=1024)
def _to_psycopg(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (and a literal ``%`` doubled), leaving
    quoted literals and identifiers alone."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        if char == "%":
            out.append("%%")
            continue
        out.append(char)
    return "".join(out)


class _PostgresRow(tuple[Any, ...]):
    """Rows that read like :class:`sqlite3.Row`: by name, by position, unpacked."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> _PostgresRow:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _postgres_rows(cursor: Any) -> Any:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: _PostgresRow(values, index)


class _PostgresConnection:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[object] = (), /) -> Cursor:
        return self._connection.execute(_to_psycopg(sql), tuple(parameters))


class Database:
    """One store's connection, shared by a service's threads under a lock."""

    def __init__(self, location: Path | str, migrations: Migrations) -> None:
        self.location = location
        self._lock = threading.RLock()
        if is_url(location):
            url = str(location)
            if not url.startswith(_POSTGRES_SCHEMES):
                raise DatabaseUrlError(
                    f"database URL {redacted(url)} is not PostgreSQL: use postgresql://USER"
                    "@HOST:PORT/DATABASE, or leave database_url unset for SQLite files"
                )
            self.dialect = "postgresql"
            self._url = "postgresql://" + url.split("://", 1)[1]
            migrate(url, migrations)
            self._postgres: psycopg.Connection[Any] | None = None
            self._write_lock = _lock_key(f"write:{migrations.name}")
            self._postgres_connection()
        else:
            self.dialect = "sqlite"
            path = Path(location)
            migrate(path, migrations)
            self._sqlite = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._sqlite.row_factory = sqlite3.Row
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=FULL")
            self._sqlite.execute("PRAGMA foreign_keys=ON")
            self._sqlite.execute("PRAGMA busy_timeout=5000")
            # Stores hold people's data: what a delete or an update frees is zeroed,
            # not left in the file's free pages. Some SQLite builds do this by
            # default (Debian's), others do not (python.org's, conda's).
            self._sqlite.execute("PRAGMA secure_delete=ON")

    def _postgres_connection(self) -> psycopg.Connection[Any]:
        """The open connection, reopened when the server dropped it (a restart)."""
        if self._postgres is None or self._postgres.closed or self._postgres.broken:
            self._postgres = psycopg.connect(
                self._url, autocommit=True, row_factory=_postgres_rows, connect_timeout=10
            )
        return self._postgres

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[Connection]:
        """A write transaction: committed if the block ends normally, else rolled back.

        ``wait=False``: raise :class:`DatabaseBusyError` at once, instead of
        waiting, while another connection holds the write lock.
        """
        with self._lock:
            if self.dialect == "postgresql":
                connection = self._postgres_connection()
                with connection.transaction():
                    if wait:
                        connection.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_lock,))
                    else:
                        locked = connection.execute(
                            "SELECT pg_try_advisory_xact_lock(%s)", (self._write_lock,)
                        ).fetchone()
                        if locked is None or not locked[0]:
                            raise DatabaseBusyError("another connection is writing")
                    yield _PostgresConnection(connection)
                return
            if wait:
                self._sqlite.execute("BEGIN IMMEDIATE")
            else:
                (timeout,) = self._sqlite.execute("PRAGMA busy_timeout").fetchone()
                self._sqlite.execute("PRAGMA busy_timeout=0")
                try:
                    self._sqlite.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as error:
                    if error.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                        raise DatabaseBusyError(str(error)) from None
                    raise
                finally:
                    self._sqlite.execute(f"PRAGMA busy_timeout={int(timeout)}")
            try:
                yield self._sqlite
            except BaseException:
                self._sqlite.execute("ROLLBACK")
                raise
            self._sqlite.execute("COMMIT")

    def query(self, sql: str, parameters: Sequence[object] = ()) -> list[Any]:
        """Runs a read and returns all rows."""
        with self._lock:
            if self.dialect == "postgresql":
                connection = self._postgres_connection()
                return connection.execute(_to_psycopg(sql), tuple(parameters)).fetchall()
            return self._sqlite.execute(sql, parameters).fetchall()

    def scrub_erased(self, tables: Sequence[str]) -> bool:
        """After an erasure, leaves nothing of the deleted rows in the store's files.

        SQLite zeroes what a delete frees (``secure_delete``); the write-ahead
        log's older frames still hold the rows as they were, so it is emptied.
        False when a reader kept it from being emptied (its frames then wait to
        be overwritten).

        PostgreSQL keeps a deleted row's old version in its table's and indexes'
        pages, a plain VACUUM included (it frees the space, it does not clear
        it): ``VACUUM FULL`` rewrites each of ``tables``, its TOAST table and
        indexes into new files. It holds an exclusive lock on each table while
        it runs, so that table's readers and writers wait (seconds for tables of
        some hundred MB). The server's own write-ahead log keeps the rows until it
        recycles its segments after checkpoints; WAL archives and backups are the
        operator's (docs/operations.md).
        """
        if self.dialect == "postgresql":
            with self._lock:
                connection = self._postgres_connection()
                for table in dict.fromkeys(tables):
                    connection.execute(
                        psycopg_sql.SQL("VACUUM (FULL) {}").format(psycopg_sql.Identifier(table))
                    )
            return True
        with self._lock:
            busy, _, _ = self._sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def close(self) -> None:
        with self._lock:
            if self.dialect == "postgresql":
                if self._postgres is not None:
                    self._postgres.close()
            else:
                self._sqlite.close()


# Rows a scan reads per query, and keys a delete names per statement: memory
# stays bounded, and an IN list stays within every engine's parameter limit.
BATCH_ROWS = 500


def keyset_scan(
    connection: Connection,
    select: str,
    key: str,
    start: object,
    fixed: Sequence[object] = (),
) -> Iterator[Any]:
    """Every row of ``select``, which ends ``WHERE <key> > ? ORDER BY <key> LIMIT ?``,
    read a page at a time after ``start``; ``fixed`` are the parameters of any
    condition before ``<key> > ?`` (``WHERE run_id = ? AND idx > ?``).

    Paged by key rather than OFFSET, so rows the caller deletes behind the
    cursor shift no later page.
    """
    last = start
    while rows := connection.execute(select, (*fixed, last, BATCH_ROWS)).fetchall():
        yield from rows
        last = rows[-1][key]


def delete_in(
    connection: Connection,
    table: str,
    column: str,
    keys: Sequence[object],
    returning: str | None = None,
) -> list[Any]:
    """Deletes the rows of ``table`` whose ``column`` is one of ``keys``, a batch of
    keys per statement; the ``returning`` column of each deleted row, if asked.

    ``table``, ``column`` and ``returning`` are the caller's constants; the keys
    travel as parameters.
    """
    returned: list[Any] = []
    for start in range(0, len(keys), BATCH_ROWS):
        batch = keys[start : start + BATCH_ROWS]
        sql = f"DELETE FROM {table} WHERE {column} IN ({', '.join('?' * len(batch))})"
        if returning is None:
            connection.execute(sql, batch)
        else:
            rows = connection.execute(f"{sql} RETURNING {returning}", batch).fetchall()
            returned.extend(row[0] for row in rows)
    return returned

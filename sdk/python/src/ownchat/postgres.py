"""A throwaway PostgreSQL server on loopback, for tests and local trials.

The store tests run against SQLite and against a real PostgreSQL server started
here from Debian's ``postgresql`` package (``make postgresql`` installs it):
``initdb`` into a temporary directory, ``pg_ctl`` to start it on a free
loopback port, and a fresh database per test. As root, the server runs as the
``postgres`` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from ownchat.testing import free_port

_SUPERUSER = "ownchat"


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def server_binaries() -> Path:
    """The folder with ``initdb`` and ``pg_ctl``: Debian's newest, else the PATH's."""
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailableError(
        "PostgreSQL's server is not installed (no initdb): `make postgresql` installs "
        "Debian's postgresql package"
    )


class PostgresServer:
    """One server with trust authentication on 127.0.0.1, deleted on :meth:`stop`."""

    def __init__(self) -> None:
        self._binaries = server_binaries()
        self._directory = Path(tempfile.mkdtemp(prefix="ownchat-postgres-"))
        self._data = self._directory / "data"
        self.port = free_port()
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self._directory, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb",
            "-D", str(self._data),
            "-U", _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )  # fmt: skip
        # Durability is not what these servers are for: skip fsync for speed.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self._directory} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self._data), "-o", options,
            "-l", str(self._directory / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def _run(self, program: str, *arguments: str) -> None:
        command = [*self._run_as, str(self._binaries / program), *arguments]
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode != 0:
            log = self._directory / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({finished.returncode}): {finished.stderr.strip()}\n{tail}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """A new, empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)


def database_file_bytes(url: str) -> bytes:
    """Every byte of the files of the database at ``url`` (tables, indexes, TOAST),
    once a checkpoint has written its pages out: what is left on disk of its rows.

    The server must run on this machine and ``url``'s user be a superuser (the
    servers here: ``ownchat``). The write-ahead log is not read.
    """
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CHECKPOINT")
        row = connection.execute(
            "SELECT current_setting('data_directory'), oid FROM pg_database "
            "WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    folder = Path(row[0]) / "base" / str(row[1])
    return b"".join(path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file())


def store_file_bytes(location: Path | str) -> bytes:
    """Every byte a store keeps on disk: its SQLite file with its log, or its
    PostgreSQL database's files (:func:`database_file_bytes`)."""
    if isinstance(location, str):
        return database_file_bytes(location)
    files = sorted(location.parent.glob(location.name + "*"))
    return b"".join(path.read_bytes() for path in files if path.is_file())

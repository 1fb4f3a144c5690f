"""Fixtures every test folder shares: the stores' two engines.

``store_location`` runs a store test twice, on a SQLite file and on a fresh
database of a real PostgreSQL server (one server per test session).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    from ownchat.postgres import PostgresServer

    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a store under test keeps its data: a SQLite file or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "store.db"
    server = request.getfixturevalue("postgres_server")
    url: str = server.create_database()
    return url

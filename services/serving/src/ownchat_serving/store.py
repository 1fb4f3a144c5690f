"""The serving service's own store: the history of deployments, in SQLite.

A deployment moves LOADING -> LIVE -> RETIRED, or LOADING -> FAILED. At most
one deployment is LIVE; making one LIVE retires the previous in the same
transaction. A LIVE deployment that cannot be reloaded when the service starts
becomes FAILED too.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ownchat.errors import NotFoundError
from ownchat.sqlite import Database

MIGRATIONS = [
    """
    CREATE TABLE deployments (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        model_id TEXT NOT NULL,
        engine TEXT NOT NULL,
        state TEXT NOT NULL,
        deployed_by TEXT NOT NULL,
        create_time REAL NOT NULL,
        artifact_digest TEXT NOT NULL DEFAULT '',
        live_time REAL,
        end_time REAL,
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX deployments_by_state ON deployments(state, live_time)
    """,
]

MAX_ERROR_CHARS = 2000


class EngineKind(Enum):
    """The inference engine of a deployment."""

    VLLM = "vllm"
    ONNXRUNTIME = "onnxruntime"
    TRANSFORMERS = "transformers"


class DeploymentState(Enum):
    """Where a deployment is in its life."""

    LOADING = "loading"
    LIVE = "live"
    RETIRED = "retired"
    FAILED = "failed"


# Every allowed move; anything else is a bug in the caller.
TRANSITIONS = {
    DeploymentState.LOADING: {DeploymentState.LIVE, DeploymentState.FAILED},
    DeploymentState.LIVE: {DeploymentState.RETIRED, DeploymentState.FAILED},
    DeploymentState.RETIRED: set(),
    DeploymentState.FAILED: set(),
}


class InvalidTransitionError(Exception):
    """A deployment was asked to move where its state machine does not allow."""


@dataclass(frozen=True)
class Deployment:
    """One deployment of a model version."""

    id: str
    model_id: str
    engine: EngineKind
    state: DeploymentState
    deployed_by: str
    create_time: float
    artifact_digest: str = ""
    live_time: float | None = None
    end_time: float | None = None
    error: str = ""


def _deployment(row: sqlite3.Row) -> Deployment:
    return Deployment(
        id=row["id"],
        model_id=row["model_id"],
        engine=EngineKind(row["engine"]),
        state=DeploymentState(row["state"]),
        deployed_by=row["deployed_by"],
        create_time=row["create_time"],
        artifact_digest=row["artifact_digest"],
        live_time=row["live_time"],
        end_time=row["end_time"],
        error=row["error"],
    )


def new_deployment_id() -> str:
    """A fresh deployment id."""
    return f"dep_{secrets.token_hex(8)}"


class DeploymentStore:
    """Reads and writes the deployment history."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path, MIGRATIONS)

    def create(self, model_id: str, engine: EngineKind, deployed_by: str) -> Deployment:
        """Records a new deployment, LOADING."""
        deployment = Deployment(
            id=new_deployment_id(),
            model_id=model_id,
            engine=engine,
            state=DeploymentState.LOADING,
            deployed_by=deployed_by,
            create_time=time.time(),
        )
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO deployments (id, model_id, engine, state, deployed_by, create_time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    deployment.id,
                    deployment.model_id,
                    deployment.engine.value,
                    deployment.state.value,
                    deployment.deployed_by,
                    deployment.create_time,
                ),
            )
        return deployment

    def _move(
        self, connection: sqlite3.Connection, deployment_id: str, target: DeploymentState
    ) -> None:
        row = connection.execute(
            "SELECT state FROM deployments WHERE id = ?", (deployment_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError("deployment", deployment_id)
        current = DeploymentState(row["state"])
        if target not in TRANSITIONS[current]:
            raise InvalidTransitionError(
                f"deployment {deployment_id} cannot move from {current.value} to {target.value}"
            )

    def set_artifact(self, deployment_id: str, digest: str) -> None:
        """Records which files a LOADING deployment resolved to."""
        with self._db.transaction() as connection:
            connection.execute(
                "UPDATE deployments SET artifact_digest = ? WHERE id = ? AND state = ?",
                (digest, deployment_id, DeploymentState.LOADING.value),
            )

    def mark_live(self, deployment_id: str) -> Deployment:
        """Makes a LOADING deployment LIVE and retires the one live before it."""
        now = time.time()
        with self._db.transaction() as connection:
            self._move(connection, deployment_id, DeploymentState.LIVE)
            connection.execute(
                "UPDATE deployments SET state = ?, end_time = ? WHERE state = ?",
                (DeploymentState.RETIRED.value, now, DeploymentState.LIVE.value),
            )
            connection.execute(
                "UPDATE deployments SET state = ?, live_time = ? WHERE id = ?",
                (DeploymentState.LIVE.value, now, deployment_id),
            )
        return self.get(deployment_id)

    def mark_failed(self, deployment_id: str, error: str) -> Deployment:
        """Records why a deployment failed; the previous one stays as it is."""
        with self._db.transaction() as connection:
            self._move(connection, deployment_id, DeploymentState.FAILED)
            connection.execute(
                "UPDATE deployments SET state = ?, end_time = ?, error = ? WHERE id = ?",
                (
                    DeploymentState.FAILED.value,
                    time.time(),
                    error[:MAX_ERROR_CHARS],
                    deployment_id,
                ),
            )
        return self.get(deployment_id)

    def fail_interrupted(self) -> list[Deployment]:
        """Fails the deployments a stopped process left LOADING; returns them."""
        stale = self._db.query(
            "SELECT id FROM deployments WHERE state = ?", (DeploymentState.LOADING.value,)
        )
        return [
            self.mark_failed(row["id"], "the service stopped while this deployment was loading")
            for row in stale
        ]

    def get(self, deployment_id: str) -> Deployment:
        """One deployment; NOT_FOUND when there is none by that id."""
        rows = self._db.query("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
        if not rows:
            raise NotFoundError("deployment", deployment_id)
        return _deployment(rows[0])

    def live(self) -> Deployment | None:
        """The deployment taking traffic, if any."""
        rows = self._db.query(
            "SELECT * FROM deployments WHERE state = ?", (DeploymentState.LIVE.value,)
        )
        return _deployment(rows[0]) if rows else None

    def rollback_target(self) -> Deployment | None:
        """The deployment live before the current one, of a different model version.

        Retired deployments were all live once; the latest to have gone live
        whose model differs from the live one's is the one to go back to.
        """
        live = self.live()
        rows = self._db.query(
            "SELECT * FROM deployments WHERE state = ? AND model_id != ? "
            "ORDER BY live_time DESC, seq DESC LIMIT 1",
            (DeploymentState.RETIRED.value, live.model_id if live else ""),
        )
        return _deployment(rows[0]) if rows else None

    def list(self, limit: int, offset: int) -> list[Deployment]:
        """Deployments, newest first."""
        rows = self._db.query(
            "SELECT * FROM deployments ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)
        )
        return [_deployment(row) for row in rows]

    def close(self) -> None:
        self._db.close()

"""The serving service's own store: the history of deployments (SQLite or PostgreSQL).

A deployment moves LOADING -> LIVE -> RETIRED, or LOADING -> FAILED. At most
two are LIVE: the main one and, beside it, a canary (a deployment made with a
``canary_percent``, which takes that share of the traffic). A main deployment
going LIVE retires every LIVE one; a canary going LIVE retires the previous
canary only, and needs a LIVE main. A LIVE deployment that cannot be reloaded
when the service starts becomes FAILED too.

Every Deploy and Rollback is a row, with who asked and when: promoting a
canary or ending one is a new row for the version that then takes the
traffic, even though its engine is already running.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ownchat.database import Connection, Database, Migrations, Row, is_url
from ownchat.errors import NotFoundError

MIGRATIONS = Migrations("serving", Path(__file__).with_name("migrations"))

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
    """One deployment of a model version.

    ``canary_percent`` is the share it was deployed with as a canary (0 for a
    main deployment); ``traffic_percent`` is the share it takes now (0 unless
    LIVE; a main deployment gives its canary's share away). ``restarts``
    counts the times its engine was started again after dying. A LoRA
    adapter's ``base_digest`` is its base model's files, which its engine runs.
    """

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
    canary_percent: int = 0
    restarts: int = 0
    traffic_percent: int = 0
    base_digest: str = ""

    @property
    def is_canary(self) -> bool:
        """Whether it was deployed as a canary beside a main deployment."""
        return self.canary_percent > 0


def _deployment(row: Row, canary_share: int) -> Deployment:
    state = DeploymentState(row["state"])
    canary_percent = row["canary_percent"]
    if state is not DeploymentState.LIVE:
        traffic = 0
    elif canary_percent:
        traffic = canary_percent
    else:
        traffic = 100 - canary_share
    return Deployment(
        id=row["id"],
        model_id=row["model_id"],
        engine=EngineKind(row["engine"]),
        state=state,
        deployed_by=row["deployed_by"],
        create_time=row["create_time"],
        artifact_digest=row["artifact_digest"],
        live_time=row["live_time"],
        end_time=row["end_time"],
        error=row["error"],
        canary_percent=canary_percent,
        restarts=row["restarts"],
        traffic_percent=traffic,
        base_digest=row["base_digest"],
    )


def new_deployment_id() -> str:
    """A fresh deployment id."""
    return f"dep_{secrets.token_hex(8)}"


class DeploymentStore:
    """Reads and writes the deployment history."""

    def __init__(self, location: Path | str) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self.location = location
        # The SQLite file, None when the history is in PostgreSQL.
        self.path: Path | None = None if is_url(location) else Path(location)
        self._db = Database(location, MIGRATIONS)

    def create(
        self, model_id: str, engine: EngineKind, deployed_by: str, canary_percent: int = 0
    ) -> Deployment:
        """Records a new deployment, LOADING; a canary when ``canary_percent`` is 1..99."""
        if not 0 <= canary_percent < 100:
            raise ValueError("canary_percent must be within 0..99")
        deployment = Deployment(
            id=new_deployment_id(),
            model_id=model_id,
            engine=engine,
            state=DeploymentState.LOADING,
            deployed_by=deployed_by,
            create_time=time.time(),
            canary_percent=canary_percent,
        )
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO deployments (id, model_id, engine, state, deployed_by, create_time, "
                "canary_percent) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    deployment.id,
                    deployment.model_id,
                    deployment.engine.value,
                    deployment.state.value,
                    deployment.deployed_by,
                    deployment.create_time,
                    deployment.canary_percent,
                ),
            )
        return deployment

    def _move(self, connection: Connection, deployment_id: str, target: DeploymentState) -> Row:
        row = connection.execute(
            "SELECT state, canary_percent FROM deployments WHERE id = ?", (deployment_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError("deployment", deployment_id)
        current = DeploymentState(row["state"])
        if target not in TRANSITIONS[current]:
            raise InvalidTransitionError(
                f"deployment {deployment_id} cannot move from {current.value} to {target.value}"
            )
        return row

    def set_artifact(self, deployment_id: str, digest: str, base_digest: str = "") -> None:
        """Records which files a LOADING deployment resolved to (and an adapter's base's)."""
        with self._db.transaction() as connection:
            connection.execute(
                "UPDATE deployments SET artifact_digest = ?, base_digest = ? "
                "WHERE id = ? AND state = ?",
                (digest, base_digest, deployment_id, DeploymentState.LOADING.value),
            )

    def mark_live(self, deployment_id: str) -> Deployment:
        """Makes a LOADING deployment LIVE and retires what it replaces.

        A main deployment replaces every LIVE one (a canary beside the old main
        included); a canary replaces the previous canary and needs a LIVE main.
        """
        now = time.time()
        live = DeploymentState.LIVE.value
        with self._db.transaction() as connection:
            row = self._move(connection, deployment_id, DeploymentState.LIVE)
            if row["canary_percent"]:
                main = connection.execute(
                    "SELECT id FROM deployments WHERE state = ? AND canary_percent = 0", (live,)
                ).fetchone()
                if main is None:
                    raise InvalidTransitionError(
                        f"canary {deployment_id} cannot go live: no main deployment is live"
                    )
                replaced = "state = ? AND canary_percent > 0"
            else:
                replaced = "state = ?"
            connection.execute(
                f"UPDATE deployments SET state = ?, end_time = ? WHERE {replaced}",
                (DeploymentState.RETIRED.value, now, live),
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

    def record_restart(self, deployment_id: str) -> Deployment:
        """Counts one more restart of a LIVE deployment's engine."""
        with self._db.transaction() as connection:
            connection.execute(
                "UPDATE deployments SET restarts = restarts + 1 WHERE id = ?", (deployment_id,)
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

    def _select(self, where: str, parameters: tuple[object, ...] = ()) -> list[Deployment]:
        """Rows as deployments, with the traffic each takes now; one read, one snapshot."""
        sql = (
            "SELECT *, (SELECT COALESCE(MAX(canary_percent), 0) FROM deployments "
            "WHERE state = ?) AS canary_share FROM deployments " + where
        )
        rows = self._db.query(sql, (DeploymentState.LIVE.value, *parameters))
        return [_deployment(row, row["canary_share"]) for row in rows]

    def get(self, deployment_id: str) -> Deployment:
        """One deployment; NOT_FOUND when there is none by that id."""
        found = self._select("WHERE id = ?", (deployment_id,))
        if not found:
            raise NotFoundError("deployment", deployment_id)
        return found[0]

    def live(self) -> Deployment | None:
        """The main deployment taking traffic, if any."""
        found = self._select(
            "WHERE state = ? AND canary_percent = 0", (DeploymentState.LIVE.value,)
        )
        return found[0] if found else None

    def canary(self) -> Deployment | None:
        """The canary taking a share of the traffic beside the main deployment, if any."""
        found = self._select(
            "WHERE state = ? AND canary_percent > 0", (DeploymentState.LIVE.value,)
        )
        return found[0] if found else None

    def rollback_target(self) -> Deployment | None:
        """The main deployment live before the current one, of a different model version.

        Retired main deployments were all live once; the latest to have gone
        live whose model differs from the live one's is the one to go back to.
        Canaries never are: they never took all the traffic.
        """
        live = self.live()
        found = self._select(
            "WHERE state = ? AND canary_percent = 0 AND model_id != ? "
            "ORDER BY live_time DESC, seq DESC LIMIT 1",
            (DeploymentState.RETIRED.value, live.model_id if live else ""),
        )
        return found[0] if found else None

    def list(self, limit: int, offset: int) -> list[Deployment]:
        """Deployments, newest first."""
        return self._select("ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset))

    def close(self) -> None:
        self._db.close()

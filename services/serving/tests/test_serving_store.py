"""The deployment history and its state machine."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ownchat.errors import NotFoundError
from ownchat_serving.store import (
    DeploymentState,
    DeploymentStore,
    EngineKind,
    InvalidTransitionError,
)

LOADING, LIVE, RETIRED, FAILED = (
    DeploymentState.LOADING,
    DeploymentState.LIVE,
    DeploymentState.RETIRED,
    DeploymentState.FAILED,
)


@pytest.fixture
def store(store_location: Path | str) -> DeploymentStore:
    return DeploymentStore(store_location)


def go_live(store: DeploymentStore, model_id: str, digest: str = "sha256:" + "0" * 64) -> str:
    deployment = store.create(model_id, EngineKind.VLLM, "alice")
    store.set_artifact(deployment.id, digest)
    return store.mark_live(deployment.id).id


def test_a_new_deployment_is_loading(store: DeploymentStore) -> None:
    deployment = store.create("m1", EngineKind.VLLM, "alice")
    assert deployment.state is LOADING
    assert deployment.id.startswith("dep_")
    again = store.get(deployment.id)
    assert again == deployment
    assert store.live() is None


def test_going_live_retires_the_previous_one(store: DeploymentStore) -> None:
    first = go_live(store, "m1")
    second = go_live(store, "m2")
    assert store.get(first).state is RETIRED
    assert store.get(first).end_time is not None
    live = store.live()
    assert live is not None and live.id == second and live.state is LIVE
    assert live.artifact_digest == "sha256:" + "0" * 64


def test_a_failure_keeps_the_previous_one_live(store: DeploymentStore) -> None:
    first = go_live(store, "m1")
    broken = store.create("m2", EngineKind.VLLM, "bob")
    failed = store.mark_failed(broken.id, "no safetensors")
    assert failed.state is FAILED and failed.error == "no safetensors"
    live = store.live()
    assert live is not None and live.id == first


@pytest.mark.parametrize(
    ("moves", "forbidden"),
    [
        (["failed"], "live"),
        (["live", "retired"], "live"),
        (["failed"], "failed"),
        (["live"], "live"),
    ],
)
def test_forbidden_transitions_raise(
    store: DeploymentStore, moves: list[str], forbidden: str
) -> None:
    deployment = store.create("m1", EngineKind.VLLM, "alice")

    def move(target: str) -> None:
        if target == "live":
            store.mark_live(deployment.id)
        elif target == "failed":
            store.mark_failed(deployment.id, "x")
        else:  # retired: another deployment goes live
            go_live(store, "other")

    for target in moves:
        move(target)
    with pytest.raises(InvalidTransitionError):
        move(forbidden)


def test_unknown_deployment_is_not_found(store: DeploymentStore) -> None:
    with pytest.raises(NotFoundError):
        store.get("dep_missing")
    with pytest.raises(NotFoundError):
        store.mark_live("dep_missing")


def test_list_is_newest_first_and_paged(store: DeploymentStore) -> None:
    ids = [store.create(f"m{i}", EngineKind.VLLM, "alice").id for i in range(5)]
    assert [d.id for d in store.list(50, 0)] == ids[::-1]
    assert [d.id for d in store.list(2, 0)] == ids[:2:-1]
    assert [d.id for d in store.list(2, 4)] == ids[:1]


def test_rollback_target_is_the_version_live_before(store: DeploymentStore) -> None:
    assert store.rollback_target() is None
    go_live(store, "m1")
    assert store.rollback_target() is None
    go_live(store, "m2")
    target = store.rollback_target()
    assert target is not None and target.model_id == "m1"
    # A failed attempt is never a target.
    store.mark_failed(store.create("m3", EngineKind.VLLM, "x").id, "broken")
    target = store.rollback_target()
    assert target is not None and target.model_id == "m1"


def test_rollback_skips_redeployments_of_the_live_version(store: DeploymentStore) -> None:
    go_live(store, "m1")
    go_live(store, "m2")
    go_live(store, "m2")
    target = store.rollback_target()
    assert target is not None and target.model_id == "m1"


def test_rolling_back_twice_returns_to_where_it_was(store: DeploymentStore) -> None:
    go_live(store, "m1")
    go_live(store, "m2")
    go_live(store, "m1")  # the rollback's own deployment
    target = store.rollback_target()
    assert target is not None and target.model_id == "m2"


def test_interrupted_loads_fail_on_start(store: DeploymentStore) -> None:
    live = go_live(store, "m1")
    stuck = store.create("m2", EngineKind.VLLM, "alice")
    store.close()
    reopened = DeploymentStore(store.location)
    failed = reopened.fail_interrupted()
    assert [d.id for d in failed] == [stuck.id]
    assert reopened.get(stuck.id).state is FAILED
    assert "stopped" in reopened.get(stuck.id).error
    current = reopened.live()
    assert current is not None and current.id == live


def test_a_live_deployment_that_cannot_reload_can_fail(store: DeploymentStore) -> None:
    live = go_live(store, "m1")
    assert store.mark_failed(live, "files gone").state is FAILED
    assert store.live() is None


def go_live_canary(store: DeploymentStore, model_id: str, percent: int) -> str:
    deployment = store.create(model_id, EngineKind.VLLM, "bob", canary_percent=percent)
    return store.mark_live(deployment.id).id


def test_a_canary_goes_live_beside_the_main_one(store: DeploymentStore) -> None:
    with pytest.raises(InvalidTransitionError):
        go_live_canary(store, "m2", 10)  # nothing to share traffic with
    main = go_live(store, "m1")
    canary = go_live_canary(store, "m2", 10)
    assert store.live() is not None and store.live().id == main  # type: ignore[union-attr]
    assert store.canary() is not None and store.canary().id == canary  # type: ignore[union-attr]
    assert [(d.model_id, d.state, d.traffic_percent) for d in store.list(10, 0)] == [
        ("m2", LIVE, 10),
        ("m1", LIVE, 90),
        ("m2", LOADING, 0),  # the refused one moved nowhere
    ]
    # A new canary replaces the old one; the main one stays.
    wider = go_live_canary(store, "m2", 40)
    assert store.get(canary).state is RETIRED and store.get(main).state is LIVE
    assert store.get(main).traffic_percent == 60 and store.get(wider).traffic_percent == 40
    # A main deployment replaces both.
    promoted = go_live(store, "m2")
    assert store.get(wider).state is RETIRED and store.get(main).state is RETIRED
    assert store.canary() is None and store.get(promoted).traffic_percent == 100


def test_canaries_are_never_rollback_targets(store: DeploymentStore) -> None:
    go_live(store, "m1")
    go_live_canary(store, "m2", 10)
    go_live(store, "m1")  # the canary ended
    assert store.rollback_target() is None
    with pytest.raises(ValueError):
        store.create("m3", EngineKind.VLLM, "x", canary_percent=100)


def test_restarts_are_counted(store: DeploymentStore) -> None:
    live = go_live(store, "m1")
    store.record_restart(live)
    assert store.record_restart(live).restarts == 2


# The first schema, as the store created it (counted in PRAGMA user_version) before
# its migrations became Alembic revisions.
FIRST_SCHEMA = """
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
CREATE INDEX deployments_by_state ON deployments(state, live_time);
PRAGMA user_version = 1;
"""


def test_a_database_of_the_first_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(FIRST_SCHEMA)
    old.close()
    store = DeploymentStore(path)
    live = go_live(store, "m1")
    deployment = store.get(live)
    assert (deployment.canary_percent, deployment.restarts, deployment.traffic_percent) == (
        0,
        0,
        100,
    )

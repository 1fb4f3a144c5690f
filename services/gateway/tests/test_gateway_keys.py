"""The key store and the auth rules, as plain objects: secrets shown once and
stored hashed, revocation at once, scopes. The store's tests run on SQLite and
on PostgreSQL."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from ownchat.errors import InvalidArgumentError, NotFoundError
from ownchat.testing import ManualClock
from ownchat_gateway.access import OPERATOR, OPERATOR_ID, Authenticator, Principal
from ownchat_gateway.keys import UNLIMITED, KeyLimits, KeyStore, NewApiKey, Scope, key_id_of


@pytest.fixture
def store(store_location: Path | str) -> KeyStore:
    return KeyStore(store_location, clock=ManualClock(1_700_000_000.0, step=1.0))


def test_gateway_key_secret_is_shown_once_and_verifies(store: KeyStore) -> None:
    created = store.create(NewApiKey(name=" alice ", scopes=(Scope.REVIEW, Scope.CHAT)))
    key, secret = created.key, created.secret
    assert key.id.startswith("ak_") and key.name == "alice"
    assert secret.startswith(f"oc-{key.id}-") and len(secret) > 40
    assert key_id_of(secret) == key.id
    assert key.scopes == {Scope.REVIEW, Scope.CHAT}
    verified = store.verify(secret)
    assert verified is not None and verified.id == key.id
    # Another key's secret is unrelated.
    other = store.create(NewApiKey(name="bob", scopes=(Scope.CHAT,)))
    assert other.secret != secret and other.key.id != key.id


def test_gateway_key_only_its_hash_is_stored(tmp_path: Path) -> None:
    # The file's bytes, so SQLite only.
    store = KeyStore(tmp_path / "gateway.db", clock=ManualClock(1_700_000_000.0, step=1.0))
    secret = store.create(NewApiKey(name="alice", scopes=(Scope.CHAT,))).secret
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))
    random_part = secret.rsplit("-", 1)[1]
    assert random_part.encode() not in raw
    with sqlite3.connect(tmp_path / "gateway.db") as connection:
        (stored,) = connection.execute("SELECT secret_sha256 FROM api_keys").fetchone()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # wrong random part
        lambda s: "oc-ak_0000000000000000-" + s.rsplit("-", 1)[1],  # unknown id
        lambda s: s.removeprefix("oc-"),  # not shaped like a key
        lambda s: "oc--x",
        lambda s: "",
    ],
)
def test_gateway_key_wrong_secrets_verify_as_nobody(store: KeyStore, tamper: object) -> None:
    secret = store.create(NewApiKey(name="alice", scopes=(Scope.CHAT,))).secret
    assert store.verify(tamper(secret)) is None  # type: ignore[operator]


def test_gateway_key_revocation_is_immediate_and_kept(store: KeyStore) -> None:
    created = store.create(NewApiKey(name="alice", scopes=(Scope.CHAT,)))
    revoked = store.revoke(created.key.id)
    assert revoked.revoked and revoked.revoke_time is not None
    assert store.verify(created.secret) is None
    again = store.revoke(created.key.id)
    assert again.revoke_time == revoked.revoke_time
    with pytest.raises(NotFoundError):
        store.revoke("ak_nope")
    with pytest.raises(NotFoundError):
        store.get("ak_nope")


def test_gateway_keys_listed_oldest_first_and_kept_across_opens(
    store_location: Path | str,
) -> None:
    store = KeyStore(store_location, clock=ManualClock(1_700_000_000.0, step=1.0))
    first = store.create(NewApiKey(name="a", scopes=(Scope.CHAT,), requests_per_minute=60))
    second = store.create(NewApiKey(name="b", scopes=(Scope.ADMIN,), tokens_per_day=10**9))
    store.revoke(first.key.id)
    store.close()
    reopened = KeyStore(store_location)
    listed = reopened.list()
    assert [k.id for k in listed] == [first.key.id, second.key.id]
    assert listed[0].revoked and not listed[1].revoked
    assert (listed[0].requests_per_minute, listed[1].tokens_per_day) == (60, 10**9)
    assert reopened.verify(second.secret) is not None
    assert reopened.verify(first.secret) is None


def test_gateway_key_request_problems_are_reported_together(store: KeyStore) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        store.create(
            NewApiKey(
                name=" ",
                scopes=(),
                requests_per_minute=-2,
                tokens_per_day=-5,
                tokens_per_minute=-9,
            )
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "name",
        "scopes",
        "requests_per_minute",
        "tokens_per_day",
        "tokens_per_minute",
    }
    with pytest.raises(InvalidArgumentError):
        store.create(NewApiKey(name="x" * 129, scopes=(Scope.CHAT,)))
    assert store.list() == []


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ({Scope.CHAT}, {Scope.CHAT}),
        ({Scope.REVIEW}, {Scope.REVIEW}),
        ({Scope.REVIEW, Scope.CHAT}, {Scope.REVIEW, Scope.CHAT}),
        ({Scope.FINE_TUNE}, {Scope.FINE_TUNE}),
        ({Scope.ADMIN}, set(Scope)),
    ],
)
def test_gateway_scope_rules(scopes: set[Scope], allowed: set[Scope]) -> None:
    principal = Principal(id="ak_1", name="k", scopes=frozenset(scopes))
    assert {s for s in Scope if principal.allows(s)} == allowed
    assert all(OPERATOR.allows(s) for s in Scope)


def test_gateway_authenticator(store: KeyStore) -> None:
    created = store.create(NewApiKey(name="Ann", scopes=(Scope.REVIEW,)))
    auth = Authenticator("the-token", store)
    assert auth.authenticate("Bearer the-token") == OPERATOR
    assert auth.authenticate("bearer the-token") == OPERATOR
    principal = auth.authenticate(f"Bearer {created.secret}")
    assert principal is not None
    assert (principal.id, principal.name, principal.operator) == (created.key.id, "Ann", False)
    assert principal.id != OPERATOR_ID
    for header in (None, "", "Bearer", "Bearer wrong", f"Basic {created.secret}", created.secret):
        assert auth.authenticate(header) is None, header
    store.revoke(created.key.id)
    assert auth.authenticate(f"Bearer {created.secret}") is None


# The key store's schema as releases before Alembic wrote it, one script per
# PRAGMA user_version step.
LEGACY_SCRIPTS = [
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        scopes TEXT NOT NULL,
        requests_per_minute INTEGER NOT NULL DEFAULT 0,
        tokens_per_day INTEGER NOT NULL DEFAULT 0,
        create_time REAL NOT NULL,
        revoke_time REAL
    );
    CREATE INDEX api_keys_by_create_time ON api_keys (create_time, id);
    """,
    """
    ALTER TABLE api_keys ADD COLUMN tokens_per_minute INTEGER NOT NULL DEFAULT 0;
    """,
]


def legacy_file(path: Path, scripts: int) -> sqlite3.Connection:
    """A gateway.db as the release with the first ``scripts`` migrations left it."""
    connection = sqlite3.connect(path, isolation_level=None)
    for script in LEGACY_SCRIPTS[:scripts]:
        connection.executescript(script)
    connection.execute(f"PRAGMA user_version = {scripts}")
    return connection


def test_gateway_keys_made_before_limits_keep_working(tmp_path: Path) -> None:
    # A store as the first release left it: the first migration only.
    old = legacy_file(tmp_path / "gateway.db", 1)
    old.execute(
        "INSERT INTO api_keys (id, name, secret_sha256, scopes, requests_per_minute, "
        "tokens_per_day, create_time) VALUES ('ak_old', 'old', ?, 'chat', 60, 0, 1.0)",
        (hashlib.sha256(b"oc-ak_old-secret").hexdigest(),),
    )
    old.close()
    store = KeyStore(tmp_path / "gateway.db")
    key = store.verify("oc-ak_old-secret")
    assert key is not None and key.id == "ak_old"
    assert key.limits == KeyLimits(requests_per_minute=60, tokens_per_minute=0, tokens_per_day=0)
    created = store.create(NewApiKey(name="new", scopes=(Scope.CHAT,), tokens_per_minute=UNLIMITED))
    assert store.get(created.key.id).tokens_per_minute == UNLIMITED


def test_gateway_keys_of_a_file_from_before_alembic_are_kept(tmp_path: Path) -> None:
    # The last release before Alembic: both scripts run, a key revoked.
    old = legacy_file(tmp_path / "gateway.db", 2)
    old.execute(
        "INSERT INTO api_keys (id, name, secret_sha256, scopes, requests_per_minute, "
        "tokens_per_day, create_time, revoke_time, tokens_per_minute) "
        "VALUES ('ak_old', 'old', ?, 'chat,review', 60, 5000000000, 1.0, NULL, 900)",
        (hashlib.sha256(b"oc-ak_old-secret").hexdigest(),),
    )
    old.execute(
        "INSERT INTO api_keys (id, name, secret_sha256, scopes, create_time, revoke_time) "
        "VALUES ('ak_gone', 'gone', 'x', 'chat', 2.0, 3.0)"
    )
    old.close()
    store = KeyStore(tmp_path / "gateway.db", clock=ManualClock(1_700_000_000.0, step=1.0))
    key = store.verify("oc-ak_old-secret")
    assert key is not None and key.scopes == {Scope.CHAT, Scope.REVIEW}
    assert key.limits == KeyLimits(60, 900, 5_000_000_000)
    assert [(k.id, k.revoked) for k in store.list()] == [("ak_old", False), ("ak_gone", True)]
    created = store.create(NewApiKey(name="new", scopes=(Scope.CHAT,)))
    assert store.verify(created.secret) is not None
    store.close()
    # Opening again runs nothing twice.
    assert len(KeyStore(tmp_path / "gateway.db").list()) == 3


def test_gateway_key_limits_beyond_32_bits_are_kept(store: KeyStore) -> None:
    created = store.create(
        NewApiKey(name="big", scopes=(Scope.CHAT,), tokens_per_day=10**12, tokens_per_minute=2**40)
    )
    key = store.get(created.key.id)
    assert (key.tokens_per_day, key.tokens_per_minute) == (10**12, 2**40)

"""The gateway's API keys: created with a secret shown once, stored hashed, revoked at once.

A secret reads ``oc-<key id>-<random>``: the id part finds the stored key in one
lookup, and the random part (256 bits) is what makes it secret. Only the
SHA-256 of the whole secret is kept (a fast hash is enough for a secret of that
entropy; passwords would need a slow one), and it is compared in constant time.
Nothing here logs a secret.

Keys live in ``$OWNCHAT_HOME/gateway/gateway.db``, or in the gateway's
PostgreSQL database when ``database_url`` is set. Every check reads the store,
so a revocation holds at once in every gateway worker (and replica) sharing it.

A key may carry its own limits (requests and tokens per minute, tokens per UTC
day): 0 takes the gateway's default, :data:`UNLIMITED` (-1) lifts the limit for
that key; :mod:`ownchat_gateway.limits` enforces them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ownchat.database import Database, Migrations, Row
from ownchat.errors import FieldViolation, InvalidArgumentError, NotFoundError

SECRET_PREFIX = "oc-"
MAX_NAME_CHARS = 128
MAX_KEYS_LISTED = 10_000

# The keys and the rate limits' counters (ownchat_gateway.limits): one schema,
# one file (gateway.db).
MIGRATIONS = Migrations("keys", Path(__file__).with_name("migrations"))

# A key's limit value that means "no limit for this key", whatever the default.
UNLIMITED = -1
# A key's limit value that means "the gateway's default".
DEFAULT_LIMIT = 0

# Compared against when a presented id is unknown, so that an unknown id and a
# wrong secret take the same time.
_NO_HASH = hashlib.sha256(b"no such key").hexdigest()


class Scope(StrEnum):
    """What a key may do."""

    CHAT = "chat"
    FINE_TUNE = "fine_tune"
    REVIEW = "review"
    # Everything, the admin endpoints (keys) included.
    ADMIN = "admin"


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits: each :data:`DEFAULT_LIMIT` (0), :data:`UNLIMITED` (-1) or a count."""

    requests_per_minute: int = DEFAULT_LIMIT
    tokens_per_minute: int = DEFAULT_LIMIT
    # The token quota: prompt plus completion tokens per UTC day.
    tokens_per_day: int = DEFAULT_LIMIT


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    scopes: frozenset[Scope]
    requests_per_minute: int
    tokens_per_day: int
    create_time: float
    revoke_time: float | None = None
    tokens_per_minute: int = DEFAULT_LIMIT

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoke_time is not None

    @property
    def limits(self) -> KeyLimits:
        """The key's own limits, before the gateway's defaults fill in."""
        return KeyLimits(self.requests_per_minute, self.tokens_per_minute, self.tokens_per_day)


@dataclass(frozen=True)
class NewApiKey:
    """What a new key is asked to be."""

    name: str
    scopes: tuple[Scope, ...]
    requests_per_minute: int = DEFAULT_LIMIT
    tokens_per_day: int = DEFAULT_LIMIT
    tokens_per_minute: int = DEFAULT_LIMIT


@dataclass(frozen=True)
class CreatedApiKey:
    """A new key and its secret, which is not stored and cannot be shown again."""

    key: ApiKey
    secret: str


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The key id a secret names, or None when it is not shaped like a key's secret."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    key_id, dash, rest = secret[len(SECRET_PREFIX) :].partition("-")
    if not dash or not key_id or not rest:
        return None
    return key_id


def _check(new: NewApiKey) -> None:
    violations: list[FieldViolation] = []
    if not new.name.strip():
        violations.append(FieldViolation("name", "must name the key"))
    elif len(new.name) > MAX_NAME_CHARS:
        violations.append(FieldViolation("name", f"must be at most {MAX_NAME_CHARS} characters"))
    if not new.scopes:
        violations.append(
            FieldViolation("scopes", "must give at least one of chat, fine_tune, review, admin")
        )
    limits = {
        "requests_per_minute": new.requests_per_minute,
        "tokens_per_minute": new.tokens_per_minute,
        "tokens_per_day": new.tokens_per_day,
    }
    for name, value in limits.items():
        if value < UNLIMITED:
            violations.append(
                FieldViolation(name, "must be a count, 0 (the default) or -1 (no limit)")
            )
    if violations:
        raise InvalidArgumentError("invalid API key request", violations)


def _scopes_text(scopes: Iterable[Scope]) -> str:
    return ",".join(sorted(Scope(s).value for s in scopes))


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scopes=frozenset(Scope(s) for s in row["scopes"].split(",") if s),
        requests_per_minute=row["requests_per_minute"],
        tokens_per_day=row["tokens_per_day"],
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
        tokens_per_minute=row["tokens_per_minute"],
    )


class KeyStore:
    """API keys in the gateway's database."""

    def __init__(self, location: Path | str, clock: Callable[[], float] = time.time) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self._db = Database(location, MIGRATIONS)
        self._clock = clock

    def create(self, new: NewApiKey) -> CreatedApiKey:
        """Stores a new key; its secret is in the result and nowhere else."""
        _check(new)
        key_id = f"ak_{secrets.token_hex(8)}"
        secret = f"{SECRET_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        key = ApiKey(
            id=key_id,
            name=new.name.strip(),
            scopes=frozenset(new.scopes),
            requests_per_minute=new.requests_per_minute,
            tokens_per_day=new.tokens_per_day,
            create_time=self._clock(),
            tokens_per_minute=new.tokens_per_minute,
        )
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO api_keys (id, name, secret_sha256, scopes, requests_per_minute, "
                "tokens_per_day, tokens_per_minute, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    hash_secret(secret),
                    _scopes_text(key.scopes),
                    key.requests_per_minute,
                    key.tokens_per_day,
                    key.tokens_per_minute,
                    key.create_time,
                ),
            )
        return CreatedApiKey(key, secret)

    def get(self, key_id: str) -> ApiKey:
        """One key by id."""
        rows = self._db.query("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            raise NotFoundError("API key", key_id)
        return _key(rows[0])

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        rows = self._db.query(
            "SELECT * FROM api_keys ORDER BY create_time, id LIMIT ?", (MAX_KEYS_LISTED,)
        )
        return [_key(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revokes a key from now on; revoking it again keeps the first revocation time."""
        with self._db.transaction() as connection:
            updated = connection.execute(
                "UPDATE api_keys SET revoke_time = ? WHERE id = ? AND revoke_time IS NULL",
                (self._clock(), key_id),
            ).rowcount
            if not updated:
                exists = connection.execute(
                    "SELECT 1 FROM api_keys WHERE id = ?", (key_id,)
                ).fetchone()
                if exists is None:
                    raise NotFoundError("API key", key_id)
        return self.get(key_id)

    def verify(self, secret: str) -> ApiKey | None:
        """The live key a secret belongs to; None for an unknown, wrong or revoked one."""
        key_id = key_id_of(secret)
        rows = self._db.query("SELECT * FROM api_keys WHERE id = ?", (key_id,)) if key_id else []
        stored = rows[0]["secret_sha256"] if rows else _NO_HASH
        matches = hmac.compare_digest(hash_secret(secret).encode(), stored.encode())
        if not rows or not matches:
            return None
        key = _key(rows[0])
        return None if key.revoked else key

    def close(self) -> None:
        """Closes the database."""
        self._db.close()

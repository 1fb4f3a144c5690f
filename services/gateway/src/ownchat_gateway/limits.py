"""Per-key rate limits and token quotas, counted in the gateway's database.

An API key has three limits, each its own value or the gateway's default
(``default_*`` settings; 0 there means none):

- requests per minute: a bucket of ``rpm`` requests that refills at ``rpm/60``
  per second; each request takes one, and one that finds less than one left is
  refused;
- tokens per minute: a bucket of ``tpm`` tokens refilling likewise; a reply's
  prompt plus completion tokens are taken when its usage arrives (the bucket may
  go below empty), and a request that would generate is refused while the bucket
  is empty;
- tokens per UTC day (the token quota): a request that would generate is
  refused once the day's tokens reach it, until 00:00 UTC.

BentoML runs several worker processes, and buckets in each worker's memory
would each let the whole limit through, so the counters live in
``gateway.db`` beside the keys (table ``key_usage``, in the keys' schema), or
in the gateway's PostgreSQL database when ``database_url`` is set: one short
write transaction admits a request, one more records its tokens (about 25 us
each on SQLite). Their commits skip the fsync: ``synchronous=NORMAL`` on
SQLite, where WAL keeps them atomic and crash-safe for the process and a power
cut loses at most the last few counter updates, and ``synchronous_commit=off``
on PostgreSQL, likewise; an fsync per commit (as the key store does) costs 0.2
to 0.9 ms on these disks. The counters hold nothing that cannot be lost:
emptying the table resets every bucket to full.

Workers contend for the database's one write lock (SQLite's, or the store's
advisory lock on PostgreSQL). SQLite's own busy handler would sleep a
millisecond or more at once, blocking the worker's event loop meanwhile, so the
store never waits (:class:`CountersBusyError`) and :class:`RateLimiter` tries
again after waits that start at 0.05 ms and double up to 5 ms, yielding the
event loop from 0.4 ms on. If the counters stay locked for ``busy_seconds`` the
request is let through uncounted, with a warning: the limits must not take the
gateway down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from ownchat.database import Connection, Database, DatabaseBusyError
from ownchat_gateway.keys import DEFAULT_LIMIT, MIGRATIONS, UNLIMITED, KeyLimits

logger = logging.getLogger("ownchat.gateway")

SECONDS_PER_DAY = 86_400
_FIRST_RETRY_SECONDS = 0.00005
_LONGEST_RETRY_SECONDS = 0.005
# The event loop's timers resolve to about a millisecond: shorter waits sleep
# the thread (blocking the loop for at most their sum, 0.35 ms), longer ones yield.
_YIELD_FROM_SECONDS = 0.0004

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one key; 0 for none."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0

    @property
    def unlimited(self) -> bool:
        """Whether nothing is limited (the key's requests need no counting at all)."""
        return not (self.requests_per_minute or self.tokens_per_minute or self.tokens_per_day)


def _pick(own: int, default: int) -> int:
    if own == UNLIMITED:
        return 0
    return default if own == DEFAULT_LIMIT else own


def effective_limits(own: KeyLimits, defaults: Limits) -> Limits:
    """A key's limits with the gateway's defaults filling in where it has none of its own."""
    return Limits(
        requests_per_minute=_pick(own.requests_per_minute, defaults.requests_per_minute),
        tokens_per_minute=_pick(own.tokens_per_minute, defaults.tokens_per_minute),
        tokens_per_day=_pick(own.tokens_per_day, defaults.tokens_per_day),
    )


class Refused(StrEnum):
    """Which limit refused a request (OpenAI's error ``type`` for the first two)."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    QUOTA = "insufficient_quota"


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused and when trying again can succeed."""

    limit: Refused
    # The limit's value, and how much of it is used.
    allowed: int
    used: int
    retry_after_seconds: float


@dataclass(frozen=True)
class Admission:
    """A request's verdict and OpenAI's ``x-ratelimit-*`` headers for its answer."""

    refusal: Refusal | None
    headers: dict[str, str]


@dataclass(frozen=True)
class Usage:
    """One key's counters: what its buckets hold taken at ``updated``, and its day's tokens."""

    requests: float = 0.0
    tokens: float = 0.0
    updated: float = 0.0
    day: int = 0
    day_tokens: int = 0

    def at(self, now: float, limits: Limits) -> Usage:
        """The counters at ``now``: buckets refilled for the time passed, a new day's quota."""
        elapsed = max(0.0, now - self.updated)
        day = int(now // SECONDS_PER_DAY)
        return Usage(
            requests=_refilled(self.requests, limits.requests_per_minute, elapsed),
            tokens=_refilled(self.tokens, limits.tokens_per_minute, elapsed),
            updated=max(now, self.updated),
            day=day,
            day_tokens=self.day_tokens if day == self.day else 0,
        )


class CountersBusyError(Exception):
    """Another connection holds the counters' write lock; try again shortly."""


def _refilled(taken: float, per_minute: int, elapsed: float) -> float:
    # An unlimited bucket keeps nothing, so that a limit set later starts full.
    if per_minute <= 0:
        return 0.0
    return max(0.0, taken - elapsed * per_minute / 60.0)


def _refusal(usage: Usage, limits: Limits, now: float, spends_tokens: bool) -> Refusal | None:
    rpm, tpm, tpd = limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day
    if rpm and usage.requests + 1 > rpm:
        wait = (usage.requests + 1 - rpm) * 60.0 / rpm
        return Refusal(Refused.REQUESTS, rpm, math.ceil(usage.requests), wait)
    if not spends_tokens:
        return None
    if tpm and usage.tokens >= tpm:
        # Until the bucket holds at least one token again.
        wait = (usage.tokens - tpm + 1) * 60.0 / tpm
        return Refusal(Refused.TOKENS, tpm, math.ceil(usage.tokens), wait)
    if tpd and usage.day_tokens >= tpd:
        wait = (usage.day + 1) * SECONDS_PER_DAY - now
        return Refusal(Refused.QUOTA, tpd, usage.day_tokens, wait)
    return None


def duration_text(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = round(seconds, 3)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return text


def rate_limit_headers(usage: Usage, limits: Limits) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the per-minute limits that apply."""
    headers: dict[str, str] = {}
    buckets = (
        ("requests", limits.requests_per_minute, usage.requests),
        ("tokens", limits.tokens_per_minute, usage.tokens),
    )
    for name, per_minute, taken in buckets:
        if not per_minute:
            continue
        headers[f"x-ratelimit-limit-{name}"] = str(per_minute)
        headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(per_minute - taken)))
        # When the bucket is full again, as OpenAI's reset means.
        headers[f"x-ratelimit-reset-{name}"] = duration_text(taken * 60.0 / per_minute)
    return headers


class UsageStore:
    """Every key's counters in the gateway's database, shared by its worker processes."""

    def __init__(self, location: Path | str, clock: Callable[[], float] = time.time) -> None:
        """``location``: the key store's SQLite file, or its ``postgresql://`` URL."""
        self._clock = clock
        # Opening (and migrating) is not on a request's path: it waits for
        # other workers as long as needed.
        self._db = Database(location, MIGRATIONS)
        if self._db.dialect == "sqlite":
            # This connection is the counters' own: no fsync per commit, and reads
            # never wait either (see the module's docstring).
            self._db.query("PRAGMA synchronous=NORMAL")
            self._db.query("PRAGMA busy_timeout=0")

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._db.transaction(wait=False) as connection:
                if self._db.dialect == "postgresql":
                    connection.execute("SET LOCAL synchronous_commit = off")
                yield connection
        except DatabaseBusyError as error:
            raise CountersBusyError(str(error)) from None
        except sqlite3.OperationalError as error:
            raise _busy_or(error) from None

    def _load(self, connection: Connection, key_id: str) -> Usage:
        row = connection.execute(_LOAD, (key_id,)).fetchone()
        return Usage() if row is None else Usage(*row)

    def _save(self, connection: Connection, key_id: str, usage: Usage) -> None:
        connection.execute(
            "INSERT INTO key_usage (key_id, requests, tokens, updated, day, day_tokens) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET "
            "requests = excluded.requests, tokens = excluded.tokens, "
            "updated = excluded.updated, day = excluded.day, day_tokens = excluded.day_tokens",
            (key_id, usage.requests, usage.tokens, usage.updated, usage.day, usage.day_tokens),
        )

    def admit(self, key_id: str, limits: Limits, *, spends_tokens: bool) -> Admission:
        """Takes one request from the key's bucket, or says which limit refuses it.

        ``spends_tokens``: the request would generate, so the token bucket and
        the day's quota must not be exhausted. Raises :class:`CountersBusyError`
        while another connection writes.
        """
        now = self._clock()
        if not limits.requests_per_minute:
            # Nothing to take: a read suffices.
            try:
                rows = self._db.query(_LOAD, (key_id,))
            except sqlite3.OperationalError as error:
                raise _busy_or(error) from None
            usage = (Usage(*rows[0]) if rows else Usage()).at(now, limits)
            refusal = _refusal(usage, limits, now, spends_tokens)
            return Admission(refusal, rate_limit_headers(usage, limits))
        with self._transaction() as connection:
            usage = self._load(connection, key_id).at(now, limits)
            refusal = _refusal(usage, limits, now, spends_tokens)
            if refusal is None:
                usage = replace(usage, requests=usage.requests + 1)
                self._save(connection, key_id, usage)
        return Admission(refusal, rate_limit_headers(usage, limits))

    def record(self, key_id: str, limits: Limits, tokens: int) -> None:
        """Takes a finished reply's tokens from the key's token bucket and day's quota.

        Raises :class:`CountersBusyError` while another connection writes.
        """
        if tokens <= 0 or not (limits.tokens_per_minute or limits.tokens_per_day):
            return
        now = self._clock()
        with self._transaction() as connection:
            usage = self._load(connection, key_id).at(now, limits)
            usage = replace(
                usage,
                tokens=usage.tokens + tokens if limits.tokens_per_minute else 0.0,
                day_tokens=usage.day_tokens + tokens,
            )
            self._save(connection, key_id, usage)

    def close(self) -> None:
        """Closes the connection."""
        self._db.close()


_LOAD = "SELECT requests, tokens, updated, day, day_tokens FROM key_usage WHERE key_id = ?"


def _busy_or(error: sqlite3.OperationalError) -> Exception:
    if error.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return CountersBusyError(str(error))
    return error


class RateLimiter:
    """The gateway's defaults and the shared counters: what the edge middleware asks.

    Its calls wait for busy counters without blocking the event loop.
    """

    def __init__(self, store: UsageStore, defaults: Limits, busy_seconds: float = 2.0) -> None:
        self.store = store
        self.defaults = defaults
        self._busy_seconds = busy_seconds

    def limits_of(self, own: KeyLimits) -> Limits:
        """The limits a key's requests are held to."""
        return effective_limits(own, self.defaults)

    async def admit(self, key_id: str, limits: Limits, *, spends_tokens: bool) -> Admission:
        """:meth:`UsageStore.admit`, let through uncounted if the counters stay locked."""
        admission = await self._retry(
            lambda: self.store.admit(key_id, limits, spends_tokens=spends_tokens)
        )
        if admission is None:
            logger.warning(
                "rate-limit counters busy; request let through", extra={"api_key_id": key_id}
            )
            return Admission(None, {})
        return admission

    async def record(self, key_id: str, limits: Limits, tokens: int) -> None:
        """:meth:`UsageStore.record`, dropped with a warning if the counters stay locked."""

        def attempt() -> bool:
            self.store.record(key_id, limits, tokens)
            return True

        if await self._retry(attempt) is None:
            logger.warning(
                "rate-limit counters busy; tokens not counted",
                extra={"api_key_id": key_id, "tokens": tokens},
            )

    async def _retry(self, attempt: Callable[[], T]) -> T | None:
        delay = _FIRST_RETRY_SECONDS
        deadline = time.monotonic() + self._busy_seconds
        while True:
            try:
                return attempt()
            except CountersBusyError:
                if time.monotonic() >= deadline:
                    return None
            # Jitter keeps workers that collided from colliding again.
            wait = delay * random.uniform(0.5, 1.5)
            if delay < _YIELD_FROM_SECONDS:
                time.sleep(wait)
            else:
                await asyncio.sleep(wait)
            delay = min(delay * 2, _LONGEST_RETRY_SECONDS)

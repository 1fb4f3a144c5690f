"""Admission to an engine: a few replies at once, a bounded queue, then refusal.

Each live engine has one. Up to ``max_running`` replies run on it; up to
``max_waiting`` more wait their turn in arrival order; anything past that is
refused at once with RESOURCE_EXHAUSTED and advice on when to retry, so an
overload costs a refusal, not memory. A freed slot goes straight to the
oldest waiter, so a newcomer never overtakes the queue.

A request reserves its place (``reserve``) before its prompt is rendered, so a
refused one costs nothing more, then waits for its slot (``Ticket.wait``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from ownchat.errors import ResourceExhaustedError
from ownchat_serving.metrics import QUEUE_DEPTH, REPLIES_IN_FLIGHT

# Retry advice stays within these bounds whatever the recent replies took.
MIN_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 60.0
# Before any reply has finished, a reply is assumed to take this long.
ASSUMED_REPLY_SECONDS = 2.0
# Weight of the latest reply in the running mean of reply durations.
_SMOOTHING = 0.2


class Ticket:
    """One request's place: running, or waiting for a slot. Released exactly once."""

    def __init__(self, admission: Admission, slot: asyncio.Future[None] | None) -> None:
        self._admission = admission
        # None: the slot was free at once; else resolved when a slot is handed over.
        self._slot = slot
        self._granted = time.monotonic() if slot is None else None
        self._released = False

    @property
    def running(self) -> bool:
        """Whether the request holds a slot."""
        return self._granted is not None

    async def wait(self, timeout: float | None = None) -> None:
        """Waits for a slot; raises TimeoutError after ``timeout`` seconds.

        Raises what ``Admission.fail_waiting`` was given when the engine goes
        away meanwhile.
        """
        if self._granted is not None:
            return
        assert self._slot is not None
        # The future is shielded: a timeout must not cancel a slot already handed over.
        await asyncio.wait_for(asyncio.shield(self._slot), timeout)
        self._granted = time.monotonic()

    def release(self) -> None:
        """Gives the slot (or the place in the queue) back; idempotent."""
        if self._released:
            return
        self._released = True
        slot = self._slot
        if self._granted is not None:
            self._admission._free(time.monotonic() - self._granted)
        elif slot is not None and slot.done() and not slot.cancelled() and not slot.exception():
            # Handed a slot it never took up (cancelled or timed out meanwhile): pass it on.
            self._admission._free(None)
        elif slot is not None and not slot.done():
            self._admission._leave_queue(slot)


class Admission:
    """The bounded admission queue of one engine."""

    def __init__(self, max_running: int, max_waiting: int) -> None:
        if max_running < 1 or max_waiting < 0:
            raise ValueError("max_running must be at least 1 and max_waiting at least 0")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._mean_seconds = ASSUMED_REPLY_SECONDS

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._queue)

    def retry_after(self) -> float:
        """Advice for a refused request: about the time the queue ahead takes to clear."""
        ahead = (self.waiting + 1) / self.max_running
        return min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, self._mean_seconds * ahead))

    def reserve(self) -> Ticket:
        """A slot now, a place in the queue, or RESOURCE_EXHAUSTED when both are full."""
        if self.running < self.max_running and not self._queue:
            self.running += 1
            REPLIES_IN_FLIGHT.inc()
            return Ticket(self, None)
        if len(self._queue) >= self.max_waiting:
            retry = self.retry_after()
            raise ResourceExhaustedError(
                f"the engine is at capacity: {self.running} replies running and "
                f"{len(self._queue)} waiting (the most allowed); retry in {retry:.1f} s",
                retry_after_seconds=retry,
            )
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(slot)
        QUEUE_DEPTH.inc()
        return Ticket(self, slot)

    def fail_waiting(self, error: BaseException) -> None:
        """Ends every waiting request with ``error`` (its engine went away)."""
        while self._queue:
            slot = self._queue.popleft()
            QUEUE_DEPTH.dec()
            slot.set_exception(error)
            # Retrieved here so an abandoned waiter does not log "never retrieved".
            slot.exception()

    def _free(self, held_seconds: float | None) -> None:
        if held_seconds is not None:
            self._mean_seconds += _SMOOTHING * (held_seconds - self._mean_seconds)
        while self._queue:
            slot = self._queue.popleft()
            QUEUE_DEPTH.dec()
            if not slot.done():
                slot.set_result(None)  # the slot moves to the waiter: running is unchanged
                return
        self.running -= 1
        REPLIES_IN_FLIGHT.dec()

    def _leave_queue(self, slot: asyncio.Future[None]) -> None:
        self._queue.remove(slot)
        QUEUE_DEPTH.dec()
        slot.cancel()

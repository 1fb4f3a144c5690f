"""The bounded admission queue: slots, order, refusals with retry advice, and give-ups."""

from __future__ import annotations

import asyncio

import pytest

from ownchat.errors import ResourceExhaustedError, UnavailableError
from ownchat_serving.admission import MAX_RETRY_SECONDS, MIN_RETRY_SECONDS, Admission
from ownchat_serving.metrics import QUEUE_DEPTH, REPLIES_IN_FLIGHT


def gauge(metric: object) -> float:
    value: float = metric._value.get()  # type: ignore[attr-defined]
    return value


def test_slots_then_queue_then_refusal() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=2, max_waiting=2)
        in_flight, queued = gauge(REPLIES_IN_FLIGHT), gauge(QUEUE_DEPTH)
        first, second = admission.reserve(), admission.reserve()
        assert first.running and second.running
        third, fourth = admission.reserve(), admission.reserve()
        assert not third.running and admission.waiting == 2
        assert gauge(REPLIES_IN_FLIGHT) - in_flight == 2 and gauge(QUEUE_DEPTH) - queued == 2
        with pytest.raises(ResourceExhaustedError) as refused:
            admission.reserve()
        assert "2 replies running and 2 waiting" in refused.value.message
        assert MIN_RETRY_SECONDS <= refused.value.retry_after_seconds <= MAX_RETRY_SECONDS
        # The status carries a google.rpc.RetryInfo with that delay.
        (detail,) = refused.value.to_status().details
        assert detail.type_url.endswith("google.rpc.RetryInfo")

        # A freed slot goes to the oldest waiter; the queue shrinks.
        first.release()
        await asyncio.wait_for(third.wait(), 1)
        assert third.running and admission.running == 2 and admission.waiting == 1
        # A newcomer does not overtake the waiter even when a slot frees up.
        second.release()
        fifth = admission.reserve()
        assert not fifth.running
        await asyncio.wait_for(fourth.wait(), 1)
        for ticket in (third, fourth):
            ticket.release()
        await asyncio.wait_for(fifth.wait(), 1)
        fifth.release()
        fifth.release()  # idempotent
        assert (admission.running, admission.waiting) == (0, 0)
        assert gauge(REPLIES_IN_FLIGHT) == in_flight and gauge(QUEUE_DEPTH) == queued

    asyncio.run(scenario())


def test_a_waiter_that_gives_up_leaves_the_queue_or_passes_its_slot_on() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=1, max_waiting=3)
        holder = admission.reserve()
        timed_out, cancelled, patient = (admission.reserve() for _ in range(3))
        with pytest.raises(TimeoutError):
            await timed_out.wait(0.01)
        timed_out.release()
        assert admission.waiting == 2

        waiting = asyncio.create_task(cancelled.wait())
        await asyncio.sleep(0)
        # The slot is handed over and the waiter is cancelled before it runs again.
        holder.release()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        cancelled.release()
        await asyncio.wait_for(patient.wait(), 1)
        assert patient.running and admission.running == 1 and admission.waiting == 0
        patient.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_waiters_fail_when_their_engine_goes_away() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=1, max_waiting=2)
        holder = admission.reserve()
        waiter = admission.reserve()
        admission.fail_waiting(UnavailableError("restarting"))
        with pytest.raises(UnavailableError):
            await waiter.wait()
        waiter.release()
        holder.release()
        assert (admission.running, admission.waiting) == (0, 0)

    asyncio.run(scenario())


def test_retry_advice_follows_how_long_replies_take() -> None:
    async def scenario() -> tuple[float, float]:
        admission = Admission(max_running=1, max_waiting=0)
        quick = admission.retry_after()
        for _ in range(30):
            ticket = admission.reserve()
            ticket._granted -= 20.0  # type: ignore[operator]  # as if it ran for 20 s
            ticket.release()
        return quick, admission.retry_after()

    quick, slow = asyncio.run(scenario())
    assert quick < slow <= MAX_RETRY_SECONDS
    assert slow > 10


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        Admission(0, 1)

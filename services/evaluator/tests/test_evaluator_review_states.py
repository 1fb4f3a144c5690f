"""The review queue's state machine under random sequences of enqueues, leases,
releases, submissions (good and bad), clock jumps and store reopenings,
against a model of what each call must do. After every step: no acknowledged
review is lost or doubled, no item has more reviews than it wants, no reviewer
reviews an item twice, and no finished item holds a live lease. On SQLite each
example gets a fresh file; on PostgreSQL, where a database per example would
cost more than the example, fewer examples share one database, emptied before
each."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ownchat.errors import FailedPreconditionError, InvalidArgumentError
from ownchat_evaluator.review.core import ReviewQueue
from ownchat_evaluator.review.model import NewItem, ReviewInput, ReviewKind, Turn
from ownchat_evaluator.review.store import ReviewStore

LEASE_SECONDS = 60.0
REVIEWERS = ("ann", "bob", "cy")
MAX_ITEMS = 3
KINDS = (ReviewKind.RATING, ReviewKind.PAIRWISE, ReviewKind.CORRECTION)


@dataclass
class ModelItem:
    """What the model knows of one item."""

    id: str
    seq: int
    kind: ReviewKind
    priority: int
    wanted: int
    done: int = 0
    number: int = 0


def new_item(kind: ReviewKind, number: int, priority: int, wanted: int) -> NewItem:
    pair = kind is ReviewKind.PAIRWISE
    return NewItem(
        kind=kind,
        context=(Turn("user", f"question {number}"),),
        reply_a=f"answer {number}",
        reply_b=f"other answer {number}" if pair else "",
        model_id_a="model-x" if pair else "",
        model_id_b="model-y" if pair else "",
        source=f"test:{number}",
        priority=priority,
        reviews_wanted=wanted,
    )


def good_review(kind: ReviewKind, item_id: str, reviewer: str) -> ReviewInput:
    if kind is ReviewKind.RATING:
        return ReviewInput(item_id, reviewer, rating=3, tags=("ok",))
    if kind is ReviewKind.PAIRWISE:
        return ReviewInput(item_id, reviewer, preferred="a")
    return ReviewInput(item_id, reviewer, correction="a better answer")


def bad_review(kind: ReviewKind, item_id: str, reviewer: str) -> ReviewInput:
    if kind is ReviewKind.RATING:
        return ReviewInput(item_id, reviewer, rating=9)
    if kind is ReviewKind.PAIRWISE:
        return ReviewInput(item_id, reviewer, preferred="left")
    return ReviewInput(item_id, reviewer, correction="")


class QueueMachine(RuleBasedStateMachine):
    """Drives a real queue on a real, empty store beside an in-memory model."""

    items = Bundle("items")

    def __init__(self, location: Path | str, cleanup: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.location = location
        self.cleanup = cleanup
        self.now = 1_000_000.0
        self.store = ReviewStore(location)
        self.queue = self._queue()
        self.model: dict[str, ModelItem] = {}
        self.by_number: dict[int, str] = {}
        # (item, reviewer) -> expire time, for every lease row the store keeps.
        self.leases: dict[tuple[str, str], float] = {}
        self.skips: set[tuple[str, str]] = set()
        self.reviews: dict[tuple[str, str], str] = {}
        self.turn = 0

    def _queue(self) -> ReviewQueue:
        return ReviewQueue(
            self.store, lease_seconds=LEASE_SECONDS, reviews_per_item=1, clock=lambda: self.now
        )

    def teardown(self) -> None:
        self.store.close()
        self.cleanup()

    def _live(self, item_id: str, reviewer: str) -> bool:
        expire = self.leases.get((item_id, reviewer))
        return expire is not None and expire > self.now

    def _others_live(self, item_id: str, reviewer: str) -> int:
        return sum(
            1
            for (leased_item, holder), expire in self.leases.items()
            if leased_item == item_id and holder != reviewer and expire > self.now
        )

    @initialize(
        target=items,
        kind=st.sampled_from(KINDS),
        priority=st.sampled_from([0, 0, 5]),
        wanted=st.integers(1, 3),
    )
    def first_item(self, kind: ReviewKind, priority: int, wanted: int) -> str:
        return self._add(kind, priority, wanted)

    # A few items keep reviewers meeting on the same ones: leases that overlap,
    # expire and get taken over are where the queue can go wrong.
    @precondition(lambda self: len(self.model) < MAX_ITEMS)
    @rule(
        target=items,
        kind=st.sampled_from(KINDS),
        priority=st.sampled_from([0, 0, 5]),
        wanted=st.integers(1, 3),
    )
    def enqueue(self, kind: ReviewKind, priority: int, wanted: int) -> str:
        return self._add(kind, priority, wanted)

    def _add(self, kind: ReviewKind, priority: int, wanted: int) -> str:
        number = len(self.by_number)
        (item_id,) = self.queue.enqueue([new_item(kind, number, priority, wanted)])
        assert item_id not in self.model
        self.model[item_id] = ModelItem(item_id, number, kind, priority, wanted, number=number)
        self.by_number[number] = item_id
        return item_id

    @rule(item_id=items, priority=st.sampled_from([0, 5, 9]))
    def enqueue_again(self, item_id: str, priority: int) -> None:
        item = self.model[item_id]
        again = self.queue.enqueue([new_item(item.kind, item.number, priority, item.wanted)])
        assert again == [item_id]
        item.priority = max(item.priority, priority)

    def _expect_next(self, reviewer: str, kind: ReviewKind | None) -> None:
        def fits(item: ModelItem) -> bool:
            return kind is None or item.kind is kind

        def order(item: ModelItem) -> tuple[int, int]:
            return (-item.priority, item.seq)

        held = [i for i in self.model.values() if fits(i) and self._live(i.id, reviewer)]
        offerable = [
            i
            for i in self.model.values()
            if fits(i)
            and i.done < i.wanted
            and (i.id, reviewer) not in self.reviews
            and (i.id, reviewer) not in self.skips
            and i.done + self._others_live(i.id, reviewer) < i.wanted
        ]
        leased = self.queue.next_item(reviewer, kind)
        if held:
            expected = min(held, key=order)
            assert leased is not None and leased.item.id == expected.id
            assert leased.expire_time == self.leases[(expected.id, reviewer)]
        elif offerable:
            expected = min(offerable, key=order)
            assert leased is not None and leased.item.id == expected.id
            self.leases[(expected.id, reviewer)] = self.now + LEASE_SECONDS
        else:
            assert leased is None

    # Asking for work is what reviewers do most: two rules give it more steps.
    # This one takes reviewers in turn, as generated draws favour the first,
    # and lets some time pass, so that even a run of nothing but this rule
    # sees leases expire and pass from one reviewer to another.
    @rule()
    def next_item(self) -> None:
        self.turn += 1
        self.now += 35.0
        self._expect_next(REVIEWERS[self.turn % len(REVIEWERS)], None)

    @rule(reviewer=st.sampled_from(REVIEWERS), kind=st.sampled_from(KINDS))
    def next_item_of_kind(self, reviewer: str, kind: ReviewKind) -> None:
        self._expect_next(reviewer, kind)

    def _target(self, data: st.DataObject) -> tuple[str, str]:
        """Mostly a lease row the model knows of (live or expired), else any pair.

        Drawn in enqueue order, never by id: ids are random, and the same draws
        must replay the same steps.
        """
        rows = sorted(self.leases, key=lambda key: (self.model[key[0]].seq, key[1]))
        if rows and not data.draw(st.sampled_from([False, False, False, True])):
            pair: tuple[str, str] = data.draw(st.sampled_from(rows))
            return pair
        item_id = data.draw(st.sampled_from(list(self.model)))
        return item_id, data.draw(st.sampled_from(REVIEWERS))

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        item_id, reviewer = self._target(data)
        if (item_id, reviewer) in self.leases:
            self.queue.release(item_id, reviewer)
            del self.leases[(item_id, reviewer)]
            self.skips.add((item_id, reviewer))
        else:
            with pytest.raises(FailedPreconditionError):
                self.queue.release(item_id, reviewer)

    @rule(data=st.data(), valid=st.sampled_from([True, True, True, False]))
    def submit(self, data: st.DataObject, valid: bool) -> None:
        item_id, reviewer = self._target(data)
        item = self.model[item_id]
        if not valid:
            with pytest.raises(InvalidArgumentError):
                self.queue.submit(bad_review(item.kind, item_id, reviewer))
            return
        review = good_review(item.kind, item_id, reviewer)
        key = (item_id, reviewer)
        if key in self.reviews:
            expected_refusal = "ALREADY_REVIEWED"
        elif key not in self.leases:
            expected_refusal = "NOT_LEASED"
        elif not self._live(item_id, reviewer) and (
            item.done + self._others_live(item_id, reviewer) >= item.wanted
        ):
            expected_refusal = "LEASE_EXPIRED"
        else:
            stored = self.queue.submit(review)
            self.reviews[key] = stored.id
            item.done += 1
            del self.leases[key]
            if item.done >= item.wanted:
                self.leases = {k: v for k, v in self.leases.items() if k[0] != item_id}
            return
        with pytest.raises(FailedPreconditionError) as caught:
            self.queue.submit(review)
        assert caught.value.violations[0].type == expected_refusal

    @rule(
        seconds=st.sampled_from([30.0, 59.0, 61.0]),
        restart=st.sampled_from([False, False, True]),
    )
    def time_passes(self, seconds: float, restart: bool) -> None:
        """The clock moves on; sometimes the store is closed and opened again."""
        self.now += seconds
        if restart:
            self.store.close()
            self.store = ReviewStore(self.location)
            self.queue = self._queue()

    @invariant()
    def no_review_lost_or_doubled(self) -> None:
        stored = self.queue.list_reviews(1000, 0)
        assert {(r.item_id, r.reviewer): r.id for r in stored} == self.reviews
        assert len(stored) == len(self.reviews)

    @invariant()
    def reviews_never_exceed_the_wanted_count(self) -> None:
        for item in self.model.values():
            stored = self.queue.get_item(item.id)
            assert stored.reviews_done == item.done <= stored.reviews_wanted

    @invariant()
    def leases_match_and_finished_items_hold_none(self) -> None:
        live = set(self.store.live_leases(self.now))
        assert live == {k for k, expire in self.leases.items() if expire > self.now}
        for item_id, _ in live:
            item = self.model[item_id]
            assert item.done < item.wanted
            held = sum(1 for leased_item, _ in live if leased_item == item_id)
            assert item.done + held <= item.wanted


SETTINGS = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Each PostgreSQL example costs several times a SQLite one (round trips, and a
# migration check on every reopening); these still cover every rule many times.
POSTGRESQL_EXAMPLES = 60
# The queue's tables, children first.
TABLES = ("review_exports", "reviews", "review_skips", "review_leases", "review_items")


def test_evaluator_review_queue_state_machine(store_location: Path | str) -> None:
    if isinstance(store_location, Path):
        # Memory-backed when the machine has it: this test is about the state
        # machine, not the disk, and runs many short examples.
        shm = Path("/dev/shm")
        # Migrated once; each example starts from a copy of the empty file.
        template = Path(
            tempfile.mkdtemp(prefix="review-states-", dir=shm if shm.is_dir() else None)
        )
        ReviewStore(template / "reviews.db").close()

        def on_sqlite() -> QueueMachine:
            directory = Path(tempfile.mkdtemp(prefix="review-states-", dir=template.parent))
            shutil.copyfile(template / "reviews.db", directory / "reviews.db")
            return QueueMachine(
                directory / "reviews.db", lambda: shutil.rmtree(directory, ignore_errors=True)
            )

        try:
            # Any factory of machines will do; the stubs name only the class.
            run_state_machine_as_test(on_sqlite, settings=SETTINGS)  # type: ignore[arg-type]
        finally:
            shutil.rmtree(template, ignore_errors=True)
        return
    url = store_location
    ReviewStore(url).close()  # creates the tables once
    with psycopg.connect(url, autocommit=True) as tables:

        def on_postgresql() -> QueueMachine:
            tables.execute(f"TRUNCATE {', '.join(TABLES)}")
            return QueueMachine(url)

        run_state_machine_as_test(
            on_postgresql,  # type: ignore[arg-type]
            settings=settings(SETTINGS, max_examples=POSTGRESQL_EXAMPLES),
        )

"""The review queue's core against a real store, a SQLite file and a PostgreSQL
database: priorities, leases and their expiry, several reviewers per item,
blind pairwise sides, bad input, win rates, agreement, and state that survives
reopening the store."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from ownchat.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from ownchat.testing import ManualClock
from ownchat_evaluator.review.core import ReviewQueue
from ownchat_evaluator.review.model import NewItem, ReviewInput, ReviewKind, Turn
from ownchat_evaluator.review.store import ReviewStore

CONTEXT = (Turn("system", "Be brief."), Turn("user", "How do I reset my password?"))


def rating(reply: str = "Use the reset link.", **fields: object) -> NewItem:
    values: dict[str, object] = {
        "kind": ReviewKind.RATING,
        "context": CONTEXT,
        "reply_a": reply,
        "source": "gateway:resp_1",
        **fields,
    }
    return NewItem(**values)  # type: ignore[arg-type]


def pairwise(question: str = "How do I reset my password?", **fields: object) -> NewItem:
    values: dict[str, object] = {
        "kind": ReviewKind.PAIRWISE,
        "context": (Turn("user", question),),
        "reply_a": "reply of model-x",
        "reply_b": "reply of model-y",
        "model_id_a": "model-x",
        "model_id_b": "model-y",
        "source": "eval_123",
        **fields,
    }
    return NewItem(**values)  # type: ignore[arg-type]


@pytest.fixture
def queue(store: ReviewStore, clock: ManualClock) -> ReviewQueue:
    return ReviewQueue(store, lease_seconds=60, clock=clock, rng=random.Random(7))


def test_higher_priority_first_then_first_in_first_out(queue: ReviewQueue) -> None:
    first, second = queue.enqueue([rating("one"), rating("two")])
    (urgent,) = queue.enqueue([rating("thumbs down", priority=10)])
    order = []
    for reviewer in ("ann", "bob", "cy"):
        leased = queue.next_item(reviewer)
        assert leased is not None
        order.append(leased.item.id)
    assert order == [urgent, first, second]
    assert queue.next_item("dee") is None


def test_an_identical_enqueue_returns_the_same_item(queue: ReviewQueue) -> None:
    (first,) = queue.enqueue([rating()])
    (again,) = queue.enqueue([rating(priority=5)])
    assert again == first
    assert queue.get_item(first).priority == 5


def test_bad_items_are_refused_together_and_nothing_is_enqueued(queue: ReviewQueue) -> None:
    bad = [
        rating(),
        pairwise(model_id_b=""),
        NewItem(ReviewKind.CORRECTION, (Turn("assistant", "hi"),), "x", source="s"),
        rating(reviews_wanted=11, source=""),
    ]
    with pytest.raises(InvalidArgumentError) as caught:
        queue.enqueue(bad)
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "items[1].model_id_b",
        "items[2].context",
        "items[3].reviews_wanted",
        "items[3].source",
    }
    assert queue.next_item("ann") is None


def test_asking_again_returns_the_held_lease(queue: ReviewQueue, clock: ManualClock) -> None:
    queue.enqueue([rating("one"), rating("two")])
    held = queue.next_item("ann")
    clock.now += 30
    again = queue.next_item("ann")
    assert held is not None and again is not None
    assert again.item.id == held.item.id
    assert again.expire_time == held.expire_time


def test_an_expired_lease_returns_the_item(queue: ReviewQueue, clock: ManualClock) -> None:
    (item_id,) = queue.enqueue([rating()])
    assert queue.next_item("ann") is not None
    assert queue.next_item("bob") is None
    clock.now += 61
    taken = queue.next_item("bob")
    assert taken is not None and taken.item.id == item_id
    # Ann's place went to Bob: her late review is refused, his is taken.
    with pytest.raises(FailedPreconditionError) as caught:
        queue.submit(ReviewInput(item_id, "ann", rating=4))
    assert caught.value.violations[0].type == "LEASE_EXPIRED"
    queue.submit(ReviewInput(item_id, "bob", rating=4))
    assert queue.next_item("ann") is None


def test_a_late_review_is_kept_when_nobody_took_its_place(
    queue: ReviewQueue, clock: ManualClock
) -> None:
    (item_id,) = queue.enqueue([rating()])
    assert queue.next_item("ann") is not None
    clock.now += 600
    review = queue.submit(ReviewInput(item_id, "ann", rating=2, tags=("rude",)))
    assert review.rating == 2 and review.tags == ("rude",)
    assert queue.get_item(item_id).done


def test_several_reviewers_share_an_item_up_to_the_reviews_wanted(queue: ReviewQueue) -> None:
    (item_id,) = queue.enqueue([rating(reviews_wanted=2)])
    first, second = queue.next_item("ann"), queue.next_item("bob")
    assert first is not None and second is not None
    assert first.item.id == second.item.id == item_id
    assert queue.next_item("cy") is None
    queue.submit(ReviewInput(item_id, "ann", rating=5))
    assert queue.next_item("cy") is None
    queue.submit(ReviewInput(item_id, "bob", rating=4))
    assert queue.get_item(item_id).done
    assert [r.reviewer for r in queue.list_reviews(10, 0, item_id=item_id)] == ["ann", "bob"]


def test_the_default_overlap_comes_from_the_queue(store: ReviewStore, clock: ManualClock) -> None:
    queue = ReviewQueue(store, reviews_per_item=3, clock=clock)
    (item_id,) = queue.enqueue([rating()])
    assert queue.get_item(item_id).reviews_wanted == 3


def test_bad_reviews_are_refused_with_clear_errors(queue: ReviewQueue) -> None:
    rate_id, pair_id, fix_id = queue.enqueue(
        [rating(), pairwise(), NewItem(ReviewKind.CORRECTION, CONTEXT, "meh", source="s")]
    )
    for kind in (ReviewKind.RATING, ReviewKind.PAIRWISE, ReviewKind.CORRECTION):
        assert queue.next_item("ann", kind) is not None

    def violations(review: ReviewInput) -> set[str]:
        with pytest.raises(InvalidArgumentError) as caught:
            queue.submit(review)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        return {v.field for v in caught.value.violations}

    assert violations(ReviewInput(rate_id, "ann", rating=6)) == {"rating"}
    assert violations(ReviewInput(rate_id, "ann", rating=0)) == {"rating"}
    assert violations(ReviewInput(rate_id, "ann", rating=3, tags=("",))) == {"tags[0]"}
    assert violations(ReviewInput(pair_id, "ann", preferred="c")) == {"preferred"}
    assert violations(ReviewInput(pair_id, "ann", preferred="a", rating=3)) == {"rating"}
    assert violations(ReviewInput(fix_id, "ann", correction="  ")) == {"correction"}
    assert violations(ReviewInput(fix_id, "", correction="x")) == {"reviewer"}
    with pytest.raises(NotFoundError):
        queue.submit(ReviewInput("rvi_missing", "ann", rating=3))
    # Nothing above changed the queue: every lease still stands.
    review = queue.submit(ReviewInput(rate_id, "ann", rating=3))
    with pytest.raises(FailedPreconditionError) as caught:
        queue.submit(ReviewInput(rate_id, "ann", rating=3))
    assert caught.value.violations[0].type == "ALREADY_REVIEWED"
    assert review.id in caught.value.message
    with pytest.raises(FailedPreconditionError) as caught:
        queue.submit(ReviewInput(pair_id, "bob", preferred="a"))
    assert caught.value.violations[0].type == "NOT_LEASED"
    assert "bob" in caught.value.message and pair_id in caught.value.message
    assert len(queue.list_reviews(10, 0)) == 1


def test_a_released_item_goes_to_others_only(queue: ReviewQueue) -> None:
    first, second = queue.enqueue([rating("one"), rating("two")])
    leased = queue.next_item("ann")
    assert leased is not None and leased.item.id == first
    queue.release(first, "ann")
    again = queue.next_item("ann")
    assert again is not None and again.item.id == second
    other = queue.next_item("bob")
    assert other is not None and other.item.id == first
    with pytest.raises(FailedPreconditionError):
        queue.release(first, "ann")
    with pytest.raises(FailedPreconditionError):
        queue.submit(ReviewInput(first, "ann", rating=3))


def test_pairwise_sides_are_shuffled_and_the_choice_names_the_model(
    queue: ReviewQueue,
) -> None:
    (item_id,) = queue.enqueue([pairwise(reviews_wanted=10)])
    orders = set()
    for index in range(10):
        reviewer = f"r{index}"
        leased = queue.next_item(reviewer)
        assert leased is not None
        shown_a, shown_b = leased.shown_replies
        orders.add((shown_a, shown_b))
        # Every reviewer picks model-x's reply, wherever it is shown.
        side = "a" if shown_a == "reply of model-x" else "b"
        review = queue.submit(ReviewInput(item_id, reviewer, preferred=side))
        assert review.preferred_model_id == "model-x"
    assert len(orders) == 2
    assert queue.win_rate("model-x", "model-y") == (1.0, 10)
    assert queue.win_rate("model-y", "model-x") == (0.0, 10)


def test_win_rate_counts_ties_half(queue: ReviewQueue) -> None:
    ids = queue.enqueue([pairwise(f"question {i}") for i in range(4)])
    answers = ["x", "x", "y", "tie"]
    for item_id, answer in zip(ids, answers, strict=True):
        leased = queue.next_item("ann")
        assert leased is not None and leased.item.id == item_id
        shown_a, _ = leased.shown_replies
        if answer == "tie":
            side = "tie"
        else:
            side = "a" if shown_a == f"reply of model-{answer}" else "b"
        queue.submit(ReviewInput(item_id, "ann", preferred=side))
    rate, n = queue.win_rate("model-x", "model-y")
    assert (rate, n) == (2.5 / 4, 4)
    tally = queue.tally("model-x", "model-y")
    assert (tally.wins, tally.ties, tally.losses) == (2, 1, 1)
    assert queue.win_rate("model-x", "model-z").n == 0
    with pytest.raises(InvalidArgumentError):
        queue.win_rate("model-x", "model-x")


def test_agreement_of_ratings_and_preferences(queue: ReviewQueue) -> None:
    ratings = {"ann": [1, 2, 3, 4, 5], "bob": [1, 2, 3, 4, 5], "cy": [5, 4, 3, 2, 1]}
    rating_ids = queue.enqueue([rating(f"reply {i}", reviews_wanted=3) for i in range(5)])
    for reviewer, values in ratings.items():
        for item_id, value in zip(rating_ids, values, strict=True):
            leased = queue.next_item(reviewer, ReviewKind.RATING)
            assert leased is not None and leased.item.id == item_id
            queue.submit(ReviewInput(item_id, reviewer, rating=value))
    # Two reviewers agree on one pair, disagree on the other.
    pair_ids = queue.enqueue([pairwise(f"q{i}", reviews_wanted=2) for i in range(2)])
    for reviewer, picks in {"ann": ["x", "y"], "bob": ["x", "x"]}.items():
        for item_id, pick in zip(pair_ids, picks, strict=True):
            leased = queue.next_item(reviewer, ReviewKind.PAIRWISE)
            assert leased is not None
            side = "a" if leased.shown_replies[0] == f"reply of model-{pick}" else "b"
            queue.submit(ReviewInput(item_id, reviewer, preferred=side))

    stats = queue.stats()
    by_kind = {a.kind: a for a in stats.agreement}
    ratings_agreement = by_kind[ReviewKind.RATING]
    assert ratings_agreement.items == 5
    kappas = {(p.reviewer_a, p.reviewer_b): p.kappa for p in ratings_agreement.pairs}
    assert kappas[("ann", "bob")] == pytest.approx(1.0)
    assert kappas[("ann", "cy")] == pytest.approx(-1.0)
    assert ratings_agreement.alpha is not None and ratings_agreement.alpha < 0.5
    pairs_agreement = by_kind[ReviewKind.PAIRWISE]
    assert pairs_agreement.items == 2
    assert [p.items for p in pairs_agreement.pairs] == [2]
    assert dict(stats.reviewers) == {"ann": 7, "bob": 7, "cy": 5}
    counts = {c.kind: c for c in stats.counts}
    assert counts[ReviewKind.RATING].done_items == 5
    assert counts[ReviewKind.PAIRWISE].reviews == 4


def test_agreement_is_unset_when_undefined(queue: ReviewQueue) -> None:
    ids = queue.enqueue([rating(f"r{i}", reviews_wanted=2) for i in range(3)])
    for reviewer in ("ann", "bob"):
        for item_id in ids:
            assert queue.next_item(reviewer) is not None
            queue.submit(ReviewInput(item_id, reviewer, rating=4))
    (ratings_agreement, _) = queue.stats().agreement
    assert ratings_agreement.items == 3
    assert ratings_agreement.pairs[0].kappa is None


def test_counts_open_leased_and_done(queue: ReviewQueue) -> None:
    ids = queue.enqueue([rating("one"), rating("two"), rating("three")])
    queue.next_item("ann")
    queue.next_item("bob")
    queue.submit(ReviewInput(ids[1], "bob", rating=3))
    (counts,) = queue.stats().counts
    assert (counts.open_items, counts.leased_items, counts.done_items) == (1, 1, 1)


def test_the_queue_survives_reopening(store_location: Path | str, clock: ManualClock) -> None:
    first = ReviewStore(store_location)
    queue = ReviewQueue(first, lease_seconds=60, clock=clock)
    done_id, leased_id = queue.enqueue([rating("one"), rating("two")])
    queue.next_item("ann")
    review = queue.submit(ReviewInput(done_id, "ann", rating=5))
    held = queue.next_item("ann")
    assert held is not None and held.item.id == leased_id
    first.close()

    reopened = ReviewStore(store_location)
    queue = ReviewQueue(reopened, lease_seconds=60, clock=clock)
    assert [r.id for r in queue.list_reviews(10, 0)] == [review.id]
    again = queue.next_item("ann")
    assert again is not None and again.item.id == leased_id
    assert queue.next_item("bob") is None
    reopened.close()

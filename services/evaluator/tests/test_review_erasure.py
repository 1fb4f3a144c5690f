"""Right to erasure in the review queue, on a SQLite file and a PostgreSQL database:
items whose texts hold a value go with their reviews, leases, skips and export
marks; other reviews holding one go and their items want them again; the rest
of the queue stays; the value is left in no row of any table (nor, on SQLite,
in the file's bytes); bad requests delete nothing; and the RPC over gRPC."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from ownchat.common.v1 import common_pb2
from ownchat.errors import InvalidArgumentError, NotFoundError, describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.postgres import store_file_bytes
from ownchat.testing import ManualClock
from ownchat_evaluator.review import store as review_store
from ownchat_evaluator.review.core import ReviewQueue
from ownchat_evaluator.review.model import (
    ErasedReviewData,
    NewItem,
    ReviewInput,
    ReviewKind,
    Turn,
)
from ownchat_evaluator.review.store import ExportedRecord, ReviewStore

SECRET = "Zanzibar Quillfeather"
CLEAN_CONTEXT = (Turn("system", "Be brief."), Turn("user", "How do I reset my router?"))
TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]


def item(kind: ReviewKind, **fields: object) -> NewItem:
    values: dict[str, object] = {
        "kind": kind,
        "context": CLEAN_CONTEXT,
        "reply_a": "Hold the reset button for ten seconds.",
        "source": "gateway:resp_1",
        **fields,
    }
    return NewItem(**values)  # type: ignore[arg-type]


def every_stored_row(store: ReviewStore) -> str:
    """Every value of every row of every table of the store, read through its database."""
    database = store._db  # the rows themselves, not the store's view of them
    if database.dialect == "sqlite":
        listing = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        listing = (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    tables = [row[0] for row in database.query(listing)]
    assert {"review_items", "review_leases", "review_skips", "reviews", "review_exports"} <= set(
        tables
    )
    return "\n".join(
        str(value)
        for table in tables
        for row in database.query(f'SELECT * FROM "{table}"')
        for value in tuple(row)
    )


@pytest.fixture
def queue(store: ReviewStore, clock: ManualClock) -> ReviewQueue:
    return ReviewQueue(store, lease_seconds=600, clock=clock, rng=random.Random(7))


def lease(queue: ReviewQueue, reviewer: str, kind: ReviewKind | None = None) -> str:
    leased = queue.next_item(reviewer, kind)
    assert leased is not None
    return leased.item.id


def test_erasure_deletes_what_holds_the_value_and_keeps_the_rest(
    queue: ReviewQueue, store: ReviewStore, store_location: Path | str, clock: ManualClock
) -> None:
    in_context, in_reply, clean, clean_correction = queue.enqueue(
        [
            item(
                ReviewKind.RATING,
                context=(Turn("user", f"Hi, I am {SECRET} and my router is broken."),),
                reviews_wanted=2,
                priority=50,
            ),
            item(ReviewKind.CORRECTION, reply_a=f"Sure {SECRET}, restart it.", priority=40),
            item(ReviewKind.RATING, reviews_wanted=2, priority=30),
            item(ReviewKind.CORRECTION, priority=20),
        ]
    )
    assert lease(queue, "ann") == in_context
    erased_review = queue.submit(ReviewInput(in_context, "ann", rating=4, tags=("polite",))).id
    assert lease(queue, "bob") == in_context
    queue.release(in_context, "bob")  # a skip of an item that goes
    assert lease(queue, "bob") == in_reply  # a lease on an item that goes
    assert lease(queue, "cat") == in_context  # another
    assert lease(queue, "ann") == clean
    kept_review = queue.submit(ReviewInput(clean, "ann", rating=5, tags=("clear",))).id
    assert lease(queue, "dan", ReviewKind.CORRECTION) == clean_correction
    # A review of a clean item holding the value in another case.
    correcting = ReviewInput(clean_correction, "dan", correction=f"Call {SECRET.upper()} back.")
    erased_correction = queue.submit(correcting).id
    assert lease(queue, "eve", ReviewKind.RATING) == clean
    other_kept_review = queue.submit(ReviewInput(clean, "eve", rating=3)).id
    store.mark_exported(
        [
            ExportedRecord(1, (erased_review,)),
            ExportedRecord(2, (kept_review,)),
            ExportedRecord(3, (erased_correction,)),
        ],
        "dsv_feedback",
        clock(),
    )
    assert SECRET in every_stored_row(store)
    assert SECRET.encode() in store_file_bytes(store_location)

    erased = queue.erase([SECRET.lower()])

    assert erased == ErasedReviewData((in_context, in_reply), 2)
    for item_id in (in_context, in_reply):
        with pytest.raises(NotFoundError):
            queue.get_item(item_id)
    reviews = queue.list_reviews(100, 0)
    assert [r.id for r in reviews] == [kept_review, other_kept_review]
    assert reviews[0].exported_to == ("dsv_feedback",)
    assert queue.list_reviews(100, 0, item_id=in_context) == []
    assert queue.get_item(clean).reviews_done == 2
    # Its only review erased, the correction item wants one again.
    assert queue.get_item(clean_correction).reviews_done == 0
    stats = queue.stats()
    counts = [(c.kind, c.open_items, c.leased_items, c.done_items, c.reviews) for c in stats.counts]
    assert counts == [(ReviewKind.CORRECTION, 1, 0, 0, 0), (ReviewKind.RATING, 0, 0, 1, 2)]
    assert stats.reviewers == [("ann", 1), ("eve", 1)]
    assert store.live_leases(clock()) == []
    # Bob's lease on the erased item is gone: he is offered what is left.
    assert lease(queue, "bob") == clean_correction
    assert queue.next_item("cat") is None

    rows = every_stored_row(store)
    assert SECRET.casefold() not in rows.casefold()
    for gone in (in_context, in_reply, erased_review, erased_correction):
        assert gone not in rows  # nothing refers to what was deleted
    # Nothing left in the files either: zeroed on SQLite, rewritten on PostgreSQL.
    assert SECRET.lower().encode() not in store_file_bytes(store_location).lower()
    if isinstance(store_location, Path):
        # Zeroed by the store's own choice, not by this SQLite build's default.
        assert store._db.query("PRAGMA secure_delete")[0][0] == 1


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        (SECRET, "zANZIBAR qUILLFEATHER"),
        # Full case folding, not ASCII lowering: "ß" folds to "ss", "É" to "é".
        ("Élodie Brûlé-Straße", "élodie BRÛLÉ-strasse"),
    ],
    ids=["ascii", "unicode"],
)
def test_matching_is_case_insensitive(
    queue: ReviewQueue, store: ReviewStore, stored: str, asked: str
) -> None:
    holding, clean = queue.enqueue(
        [
            item(ReviewKind.PAIRWISE, **{
                "reply_a": "First reply.",
                "reply_b": f"Second reply, for {stored}.",
                "model_id_a": "model-x",
                "model_id_b": "model-y",
            }),
            item(ReviewKind.RATING),
        ]
    )  # fmt: skip
    assert queue.erase([asked]) == ErasedReviewData((holding,), 0)
    assert queue.get_item(clean).id == clean
    assert stored.casefold() not in every_stored_row(store).casefold()


def test_a_reviewer_named_by_a_value_is_erased_too(
    queue: ReviewQueue, store: ReviewStore, clock: ManualClock
) -> None:
    named = f"{SECRET} <zq@example.com>"
    shared, skipped, held = queue.enqueue(
        [
            item(ReviewKind.RATING, reply_a="First reply.", reviews_wanted=2, priority=10),
            item(ReviewKind.RATING, reply_a="Second reply.", priority=5),
            item(ReviewKind.RATING, reply_a="Third reply.", priority=1),
        ]
    )
    assert lease(queue, named) == shared
    queue.submit(ReviewInput(shared, named, rating=2))
    assert lease(queue, named) == skipped
    queue.release(skipped, named)
    assert lease(queue, named) == held
    assert lease(queue, "ann") == shared
    kept = queue.submit(ReviewInput(shared, "ann", rating=4)).id

    assert queue.erase(["zq@example.com"]) == ErasedReviewData((), 1)
    assert [r.id for r in queue.list_reviews(100, 0)] == [kept]
    assert queue.get_item(shared).reviews_done == 1
    assert store.live_leases(clock()) == []
    assert "zq@example.com" not in every_stored_row(store)


def test_nothing_matching_erases_nothing(queue: ReviewQueue, store: ReviewStore) -> None:
    (item_id,) = queue.enqueue([item(ReviewKind.RATING)])
    lease(queue, "ann")
    queue.submit(ReviewInput(item_id, "ann", rating=4))
    before = every_stored_row(store)
    assert queue.erase(["nobody at all"]) == ErasedReviewData((), 0)
    assert every_stored_row(store) == before


@pytest.mark.parametrize("values", [[], ["ab"], [SECRET, " ab "], ["   "]])
def test_bad_values_are_refused_and_nothing_is_deleted(
    queue: ReviewQueue, store: ReviewStore, values: list[str]
) -> None:
    (item_id,) = queue.enqueue([item(ReviewKind.RATING, reply_a=f"Hello {SECRET}.")])
    before = every_stored_row(store)
    with pytest.raises(InvalidArgumentError) as caught:
        queue.erase(values)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in caught.value.violations} == {"values"}
    assert queue.get_item(item_id).reply_a == f"Hello {SECRET}."
    assert every_stored_row(store) == before


def test_a_failure_midway_deletes_nothing(
    queue: ReviewQueue, store: ReviewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    (item_id,) = queue.enqueue([item(ReviewKind.RATING, reply_a=f"Hello {SECRET}.")])
    lease(queue, "ann")
    queue.submit(ReviewInput(item_id, "ann", rating=4))
    before = every_stored_row(store)

    def broken(*_: object) -> None:
        raise RuntimeError("the last step of the erasure failed")

    # The reviews and the item are deleted by then: the transaction must undo that.
    monkeypatch.setattr(review_store, "_forget_reviewers", broken)
    with pytest.raises(RuntimeError):
        queue.erase([SECRET])
    assert every_stored_row(store) == before
    assert queue.get_item(item_id).reviews_done == 1


def rating_item(question: str, reply: str) -> evaluator_pb2.ReviewItem:
    return evaluator_pb2.ReviewItem(
        kind=evaluator_pb2.REVIEW_KIND_RATING,
        context=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=question)],
        reply_a=reply,
        source="gateway:resp_7",
    )


def test_erase_review_data_over_grpc(stub: evaluator_pb2_grpc.EvaluatorServiceStub) -> None:
    items = [
        rating_item(f"I am {SECRET}, help?", "Sure."),
        rating_item("Who wrote this?", f"{SECRET} did."),
        rating_item("How do I reset my router?", "Hold the button."),
    ]
    item_ids = list(
        stub.EnqueueReviewItems(
            evaluator_pb2.EnqueueReviewItemsRequest(items=items), metadata=AUTH
        ).item_ids
    )
    for expected in item_ids:
        leased = stub.NextReviewItem(
            evaluator_pb2.NextReviewItemRequest(reviewer="ann"), metadata=AUTH
        ).item
        assert leased.id == expected
        stub.SubmitReview(
            evaluator_pb2.SubmitReviewRequest(item_id=leased.id, reviewer="ann", rating=4),
            metadata=AUTH,
        )

    response = stub.EraseReviewData(
        evaluator_pb2.EraseReviewDataRequest(values=[SECRET.upper()]), metadata=AUTH
    )
    assert list(response.erased_item_ids) == item_ids[:2]
    assert response.erased_reviews == 2
    reviews = stub.ListReviews(evaluator_pb2.ListReviewsRequest(), metadata=AUTH).reviews
    assert [r.item_id for r in reviews] == item_ids[2:]
    again = stub.EraseReviewData(
        evaluator_pb2.EraseReviewDataRequest(values=[SECRET]), metadata=AUTH
    )
    assert (list(again.erased_item_ids), again.erased_reviews) == ([], 0)

    for values in ([], ["Zq"]):
        with pytest.raises(grpc.RpcError) as caught:
            stub.EraseReviewData(evaluator_pb2.EraseReviewDataRequest(values=values), metadata=AUTH)
        description = describe_rpc_error(caught.value)
        assert description.code == grpc.StatusCode.INVALID_ARGUMENT
        assert {v.field for v in description.violations} == {"values"}
        assert "Zq" not in description.message  # a value is never echoed
    assert len(stub.ListReviews(evaluator_pb2.ListReviewsRequest(), metadata=AUTH).reviews) == 1

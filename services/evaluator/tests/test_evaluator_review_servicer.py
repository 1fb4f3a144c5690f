"""The review queue's RPCs over a real gRPC server on loopback, through the
runtime's interceptor: blind pairwise items, errors as status codes with
their details, release, paging, stats, and an export with no data service."""

from __future__ import annotations

import grpc
import pytest

from ownchat.common.v1 import common_pb2
from ownchat.errors import describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc

TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
USER = common_pb2.ROLE_USER


def failure(call: object, request: object) -> tuple[grpc.StatusCode, str, set[str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=AUTH)  # type: ignore[operator]
    description = describe_rpc_error(caught.value)
    return description.code, description.message, {v.field for v in description.violations}


def pair_item(question: str) -> evaluator_pb2.ReviewItem:
    return evaluator_pb2.ReviewItem(
        kind=evaluator_pb2.REVIEW_KIND_PAIRWISE,
        context=[common_pb2.ChatMessage(role=USER, content=question)],
        reply_a="reply of model-x",
        reply_b="reply of model-y",
        model_id_a="model-x",
        model_id_b="model-y",
        source="eval_abc",
    )


def test_a_pairwise_item_is_shown_blind_and_judged_by_model(
    stub: evaluator_pb2_grpc.EvaluatorServiceStub,
) -> None:
    (item_id,) = stub.EnqueueReviewItems(
        evaluator_pb2.EnqueueReviewItemsRequest(items=[pair_item("Which plan?")]), metadata=AUTH
    ).item_ids
    leased = stub.NextReviewItem(
        evaluator_pb2.NextReviewItemRequest(
            reviewer="ann", kind=evaluator_pb2.REVIEW_KIND_PAIRWISE
        ),
        metadata=AUTH,
    ).item
    assert leased.id == item_id
    assert {leased.reply_a, leased.reply_b} == {"reply of model-x", "reply of model-y"}
    assert leased.model_id_a == leased.model_id_b == leased.source == ""
    assert leased.lease_expire_time.seconds > leased.create_time.seconds
    side = "A" if leased.reply_a == "reply of model-y" else "B"
    review_id = stub.SubmitReview(
        evaluator_pb2.SubmitReviewRequest(item_id=item_id, reviewer="ann", preferred=side),
        metadata=AUTH,
    ).review_id
    (review,) = stub.ListReviews(
        evaluator_pb2.ListReviewsRequest(item_id=item_id), metadata=AUTH
    ).reviews
    assert (review.id, review.preferred_model_id, review.tie) == (review_id, "model-y", False)
    stats = stub.GetReviewStats(
        evaluator_pb2.GetReviewStatsRequest(
            candidate_model_id="model-y", baseline_model_id="model-x"
        ),
        metadata=AUTH,
    )
    assert (stats.win_rate.reviews, stats.win_rate.wins, stats.win_rate.rate) == (1, 1, 1.0)
    (counts,) = stats.counts
    assert (counts.kind, counts.done_items, counts.reviews) == (
        evaluator_pb2.REVIEW_KIND_PAIRWISE,
        1,
        1,
    )
    assert [(r.reviewer, r.reviews) for r in stats.reviewers] == [("ann", 1)]

    code, message, _ = failure(
        stub.SubmitReview,
        evaluator_pb2.SubmitReviewRequest(item_id=item_id, reviewer="ann", preferred="a"),
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert review_id in message and "already reviewed" in message
    assert not stub.NextReviewItem(
        evaluator_pb2.NextReviewItemRequest(reviewer="bob"), metadata=AUTH
    ).HasField("item")


def test_bad_input_gets_clear_status_codes(stub: evaluator_pb2_grpc.EvaluatorServiceStub) -> None:
    bad = evaluator_pb2.ReviewItem(
        kind=evaluator_pb2.REVIEW_KIND_RATING,
        context=[common_pb2.ChatMessage(content="no role")],
        reply_a="ok",
        source="gateway:resp_9",
    )
    code, _, fields = failure(
        stub.EnqueueReviewItems, evaluator_pb2.EnqueueReviewItemsRequest(items=[bad])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == {"items[0].context[0].role", "items[0].context"}

    good = evaluator_pb2.ReviewItem(
        kind=evaluator_pb2.REVIEW_KIND_RATING,
        context=[common_pb2.ChatMessage(role=USER, content="Hello?")],
        reply_a="Hi.",
        source="gateway:resp_9",
    )
    (item_id,) = stub.EnqueueReviewItems(
        evaluator_pb2.EnqueueReviewItemsRequest(items=[good]), metadata=AUTH
    ).item_ids
    code, message, _ = failure(
        stub.SubmitReview,
        evaluator_pb2.SubmitReviewRequest(item_id=item_id, reviewer="ann", rating=3),
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not leased" in message
    stub.NextReviewItem(evaluator_pb2.NextReviewItemRequest(reviewer="ann"), metadata=AUTH)
    code, _, fields = failure(
        stub.SubmitReview,
        evaluator_pb2.SubmitReviewRequest(item_id=item_id, reviewer="ann", rating=7),
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"rating"})
    code, _, fields = failure(
        stub.NextReviewItem, evaluator_pb2.NextReviewItemRequest(reviewer=" ")
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"reviewer"})
    code, _, _ = failure(
        stub.SubmitReview,
        evaluator_pb2.SubmitReviewRequest(item_id="rvi_nope", reviewer="ann", rating=3),
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _, fields = failure(
        stub.GetReviewStats, evaluator_pb2.GetReviewStatsRequest(candidate_model_id="model-x")
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"baseline_model_id"})
    code, _, fields = failure(stub.ExportFeedback, evaluator_pb2.ExportFeedbackRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "dataset_name" in fields
    # After all of that the lease still stands and the review is taken.
    stub.SubmitReview(
        evaluator_pb2.SubmitReviewRequest(item_id=item_id, reviewer="ann", rating=4, tags=["ok"]),
        metadata=AUTH,
    )


def test_release_paging_and_an_export_without_a_data_service(
    stub: evaluator_pb2_grpc.EvaluatorServiceStub,
) -> None:
    items = [
        evaluator_pb2.ReviewItem(
            kind=evaluator_pb2.REVIEW_KIND_CORRECTION,
            context=[common_pb2.ChatMessage(role=USER, content=f"Question {i}?")],
            reply_a=f"Weak answer {i}.",
            source="dataset:dsv_1",
            priority=i,
        )
        for i in range(3)
    ]
    ids = stub.EnqueueReviewItems(
        evaluator_pb2.EnqueueReviewItemsRequest(items=items), metadata=AUTH
    ).item_ids
    first = stub.NextReviewItem(
        evaluator_pb2.NextReviewItemRequest(reviewer="ann"), metadata=AUTH
    ).item
    assert first.id == ids[2]
    assert first.source == "dataset:dsv_1"
    stub.ReleaseReviewItem(
        evaluator_pb2.ReleaseReviewItemRequest(item_id=first.id, reviewer="ann"), metadata=AUTH
    )
    code, _, _ = failure(
        stub.ReleaseReviewItem,
        evaluator_pb2.ReleaseReviewItemRequest(item_id=first.id, reviewer="ann"),
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    for expected in (ids[1], ids[0]):
        leased = stub.NextReviewItem(
            evaluator_pb2.NextReviewItemRequest(reviewer="ann"), metadata=AUTH
        ).item
        assert leased.id == expected
        stub.SubmitReview(
            evaluator_pb2.SubmitReviewRequest(
                item_id=leased.id, reviewer="ann", correction=f"Better answer for {leased.id}."
            ),
            metadata=AUTH,
        )
    page = stub.ListReviews(
        evaluator_pb2.ListReviewsRequest(reviewer="ann", page_size=1), metadata=AUTH
    )
    assert [r.item_id for r in page.reviews] == [ids[1]]
    rest = stub.ListReviews(
        evaluator_pb2.ListReviewsRequest(
            reviewer="ann", page_size=1, page_token=page.next_page_token
        ),
        metadata=AUTH,
    )
    assert [r.item_id for r in rest.reviews] == [ids[0]]
    assert rest.reviews[0].correction.startswith("Better answer")
    # Corrections are waiting, so the export needs the data service, which
    # this server was given none of.
    code, message, _ = failure(
        stub.ExportFeedback, evaluator_pb2.ExportFeedbackRequest(dataset_name="feedback")
    )
    assert code == grpc.StatusCode.UNAVAILABLE and "data service" in message

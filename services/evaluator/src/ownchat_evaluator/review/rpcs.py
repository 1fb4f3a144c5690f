"""The review queue's RPCs, request to response, for ``EvaluatorServicer`` to
delegate to: each translates with :mod:`convert` and calls the queue."""

from __future__ import annotations

from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.paging import next_page_token, page_window
from ownchat_evaluator.review import convert
from ownchat_evaluator.review.core import ReviewQueue


class ReviewRpcs:
    """Protobuf in, the queue's plain types in between, protobuf out."""

    def __init__(self, queue: ReviewQueue) -> None:
        self._queue = queue

    def enqueue_review_items(
        self, request: evaluator_pb2.EnqueueReviewItemsRequest
    ) -> evaluator_pb2.EnqueueReviewItemsResponse:
        ids = self._queue.enqueue([convert.new_item(item) for item in request.items])
        return evaluator_pb2.EnqueueReviewItemsResponse(item_ids=ids)

    def next_review_item(
        self, request: evaluator_pb2.NextReviewItemRequest
    ) -> evaluator_pb2.NextReviewItemResponse:
        leased = self._queue.next_item(request.reviewer, convert.kind_from_proto(request.kind))
        if leased is None:
            return evaluator_pb2.NextReviewItemResponse()
        return evaluator_pb2.NextReviewItemResponse(item=convert.leased_item(leased))

    def submit_review(
        self, request: evaluator_pb2.SubmitReviewRequest
    ) -> evaluator_pb2.SubmitReviewResponse:
        stored = self._queue.submit(convert.review_input(request))
        return evaluator_pb2.SubmitReviewResponse(review_id=stored.id)

    def release_review_item(
        self, request: evaluator_pb2.ReleaseReviewItemRequest
    ) -> evaluator_pb2.ReleaseReviewItemResponse:
        self._queue.release(request.item_id, request.reviewer)
        return evaluator_pb2.ReleaseReviewItemResponse()

    def export_feedback(
        self, request: evaluator_pb2.ExportFeedbackRequest
    ) -> evaluator_pb2.ExportFeedbackResponse:
        return convert.export_response(self._queue.export_feedback(convert.export_request(request)))

    def enqueue_dataset_sample(
        self, request: evaluator_pb2.EnqueueDatasetSampleRequest
    ) -> evaluator_pb2.EnqueueDatasetSampleResponse:
        ids, skipped = self._queue.enqueue_dataset_sample(convert.sample_request(request))
        return evaluator_pb2.EnqueueDatasetSampleResponse(item_ids=ids, skipped=skipped)

    def list_reviews(
        self, request: evaluator_pb2.ListReviewsRequest
    ) -> evaluator_pb2.ListReviewsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        reviews = self._queue.list_reviews(limit, offset, request.item_id, request.reviewer)
        return evaluator_pb2.ListReviewsResponse(
            reviews=[convert.review(r) for r in reviews],
            next_page_token=next_page_token(limit, offset, len(reviews)),
        )

    def get_review_stats(
        self, request: evaluator_pb2.GetReviewStatsRequest
    ) -> evaluator_pb2.GetReviewStatsResponse:
        return convert.stats_response(
            self._queue.stats(request.candidate_model_id, request.baseline_model_id)
        )

    def erase_review_data(
        self, request: evaluator_pb2.EraseReviewDataRequest
    ) -> evaluator_pb2.EraseReviewDataResponse:
        return convert.erasure_response(self._queue.erase(tuple(request.values)))

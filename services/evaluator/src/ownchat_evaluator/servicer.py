"""EvaluatorService over gRPC: protobuf in, plain Python to the core, protobuf out."""

from __future__ import annotations

import grpc

from ownchat.errors import UnavailableError
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.paging import next_page_token, page_window
from ownchat_evaluator.conversions import (
    comparison_to_proto,
    report_to_proto,
    request_from_proto,
    run_to_proto,
    sample_to_proto,
    verdict_to_proto,
)
from ownchat_evaluator.core import EvaluatorCore
from ownchat_evaluator.review.rpcs import ReviewRpcs


class EvaluatorServicer(evaluator_pb2_grpc.EvaluatorServiceServicer):
    """Translates EvaluatorService calls for :class:`EvaluatorCore` (runs,
    comparisons, the promotion gate, reports); review-queue calls go to :class:`ReviewRpcs`.
    """

    def __init__(self, core: EvaluatorCore, reviews: ReviewRpcs | None = None) -> None:
        self._core = core
        self._reviews = reviews

    def CreateEvalRun(
        self, request: evaluator_pb2.CreateEvalRunRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.CreateEvalRunResponse:
        run = self._core.create_run(request_from_proto(request))
        return evaluator_pb2.CreateEvalRunResponse(eval_run=run_to_proto(run))

    def GetEvalRun(
        self, request: evaluator_pb2.GetEvalRunRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.GetEvalRunResponse:
        return evaluator_pb2.GetEvalRunResponse(
            eval_run=run_to_proto(self._core.get_run(request.eval_run_id))
        )

    def ListEvalRuns(
        self, request: evaluator_pb2.ListEvalRunsRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.ListEvalRunsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        runs = self._core.list_runs(limit, offset, request.model_id)
        return evaluator_pb2.ListEvalRunsResponse(
            eval_runs=[run_to_proto(r) for r in runs],
            next_page_token=next_page_token(limit, offset, len(runs)),
        )

    def ListEvalSamples(
        self, request: evaluator_pb2.ListEvalSamplesRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.ListEvalSamplesResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        samples = self._core.list_samples(request.eval_run_id, limit, offset)
        return evaluator_pb2.ListEvalSamplesResponse(
            samples=[sample_to_proto(s) for s in samples],
            next_page_token=next_page_token(limit, offset, len(samples)),
        )

    def CompareModels(
        self, request: evaluator_pb2.CompareModelsRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.CompareModelsResponse:
        comparison = self._core.compare(
            request.baseline_eval_run_id,
            request.candidate_eval_run_id,
            resamples=request.resamples,
            seed=request.seed,
        )
        return comparison_to_proto(comparison)

    def CheckPromotionGate(
        self, request: evaluator_pb2.CheckPromotionGateRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.CheckPromotionGateResponse:
        verdict = self._core.check_gate(
            request.model_id,
            eval_run_id=request.eval_run_id,
            baseline_model_id=request.baseline_model_id,
            baseline_eval_run_id=request.baseline_eval_run_id,
        )
        return verdict_to_proto(verdict)

    def RenderEvalReport(
        self, request: evaluator_pb2.RenderEvalReportRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.RenderEvalReportResponse:
        pair = None
        if request.WhichOneof("subject") == "comparison":
            pair = (
                request.comparison.baseline_eval_run_id,
                request.comparison.candidate_eval_run_id,
            )
        report = self._core.render_report(request.eval_run_id, pair, request.worst_examples)
        return report_to_proto(report)

    # The review queue: each call goes to ReviewRpcs, which translates for the queue.

    def _review_rpcs(self) -> ReviewRpcs:
        if self._reviews is None:
            raise UnavailableError("the review queue is not configured")
        return self._reviews

    def EnqueueReviewItems(
        self, request: evaluator_pb2.EnqueueReviewItemsRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.EnqueueReviewItemsResponse:
        return self._review_rpcs().enqueue_review_items(request)

    def NextReviewItem(
        self, request: evaluator_pb2.NextReviewItemRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.NextReviewItemResponse:
        return self._review_rpcs().next_review_item(request)

    def SubmitReview(
        self, request: evaluator_pb2.SubmitReviewRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.SubmitReviewResponse:
        return self._review_rpcs().submit_review(request)

    def ReleaseReviewItem(
        self, request: evaluator_pb2.ReleaseReviewItemRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.ReleaseReviewItemResponse:
        return self._review_rpcs().release_review_item(request)

    def ExportFeedback(
        self, request: evaluator_pb2.ExportFeedbackRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.ExportFeedbackResponse:
        return self._review_rpcs().export_feedback(request)

    def EnqueueDatasetSample(
        self, request: evaluator_pb2.EnqueueDatasetSampleRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.EnqueueDatasetSampleResponse:
        return self._review_rpcs().enqueue_dataset_sample(request)

    def ListReviews(
        self, request: evaluator_pb2.ListReviewsRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.ListReviewsResponse:
        return self._review_rpcs().list_reviews(request)

    def GetReviewStats(
        self, request: evaluator_pb2.GetReviewStatsRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.GetReviewStatsResponse:
        return self._review_rpcs().get_review_stats(request)

    def EraseReviewData(
        self, request: evaluator_pb2.EraseReviewDataRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.EraseReviewDataResponse:
        return self._review_rpcs().erase_review_data(request)

    def EraseEvalSamples(
        self, request: evaluator_pb2.EraseEvalSamplesRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.EraseEvalSamplesResponse:
        erased = self._core.erase_samples(list(request.values))
        return evaluator_pb2.EraseEvalSamplesResponse(
            eval_run_ids=list(erased.run_ids), erased_samples=erased.samples
        )

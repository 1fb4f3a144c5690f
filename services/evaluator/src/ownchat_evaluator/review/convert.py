"""Conversions between the review queue's protobuf messages and its plain types."""

from __future__ import annotations

from ownchat.common.v1 import common_pb2
from ownchat.data.v1 import data_pb2
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.roles import NAME_BY_ROLE, ROLE_BY_NAME
from ownchat.timestamps import to_timestamp
from ownchat_evaluator.review.agreement import Agreement
from ownchat_evaluator.review.core import (
    DatasetSampleRequest,
    ExportRequest,
    ExportResult,
    PairwiseTally,
    QueueStats,
)
from ownchat_evaluator.review.model import (
    ErasedReviewData,
    LeasedItem,
    NewItem,
    Review,
    ReviewInput,
    ReviewKind,
    Turn,
)

_KINDS = {
    evaluator_pb2.REVIEW_KIND_RATING: ReviewKind.RATING,
    evaluator_pb2.REVIEW_KIND_PAIRWISE: ReviewKind.PAIRWISE,
    evaluator_pb2.REVIEW_KIND_CORRECTION: ReviewKind.CORRECTION,
}
_KIND_ENUMS = {kind: number for number, kind in _KINDS.items()}


def kind_from_proto(kind: int) -> ReviewKind | None:
    """The kind, or None when unspecified or unknown."""
    return _KINDS.get(kind)  # type: ignore[call-overload]


def kind_to_proto(kind: ReviewKind) -> evaluator_pb2.ReviewKind.ValueType:
    return _KIND_ENUMS[kind]


def new_item(item: evaluator_pb2.ReviewItem) -> NewItem:
    """An item to enqueue; output-only fields (id, lease, create time) are ignored."""
    return NewItem(
        kind=kind_from_proto(item.kind),
        # An unknown role becomes "", which validation refuses by position.
        context=tuple(Turn(NAME_BY_ROLE.get(m.role, ""), m.content) for m in item.context),
        reply_a=item.reply_a,
        reply_b=item.reply_b,
        model_id_a=item.model_id_a,
        model_id_b=item.model_id_b,
        source=item.source,
        priority=item.priority,
        reviews_wanted=item.reviews_wanted,
    )


def leased_item(leased: LeasedItem) -> evaluator_pb2.ReviewItem:
    """The item as its reviewer sees it: never the models; a pair in the lease's
    order and without its source, which could tell the models apart."""
    item = leased.item
    reply_a, reply_b = leased.shown_replies
    return evaluator_pb2.ReviewItem(
        id=item.id,
        kind=kind_to_proto(item.kind),
        context=[
            common_pb2.ChatMessage(role=ROLE_BY_NAME[t.role], content=t.content)
            for t in item.context
        ],
        reply_a=reply_a,
        reply_b=reply_b,
        source="" if item.kind is ReviewKind.PAIRWISE else item.source,
        lease_expire_time=to_timestamp(leased.expire_time),
        priority=item.priority,
        reviews_wanted=item.reviews_wanted,
        create_time=to_timestamp(item.create_time),
    )


def review_input(request: evaluator_pb2.SubmitReviewRequest) -> ReviewInput:
    return ReviewInput(
        item_id=request.item_id,
        reviewer=request.reviewer,
        rating=request.rating,
        tags=tuple(request.tags),
        preferred=request.preferred.strip().lower(),
        correction=request.correction,
    )


def review(value: Review) -> evaluator_pb2.Review:
    return evaluator_pb2.Review(
        id=value.id,
        item_id=value.item_id,
        reviewer=value.reviewer,
        kind=kind_to_proto(value.kind),
        rating=value.rating,
        tags=list(value.tags),
        preferred_model_id=value.preferred_model_id,
        tie=value.tie,
        correction=value.correction,
        create_time=to_timestamp(value.create_time),
        exported_dataset_version_ids=list(value.exported_to),
    )


def sample_request(request: evaluator_pb2.EnqueueDatasetSampleRequest) -> DatasetSampleRequest:
    return DatasetSampleRequest(
        dataset_version_id=request.dataset_version_id,
        kind=kind_from_proto(request.kind),
        count=request.count,
        seed=request.seed,
        validation=request.split != data_pb2.SPLIT_TRAIN,
        priority=request.priority,
        reviews_wanted=request.reviews_wanted,
    )


def export_request(request: evaluator_pb2.ExportFeedbackRequest) -> ExportRequest:
    return ExportRequest(
        dataset_name=request.dataset_name,
        include_exported=request.include_exported,
        preference_dataset_name=request.preference_dataset_name,
        sft_dataset_name=request.sft_dataset_name,
        validation_fraction=(
            request.validation_fraction if request.HasField("validation_fraction") else None
        ),
    )


def export_response(result: ExportResult) -> evaluator_pb2.ExportFeedbackResponse:
    return evaluator_pb2.ExportFeedbackResponse(
        preference_dataset_version_id=result.preference_version_id,
        sft_dataset_version_id=result.sft_version_id,
        preference_pairs=result.preference_pairs,
        corrections=result.corrections,
        reviews_exported=result.reviews_exported,
        items_without_majority=result.items_without_majority,
    )


def _agreement(value: Agreement) -> evaluator_pb2.ReviewAgreement:
    message = evaluator_pb2.ReviewAgreement(kind=kind_to_proto(value.kind), items=value.items)
    if value.alpha is not None:
        message.krippendorff_alpha = value.alpha
    for pair in value.pairs:
        entry = message.pairs.add(
            reviewer_a=pair.reviewer_a, reviewer_b=pair.reviewer_b, items=pair.items
        )
        if pair.kappa is not None:
            entry.cohen_kappa = pair.kappa
    return message


def _win_rate(tally: PairwiseTally) -> evaluator_pb2.HumanWinRate:
    message = evaluator_pb2.HumanWinRate(
        candidate_model_id=tally.candidate_model_id,
        baseline_model_id=tally.baseline_model_id,
        reviews=tally.n,
        wins=tally.wins,
        ties=tally.ties,
        losses=tally.losses,
    )
    if tally.n:
        message.rate = tally.rate
    return message


def stats_response(stats: QueueStats) -> evaluator_pb2.GetReviewStatsResponse:
    response = evaluator_pb2.GetReviewStatsResponse(
        counts=[
            evaluator_pb2.ReviewQueueCounts(
                kind=kind_to_proto(c.kind),
                open_items=c.open_items,
                leased_items=c.leased_items,
                done_items=c.done_items,
                reviews=c.reviews,
            )
            for c in stats.counts
        ],
        reviewers=[
            evaluator_pb2.ReviewerCount(reviewer=name, reviews=n) for name, n in stats.reviewers
        ],
        agreement=[_agreement(a) for a in stats.agreement],
    )
    if stats.win_rate is not None:
        response.win_rate.CopyFrom(_win_rate(stats.win_rate))
    return response


def erasure_response(erased: ErasedReviewData) -> evaluator_pb2.EraseReviewDataResponse:
    return evaluator_pb2.EraseReviewDataResponse(
        erased_item_ids=list(erased.item_ids), erased_reviews=erased.reviews
    )

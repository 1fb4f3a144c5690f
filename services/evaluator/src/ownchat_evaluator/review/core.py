"""The review queue: enqueue items, lease them to reviewers, take their reviews,
report agreement and win rates, and export feedback as dataset versions.

Knows nothing of gRPC. Leases: ``next_item`` offers the highest-priority item
(first in, first out within a priority) that the reviewer has neither reviewed
nor skipped and that has a place left once the live leases of other reviewers
count; a reviewer asking again while holding a live lease gets the same item,
shown the same way. A lease lasts ``lease_seconds``; an expired lease gives its
place back. Several reviewers may hold leases on one item, up to the reviews it
still wants, so reviews never exceed what was wanted and a done item is never
leased again.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from ownchat.erasure import folded_values, holds_any
from ownchat.errors import (
    FieldViolation,
    InvalidArgumentError,
    UnavailableError,
)
from ownchat_evaluator.review.agreement import Agreement, agreement
from ownchat_evaluator.review.export import ExportFile, correction_file, preference_file
from ownchat_evaluator.review.model import (
    ErasedReviewData,
    Item,
    LeasedItem,
    NewItem,
    Review,
    ReviewInput,
    ReviewKind,
)
from ownchat_evaluator.review.sampling import item_from_conversation, sample_lines
from ownchat_evaluator.review.store import KindCounts, ReviewStore
from ownchat_evaluator.review.validation import (
    check_erasure_values,
    check_new_items,
    check_priority,
    check_review,
    check_reviewer,
    check_reviews_wanted,
)

MAX_SAMPLE = 1000


@dataclass(frozen=True)
class FeedbackUpload:
    """One file to store as a new version of a dataset."""

    dataset_name: str
    file_name: str
    # "preference" (preference JSONL) or "chat" (chat JSONL).
    kind: str
    body: bytes
    # None: the data service's default.
    validation_fraction: float | None = None


@dataclass(frozen=True)
class UploadedVersion:
    """The dataset version an upload became."""

    id: str
    samples: int


class FeedbackData(Protocol):
    """What the queue needs of the data service."""

    def chat_split(self, dataset_version_id: str, validation: bool) -> Path:
        """The local file of one split of a chat dataset version."""
        ...

    def upload(self, upload: FeedbackUpload) -> UploadedVersion:
        """Stores a file as a new dataset version."""
        ...


@dataclass(frozen=True)
class DatasetSampleRequest:
    """Which conversations of a dataset version to enqueue, and as what."""

    dataset_version_id: str
    kind: ReviewKind | None
    count: int
    seed: int = 0
    validation: bool = True
    priority: int = 0
    reviews_wanted: int = 0


@dataclass(frozen=True)
class ExportRequest:
    """Where exported feedback goes."""

    dataset_name: str
    include_exported: bool = False
    preference_dataset_name: str = ""
    sft_dataset_name: str = ""
    validation_fraction: float | None = None


@dataclass(frozen=True)
class ExportResult:
    """What an export sent and the versions it made."""

    preference_version_id: str = ""
    sft_version_id: str = ""
    preference_pairs: int = 0
    corrections: int = 0
    reviews_exported: int = 0
    items_without_majority: int = 0


class WinRate(NamedTuple):
    """Share of pairwise reviews preferring the candidate (ties count half), and
    how many reviews compared the two; the rate is NaN when there are none."""

    rate: float
    n: int


@dataclass(frozen=True)
class PairwiseTally:
    """Pairwise reviews between a candidate and a baseline model, by outcome."""

    candidate_model_id: str
    baseline_model_id: str
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        """Reviews comparing the two."""
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        """(wins + ties / 2) / n; NaN without reviews."""
        return (self.wins + self.ties / 2) / self.n if self.n else math.nan


@dataclass(frozen=True)
class QueueStats:
    """The queue at a glance."""

    counts: list[KindCounts]
    reviewers: list[tuple[str, int]]
    agreement: list[Agreement]
    win_rate: PairwiseTally | None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _require(value: str, field: str, what: str) -> list[FieldViolation]:
    return [] if value.strip() else [FieldViolation(field, f"must name {what}")]


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


class ReviewQueue:
    """The human-review queue over its store, with the data service for samples and exports."""

    def __init__(
        self,
        store: ReviewStore,
        data: FeedbackData | None = None,
        lease_seconds: float = 1800.0,
        reviews_per_item: int = 1,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._data = data
        self._lease_seconds = lease_seconds
        self._reviews_per_item = reviews_per_item
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        # One export at a time, so no review is exported twice by a race.
        self._export_lock = threading.Lock()

    def enqueue(self, items: Sequence[NewItem]) -> list[str]:
        """Adds items; returns their ids in order (an identical queued item keeps its id)."""
        check_new_items(items)
        ids = [_new_id("rvi") for _ in items]
        return self._store.enqueue(items, ids, self._reviews_per_item, self._clock())

    def next_item(self, reviewer: str, kind: ReviewKind | None = None) -> LeasedItem | None:
        """Leases the next item to a reviewer; None when nothing is left for them."""
        violations = check_reviewer(reviewer)
        if violations:
            raise InvalidArgumentError("invalid request", violations)
        return self._store.lease(
            reviewer,
            kind,
            self._clock(),
            self._lease_seconds,
            lambda: self._rng.random() < 0.5,
        )

    def release(self, item_id: str, reviewer: str) -> None:
        """Gives a leased item back unreviewed; the reviewer is not offered it again."""
        violations = _require(item_id, "item_id", "the item") + check_reviewer(reviewer)
        if violations:
            raise InvalidArgumentError("invalid request", violations)
        self._store.release(item_id, reviewer)

    def submit(self, review: ReviewInput) -> Review:
        """Stores the review of an item leased to its reviewer."""
        violations = _require(review.item_id, "item_id", "the item") + check_reviewer(
            review.reviewer
        )
        if violations:
            raise InvalidArgumentError("invalid review", violations)

        def fits(item: Item) -> None:
            check_review(review, item.kind)

        return self._store.submit(review, _new_id("rev"), self._clock(), fits)

    def get_item(self, item_id: str) -> Item:
        """One item as stored, models included (not for reviewers' eyes)."""
        return self._store.get_item(item_id)

    def list_reviews(
        self, limit: int, offset: int, item_id: str = "", reviewer: str = ""
    ) -> list[Review]:
        """Reviews, oldest first, optionally of one item or one reviewer."""
        return self._store.list_reviews(item_id, reviewer, limit, offset)

    def tally(self, candidate_model_id: str, baseline_model_id: str) -> PairwiseTally:
        """Pairwise reviews of the candidate against the baseline, by outcome."""
        violations = _require(candidate_model_id, "candidate_model_id", "the candidate model")
        violations += _require(baseline_model_id, "baseline_model_id", "the baseline model")
        if candidate_model_id and candidate_model_id == baseline_model_id:
            violations.append(FieldViolation("baseline_model_id", "must differ from the candidate"))
        if violations:
            raise InvalidArgumentError("invalid win rate request", violations)
        outcomes = self._store.pairwise_outcomes(candidate_model_id, baseline_model_id)
        return PairwiseTally(
            candidate_model_id,
            baseline_model_id,
            wins=sum(1 for o in outcomes if o == candidate_model_id),
            ties=sum(1 for o in outcomes if o == ""),
            losses=sum(1 for o in outcomes if o == baseline_model_id),
        )

    def win_rate(self, candidate_model_id: str, baseline_model_id: str) -> WinRate:
        """The human win rate of the candidate over the baseline, for promotion gates."""
        tally = self.tally(candidate_model_id, baseline_model_id)
        return WinRate(tally.rate, tally.n)

    def stats(self, candidate_model_id: str = "", baseline_model_id: str = "") -> QueueStats:
        """Counts, reviews per reviewer, agreement and, when asked, a win rate."""
        win = None
        if candidate_model_id or baseline_model_id:
            win = self.tally(candidate_model_id, baseline_model_id)
        return QueueStats(
            counts=self._store.counts(self._clock()),
            reviewers=self._store.reviews_per_reviewer(),
            agreement=[
                agreement(kind, self._store.judgements(kind))
                for kind in (ReviewKind.RATING, ReviewKind.PAIRWISE)
            ],
            win_rate=win,
        )

    def erase(self, values: Sequence[str]) -> ErasedReviewData:
        """Right to erasure: deletes every item whose texts hold a value, with its
        reviews, and every other review holding one, by the rule every service
        shares (:mod:`ownchat.erasure`), so that a value erased from a dataset
        survives nowhere in the queue. Nothing holding a value is not an error."""
        violations = check_erasure_values(values)
        if violations:
            raise InvalidArgumentError("invalid erasure request", violations)
        folded = folded_values(values)
        return self._store.erase(lambda texts: holds_any(texts, folded))

    def _data_service(self) -> FeedbackData:
        if self._data is None:
            raise UnavailableError("the review queue has no data service configured")
        return self._data

    def enqueue_dataset_sample(self, request: DatasetSampleRequest) -> tuple[list[str], int]:
        """Enqueues a seeded sample of a chat dataset version's split; returns the
        item ids and how many sampled conversations had no reply to review."""
        violations = _require(request.dataset_version_id, "dataset_version_id", "the version")
        if request.kind not in (ReviewKind.RATING, ReviewKind.CORRECTION):
            violations.append(
                FieldViolation("kind", "must be rating or correction: a sample has one reply")
            )
        if not 1 <= request.count <= MAX_SAMPLE:
            violations.append(FieldViolation("count", f"must be within 1..{MAX_SAMPLE}"))
        violations += check_priority(request.priority, "priority")
        violations += check_reviews_wanted(request.reviews_wanted, "reviews_wanted")
        if violations:
            raise InvalidArgumentError("invalid sample request", violations)
        assert request.kind is not None
        split = self._data_service().chat_split(request.dataset_version_id, request.validation)
        source = f"dataset:{request.dataset_version_id}"
        items = []
        skipped = 0
        for _, line in sample_lines(split, request.count, request.seed):
            item = item_from_conversation(
                line, request.kind, source, request.priority, request.reviews_wanted
            )
            if item is None:
                skipped += 1
            else:
                items.append(item)
        return (self.enqueue(items) if items else []), skipped

    def export_feedback(self, request: ExportRequest) -> ExportResult:
        """Uploads finished pairwise preferences and corrections as dataset versions.

        A preference pair is exported once its item has every review it
        wanted, chosen by majority (ties and even splits are left out); each
        correction is exported as it comes. Only reviews not exported yet are
        sent unless ``include_exported``.
        """
        preference_dataset = request.preference_dataset_name or request.dataset_name
        sft_dataset = request.sft_dataset_name or request.dataset_name
        violations = []
        if not preference_dataset.strip():
            violations.append(
                FieldViolation("dataset_name", "name a dataset (or preference_dataset_name)")
            )
        if not sft_dataset.strip():
            violations.append(
                FieldViolation("dataset_name", "name a dataset (or sft_dataset_name)")
            )
        fraction = request.validation_fraction
        if fraction is not None and not 0 <= fraction <= 0.5:
            violations.append(FieldViolation("validation_fraction", "must be within [0, 0.5]"))
        if violations:
            raise InvalidArgumentError("invalid export request", violations)
        with self._export_lock:
            preferences, without_majority = preference_file(
                self._store.pairwise_to_export(request.include_exported)
            )
            corrections = correction_file(
                self._store.corrections_to_export(request.include_exported)
            )
            stamp = _stamp(self._clock())
            preference_version = sft_version = ""
            if preferences.records:
                preference_version = self._upload(
                    FeedbackUpload(
                        preference_dataset,
                        f"review-preferences-{stamp}.jsonl",
                        "preference",
                        preferences.body,
                        fraction,
                    ),
                    preferences,
                )
            if corrections.records:
                sft_version = self._upload(
                    FeedbackUpload(
                        sft_dataset,
                        f"review-corrections-{stamp}.jsonl",
                        "chat",
                        corrections.body,
                        fraction,
                    ),
                    corrections,
                )
            return ExportResult(
                preference_version_id=preference_version,
                sft_version_id=sft_version,
                preference_pairs=len(preferences.records),
                corrections=len(corrections.records),
                reviews_exported=sum(
                    len(r.review_ids) for r in (*preferences.records, *corrections.records)
                ),
                items_without_majority=without_majority,
            )

    def _upload(self, upload: FeedbackUpload, file: ExportFile) -> str:
        """Uploads one file and records which version each of its reviews went into.

        The upload happens first: a crash between the two leaves the reviews
        unmarked, and the next export sends them again (an identical file
        gives the same version back).
        """
        version = self._data_service().upload(upload)
        self._store.mark_exported(file.records, version.id, self._clock())
        return version.id

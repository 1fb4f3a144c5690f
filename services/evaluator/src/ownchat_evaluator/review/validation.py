"""Checks of what reviewers and other services send to the queue.

Every problem of a request is reported at once, as field violations named
after the request's fields.
"""

from __future__ import annotations

from collections.abc import Sequence

from ownchat.erasure import MIN_VALUE_CHARS, too_short
from ownchat.errors import FieldViolation, InvalidArgumentError
from ownchat_evaluator.review.model import (
    MAX_REVIEWS_WANTED,
    PREFERENCES,
    RATING_RANGE,
    ROLES,
    NewItem,
    ReviewInput,
    ReviewKind,
)

MAX_ITEMS_PER_CALL = 1000
MAX_CONTEXT_MESSAGES = 200
MAX_TEXT_CHARS = 100_000
MAX_NAME_CHARS = 256
MAX_TAGS = 20
MAX_TAG_CHARS = 64
MAX_PRIORITY = 1000


def check_reviewer(reviewer: str, field: str = "reviewer") -> list[FieldViolation]:
    """The reviewer must be named: reviews are attributed and counted per reviewer."""
    if not reviewer.strip():
        return [FieldViolation(field, "must name the reviewer")]
    if len(reviewer) > MAX_NAME_CHARS:
        return [FieldViolation(field, f"must be at most {MAX_NAME_CHARS} characters")]
    return []


def _text(value: str, field: str, what: str) -> list[FieldViolation]:
    if not value.strip():
        return [FieldViolation(field, f"{what} must not be empty")]
    if len(value) > MAX_TEXT_CHARS:
        return [FieldViolation(field, f"must be at most {MAX_TEXT_CHARS} characters")]
    return []


def check_reviews_wanted(value: int, field: str) -> list[FieldViolation]:
    """0 (the default) or 1 to MAX_REVIEWS_WANTED reviewers."""
    if not 0 <= value <= MAX_REVIEWS_WANTED:
        return [FieldViolation(field, f"must be within 0..{MAX_REVIEWS_WANTED} (0: the default)")]
    return []


def check_priority(value: int, field: str) -> list[FieldViolation]:
    """Priorities are small non-negative numbers; higher is served first."""
    if not 0 <= value <= MAX_PRIORITY:
        return [FieldViolation(field, f"must be within 0..{MAX_PRIORITY}")]
    return []


def _check_item(item: NewItem, prefix: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if item.kind is None:
        violations.append(
            FieldViolation(f"{prefix}.kind", "must be rating, pairwise or correction")
        )
    if not item.context:
        violations.append(FieldViolation(f"{prefix}.context", "must hold the conversation"))
    elif len(item.context) > MAX_CONTEXT_MESSAGES:
        violations.append(
            FieldViolation(f"{prefix}.context", f"must be at most {MAX_CONTEXT_MESSAGES} messages")
        )
    else:
        for index, turn in enumerate(item.context):
            where = f"{prefix}.context[{index}]"
            if turn.role not in ROLES:
                violations.append(
                    FieldViolation(f"{where}.role", "must be system, user or assistant")
                )
            violations += _text(turn.content, f"{where}.content", "a message")
        # The reply under review answers the last user message; exported
        # preferences and corrections need that shape too.
        if item.context[-1].role != "user":
            violations.append(FieldViolation(f"{prefix}.context", "must end with a user message"))
    violations += _text(item.reply_a, f"{prefix}.reply_a", "the reply")
    if item.kind is ReviewKind.PAIRWISE:
        violations += _text(item.reply_b, f"{prefix}.reply_b", "the second reply")
        if item.reply_a.strip() and item.reply_a == item.reply_b:
            violations.append(FieldViolation(f"{prefix}.reply_b", "must differ from reply_a"))
        for side in ("a", "b"):
            if not getattr(item, f"model_id_{side}").strip():
                violations.append(
                    FieldViolation(f"{prefix}.model_id_{side}", "a pairwise item names both models")
                )
        if item.model_id_a and item.model_id_a == item.model_id_b:
            violations.append(FieldViolation(f"{prefix}.model_id_b", "must differ from model_id_a"))
    elif item.kind is not None:
        if item.reply_b:
            violations.append(FieldViolation(f"{prefix}.reply_b", "only a pairwise item has two"))
        if item.model_id_b:
            violations.append(
                FieldViolation(f"{prefix}.model_id_b", "only a pairwise item has two")
            )
    if not item.source.strip():
        violations.append(
            FieldViolation(
                f"{prefix}.source",
                "must say where the item came from, for example an eval run id, "
                "'gateway:<response id>' or 'dataset:<version id>'",
            )
        )
    elif len(item.source) > MAX_NAME_CHARS:
        violations.append(
            FieldViolation(f"{prefix}.source", f"must be at most {MAX_NAME_CHARS} characters")
        )
    for name in ("model_id_a", "model_id_b"):
        if len(getattr(item, name)) > MAX_NAME_CHARS:
            violations.append(
                FieldViolation(f"{prefix}.{name}", f"must be at most {MAX_NAME_CHARS} characters")
            )
    violations += check_priority(item.priority, f"{prefix}.priority")
    violations += check_reviews_wanted(item.reviews_wanted, f"{prefix}.reviews_wanted")
    return violations


def check_new_items(items: Sequence[NewItem]) -> None:
    """Refuses a batch with any bad item; nothing of it is enqueued then."""
    if not items:
        raise InvalidArgumentError("nothing to enqueue", [FieldViolation("items", "is empty")])
    if len(items) > MAX_ITEMS_PER_CALL:
        raise InvalidArgumentError(
            "too many items",
            [FieldViolation("items", f"at most {MAX_ITEMS_PER_CALL} items per call")],
        )
    violations: list[FieldViolation] = []
    for index, item in enumerate(items):
        violations += _check_item(item, f"items[{index}]")
    if violations:
        raise InvalidArgumentError("invalid review items", violations)


def check_review(review: ReviewInput, kind: ReviewKind) -> None:
    """Refuses a review whose content does not fit its item's kind."""
    violations = check_reviewer(review.reviewer)
    low, high = RATING_RANGE
    if kind is ReviewKind.RATING:
        if not low <= review.rating <= high:
            violations.append(FieldViolation("rating", f"must be within {low}..{high}"))
        if len(review.tags) > MAX_TAGS:
            violations.append(FieldViolation("tags", f"at most {MAX_TAGS} tags"))
        for index, tag in enumerate(review.tags):
            if not tag.strip() or len(tag) > MAX_TAG_CHARS:
                violations.append(
                    FieldViolation(f"tags[{index}]", f"must be 1 to {MAX_TAG_CHARS} characters")
                )
    elif review.rating or review.tags:
        violations.append(FieldViolation("rating", f"only for rating items; this is {kind.value}"))
    if kind is ReviewKind.PAIRWISE:
        if review.preferred not in PREFERENCES:
            violations.append(
                FieldViolation("preferred", f"must be 'a', 'b' or 'tie', got {review.preferred!r}")
            )
    elif review.preferred:
        violations.append(
            FieldViolation("preferred", f"only for pairwise items; this is {kind.value}")
        )
    if kind is ReviewKind.CORRECTION:
        violations += _text(review.correction, "correction", "the corrected reply")
    elif review.correction:
        violations.append(
            FieldViolation("correction", f"only for correction items; this is {kind.value}")
        )
    if violations:
        raise InvalidArgumentError(f"invalid review of item {review.item_id!r}", violations)


def check_erasure_values(values: Sequence[str]) -> list[FieldViolation]:
    """At least one value, and none so short that it would erase far more than one
    person's data. The values themselves are never echoed: they are what is erased."""
    if not values:
        return [FieldViolation("values", "name at least one value to erase")]
    if too_short(values):
        return [FieldViolation("values", f"each value needs {MIN_VALUE_CHARS} characters or more")]
    return []

"""Plain types of the review queue, shared by its store, core and conversions."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

ROLES = ("system", "user", "assistant")
PREFERENCES = ("a", "b", "tie")
RATING_RANGE = (1, 5)
# Enough overlap for agreement statistics; more is a configuration mistake.
MAX_REVIEWS_WANTED = 10


class ReviewKind(Enum):
    """The judgement asked of a reviewer."""

    RATING = "rating"
    PAIRWISE = "pairwise"
    CORRECTION = "correction"


@dataclass(frozen=True)
class Turn:
    """One message of the conversation shown before the reply under review."""

    role: str
    content: str


@dataclass(frozen=True)
class NewItem:
    """An item as enqueued; validated by :func:`validation.check_new_items`.

    A rating or correction item has one reply (``reply_a``, written by
    ``model_id_a`` when known); a pairwise item two, each with its model.
    """

    kind: ReviewKind | None
    context: tuple[Turn, ...]
    reply_a: str
    reply_b: str = ""
    model_id_a: str = ""
    model_id_b: str = ""
    source: str = ""
    priority: int = 0
    # 0: the queue's default.
    reviews_wanted: int = 0


@dataclass(frozen=True)
class Item:
    """An item as stored, with how many reviews it has."""

    id: str
    kind: ReviewKind
    context: tuple[Turn, ...]
    reply_a: str
    reply_b: str
    model_id_a: str
    model_id_b: str
    source: str
    priority: int
    reviews_wanted: int
    reviews_done: int
    create_time: float

    @property
    def done(self) -> bool:
        """Whether every wanted review is in."""
        return self.reviews_done >= self.reviews_wanted


@dataclass(frozen=True)
class LeasedItem:
    """An item leased to one reviewer, and how its replies are shown to them.

    For a pairwise item, ``swapped`` means the stored second reply is shown as
    A; it is drawn at random for each lease so that position cannot favour a
    model.
    """

    item: Item
    reviewer: str
    expire_time: float
    swapped: bool

    @property
    def shown_replies(self) -> tuple[str, str]:
        """The replies (A, B) as the reviewer sees them."""
        if self.swapped:
            return self.item.reply_b, self.item.reply_a
        return self.item.reply_a, self.item.reply_b


@dataclass(frozen=True)
class ReviewInput:
    """A reviewer's judgement of one leased item, as submitted."""

    item_id: str
    reviewer: str
    rating: int = 0
    tags: tuple[str, ...] = ()
    # "a" or "b" as shown to the reviewer, or "tie".
    preferred: str = ""
    correction: str = ""


@dataclass(frozen=True)
class Review:
    """A stored review. A pairwise review names the preferred model, not a side."""

    id: str
    item_id: str
    reviewer: str
    kind: ReviewKind
    rating: int = 0
    tags: tuple[str, ...] = ()
    preferred_model_id: str = ""
    tie: bool = False
    correction: str = ""
    # Whether the sides were swapped when shown: kept to measure position bias.
    swapped: bool = False
    create_time: float = 0.0
    exported_to: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ErasedReviewData:
    """What an erasure deleted from the queue."""

    item_ids: tuple[str, ...]
    # The reviews of those items, and the other reviews that held a value.
    reviews: int

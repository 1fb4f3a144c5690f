"""The review queue's store: ``reviews.db`` beside the evaluator's own SQLite file,
or its own tables in the evaluator's PostgreSQL database.

Each state change is one write transaction that reads what it decides on and
writes the outcome (``BEGIN IMMEDIATE`` with ``synchronous=FULL`` on SQLite, a
transaction advisory lock on PostgreSQL: see :mod:`ownchat.database`),
committed before the call returns: an acknowledged enqueue or review survives
a killed process, and concurrent callers see the queue one change at a time.
An item's state is derived, never stored: *done* when its reviews reach the
number wanted, *leased* while a lease on it is live, *open* otherwise. The
schema's checks (one review per reviewer and item, never more reviews than
wanted) hold even against a bug above it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ownchat.database import Connection, Database, Migrations, Row, delete_in, keyset_scan
from ownchat.errors import FailedPreconditionError, NotFoundError, PreconditionViolation
from ownchat_evaluator.review.model import (
    ErasedReviewData,
    Item,
    LeasedItem,
    NewItem,
    Review,
    ReviewInput,
    ReviewKind,
    Turn,
)

MIGRATIONS = Migrations("reviews", Path(__file__).with_name("migrations"))

# Items a reviewer may be offered: reviews still wanted, not reviewed or
# skipped by them, and a free place once the live leases of others count.
# Parameters: reviewer, reviewer, now, reviewer, then the kind when one is asked for.
_OFFERABLE = """
    SELECT i.* FROM review_items i
    WHERE i.reviews_done < i.reviews_wanted
      AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id = i.id AND r.reviewer = ?)
      AND NOT EXISTS (
          SELECT 1 FROM review_skips s WHERE s.item_id = i.id AND s.reviewer = ?)
      AND i.reviews_done + (
          SELECT COUNT(*) FROM review_leases l
          WHERE l.item_id = i.id AND l.expire_time > ? AND l.reviewer != ?
      ) < i.reviews_wanted
      {kind}
    ORDER BY i.priority DESC, i.seq
    LIMIT 1
"""

# The reviewer's live lease. Parameters: reviewer, now, then the kind when asked for.
_HELD = """
    SELECT i.*, l.expire_time AS lease_expire_time, l.swapped AS lease_swapped
    FROM review_leases l JOIN review_items i ON i.id = l.item_id
    WHERE l.reviewer = ? AND l.expire_time > ?
      {kind}
    ORDER BY i.priority DESC, i.seq
    LIMIT 1
"""

# The columns an erasure reads, a page after the last seq read (see keyset_scan).
_ITEMS_TO_SCAN = """
    SELECT seq, id, context, reply_a, reply_b, model_id_a, model_id_b, source
    FROM review_items WHERE seq > ? ORDER BY seq LIMIT ?
"""
_REVIEWS_TO_SCAN = """
    SELECT seq, id, item_id, reviewer, tags, preferred_model_id, correction
    FROM reviews WHERE seq > ? ORDER BY seq LIMIT ?
"""


def fingerprint(item: NewItem) -> str:
    """What makes two enqueued items the same item: everything but priority and overlap."""
    assert item.kind is not None
    content = [
        item.kind.value,
        [[t.role, t.content] for t in item.context],
        item.reply_a,
        item.reply_b,
        item.model_id_a,
        item.model_id_b,
        item.source,
    ]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()


def _item(row: Row) -> Item:
    return Item(
        id=row["id"],
        kind=ReviewKind(row["kind"]),
        context=tuple(Turn(role, content) for role, content in json.loads(row["context"])),
        reply_a=row["reply_a"],
        reply_b=row["reply_b"],
        model_id_a=row["model_id_a"],
        model_id_b=row["model_id_b"],
        source=row["source"],
        priority=row["priority"],
        reviews_wanted=row["reviews_wanted"],
        reviews_done=row["reviews_done"],
        create_time=row["create_time"],
    )


def _review(row: Row, exported_to: tuple[str, ...] = ()) -> Review:
    return Review(
        id=row["id"],
        item_id=row["item_id"],
        reviewer=row["reviewer"],
        kind=ReviewKind(row["kind"]),
        rating=row["rating"],
        tags=tuple(json.loads(row["tags"])),
        preferred_model_id=row["preferred_model_id"],
        tie=bool(row["tie"]),
        correction=row["correction"],
        swapped=bool(row["swapped"]),
        create_time=row["create_time"],
        exported_to=exported_to,
    )


def _item_texts(row: Row) -> list[str]:
    """Every text an item stores, any of which may hold someone's data. The kind and
    the roles are the schema's own words, and the fingerprint a hash of these texts."""
    return [
        *(content for _, content in json.loads(row["context"])),
        row["reply_a"],
        row["reply_b"],
        row["model_id_a"],
        row["model_id_b"],
        row["source"],
    ]


def _review_texts(row: Row) -> list[str]:
    """Every text a review stores; the reviewer's name too, since a reviewer may be
    the person whose data is erased."""
    return [
        *json.loads(row["tags"]),
        row["correction"],
        row["preferred_model_id"],
        row["reviewer"],
    ]


def _delete_reviews(
    connection: Connection, reviews: Sequence[tuple[str, str]], erased_items: set[str]
) -> None:
    """Deletes (review id, item id) reviews with their export marks."""
    ids = [review_id for review_id, _ in reviews]
    delete_in(connection, "review_exports", "review_id", ids)
    delete_in(connection, "reviews", "id", ids)
    # A kept item's erased review no longer counts: the item wants another in its place.
    lost = Counter(item_id for _, item_id in reviews if item_id not in erased_items)
    for item_id, count in lost.items():
        connection.execute(
            "UPDATE review_items SET reviews_done = reviews_done - ? WHERE id = ?",
            (count, item_id),
        )


# What an erasure deletes from, or updates (a review's count on its item).
_ERASED_TABLES = (
    "review_exports",
    "reviews",
    "review_items",
    "review_leases",
    "review_skips",
)


def _delete_items(connection: Connection, item_ids: Sequence[str]) -> None:
    """Deletes items and their leases and skips; their reviews must be gone already."""
    for table in ("review_leases", "review_skips"):
        delete_in(connection, table, "item_id", item_ids)
    delete_in(connection, "review_items", "id", item_ids)


def _forget_reviewers(connection: Connection, reviewers: Sequence[str]) -> None:
    """Deletes the leases and skips of reviewers, which keep only their names."""
    for table in ("review_leases", "review_skips"):
        delete_in(connection, table, "reviewer", reviewers)


def _subject(item_id: str) -> str:
    return f"review_items/{item_id}"


@dataclass(frozen=True)
class KindCounts:
    """Where the items of one kind are."""

    kind: ReviewKind
    open_items: int
    leased_items: int
    done_items: int
    reviews: int


@dataclass(frozen=True)
class Judgement:
    """One review's answer, for agreement statistics."""

    kind: ReviewKind
    item_id: str
    reviewer: str
    # The rating, or the preferred model id ("" for a tie).
    label: int | str


@dataclass(frozen=True)
class ExportedRecord:
    """The reviews behind one record of an uploaded file, and its 1-based line."""

    record: int
    review_ids: tuple[str, ...]


class ReviewStore:
    """Reads and changes the review queue."""

    def __init__(self, location: Path | str) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self._db = Database(location, MIGRATIONS)

    def enqueue(
        self, items: Sequence[NewItem], ids: Sequence[str], default_wanted: int, now: float
    ) -> list[str]:
        """Adds validated items in one transaction; an item already queued keeps its id
        (and takes the higher of the two priorities), so a retried enqueue adds nothing."""
        result: list[str] = []
        with self._db.transaction() as connection:
            for item, new_id in zip(items, ids, strict=True):
                assert item.kind is not None
                key = fingerprint(item)
                row = connection.execute(
                    "SELECT id, priority FROM review_items WHERE fingerprint = ?", (key,)
                ).fetchone()
                if row is not None:
                    if item.priority > row["priority"]:
                        connection.execute(
                            "UPDATE review_items SET priority = ? WHERE id = ?",
                            (item.priority, row["id"]),
                        )
                    result.append(row["id"])
                    continue
                connection.execute(
                    "INSERT INTO review_items (id, fingerprint, kind, context, reply_a, reply_b, "
                    "model_id_a, model_id_b, source, priority, reviews_wanted, create_time) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new_id,
                        key,
                        item.kind.value,
                        json.dumps([[t.role, t.content] for t in item.context], ensure_ascii=False),
                        item.reply_a,
                        item.reply_b,
                        item.model_id_a,
                        item.model_id_b,
                        item.source,
                        item.priority,
                        item.reviews_wanted or default_wanted,
                        now,
                    ),
                )
                result.append(new_id)
        return result

    def get_item(self, item_id: str) -> Item:
        rows = self._db.query("SELECT * FROM review_items WHERE id = ?", (item_id,))
        if not rows:
            raise NotFoundError("review item", item_id)
        return _item(rows[0])

    def lease(
        self,
        reviewer: str,
        kind: ReviewKind | None,
        now: float,
        lease_seconds: float,
        draw_swap: Callable[[], bool],
    ) -> LeasedItem | None:
        """The reviewer's live lease, else a new lease on the best offerable item."""
        # The kind is a condition only when asked for: PostgreSQL cannot type a
        # parameter that is only ever compared with NULL.
        of_kind, kinds = ("AND i.kind = ?", [kind.value]) if kind else ("", [])
        with self._db.transaction() as connection:
            held = connection.execute(
                _HELD.format(kind=of_kind), [reviewer, now, *kinds]
            ).fetchone()
            if held is not None:
                return LeasedItem(
                    _item(held), reviewer, held["lease_expire_time"], bool(held["lease_swapped"])
                )
            row = connection.execute(
                _OFFERABLE.format(kind=of_kind), [reviewer, reviewer, now, reviewer, *kinds]
            ).fetchone()
            if row is None:
                return None
            item = _item(row)
            swapped = item.kind is ReviewKind.PAIRWISE and draw_swap()
            expire_time = now + lease_seconds
            # Replaces this reviewer's own expired lease on the item, if any.
            connection.execute(
                "INSERT INTO review_leases (item_id, reviewer, expire_time, swapped) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (item_id, reviewer) DO UPDATE SET "
                "expire_time = excluded.expire_time, swapped = excluded.swapped",
                (item.id, reviewer, expire_time, int(swapped)),
            )
            return LeasedItem(item, reviewer, expire_time, swapped)

    def release(self, item_id: str, reviewer: str) -> None:
        """Ends the reviewer's lease unreviewed; they are not offered the item again."""
        with self._db.transaction() as connection:
            if (
                connection.execute("SELECT 1 FROM review_items WHERE id = ?", (item_id,)).fetchone()
                is None
            ):
                raise NotFoundError("review item", item_id)
            deleted = connection.execute(
                "DELETE FROM review_leases WHERE item_id = ? AND reviewer = ?", (item_id, reviewer)
            ).rowcount
            if not deleted:
                raise _not_leased(item_id, reviewer)
            connection.execute(
                "INSERT INTO review_skips (item_id, reviewer) VALUES (?, ?) "
                "ON CONFLICT (item_id, reviewer) DO NOTHING",
                (item_id, reviewer),
            )

    def submit(
        self, review: ReviewInput, review_id: str, now: float, check: Callable[[Item], None]
    ) -> Review:
        """Stores a review of a leased item, turning the lease into the review.

        ``check`` validates the review against the item's kind inside the
        transaction. A lease that expired still counts when nobody took its
        place, so a slow reviewer's work is kept whenever that breaks no limit.
        """
        with self._db.transaction() as connection:
            row = connection.execute(
                "SELECT * FROM review_items WHERE id = ?", (review.item_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError("review item", review.item_id)
            item = _item(row)
            check(item)
            earlier = connection.execute(
                "SELECT id FROM reviews WHERE item_id = ? AND reviewer = ?",
                (item.id, review.reviewer),
            ).fetchone()
            if earlier is not None:
                raise FailedPreconditionError(
                    f"reviewer {review.reviewer!r} already reviewed item {item.id!r} "
                    f"(review {earlier['id']!r})",
                    [
                        PreconditionViolation(
                            "ALREADY_REVIEWED",
                            _subject(item.id),
                            f"review {earlier['id']} by {review.reviewer}",
                        )
                    ],
                )
            lease = connection.execute(
                "SELECT * FROM review_leases WHERE item_id = ? AND reviewer = ?",
                (item.id, review.reviewer),
            ).fetchone()
            if lease is None:
                raise _not_leased(item.id, review.reviewer)
            if lease["expire_time"] <= now:
                others = connection.execute(
                    "SELECT COUNT(*) FROM review_leases "
                    "WHERE item_id = ? AND reviewer != ? AND expire_time > ?",
                    (item.id, review.reviewer, now),
                ).fetchone()[0]
                if item.reviews_done + others >= item.reviews_wanted:
                    raise FailedPreconditionError(
                        f"the lease of reviewer {review.reviewer!r} on item {item.id!r} expired "
                        "and the item went to another reviewer",
                        [
                            PreconditionViolation(
                                "LEASE_EXPIRED", _subject(item.id), "ask for the next item"
                            )
                        ],
                    )
            if item.done:  # cannot happen while leases respect the limit; kept as a guard
                raise FailedPreconditionError(
                    f"item {item.id!r} already has its {item.reviews_wanted} review(s)",
                    [PreconditionViolation("ITEM_DONE", _subject(item.id), "no review wanted")],
                )
            swapped = bool(lease["swapped"])
            stored = Review(
                id=review_id,
                item_id=item.id,
                reviewer=review.reviewer,
                kind=item.kind,
                rating=review.rating if item.kind is ReviewKind.RATING else 0,
                tags=review.tags if item.kind is ReviewKind.RATING else (),
                preferred_model_id=_preferred_model(item, review.preferred, swapped),
                tie=item.kind is ReviewKind.PAIRWISE and review.preferred == "tie",
                correction=review.correction if item.kind is ReviewKind.CORRECTION else "",
                swapped=swapped,
                create_time=now,
            )
            connection.execute(
                "INSERT INTO reviews (id, item_id, reviewer, rating, tags, preferred_model_id, "
                "tie, correction, swapped, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    stored.item_id,
                    stored.reviewer,
                    stored.rating,
                    json.dumps(list(stored.tags), ensure_ascii=False),
                    stored.preferred_model_id,
                    int(stored.tie),
                    stored.correction,
                    int(stored.swapped),
                    stored.create_time,
                ),
            )
            connection.execute(
                "UPDATE review_items SET reviews_done = reviews_done + 1 WHERE id = ?", (item.id,)
            )
            connection.execute(
                "DELETE FROM review_leases WHERE item_id = ? AND reviewer = ?",
                (item.id, review.reviewer),
            )
            if item.reviews_done + 1 >= item.reviews_wanted:
                # Expired leases left by others no longer mean anything.
                connection.execute("DELETE FROM review_leases WHERE item_id = ?", (item.id,))
            return stored

    def list_reviews(self, item_id: str, reviewer: str, limit: int, offset: int) -> list[Review]:
        """Reviews, oldest first, of one item and/or one reviewer when given."""
        rows = self._db.query(
            "SELECT r.*, i.kind FROM reviews r JOIN review_items i ON i.id = r.item_id "
            "WHERE (? = '' OR r.item_id = ?) AND (? = '' OR r.reviewer = ?) "
            "ORDER BY r.seq LIMIT ? OFFSET ?",
            (item_id, item_id, reviewer, reviewer, limit, offset),
        )
        exports: dict[str, list[str]] = {}
        if rows:
            marks = ",".join("?" * len(rows))
            for export in self._db.query(
                f"SELECT review_id, dataset_version_id FROM review_exports "
                f"WHERE review_id IN ({marks}) ORDER BY export_time, dataset_version_id",
                [row["id"] for row in rows],
            ):
                exports.setdefault(export["review_id"], []).append(export["dataset_version_id"])
        return [_review(row, tuple(exports.get(row["id"], ()))) for row in rows]

    def counts(self, now: float) -> list[KindCounts]:
        """Open, leased and done items and reviews, per kind present."""
        rows = self._db.query(
            """
            SELECT kind,
                   SUM(done) AS done_items,
                   SUM(CASE WHEN done = 0 AND leased = 1 THEN 1 ELSE 0 END) AS leased_items,
                   SUM(CASE WHEN done = 0 AND leased = 0 THEN 1 ELSE 0 END) AS open_items,
                   SUM(reviews_done) AS reviews
            FROM (
                SELECT i.kind, i.reviews_done,
                       CASE WHEN i.reviews_done >= i.reviews_wanted THEN 1 ELSE 0 END AS done,
                       CASE WHEN EXISTS (SELECT 1 FROM review_leases l
                                         WHERE l.item_id = i.id AND l.expire_time > ?)
                            THEN 1 ELSE 0 END AS leased
                FROM review_items i
            ) AS item_states
            GROUP BY kind
            ORDER BY kind
            """,
            (now,),
        )
        return [
            KindCounts(
                ReviewKind(row["kind"]),
                row["open_items"],
                row["leased_items"],
                row["done_items"],
                row["reviews"],
            )
            for row in rows
        ]

    def reviews_per_reviewer(self) -> list[tuple[str, int]]:
        """(reviewer, reviews), most first."""
        rows = self._db.query(
            "SELECT reviewer, COUNT(*) AS n FROM reviews "
            "GROUP BY reviewer ORDER BY n DESC, reviewer"
        )
        return [(row["reviewer"], row["n"]) for row in rows]

    def judgements(self, kind: ReviewKind) -> list[Judgement]:
        """The answers of every review of items with at least two reviews."""
        rows = self._db.query(
            "SELECT r.item_id, r.reviewer, r.rating, r.preferred_model_id, r.tie "
            "FROM reviews r JOIN review_items i ON i.id = r.item_id "
            "WHERE i.kind = ? AND i.reviews_done >= 2 ORDER BY r.seq",
            (kind.value,),
        )
        return [
            Judgement(
                kind,
                row["item_id"],
                row["reviewer"],
                row["rating"] if kind is ReviewKind.RATING else row["preferred_model_id"],
            )
            for row in rows
        ]

    def pairwise_outcomes(self, model_x: str, model_y: str) -> list[str]:
        """The preferred model id ("" for a tie) of every review comparing the two models."""
        rows = self._db.query(
            "SELECT r.preferred_model_id FROM reviews r JOIN review_items i ON i.id = r.item_id "
            "WHERE i.kind = 'pairwise' AND ((i.model_id_a = ? AND i.model_id_b = ?) "
            "OR (i.model_id_a = ? AND i.model_id_b = ?))",
            (model_x, model_y, model_y, model_x),
        )
        return [row["preferred_model_id"] for row in rows]

    def pairwise_to_export(self, include_exported: bool) -> list[tuple[Item, list[Review]]]:
        """Finished pairwise items (none of whose reviews were exported, unless included)."""
        return self._finished_with_reviews(ReviewKind.PAIRWISE, include_exported)

    def corrections_to_export(self, include_exported: bool) -> list[tuple[Item, Review]]:
        """Correction reviews (not exported yet, unless included), with their items."""
        rows = self._db.query(
            "SELECT r.*, i.kind FROM reviews r JOIN review_items i ON i.id = r.item_id "
            "WHERE i.kind = 'correction' AND (? = 1 OR NOT EXISTS ("
            "    SELECT 1 FROM review_exports e WHERE e.review_id = r.id)) "
            "ORDER BY r.seq",
            (int(include_exported),),
        )
        items: dict[str, Item] = {}
        result = []
        for row in rows:
            if row["item_id"] not in items:
                items[row["item_id"]] = self.get_item(row["item_id"])
            result.append((items[row["item_id"]], _review(row)))
        return result

    def _finished_with_reviews(
        self, kind: ReviewKind, include_exported: bool
    ) -> list[tuple[Item, list[Review]]]:
        items = self._db.query(
            "SELECT * FROM review_items i WHERE i.kind = ? AND i.reviews_done >= i.reviews_wanted "
            "AND (? = 1 OR NOT EXISTS (SELECT 1 FROM reviews r JOIN review_exports e "
            "    ON e.review_id = r.id WHERE r.item_id = i.id)) ORDER BY i.seq",
            (kind.value, int(include_exported)),
        )
        result = []
        for row in items:
            reviews = self._db.query(
                "SELECT r.*, ? AS kind FROM reviews r WHERE r.item_id = ? ORDER BY r.seq",
                (kind.value, row["id"]),
            )
            result.append((_item(row), [_review(r) for r in reviews]))
        return result

    def mark_exported(
        self, records: Sequence[ExportedRecord], dataset_version_id: str, now: float
    ) -> None:
        """Records which line of which dataset version each review went into."""
        with self._db.transaction() as connection:
            for record in records:
                for review_id in record.review_ids:
                    connection.execute(
                        "INSERT INTO review_exports "
                        "(review_id, dataset_version_id, record, export_time) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (review_id, dataset_version_id) DO UPDATE SET "
                        "record = excluded.record, export_time = excluded.export_time",
                        (review_id, dataset_version_id, record.record, now),
                    )

    def erase(self, holds: Callable[[Iterable[str]], bool]) -> ErasedReviewData:
        """Deletes, in one transaction, every item ``holds`` is true of (of any of its
        texts) with its reviews, their export marks, its leases and skips; every other
        review ``holds`` is true of; and the leases and skips of reviewers whose name
        it is true of.

        Nothing of the deleted rows is left in the store's files after
        (``Database.scrub_erased``), nor in SQLite's log once no other
        connection is reading.
        """
        with self._db.transaction() as connection:
            items = [
                row["id"]
                for row in keyset_scan(connection, _ITEMS_TO_SCAN, "seq", 0)
                if holds(_item_texts(row))
            ]
            erased = set(items)
            reviews = [
                (row["id"], row["item_id"])
                for row in keyset_scan(connection, _REVIEWS_TO_SCAN, "seq", 0)
                if row["item_id"] in erased or holds(_review_texts(row))
            ]
            reviewers = [
                row["reviewer"]
                for row in connection.execute(
                    "SELECT reviewer FROM review_leases UNION SELECT reviewer FROM review_skips"
                ).fetchall()
                if holds([row["reviewer"]])
            ]
            _delete_reviews(connection, reviews, erased)
            _delete_items(connection, items)
            _forget_reviewers(connection, reviewers)
        if items or reviews or reviewers:
            self._db.scrub_erased(_ERASED_TABLES)
        return ErasedReviewData(tuple(items), len(reviews))

    def live_leases(self, now: float) -> list[tuple[str, str]]:
        """(item id, reviewer) of every live lease; for checks of the queue's invariants."""
        rows = self._db.query(
            "SELECT item_id, reviewer FROM review_leases WHERE expire_time > ? ORDER BY item_id",
            (now,),
        )
        return [(row["item_id"], row["reviewer"]) for row in rows]

    def close(self) -> None:
        self._db.close()


def _preferred_model(item: Item, preferred: str, swapped: bool) -> str:
    """The model whose reply the reviewer preferred, undoing the lease's shuffle."""
    if item.kind is not ReviewKind.PAIRWISE or preferred not in ("a", "b"):
        return ""
    first = (preferred == "a") != swapped
    return item.model_id_a if first else item.model_id_b


def _not_leased(item_id: str, reviewer: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"item {item_id!r} is not leased to reviewer {reviewer!r}",
        [PreconditionViolation("NOT_LEASED", _subject(item_id), f"no lease held by {reviewer}")],
    )

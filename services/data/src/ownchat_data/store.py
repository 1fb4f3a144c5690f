"""The data service's own store: datasets and their versions (SQLite or PostgreSQL)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ownchat.artifacts import Artifact
from ownchat.database import Database, Migrations, Row
from ownchat.errors import NotFoundError

MIGRATIONS = Migrations("data", Path(__file__).with_name("migrations"))


@dataclass(frozen=True)
class Erasure:
    """The audit record of one erasure. Erased values are kept only as hashes."""

    id: str
    dataset_name: str
    create_time: float
    value_sha256: tuple[str, ...]
    source_records: tuple[str, ...]
    removed_samples: int
    new_version_id: str
    erased_version_ids: tuple[str, ...]
    deleted_artifacts: tuple[str, ...]
    # None until the trainer has blocked the models trained on the erased versions.
    blocked_model_ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SanitizationReport:
    """Messages changed by step and samples removed by reason."""

    changed: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordIssue:
    """A record skipped under the skip-and-report policy, and why."""

    record: int
    reason: str


@dataclass(frozen=True)
class DatasetVersion:
    """An immutable version of a dataset and where its splits are stored."""

    id: str
    dataset_name: str
    content_digest: str
    kind: str
    samples: int
    train_samples: int
    validation_samples: int
    messages: int
    skipped_records: int
    train_split: Artifact
    validation_split: Artifact
    source: Artifact
    source_file_name: str
    create_time: float
    skipped: tuple[RecordIssue, ...] = ()
    sanitization: SanitizationReport = SanitizationReport()
    erased_by: str = ""
    # Counted with the tokenizer of the base model named here; 0 and "" when none was given.
    tokens: int = 0
    tokenizer: str = ""
    # (exclusive upper bound in tokens, or None for the open last bucket; samples)
    length_histogram: tuple[tuple[int | None, int], ...] = ()


@dataclass(frozen=True)
class Dataset:
    """A dataset's name and a summary of its versions."""

    name: str
    version_count: int
    latest_version_id: str
    create_time: float


def _version(row: Row) -> DatasetVersion:
    return DatasetVersion(
        id=row["id"],
        dataset_name=row["dataset_name"],
        content_digest=row["content_digest"],
        kind=row["kind"],
        samples=row["samples"],
        train_samples=row["train_samples"],
        validation_samples=row["validation_samples"],
        messages=row["messages"],
        skipped_records=row["skipped_records"],
        train_split=Artifact(row["train_digest"], row["train_bytes"]),
        validation_split=Artifact(row["validation_digest"], row["validation_bytes"]),
        source=Artifact(row["source_digest"], row["source_bytes"]),
        source_file_name=row["source_file_name"],
        create_time=row["create_time"],
        skipped=tuple(RecordIssue(**issue) for issue in json.loads(row["skipped"])),
        sanitization=SanitizationReport(**json.loads(row["sanitization"])),
        erased_by=row["erased_by"],
        tokens=row["tokens"],
        tokenizer=row["tokenizer"],
        length_histogram=tuple(
            (bound, samples) for bound, samples in json.loads(row["length_histogram"])
        ),
    )


class DataStore:
    """Reads and writes the data service's tables."""

    def __init__(self, location: Path | str) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self._db = Database(location, MIGRATIONS)

    def add_version(self, version: DatasetVersion) -> DatasetVersion:
        """Records a version; an identical one already stored is returned instead."""
        with self._db.transaction() as connection:
            existing = connection.execute(
                "SELECT * FROM dataset_versions WHERE id = ?", (version.id,)
            ).fetchone()
            if existing is not None:
                return _version(existing)
            connection.execute(
                "INSERT INTO datasets (name, create_time) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (version.dataset_name, time.time()),
            )
            connection.execute(
                "INSERT INTO dataset_versions VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version.id,
                    version.dataset_name,
                    version.content_digest,
                    version.kind,
                    version.samples,
                    version.train_samples,
                    version.validation_samples,
                    version.messages,
                    version.skipped_records,
                    version.train_split.digest,
                    version.train_split.size_bytes,
                    version.validation_split.digest,
                    version.validation_split.size_bytes,
                    version.source.digest,
                    version.source.size_bytes,
                    version.source_file_name,
                    version.create_time,
                    json.dumps([vars(issue) for issue in version.skipped]),
                    json.dumps(vars(version.sanitization)),
                    version.erased_by,
                    version.tokens,
                    version.tokenizer,
                    json.dumps([list(bucket) for bucket in version.length_histogram]),
                ),
            )
        return version

    def get_version(self, version_id: str) -> DatasetVersion:
        rows = self._db.query("SELECT * FROM dataset_versions WHERE id = ?", (version_id,))
        if not rows:
            raise NotFoundError("dataset version", version_id)
        return _version(rows[0])

    def list_versions(self, dataset_name: str, limit: int, offset: int) -> list[DatasetVersion]:
        rows = self._db.query(
            "SELECT * FROM dataset_versions WHERE dataset_name = ? "
            "ORDER BY create_time DESC, id LIMIT ? OFFSET ?",
            (dataset_name, limit, offset),
        )
        return [_version(row) for row in rows]

    def list_datasets(self, limit: int, offset: int) -> list[Dataset]:
        rows = self._db.query(
            "SELECT d.name, d.create_time, COUNT(v.id) AS version_count, "
            "(SELECT id FROM dataset_versions WHERE dataset_name = d.name "
            " ORDER BY create_time DESC LIMIT 1) AS latest "
            "FROM datasets d LEFT JOIN dataset_versions v ON v.dataset_name = d.name "
            "GROUP BY d.name ORDER BY d.create_time DESC, d.name LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [
            Dataset(row["name"], row["version_count"], row["latest"] or "", row["create_time"])
            for row in rows
        ]

    def record_erasure(self, erasure: Erasure) -> None:
        """Stores the audit record and marks the versions whose files were deleted."""
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO erasures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    erasure.id,
                    erasure.dataset_name,
                    erasure.create_time,
                    json.dumps(erasure.value_sha256),
                    json.dumps(erasure.source_records),
                    erasure.removed_samples,
                    erasure.new_version_id,
                    json.dumps(erasure.erased_version_ids),
                    json.dumps(erasure.deleted_artifacts),
                ),
            )
            for version_id in erasure.erased_version_ids:
                connection.execute(
                    "UPDATE dataset_versions SET erased_by = ? WHERE id = ?",
                    (erasure.id, version_id),
                )

    def set_blocked_models(self, erasure_id: str, model_ids: list[str]) -> None:
        """Records that the trainer blocked the models of an erasure."""
        with self._db.transaction() as connection:
            connection.execute(
                "UPDATE erasures SET blocked_model_ids = ? WHERE id = ?",
                (json.dumps(model_ids), erasure_id),
            )

    def versions_using(self, digests: set[str]) -> list[str]:
        """Ids of versions (of any dataset) whose splits or source are among ``digests``."""
        if not digests:
            return []
        marks = ", ".join("?" * len(digests))
        rows = self._db.query(
            f"SELECT id FROM dataset_versions WHERE train_digest IN ({marks}) "
            f"OR validation_digest IN ({marks}) OR source_digest IN ({marks}) ORDER BY id",
            [*digests, *digests, *digests],
        )
        return [row["id"] for row in rows]

    def list_erasures(self) -> list[Erasure]:
        rows = self._db.query("SELECT id FROM erasures ORDER BY create_time")
        return [self.get_erasure(row["id"]) for row in rows]

    def get_erasure(self, erasure_id: str) -> Erasure:
        rows = self._db.query("SELECT * FROM erasures WHERE id = ?", (erasure_id,))
        if not rows:
            raise NotFoundError("erasure", erasure_id)
        row = rows[0]
        return Erasure(
            id=row["id"],
            dataset_name=row["dataset_name"],
            create_time=row["create_time"],
            value_sha256=tuple(json.loads(row["value_sha256"])),
            source_records=tuple(json.loads(row["source_records"])),
            removed_samples=row["removed_samples"],
            new_version_id=row["new_version_id"],
            erased_version_ids=tuple(json.loads(row["erased_version_ids"])),
            deleted_artifacts=tuple(json.loads(row["deleted_artifacts"])),
            blocked_model_ids=(
                tuple(json.loads(row["blocked_model_ids"]))
                if row["blocked_model_ids"] is not None
                else None
            ),
        )

    def close(self) -> None:
        self._db.close()

"""The data service's core: turning an uploaded file into a dataset version.

Knows nothing of gRPC. The upload is parsed as it streams; the source file and
both splits are written into the artifact store as they go, and become visible
only when every record was valid: a bad upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ownchat.artifacts import Artifact, ArtifactStore, HashingWriter
from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    PreconditionViolation,
    ResourceExhaustedError,
    UnavailableError,
)
from ownchat_data.chat_jsonl import ChatSample, parse_chat_jsonl
from ownchat_data.csv_transcript import CsvColumns, parse_csv_transcript
from ownchat_data.documents import TextSample, parse_document
from ownchat_data.preference_jsonl import PreferenceSample, parse_preference_jsonl
from ownchat_data.preflight import LintReport, context_length, lint
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge, Sample
from ownchat_data.sanitize import SanitizeOptions, Sanitizer
from ownchat_data.sharegpt import parse_sharegpt
from ownchat_data.store import Dataset, DatasetVersion, DataStore, RecordIssue

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_REPORTED_ERRORS = 50


class SourceFormat(Enum):
    """Formats an upload can be in."""

    OPENAI_CHAT_JSONL = "openai_chat_jsonl"
    SHAREGPT_JSON = "sharegpt_json"
    CSV_TRANSCRIPT = "csv_transcript"
    PREFERENCE_JSONL = "preference_jsonl"
    DOCUMENT = "document"


class BadRecordPolicy(Enum):
    """What to do with records that fail validation."""

    REJECT_ALL = "reject_all"
    SKIP_AND_REPORT = "skip_and_report"


KIND_BY_FORMAT = {
    SourceFormat.OPENAI_CHAT_JSONL: "chat",
    SourceFormat.SHAREGPT_JSON: "chat",
    SourceFormat.CSV_TRANSCRIPT: "chat",
    SourceFormat.PREFERENCE_JSONL: "preference",
    SourceFormat.DOCUMENT: "text",
}


@dataclass(frozen=True)
class UploadSpec:
    """What an upload is and how to split it."""

    dataset_name: str
    file_name: str
    format: SourceFormat | None
    validation_fraction: float = 0.1
    split_seed: int = 0
    bad_record_policy: BadRecordPolicy = BadRecordPolicy.REJECT_ALL
    csv_columns: CsvColumns = CsvColumns()
    sanitize: SanitizeOptions = SanitizeOptions()


def validate_spec(spec: UploadSpec) -> None:
    """Refuses a bad header with every problem at once."""
    violations = []
    if not DATASET_NAME.match(spec.dataset_name):
        violations.append(
            FieldViolation(
                "header.dataset_name",
                "must be 1-64 characters of lowercase letters, digits, '-' and '_'",
            )
        )
    if spec.format is None:
        supported = ", ".join(f"SOURCE_FORMAT_{f.name}" for f in SourceFormat)
        violations.append(FieldViolation("header.format", f"must be one of {supported}"))
    if not 0 <= spec.validation_fraction <= 0.5:
        violations.append(FieldViolation("header.validation_fraction", "must be within [0, 0.5]"))
    if len(spec.file_name) > 255:
        violations.append(FieldViolation("header.file_name", "must be at most 255 characters"))
    if violations:
        raise InvalidArgumentError("invalid upload header", violations)


def split_score(sample_line: str, seed: int) -> float:
    """A sample's place in [0, 1): below the validation fraction means validation."""
    digest = hashlib.sha256(f"{seed}:{sample_line}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _records(
    spec: UploadSpec, chunks: Iterable[bytes], max_record_bytes: int
) -> Iterator[Sample | RecordError]:
    if spec.format is SourceFormat.SHAREGPT_JSON:
        return parse_sharegpt(chunks, max_record_bytes)
    if spec.format is SourceFormat.CSV_TRANSCRIPT:
        return parse_csv_transcript(chunks, max_record_bytes, spec.csv_columns)
    if spec.format is SourceFormat.PREFERENCE_JSONL:
        return parse_preference_jsonl(chunks, max_record_bytes)
    if spec.format is SourceFormat.DOCUMENT:
        return parse_document(chunks, spec.file_name)
    return parse_chat_jsonl(chunks, max_record_bytes)


def _position(spec: UploadSpec, record: int) -> str:
    if spec.format is SourceFormat.SHAREGPT_JSON:
        return f"item {record}"
    if spec.format is SourceFormat.CSV_TRANSCRIPT:
        return f"row {record}"
    if spec.format is SourceFormat.DOCUMENT:
        return f"chunk {record}"
    return f"line {record}"


_READERS: dict[str, Callable[[str], ChatSample | PreferenceSample | TextSample]] = {
    "chat": ChatSample.from_json,
    "preference": PreferenceSample.from_json,
    "text": TextSample.from_json,
}


def _messages(sample: Sample) -> int:
    if isinstance(sample, ChatSample):
        return len(sample.messages)
    if isinstance(sample, PreferenceSample):
        return len(sample.prompt) + 1
    return 0


class DataCore:
    """Dataset versions: creating them from uploads and reading them back."""

    def __init__(
        self,
        store: DataStore,
        artifacts: ArtifactStore,
        max_upload_bytes: int,
        max_record_bytes: int,
        models: Callable[[str], Path] | None = None,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._max_upload_bytes = max_upload_bytes
        self._max_record_bytes = max_record_bytes
        self._models = models
        self._tokenizers: dict[Path, Any] = {}

    def _limited(self, chunks: Iterable[bytes], source_writer: HashingWriter) -> Iterator[bytes]:
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > self._max_upload_bytes:
                raise ResourceExhaustedError(
                    f"upload is larger than the limit of {self._max_upload_bytes} bytes"
                )
            source_writer.write(chunk)
            yield chunk

    def upload(self, spec: UploadSpec, chunks: Iterable[bytes]) -> DatasetVersion:
        """Parses, validates, splits and stores one source file as a version."""
        validate_spec(spec)
        name = spec.file_name or "upload"
        errors: list[RecordError] = []
        error_count = 0
        skip = spec.bad_record_policy is BadRecordPolicy.SKIP_AND_REPORT
        counts = {"samples": 0, "train": 0, "validation": 0, "messages": 0}
        sanitizer = Sanitizer(spec.sanitize)
        # Every writer commits only if its block ends without an exception.
        with (
            self._artifacts.writer() as source,
            self._artifacts.writer() as train,
            self._artifacts.writer() as validation,
        ):
            try:
                for parsed in _records(spec, self._limited(chunks, source), self._max_record_bytes):
                    if isinstance(parsed, RecordError):
                        error_count += 1
                        if len(errors) < MAX_REPORTED_ERRORS:
                            errors.append(parsed)
                        continue
                    if error_count and not skip:
                        continue
                    sample = sanitizer.apply(parsed)
                    if sample is not None:
                        self._place(sample, spec, train, validation, counts)
            except RecordTooLarge as error:
                where = _position(spec, error.record) if error.record else "a record"
                reason = f"{where} is longer than {error.limit} bytes"
                raise InvalidArgumentError(
                    f"{name}: {reason}", [FieldViolation(where, reason)]
                ) from None
            except MalformedSource as error:
                where = _position(spec, error.record) if error.record else "content"
                raise InvalidArgumentError(
                    f"{name}: {error.reason}", [FieldViolation(where, error.reason)]
                ) from None
            if error_count and not (skip and counts["samples"]):
                more = error_count - len(errors)
                message = f"{error_count} malformed record(s) in {name}"
                if more:
                    message += f" (first {len(errors)} listed)"
                raise InvalidArgumentError(
                    message,
                    [FieldViolation(_position(spec, e.record), e.reason) for e in errors],
                )
            if counts["samples"] == 0:
                removed = sanitizer.report().removed
                reason = (
                    "every sample was removed by sanitization ("
                    + ", ".join(f"{why}: {n}" for why, n in sorted(removed.items()))
                    + ")"
                    if removed
                    else "no record"
                )
                raise InvalidArgumentError(
                    "the upload holds no usable sample", [FieldViolation("content", reason)]
                )
        train_split = Artifact(f"sha256:{train.hexdigest}", train.size_bytes)
        validation_split = Artifact(f"sha256:{validation.hexdigest}", validation.size_bytes)
        if counts["validation"] == 0 and spec.validation_fraction > 0 and counts["samples"] >= 2:
            train_split, validation_split = self._hold_out_one(train_split, spec.split_seed)
            counts["train"] -= 1
            counts["validation"] = 1
        content_digest = hashlib.sha256(
            f"{train_split.digest}\n{validation_split.digest}".encode()
        ).hexdigest()
        version_hash = hashlib.sha256(f"{spec.dataset_name}\n{content_digest}".encode())
        version = DatasetVersion(
            id=f"dsv_{version_hash.hexdigest()[:20]}",
            dataset_name=spec.dataset_name,
            content_digest=f"sha256:{content_digest}",
            kind=KIND_BY_FORMAT[spec.format] if spec.format else "chat",
            samples=counts["samples"],
            train_samples=counts["train"],
            validation_samples=counts["validation"],
            messages=counts["messages"],
            skipped_records=error_count,
            train_split=train_split,
            validation_split=validation_split,
            source=Artifact(f"sha256:{source.hexdigest}", source.size_bytes),
            source_file_name=spec.file_name,
            create_time=time.time(),
            skipped=tuple(RecordIssue(e.record, e.reason) for e in errors),
            sanitization=sanitizer.report(),
        )
        return self._store.add_version(version)

    @staticmethod
    def _place(
        sample: Sample,
        spec: UploadSpec,
        train: HashingWriter,
        validation: HashingWriter,
        counts: dict[str, int],
    ) -> None:
        line = sample.to_json()
        held_out = split_score(line, spec.split_seed) < spec.validation_fraction
        target = validation if held_out else train
        target.write(line.encode() + b"\n")
        counts["validation" if held_out else "train"] += 1
        counts["samples"] += 1
        counts["messages"] += _messages(sample)

    def _hold_out_one(self, train_split: Artifact, seed: int) -> tuple[Artifact, Artifact]:
        """Moves the lowest-scoring sample to validation so a small set still has one."""
        lines = self._artifacts.path(train_split.digest).read_text().splitlines()
        chosen = min(range(len(lines)), key=lambda i: split_score(lines[i], seed))
        held = lines.pop(chosen)
        new_train = self._artifacts.put_bytes("".join(f"{line}\n" for line in lines).encode())
        new_validation = self._artifacts.put_bytes(f"{held}\n".encode())
        return new_train, new_validation

    def get_version(self, version_id: str) -> DatasetVersion:
        return self._store.get_version(version_id)

    def list_versions(self, dataset_name: str, limit: int, offset: int) -> list[DatasetVersion]:
        return self._store.list_versions(dataset_name, limit, offset)

    def list_datasets(self, limit: int, offset: int) -> list[Dataset]:
        return self._store.list_datasets(limit, offset)

    def preview(
        self, version_id: str, validation: bool, limit: int
    ) -> list[ChatSample | PreferenceSample | TextSample]:
        """The first samples of one split."""
        version = self._store.get_version(version_id)
        split = version.validation_split if validation else version.train_split
        samples: list[ChatSample | PreferenceSample | TextSample] = []
        with self._artifacts.path(split.digest).open(encoding="utf-8") as handle:
            for line in handle:
                if len(samples) >= limit:
                    break
                samples.append(_READERS[version.kind](line))
        return samples

    def lint(self, version_id: str, base_model: str, max_samples: int) -> LintReport:
        """Renders a chat version through a base model's template; see ``preflight``."""
        if max_samples < 0:
            raise InvalidArgumentError(
                "invalid pre-flight request", [FieldViolation("max_samples", "must be 0 or more")]
            )
        version = self._store.get_version(version_id)
        if version.kind != "chat":
            raise FailedPreconditionError(
                f"dataset version {version_id} holds {version.kind} samples; "
                "the pre-flight check renders chat samples",
                [PreconditionViolation("SAMPLE_KIND", version_id, "not a chat dataset version")],
            )
        if self._models is None:
            raise UnavailableError("no model registry is configured for pre-flight checks")
        model_dir = self._models(base_model)
        if model_dir not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[model_dir] = AutoTokenizer.from_pretrained(
                model_dir, local_files_only=True, trust_remote_code=False
            )
        tokenizer = self._tokenizers[model_dir]
        config = json.loads((model_dir / "config.json").read_text())
        samples = itertools.chain(
            self._read(version.train_split, max_samples),
            self._read(version.validation_split, max_samples),
        )
        return lint(samples, tokenizer, context_length(tokenizer, config))

    def _read(self, split: Artifact, limit: int) -> Iterator[ChatSample]:
        with self._artifacts.path(split.digest).open(encoding="utf-8") as handle:
            for count, line in enumerate(handle):
                if limit and count >= limit:
                    return
                yield ChatSample.from_json(line)

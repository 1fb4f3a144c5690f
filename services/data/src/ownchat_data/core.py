"""The data service's core: turning an uploaded file into a dataset version.

Knows nothing of gRPC. The upload is parsed as it streams; the source file and
both splits are written into the artifact store as they go, and become visible
only when every record was valid: a bad upload leaves nothing behind.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import IO, Any

from ownchat.artifacts import Artifact, ArtifactStore, HashingWriter
from ownchat.erasure import MIN_VALUE_CHARS, too_short
from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OwnchatError,
    PreconditionViolation,
    ResourceExhaustedError,
    UnavailableError,
)
from ownchat_data.archive import ArchiveReader
from ownchat_data.chat_jsonl import ChatSample, parse_chat_jsonl
from ownchat_data.csv_transcript import CsvColumns, parse_csv_transcript
from ownchat_data.dedup import Deduplicator, Split, assign_splits
from ownchat_data.documents import TextSample, parse_document
from ownchat_data.erasure import (
    ErasureRequest,
    file_contains,
    sample_is_erased,
)
from ownchat_data.faq import parse_faq
from ownchat_data.pii import RedactionMode, Redactor
from ownchat_data.preference_jsonl import PreferenceSample, parse_preference_jsonl
from ownchat_data.preflight import LintReport, lint
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge, Sample
from ownchat_data.sanitize import SanitizeOptions, Sanitizer
from ownchat_data.sharegpt import parse_sharegpt
from ownchat_data.store import Dataset, DatasetVersion, DataStore, Erasure, RecordIssue
from ownchat_data.tokens import ModelTokenizer, TokenStats

logger = logging.getLogger("ownchat.data")

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_REPORTED_ERRORS = 50
LANGUAGE_CODE = re.compile(r"^[a-z]{2}$")


class SourceFormat(Enum):
    """Formats an upload can be in."""

    OPENAI_CHAT_JSONL = "openai_chat_jsonl"
    SHAREGPT_JSON = "sharegpt_json"
    CSV_TRANSCRIPT = "csv_transcript"
    PREFERENCE_JSONL = "preference_jsonl"
    DOCUMENT = "document"
    FAQ = "faq"
    ARCHIVE = "archive"


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
    SourceFormat.FAQ: "chat",
    SourceFormat.ARCHIVE: "chat",
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
    # Empty: tokens are not counted and no sample is removed as too long.
    base_model: str = ""


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
    # 1 holds every sample out: an evaluation-only version (a held-out question set).
    if not 0 <= spec.validation_fraction <= 1:
        violations.append(FieldViolation("header.validation_fraction", "must be within [0, 1]"))
    bad_languages = [code for code in spec.sanitize.languages if not LANGUAGE_CODE.match(code)]
    if bad_languages:
        violations.append(
            FieldViolation(
                "header.sanitize.languages",
                f"expected ISO 639-1 codes such as 'en', got {', '.join(map(repr, bad_languages))}",
            )
        )
    if spec.sanitize.max_tokens < 0:
        violations.append(FieldViolation("header.sanitize.max_tokens", "must be 0 or more"))
    elif spec.sanitize.max_tokens and not spec.base_model:
        violations.append(
            FieldViolation(
                "header.sanitize.max_tokens",
                "needs header.base_model: tokens are counted with that model's tokenizer",
            )
        )
    if len(spec.file_name) > 255:
        violations.append(FieldViolation("header.file_name", "must be at most 255 characters"))
    if violations:
        raise InvalidArgumentError("invalid upload header", violations)


@dataclass(frozen=True)
class _Parsed:
    """An upload's records as they are parsed, and how to name a record's position."""

    records: Iterator[Sample | RecordError]
    position: Callable[[int], str]
    # An archive's record numbers run across its members, so a skipped record's
    # reason says which member and where in it.
    reason_names_position: bool = False

    def issue(self, error: RecordError) -> RecordIssue:
        if self.reason_names_position:
            return RecordIssue(error.record, f"{self.position(error.record)}: {error.reason}")
        return RecordIssue(error.record, error.reason)


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
    if spec.format is SourceFormat.FAQ:
        return parse_faq(chunks, max_record_bytes, spec.file_name)
    return parse_chat_jsonl(chunks, max_record_bytes)


def _position(spec: UploadSpec, record: int) -> str:
    if spec.format is SourceFormat.SHAREGPT_JSON:
        return f"item {record}"
    if spec.format is SourceFormat.CSV_TRANSCRIPT:
        return f"row {record}"
    if spec.format is SourceFormat.DOCUMENT:
        return f"chunk {record}"
    if spec.format is SourceFormat.FAQ:
        return f"question {record}"
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


@dataclass
class _RecordIssues:
    """Refused records: all counted, the first few kept for the report."""

    count: int = 0
    listed: list[RecordError] = field(default_factory=list)

    def add(self, error: RecordError) -> None:
        self.count += 1
        if len(self.listed) < MAX_REPORTED_ERRORS:
            self.listed.append(error)


@dataclass
class _SplitCounts:
    train: int = 0
    validation: int = 0
    messages: int = 0
    lengths: TokenStats = field(default_factory=TokenStats)


def _turns(sample: Sample) -> list[tuple[str, str]]:
    """What the deduplicator compares of a sample."""
    if isinstance(sample, ChatSample):
        return [(m.role, m.content) for m in sample.messages]
    if isinstance(sample, PreferenceSample):
        return [(m.role, m.content) for m in sample.prompt] + [("assistant", sample.chosen)]
    if isinstance(sample, TextSample):
        return [("assistant", sample.text)]
    return []


def _nothing_left(sanitizer: Sanitizer) -> InvalidArgumentError:
    removed = sanitizer.report().removed
    reason = (
        "every sample was removed by sanitization ("
        + ", ".join(f"{why}: {n}" for why, n in sorted(removed.items()))
        + ")"
        if removed
        else "no record"
    )
    return InvalidArgumentError(
        f"the upload holds no usable sample: {reason}", [FieldViolation("content", reason)]
    )


def _write_splits(
    staging: IO[bytes],
    split_of: dict[int, Split],
    train: HashingWriter,
    validation: HashingWriter,
) -> _SplitCounts:
    """Second pass: each staged sample to its group's split (removed ones are absent)."""
    counts = _SplitCounts()
    for raw in staging:
        record, messages, tokens, line = raw.split(b"\t", 3)
        side = split_of.get(int(record))
        if side is None:
            continue
        if side is Split.VALIDATION:
            validation.write(line)
            counts.validation += 1
        else:
            train.write(line)
            counts.train += 1
        counts.messages += int(messages)
        if int(tokens) >= 0:
            counts.lengths.add(int(tokens))
    return counts


@dataclass
class _Kept:
    """What remains of a version's counts as an erasure removes samples."""

    lengths: TokenStats
    messages: int


@dataclass(frozen=True)
class ErasureResult:
    """The version without the erased samples, and the audit record."""

    version: DatasetVersion
    erasure: Erasure


class DataCore:
    """Dataset versions: creating them from uploads and reading them back."""

    def __init__(
        self,
        store: DataStore,
        artifacts: ArtifactStore,
        max_upload_bytes: int,
        max_record_bytes: int,
        models: Callable[[str], Path] | None = None,
        pii_salt: bytes | None = None,
        block_models: Callable[[list[str], str], list[str]] | None = None,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._max_upload_bytes = max_upload_bytes
        self._max_record_bytes = max_record_bytes
        self._models = models
        self._pii_salt = pii_salt
        self._block_models = block_models
        self._tokenizers: dict[tuple[str, Path], ModelTokenizer] = {}

    def _limited(self, chunks: Iterable[bytes], source_writer: HashingWriter) -> Iterator[bytes]:
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > self._max_upload_bytes:
                raise ResourceExhaustedError(
                    f"upload is larger than the limit of {self._max_upload_bytes} bytes "
                    f"(refused at byte {self._max_upload_bytes + 1}; nothing was stored)"
                )
            source_writer.write(chunk)
            yield chunk

    def upload(self, spec: UploadSpec, chunks: Iterable[bytes]) -> DatasetVersion:
        """Parses, sanitizes, deduplicates, splits and stores one source file as a version.

        Two passes: the first parses and cleans each record as the bytes arrive
        and stages the kept samples in a scratch file while the deduplicator
        collects signatures; the second, once near-duplicate groups are known,
        writes each kept sample to the split of its group.
        """
        validate_spec(spec)
        if spec.sanitize.pii_mode is RedactionMode.PSEUDONYMIZE and not self._pii_salt:
            raise FailedPreconditionError(
                "pseudonymisation needs the data service's secret salt, which is not configured",
                [PreconditionViolation("PII_SALT", "data", "no salt configured")],
            )
        sanitizer = Sanitizer(spec.sanitize, self._pii_salt)
        counter = self._model_tokenizer(spec.base_model) if spec.base_model else None
        issues = _RecordIssues()
        # Every writer commits only if its block ends without an exception.
        with (
            self._artifacts.writer() as source,
            tempfile.TemporaryFile(dir=self._artifacts.tmp_dir) as staging,
            Deduplicator(work_dir=self._artifacts.tmp_dir) as dedup,
        ):
            parsed = self._parse(spec, self._limited(chunks, source))
            staged = self._stage(spec, parsed, staging, sanitizer, dedup, issues, counter)
            result = dedup.finish()
            removed = set()
            if spec.sanitize.remove_near_duplicates:
                removed = {record for group in result.groups for record in group[1:]}
            sanitizer.count_removed("exact_duplicate", len(result.exact_duplicates))
            sanitizer.count_removed("near_duplicate", len(removed))
            if staged - len(removed) == 0:
                raise _nothing_left(sanitizer)
            keys = {r: key for r, key in result.group_keys.items() if r not in removed}
            split_of = assign_splits(keys, spec.validation_fraction, spec.split_seed)
            staging.seek(0)
            with self._artifacts.writer() as train, self._artifacts.writer() as validation:
                counts = _write_splits(staging, split_of, train, validation)
        train_split = Artifact(f"sha256:{train.hexdigest}", train.size_bytes)
        validation_split = Artifact(f"sha256:{validation.hexdigest}", validation.size_bytes)
        content_digest = hashlib.sha256(
            f"{train_split.digest}\n{validation_split.digest}".encode()
        ).hexdigest()
        version_hash = hashlib.sha256(f"{spec.dataset_name}\n{content_digest}".encode())
        version = DatasetVersion(
            id=f"dsv_{version_hash.hexdigest()[:20]}",
            dataset_name=spec.dataset_name,
            content_digest=f"sha256:{content_digest}",
            kind=KIND_BY_FORMAT[spec.format] if spec.format else "chat",
            samples=counts.train + counts.validation,
            train_samples=counts.train,
            validation_samples=counts.validation,
            messages=counts.messages,
            skipped_records=issues.count,
            train_split=train_split,
            validation_split=validation_split,
            source=Artifact(f"sha256:{source.hexdigest}", source.size_bytes),
            source_file_name=spec.file_name,
            create_time=time.time(),
            skipped=tuple(parsed.issue(e) for e in issues.listed),
            sanitization=sanitizer.report(),
            tokens=counts.lengths.tokens if counter else 0,
            tokenizer=counter.name if counter else "",
            length_histogram=counts.lengths.histogram() if counter else (),
        )
        return self._store.add_version(version)

    def _parse(self, spec: UploadSpec, chunks: Iterable[bytes]) -> _Parsed:
        if spec.format is SourceFormat.ARCHIVE:
            # Decompressed members count against the same limit as the uploaded bytes.
            archive = ArchiveReader(
                self._max_upload_bytes,
                self._max_record_bytes,
                spec.csv_columns,
                self._artifacts.tmp_dir,
            )
            return _Parsed(archive.read(chunks), archive.position, reason_names_position=True)
        return _Parsed(
            _records(spec, chunks, self._max_record_bytes),
            functools.partial(_position, spec),
        )

    def _stage(
        self,
        spec: UploadSpec,
        parsed: _Parsed,
        staging: IO[bytes],
        sanitizer: Sanitizer,
        dedup: Deduplicator,
        issues: _RecordIssues,
        counter: ModelTokenizer | None,
    ) -> int:
        """First pass: parse, sanitize, drop too long samples and exact duplicates, stage.

        Returns how many samples were staged.
        """
        name = spec.file_name or "upload"
        max_tokens = (spec.sanitize.max_tokens or counter.context_length) if counter else 0
        skip = spec.bad_record_policy is BadRecordPolicy.SKIP_AND_REPORT
        staged = 0
        try:
            for record in parsed.records:
                if isinstance(record, RecordError):
                    issues.add(record)
                    continue
                if issues.count and not skip:
                    continue
                sample = sanitizer.apply(record)
                if sample is None:
                    continue
                if isinstance(sample, RecordError):
                    # Refused by sanitization (a pattern it cannot redact): a bad record.
                    issues.add(sample)
                    continue
                tokens = counter.count(sample) if counter else -1
                if tokens > max_tokens:
                    sanitizer.count_removed("too_long", 1)
                    continue
                if dedup.add(sample.record, _turns(sample)) is not None:
                    continue
                line = f"{sample.record}\t{_messages(sample)}\t{tokens}\t{sample.to_json()}\n"
                staging.write(line.encode())
                staged += 1
        except RecordTooLarge as error:
            where = parsed.position(error.record) if error.record else "a record"
            reason = f"{where} is longer than {error.limit} bytes"
            raise InvalidArgumentError(
                f"{name}: {reason}", [FieldViolation(where, reason)]
            ) from None
        except MalformedSource as error:
            where = error.where or (parsed.position(error.record) if error.record else "content")
            raise InvalidArgumentError(
                f"{name}: {error.reason}", [FieldViolation(where, error.reason)]
            ) from None
        if issues.count and not (skip and staged):
            message = f"{issues.count} malformed record(s) in {name}"
            if issues.count > len(issues.listed):
                message += f" (first {len(issues.listed)} listed)"
            raise InvalidArgumentError(
                message,
                [FieldViolation(parsed.position(e.record), e.reason) for e in issues.listed],
            )
        if staged == 0:
            raise _nothing_left(sanitizer)
        return staged

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

    def scrub(self, texts: list[str], mode: RedactionMode) -> tuple[list[str], int]:
        """Personal data and secrets replaced in free text (the gateway's captured chats)."""
        if sum(len(text) for text in texts) > self._max_record_bytes:
            raise InvalidArgumentError(
                "text too long to scrub",
                [FieldViolation("texts", f"at most {self._max_record_bytes} characters in all")],
            )
        if mode is RedactionMode.PSEUDONYMIZE and not self._pii_salt:
            raise FailedPreconditionError(
                "pseudonymisation needs the data service's secret salt, which is not configured",
                [PreconditionViolation("PII_SALT", "data", "no salt configured")],
            )
        redactor = Redactor(mode, salt=self._pii_salt)
        scrubbed, counts = redactor.redact_conversation(texts)
        return scrubbed, sum(counts.values())

    def export(self, version_id: str, validation: bool, chunk_bytes: int) -> Iterator[bytes]:
        """The bytes of one split's file, in chunks."""
        version = self._store.get_version(version_id)
        split = version.validation_split if validation else version.train_split
        with self._artifacts.path(split.digest).open("rb") as handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk

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
        model = self._model_tokenizer(base_model)
        samples = itertools.chain(
            self._read(version.train_split, max_samples),
            self._read(version.validation_split, max_samples),
        )
        return lint(samples, model.tokenizer, model.context_length)

    def _model_tokenizer(self, base_model: str) -> ModelTokenizer:
        """A base model's tokenizer, from the trainer's registry (loaded once)."""
        if self._models is None:
            raise UnavailableError("no model registry is configured to count tokens")
        model_dir = self._models(base_model)
        key = (base_model, model_dir)
        if key not in self._tokenizers:
            self._tokenizers[key] = ModelTokenizer.load(base_model, model_dir)
        return self._tokenizers[key]

    def _read(self, split: Artifact, limit: int) -> Iterator[ChatSample]:
        with self._artifacts.path(split.digest).open(encoding="utf-8") as handle:
            for count, line in enumerate(handle):
                if limit and count >= limit:
                    return
                yield ChatSample.from_json(line)

    def erase(self, dataset_name: str, request: ErasureRequest) -> ErasureResult:
        """Removes erased samples as a new version and deletes every stored file holding them.

        Order matters for safety: the new version is stored first, then the
        audit record (which lists the files to delete and marks the versions
        that used them), then the files are deleted; ``finish_erasures`` at
        start-up deletes whatever a crash left behind.
        """
        if not request.source_records and not request.values:
            raise InvalidArgumentError(
                "nothing to erase",
                [FieldViolation("source_records", "give source records or values")],
            )
        if too_short(request.values):
            raise InvalidArgumentError(
                "values too short to erase safely",
                [
                    FieldViolation(
                        "values", f"each value needs {MIN_VALUE_CHARS} characters or more"
                    )
                ],
            )
        versions = self._store.list_versions(dataset_name, 1 << 31, 0)
        live = [v for v in versions if not v.erased_by]
        if not live:
            raise NotFoundError("dataset", dataset_name)
        latest = live[0]
        polluted: set[str] = set()
        for version in live:
            sample_erased = False
            for split in (version.train_split, version.validation_split):
                if self._split_holds(split, version.source.digest, request):
                    polluted.add(split.digest)
                    sample_erased = True
            source_named = any(
                digest == version.source.digest for digest, _ in request.source_records
            )
            # The samples came from the source file: when one holds the data, so does
            # the file, even where its bytes spell it in a way no scan reads (an
            # expected answer's regex written with \x40 or [.]).
            if sample_erased or source_named or self._source_holds(version.source, request):
                polluted.add(version.source.digest)
        counter = self._erasure_counter(latest)
        lengths = TokenStats.from_histogram(latest.tokens, latest.length_histogram)
        kept = _Kept(lengths=lengths, messages=latest.messages)
        train, removed_train = self._without(latest, latest.train_split, request, counter, kept)
        validation, removed_validation = self._without(
            latest, latest.validation_split, request, counter, kept
        )
        content_digest = hashlib.sha256(f"{train.digest}\n{validation.digest}".encode()).hexdigest()
        version_hash = hashlib.sha256(f"{dataset_name}\n{content_digest}".encode())
        new_version = self._store.add_version(
            replace(
                latest,
                id=f"dsv_{version_hash.hexdigest()[:20]}",
                content_digest=f"sha256:{content_digest}",
                samples=latest.samples - removed_train - removed_validation,
                train_samples=latest.train_samples - removed_train,
                validation_samples=latest.validation_samples - removed_validation,
                messages=kept.messages,
                train_split=train,
                validation_split=validation,
                create_time=time.time(),
                tokens=kept.lengths.tokens if counter else 0,
                tokenizer=counter.name if counter else "",
                length_histogram=kept.lengths.histogram() if counter else (),
            )
        )
        polluted -= {train.digest, validation.digest}
        affected = self._store.versions_using(polluted)
        erasure = Erasure(
            id=f"erasure_{uuid.uuid4().hex[:16]}",
            dataset_name=dataset_name,
            create_time=time.time(),
            value_sha256=request.value_hashes(),
            source_records=tuple(f"{d}:{r}" for d, r in sorted(request.source_records)),
            removed_samples=removed_train + removed_validation,
            new_version_id=new_version.id,
            erased_version_ids=tuple(v for v in affected if v != new_version.id),
            deleted_artifacts=tuple(sorted(polluted)),
        )
        self._store.record_erasure(erasure)
        for digest in erasure.deleted_artifacts:
            self._artifacts.delete(digest)
        return ErasureResult(new_version, self._block(erasure))

    def _block(self, erasure: Erasure) -> Erasure:
        """Asks the trainer to block models trained on erased versions; kept pending if it can't."""
        if self._block_models is None:
            return erasure
        try:
            model_ids = self._block_models(
                list(erasure.erased_version_ids),
                f"trained on data erased by {erasure.id}; retrain on {erasure.new_version_id}",
            )
        except OwnchatError:
            logger.warning("models not blocked yet", extra={"erasure_id": erasure.id})
            return erasure
        self._store.set_blocked_models(erasure.id, model_ids)
        return replace(erasure, blocked_model_ids=tuple(model_ids))

    def finish_erasures(self) -> int:
        """Deletes files that recorded erasures listed but a crash left; returns how many."""
        deleted = 0
        for erasure in self._store.list_erasures():
            deleted += sum(self._artifacts.delete(d) for d in erasure.deleted_artifacts)
            if erasure.blocked_model_ids is None and erasure.erased_version_ids:
                self._block(erasure)
        return deleted

    def _samples(self, split: Artifact) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            path = self._artifacts.path(split.digest)
        except NotFoundError:
            return
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                yield line, json.loads(line)

    def _split_holds(self, split: Artifact, source: str, request: ErasureRequest) -> bool:
        return any(sample_is_erased(s, source, request) for _, s in self._samples(split))

    def _source_holds(self, source: Artifact, request: ErasureRequest) -> bool:
        try:
            return file_contains(self._artifacts.path(source.digest), request.values)
        except NotFoundError:
            return False

    def _erasure_counter(self, version: DatasetVersion) -> ModelTokenizer | None:
        """The tokenizer that counted a version's tokens, to count the erased ones out.

        An erasure must not wait for the trainer: when the tokenizer cannot be
        had, the new version simply carries no token counts.
        """
        if not version.tokenizer:
            return None
        try:
            return self._model_tokenizer(version.tokenizer)
        except OwnchatError:
            logger.warning(
                "token counts dropped from the erased version: tokenizer unavailable",
                extra={"base_model": version.tokenizer},
            )
            return None

    def _without(
        self,
        version: DatasetVersion,
        split: Artifact,
        request: ErasureRequest,
        counter: ModelTokenizer | None,
        kept: _Kept,
    ) -> tuple[Artifact, int]:
        """The split rewritten without erased samples, and how many were removed.

        ``kept`` has the removed samples' messages and tokens counted out.
        """
        removed = 0
        with self._artifacts.writer() as writer:
            for line, sample in self._samples(split):
                if not sample_is_erased(sample, version.source.digest, request):
                    writer.write(line.encode())
                    continue
                removed += 1
                erased = _READERS[version.kind](line)
                kept.messages -= _messages(erased)
                if counter is not None:
                    kept.lengths.add(counter.count(erased), sign=-1)
        return Artifact(f"sha256:{writer.hexdigest}", writer.size_bytes), removed

"""DataService over gRPC: protobuf in, plain Python to the core, protobuf out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from ownchat.common.v1 import common_pb2
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import FieldViolation, InvalidArgumentError
from ownchat.paging import next_page_token, page_window
from ownchat.roles import ROLE_BY_NAME
from ownchat.timestamps import to_timestamp
from ownchat_data.chat_jsonl import ChatSample
from ownchat_data.core import BadRecordPolicy, DataCore, SourceFormat, UploadSpec
from ownchat_data.csv_transcript import CsvColumns
from ownchat_data.documents import TextSample
from ownchat_data.erasure import ErasureRequest
from ownchat_data.pii import RedactionMode
from ownchat_data.preference_jsonl import PreferenceSample
from ownchat_data.sanitize import SanitizeOptions
from ownchat_data.store import Dataset, DatasetVersion

_FORMATS = {
    data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL: SourceFormat.OPENAI_CHAT_JSONL,
    data_pb2.SOURCE_FORMAT_SHAREGPT_JSON: SourceFormat.SHAREGPT_JSON,
    data_pb2.SOURCE_FORMAT_CSV_TRANSCRIPT: SourceFormat.CSV_TRANSCRIPT,
    data_pb2.SOURCE_FORMAT_PREFERENCE_JSONL: SourceFormat.PREFERENCE_JSONL,
    data_pb2.SOURCE_FORMAT_DOCUMENT: SourceFormat.DOCUMENT,
    data_pb2.SOURCE_FORMAT_FAQ: SourceFormat.FAQ,
    data_pb2.SOURCE_FORMAT_ARCHIVE: SourceFormat.ARCHIVE,
}
_POLICIES = {
    data_pb2.BAD_RECORD_POLICY_UNSPECIFIED: BadRecordPolicy.REJECT_ALL,
    data_pb2.BAD_RECORD_POLICY_REJECT_ALL: BadRecordPolicy.REJECT_ALL,
    data_pb2.BAD_RECORD_POLICY_SKIP_AND_REPORT: BadRecordPolicy.SKIP_AND_REPORT,
}
_PII_MODES = {
    data_pb2.PII_MODE_UNSPECIFIED: RedactionMode.PLACEHOLDER,
    data_pb2.PII_MODE_OFF: None,
    data_pb2.PII_MODE_REDACT: RedactionMode.REDACT,
    data_pb2.PII_MODE_PLACEHOLDER: RedactionMode.PLACEHOLDER,
    data_pb2.PII_MODE_PSEUDONYMIZE: RedactionMode.PSEUDONYMIZE,
}
_EXPECTED_KINDS = {
    "exact": data_pb2.EXPECTED_ANSWER_KIND_EXACT,
    "contains": data_pb2.EXPECTED_ANSWER_KIND_CONTAINS,
    "regex": data_pb2.EXPECTED_ANSWER_KIND_REGEX,
}
_KINDS = {
    "chat": data_pb2.SAMPLE_KIND_CHAT,
    "preference": data_pb2.SAMPLE_KIND_PREFERENCE,
    "text": data_pb2.SAMPLE_KIND_TEXT,
}
MAX_PREVIEW = 1000
EXPORT_CHUNK = 1024 * 1024


def _histogram(buckets: Iterable[tuple[int | None, int]]) -> list[data_pb2.LengthBucket]:
    return [
        data_pb2.LengthBucket(below_tokens=bound or 0, samples=count) for bound, count in buckets
    ]


def version_to_proto(version: DatasetVersion) -> data_pb2.DatasetVersion:
    return data_pb2.DatasetVersion(
        id=version.id,
        dataset_name=version.dataset_name,
        content_digest=version.content_digest,
        kind=_KINDS[version.kind],
        stats=data_pb2.DatasetStats(
            samples=version.samples,
            train_samples=version.train_samples,
            validation_samples=version.validation_samples,
            messages=version.messages,
            skipped_records=version.skipped_records,
            tokens=version.tokens,
            tokenizer=version.tokenizer,
            length_histogram=_histogram(version.length_histogram),
        ),
        train_split=common_pb2.ArtifactRef(
            digest=version.train_split.digest, size_bytes=version.train_split.size_bytes
        ),
        validation_split=common_pb2.ArtifactRef(
            digest=version.validation_split.digest,
            size_bytes=version.validation_split.size_bytes,
        ),
        source=common_pb2.ArtifactRef(
            digest=version.source.digest, size_bytes=version.source.size_bytes
        ),
        source_file_name=version.source_file_name,
        create_time=to_timestamp(version.create_time),
        skipped=[data_pb2.RecordIssue(record=i.record, reason=i.reason) for i in version.skipped],
        erased_by=version.erased_by,
        sanitization=data_pb2.SanitizationReport(
            changed=version.sanitization.changed, removed=version.sanitization.removed
        ),
    )


def _dataset_to_proto(dataset: Dataset) -> data_pb2.Dataset:
    return data_pb2.Dataset(
        name=dataset.name,
        version_count=dataset.version_count,
        latest_version_id=dataset.latest_version_id,
        create_time=to_timestamp(dataset.create_time),
    )


def _sample_to_proto(sample: ChatSample, source_digest: str) -> data_pb2.ChatSample:
    return data_pb2.ChatSample(
        messages=[
            common_pb2.ChatMessage(role=ROLE_BY_NAME[m.role], content=m.content)
            for m in sample.messages
        ],
        weight=sample.weight,
        lineage=data_pb2.SampleLineage(source_digest=source_digest, record=sample.record),
        expected=None
        if sample.expected is None
        else data_pb2.ExpectedAnswer(
            answer=sample.expected.answer, kind=_EXPECTED_KINDS[sample.expected.kind]
        ),
    )


def _preference_to_proto(sample: PreferenceSample, source_digest: str) -> data_pb2.PreferenceSample:
    return data_pb2.PreferenceSample(
        prompt=[
            common_pb2.ChatMessage(role=ROLE_BY_NAME[m.role], content=m.content)
            for m in sample.prompt
        ],
        chosen=sample.chosen,
        rejected=sample.rejected,
        lineage=data_pb2.SampleLineage(source_digest=source_digest, record=sample.record),
    )


def _upload_spec(header: data_pb2.UploadHeader) -> UploadSpec:
    return UploadSpec(
        dataset_name=header.dataset_name,
        file_name=header.file_name,
        format=_FORMATS.get(header.format),
        validation_fraction=(
            header.validation_fraction if header.HasField("validation_fraction") else 0.1
        ),
        split_seed=header.split_seed,
        bad_record_policy=_POLICIES.get(header.bad_record_policy, BadRecordPolicy.REJECT_ALL),
        csv_columns=CsvColumns(
            conversation_id=header.csv_columns.conversation_id or "conversation_id",
            role=header.csv_columns.role or "role",
            content=header.csv_columns.content or "content",
            order=header.csv_columns.order,
        ),
        sanitize=SanitizeOptions(
            clean=not header.sanitize.skip_cleaning,
            quality_filters=not header.sanitize.skip_quality_filters,
            remove_near_duplicates=not header.sanitize.keep_near_duplicates,
            pii_mode=_PII_MODES.get(header.sanitize.pii_mode, RedactionMode.PLACEHOLDER),
            languages=frozenset(header.sanitize.languages),
            max_tokens=header.sanitize.max_tokens,
        ),
        base_model=header.base_model,
    )


class DataServicer(data_pb2_grpc.DataServiceServicer):
    """Translates DataService calls for :class:`DataCore`.

    Every RPC of the contract is served.
    """

    def __init__(self, core: DataCore) -> None:
        self._core = core

    def UploadDatasetVersion(
        self,
        request_iterator: Iterator[data_pb2.UploadDatasetVersionRequest],
        context: grpc.ServicerContext,
    ) -> data_pb2.UploadDatasetVersionResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgumentError(
                "the first message of an upload must be its header",
                [FieldViolation("header", "missing")],
            )

        def chunks() -> Iterator[bytes]:
            for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgumentError(
                        "only the first message of an upload may be a header",
                        [FieldViolation("header", "sent twice")],
                    )
                yield message.chunk

        version = self._core.upload(_upload_spec(first.header), chunks())
        return data_pb2.UploadDatasetVersionResponse(dataset_version=version_to_proto(version))

    def GetDatasetVersion(
        self, request: data_pb2.GetDatasetVersionRequest, context: grpc.ServicerContext
    ) -> data_pb2.GetDatasetVersionResponse:
        version = self._core.get_version(request.dataset_version_id)
        return data_pb2.GetDatasetVersionResponse(dataset_version=version_to_proto(version))

    def ListDatasetVersions(
        self, request: data_pb2.ListDatasetVersionsRequest, context: grpc.ServicerContext
    ) -> data_pb2.ListDatasetVersionsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        versions = self._core.list_versions(request.dataset_name, limit, offset)
        return data_pb2.ListDatasetVersionsResponse(
            dataset_versions=[version_to_proto(v) for v in versions],
            next_page_token=next_page_token(limit, offset, len(versions)),
        )

    def ListDatasets(
        self, request: data_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> data_pb2.ListDatasetsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        datasets = self._core.list_datasets(limit, offset)
        return data_pb2.ListDatasetsResponse(
            datasets=[_dataset_to_proto(d) for d in datasets],
            next_page_token=next_page_token(limit, offset, len(datasets)),
        )

    def PreviewDatasetVersion(
        self, request: data_pb2.PreviewDatasetVersionRequest, context: grpc.ServicerContext
    ) -> data_pb2.PreviewDatasetVersionResponse:
        if not 0 <= request.limit <= MAX_PREVIEW:
            raise InvalidArgumentError(
                "invalid limit", [FieldViolation("limit", f"must be within 0..{MAX_PREVIEW}")]
            )
        validation = request.split == data_pb2.SPLIT_VALIDATION
        samples = self._core.preview(request.dataset_version_id, validation, request.limit or 10)
        source = self._core.get_version(request.dataset_version_id).source.digest
        response = data_pb2.PreviewDatasetVersionResponse()
        for sample in samples:
            if isinstance(sample, PreferenceSample):
                response.preference_samples.append(_preference_to_proto(sample, source))
            elif isinstance(sample, TextSample):
                response.text_samples.append(
                    data_pb2.TextSample(
                        text=sample.text,
                        lineage=data_pb2.SampleLineage(source_digest=source, record=sample.record),
                    )
                )
            else:
                response.samples.append(_sample_to_proto(sample, source))
        return response

    def LintDatasetVersion(
        self, request: data_pb2.LintDatasetVersionRequest, context: grpc.ServicerContext
    ) -> data_pb2.LintDatasetVersionResponse:
        report = self._core.lint(
            request.dataset_version_id, request.base_model, request.max_samples
        )
        return data_pb2.LintDatasetVersionResponse(
            rendered_sample="".join(text for text, _ in report.rendered_spans),
            total_tokens=report.total_tokens,
            loss_tokens=report.loss_tokens,
            too_long_records=report.too_long_records,
            special_token_records=report.special_token_records,
            rendered_spans=[
                data_pb2.RenderedSpan(text=text, loss=loss) for text, loss in report.rendered_spans
            ],
            samples_checked=report.samples_checked,
            max_length=report.max_length,
            length_histogram=_histogram(report.length_histogram),
        )

    def ExportDatasetVersion(
        self, request: data_pb2.ExportDatasetVersionRequest, context: grpc.ServicerContext
    ) -> Iterator[data_pb2.ExportDatasetVersionResponse]:
        validation = request.split == data_pb2.SPLIT_VALIDATION
        for chunk in self._core.export(request.dataset_version_id, validation, EXPORT_CHUNK):
            yield data_pb2.ExportDatasetVersionResponse(chunk=chunk)

    def EraseRecords(
        self, request: data_pb2.EraseRecordsRequest, context: grpc.ServicerContext
    ) -> data_pb2.EraseRecordsResponse:
        records: set[tuple[str, int]] = set()
        violations = []
        for index, reference in enumerate(request.source_records):
            digest, _, record = reference.rpartition(":")
            if not digest.startswith("sha256:") or not record.isdigit():
                violations.append(
                    FieldViolation(f"source_records[{index}]", "expected 'sha256:<hex>:<record>'")
                )
            else:
                records.add((digest, int(record)))
        if violations:
            raise InvalidArgumentError("invalid erasure request", violations)
        result = self._core.erase(
            request.dataset_name,
            ErasureRequest(frozenset(records), tuple(request.values)),
        )
        return data_pb2.EraseRecordsResponse(
            dataset_version=version_to_proto(result.version),
            removed_samples=result.erasure.removed_samples,
            audit_id=result.erasure.id,
            erased_version_ids=result.erasure.erased_version_ids,
            blocked_model_ids=result.erasure.blocked_model_ids or (),
            models_blocked=result.erasure.blocked_model_ids is not None,
        )

    def ScrubText(
        self, request: data_pb2.ScrubTextRequest, context: grpc.ServicerContext
    ) -> data_pb2.ScrubTextResponse:
        mode = _PII_MODES.get(request.mode, RedactionMode.PLACEHOLDER)
        if mode is None:
            raise InvalidArgumentError(
                "scrubbing needs a mode", [FieldViolation("mode", "PII_MODE_OFF scrubs nothing")]
            )
        if request.texts:
            texts, replacements = self._core.scrub(list(request.texts), mode)
            return data_pb2.ScrubTextResponse(texts=texts, replacements=replacements)
        [text], replacements = self._core.scrub([request.text], mode)
        return data_pb2.ScrubTextResponse(text=text, replacements=replacements)

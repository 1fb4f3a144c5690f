"""DataService over an in-process gRPC server (pytest-grpc fixtures), with the
runtime's interceptor: uploads streamed in chunks, errors as status codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import describe_rpc_error
from ownchat.interceptors import ServerInterceptor
from ownchat_data.core import DataCore
from ownchat_data.servicer import DataServicer
from ownchat_data.store import DataStore

TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-service")


@pytest.fixture(scope="module")
def grpc_interceptors() -> list[grpc.ServerInterceptor]:
    return [ServerInterceptor(TOKEN)]


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Any:
    return data_pb2_grpc.add_DataServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(state_dir: Path) -> DataServicer:
    core = DataCore(
        DataStore(state_dir / "data.db"),
        ArtifactStore(state_dir / "artifacts"),
        max_upload_bytes=1 << 20,
        max_record_bytes=1 << 16,
    )
    return DataServicer(core)


@pytest.fixture(scope="module")
def grpc_stub_cls() -> Any:
    return data_pb2_grpc.DataServiceStub


def upload(
    name: str, body: bytes, chunk: int = 5
) -> Iterator[data_pb2.UploadDatasetVersionRequest]:
    yield data_pb2.UploadDatasetVersionRequest(
        header=data_pb2.UploadHeader(
            dataset_name=name,
            file_name="chats.jsonl",
            format=data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
        )
    )
    for start in range(0, len(body), chunk):
        yield data_pb2.UploadDatasetVersionRequest(chunk=body[start : start + chunk])


def chats(count: int) -> bytes:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"a{i}"},
                ]
            }
        )
        for i in range(count)
    ]
    return "\n".join(lines).encode()


def test_upload_get_list_and_preview(grpc_stub: data_pb2_grpc.DataServiceStub) -> None:
    version = grpc_stub.UploadDatasetVersion(
        upload("faq", chats(30)), metadata=AUTH
    ).dataset_version
    assert version.id.startswith("dsv_")
    assert version.stats.samples == 30
    assert version.train_split.digest.startswith("sha256:")
    fetched = grpc_stub.GetDatasetVersion(
        data_pb2.GetDatasetVersionRequest(dataset_version_id=version.id), metadata=AUTH
    ).dataset_version
    assert fetched == version
    listed = grpc_stub.ListDatasetVersions(
        data_pb2.ListDatasetVersionsRequest(dataset_name="faq"), metadata=AUTH
    )
    assert [v.id for v in listed.dataset_versions] == [version.id]
    preview = grpc_stub.PreviewDatasetVersion(
        data_pb2.PreviewDatasetVersionRequest(
            dataset_version_id=version.id, split=data_pb2.SPLIT_TRAIN, limit=3
        ),
        metadata=AUTH,
    )
    assert len(preview.samples) == 3
    exported = b"".join(
        r.chunk
        for r in grpc_stub.ExportDatasetVersion(
            data_pb2.ExportDatasetVersionRequest(dataset_version_id=version.id), metadata=AUTH
        )
    )
    assert len(exported.splitlines()) == version.stats.train_samples
    assert preview.samples[0].lineage.source_digest == version.source.digest
    assert preview.samples[0].lineage.record >= 1


def test_a_malformed_upload_names_the_line(grpc_stub: data_pb2_grpc.DataServiceStub) -> None:
    body = chats(3) + b'\n{"messages": "nope"}\n'
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.UploadDatasetVersion(upload("broken", body), metadata=AUTH)
    description = describe_rpc_error(error.value)
    assert description.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in description.violations] == ["line 4"]
    names = [
        d.name
        for d in grpc_stub.ListDatasets(data_pb2.ListDatasetsRequest(), metadata=AUTH).datasets
    ]
    assert "broken" not in names


def test_an_upload_without_a_header_is_refused(grpc_stub: data_pb2_grpc.DataServiceStub) -> None:
    chunks = iter([data_pb2.UploadDatasetVersionRequest(chunk=b"{}")])
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.UploadDatasetVersion(chunks, metadata=AUTH)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_versions_and_bad_page_tokens(grpc_stub: data_pb2_grpc.DataServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.GetDatasetVersion(
            data_pb2.GetDatasetVersionRequest(dataset_version_id="dsv_nope"), metadata=AUTH
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.ListDatasets(data_pb2.ListDatasetsRequest(page_token="!!"), metadata=AUTH)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_calls_without_the_token_are_refused(grpc_stub: data_pb2_grpc.DataServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.ListDatasets(data_pb2.ListDatasetsRequest())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_erase_records_over_grpc(grpc_stub: data_pb2_grpc.DataServiceStub) -> None:
    body = chats(8) + b'\n{"messages": [{"role": "user", "content": "I am Quentin Marsh"}, '
    body += b'{"role": "assistant", "content": "Hello!"}]}'
    version = grpc_stub.UploadDatasetVersion(upload("erasable", body), metadata=AUTH)
    response = grpc_stub.EraseRecords(
        data_pb2.EraseRecordsRequest(dataset_name="erasable", values=["Quentin Marsh"]),
        metadata=AUTH,
    )
    assert response.removed_samples == 1
    assert response.audit_id.startswith("erasure_")
    assert version.dataset_version.id in response.erased_version_ids
    erased = grpc_stub.GetDatasetVersion(
        data_pb2.GetDatasetVersionRequest(dataset_version_id=version.dataset_version.id),
        metadata=AUTH,
    ).dataset_version
    assert erased.erased_by == response.audit_id
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.EraseRecords(
            data_pb2.EraseRecordsRequest(dataset_name="erasable", source_records=["nope:1"]),
            metadata=AUTH,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_scrub_text_for_captured_chats(grpc_stub: data_pb2_grpc.DataServiceStub) -> None:
    single = grpc_stub.ScrubText(
        data_pb2.ScrubTextRequest(text="write to ann@example.org today"), metadata=AUTH
    )
    assert single.text == "write to <EMAIL_1> today" and single.replacements == 1
    conversation = grpc_stub.ScrubText(
        data_pb2.ScrubTextRequest(
            texts=["I am ann@example.org", "Noted, ann@example.org.", "card 4111 1111 1111 1111"],
            mode=data_pb2.PII_MODE_PLACEHOLDER,
        ),
        metadata=AUTH,
    )
    assert list(conversation.texts) == [
        "I am <EMAIL_1>",
        "Noted, <EMAIL_1>.",
        "card <CREDIT_CARD_1>",
    ]
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.ScrubText(
            data_pb2.ScrubTextRequest(text="x", mode=data_pb2.PII_MODE_OFF), metadata=AUTH
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.ScrubText(data_pb2.ScrubTextRequest(text="y" * (1 << 17)), metadata=AUTH)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_preview_returns_expected_answers_redacted_like_their_messages(
    grpc_stub: data_pb2_grpc.DataServiceStub,
) -> None:
    lines = [
        {
            "messages": [
                {"role": "user", "content": "Where do receipts go?"},
                {"role": "assistant", "content": "To billing@acme-corp.example, within a day."},
            ],
            "expected": {"answer": "billing@acme-corp.example", "kind": "contains"},
        },
        {
            "messages": [
                {"role": "user", "content": "Price?"},
                {"role": "assistant", "content": "129 euros."},
            ],
            "expected": {"answer": r"\d+ ?(€|euros)", "kind": "regex"},
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    version = grpc_stub.UploadDatasetVersion(upload("priced", body), metadata=AUTH).dataset_version
    samples = [
        sample
        for split in (data_pb2.SPLIT_TRAIN, data_pb2.SPLIT_VALIDATION)
        for sample in grpc_stub.PreviewDatasetVersion(
            data_pb2.PreviewDatasetVersionRequest(
                dataset_version_id=version.id, split=split, limit=10
            ),
            metadata=AUTH,
        ).samples
    ]
    by_record = {s.lineage.record: s for s in samples}
    assert sorted(by_record) == [1, 2, 3]
    assert by_record[1].expected == data_pb2.ExpectedAnswer(
        answer="<EMAIL_1>", kind=data_pb2.EXPECTED_ANSWER_KIND_CONTAINS
    )
    assert "<EMAIL_1>" in by_record[1].messages[1].content
    assert by_record[2].expected == data_pb2.ExpectedAnswer(
        answer=r"\d+ ?(€|euros)", kind=data_pb2.EXPECTED_ANSWER_KIND_REGEX
    )
    assert not by_record[3].HasField("expected")

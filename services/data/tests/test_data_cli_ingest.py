"""``ownchat data ingest`` against a real data service on loopback: several files
become one archive upload and one chat version; a single file keeps its format."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner, Result

from ownchat.artifacts import ArtifactStore
from ownchat.cli.main import app
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.interceptors import ServerInterceptor
from ownchat_data.core import DataCore
from ownchat_data.servicer import DataServicer
from ownchat_data.store import DataStore

TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]


@dataclass
class Service:
    env: dict[str, str]
    stub: data_pb2_grpc.DataServiceStub
    artifacts: ArtifactStore


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("cli-ingest")
    store = DataStore(root / "data.db")
    artifacts = ArtifactStore(root / "artifacts")
    core = DataCore(store, artifacts, max_upload_bytes=1 << 20, max_record_bytes=1 << 16)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[ServerInterceptor(TOKEN)]
    )
    data_pb2_grpc.add_DataServiceServicer_to_server(DataServicer(core), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    env = {
        "OWNCHAT_HOME": str(root / "home"),
        "OWNCHAT_TOKEN": TOKEN,
        "OWNCHAT_DATA_ADDRESS": f"127.0.0.1:{port}",
        "COLUMNS": "200",
    }
    try:
        yield Service(env, data_pb2_grpc.DataServiceStub(channel), artifacts)
    finally:
        channel.close()
        server.stop(None).wait()
        store.close()


def ingest(service: Service, *args: str) -> Result:
    return CliRunner().invoke(app, ["data", "ingest", *args], env=service.env)


def version_of(service: Service, result: Result) -> data_pb2.DatasetVersion:
    assert result.exit_code == 0, result.output
    found = re.search(r"dsv_[0-9a-f]+", result.output)
    assert found, result.output
    request = data_pb2.GetDatasetVersionRequest(dataset_version_id=found.group())
    return service.stub.GetDatasetVersion(request, metadata=AUTH).dataset_version


def write_sources(root: Path) -> list[Path]:
    chats = "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question number {i} about routers?"},
                    {"role": "assistant", "content": f"Answer number {i}."},
                ]
            }
        )
        for i in range(3)
    )
    files = {
        "chats.jsonl": chats,
        "transcripts.csv": (
            "conversation_id,role,content\n7,customer,Is shipping free?\n7,agent,Above 50 euros.\n"
        ),
        "faq.html": "<h2>Do you ship abroad?</h2><p>To the EU.</p>",
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return [root / name for name in files]


def test_several_files_become_one_chat_version(service: Service, tmp_path: Path) -> None:
    paths = write_sources(tmp_path / "history")
    args = [*map(str, paths), "--dataset", "history", "--validation-fraction", "0"]
    result = ingest(service, *args)
    version = version_of(service, result)
    assert "5 samples" in result.output
    assert version.kind == data_pb2.SAMPLE_KIND_CHAT
    assert version.source_file_name == "history-sources.tar"
    # The stored source is the tar the CLI packed: the members by name, in order.
    source = service.artifacts.path(version.source.digest).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(source)) as archive:
        assert archive.getnames() == ["chats.jsonl", "transcripts.csv", "faq.html"]
    # Packing is deterministic: the same files give the same version.
    assert version_of(service, ingest(service, *args)).id == version.id


def test_bad_records_are_named_by_member(service: Service, tmp_path: Path) -> None:
    paths = write_sources(tmp_path / "history")
    paths[2].write_text("<h2>Do you ship abroad?</h2><h2>How long?</h2><p>3 days.</p>")
    result = ingest(service, *map(str, paths), "--dataset", "bad")
    assert result.exit_code == 1
    assert "faq.html question 1" in result.output


def test_what_several_files_cannot_do(service: Service, tmp_path: Path) -> None:
    paths = write_sources(tmp_path / "a")
    refused = ingest(service, *map(str, paths), "--dataset", "x", "--format", "openai")
    assert refused.exit_code == 2 and "--format" in refused.output
    twin = write_sources(tmp_path / "b")[0]
    clash = ingest(service, str(paths[0]), str(twin), "--dataset", "x")
    assert clash.exit_code == 2 and "same name" in clash.output


def test_a_single_file_keeps_its_format(service: Service, tmp_path: Path) -> None:
    faq = write_sources(tmp_path / "one")[2]
    as_document = version_of(service, ingest(service, str(faq), "--dataset", "manual"))
    assert as_document.kind == data_pb2.SAMPLE_KIND_TEXT
    held_out = ["--format", "faq", "--validation-fraction", "1"]
    as_faq = version_of(service, ingest(service, str(faq), "--dataset", "faq", *held_out))
    assert as_faq.kind == data_pb2.SAMPLE_KIND_CHAT
    # An evaluation-only version: the one question is held out.
    assert (as_faq.stats.train_samples, as_faq.stats.validation_samples) == (0, 1)
    packed = tmp_path / "history.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        for path in write_sources(tmp_path / "two"):
            archive.add(path, arcname=path.name)
    archived = version_of(service, ingest(service, str(packed), "--dataset", "packed"))
    assert archived.kind == data_pb2.SAMPLE_KIND_CHAT
    assert archived.stats.samples == 5

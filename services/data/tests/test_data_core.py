"""Uploads through the data service's core: versions, splits, and refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError, ResourceExhaustedError
from ownchat_data.chat_jsonl import ChatSample
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.store import DataStore


def conversation(i: int) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
    )


def chunked(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def core(tmp_path: Path, store_location: Path | str) -> DataCore:
    return DataCore(
        DataStore(store_location),
        ArtifactStore(tmp_path / "artifacts"),
        max_upload_bytes=1 << 20,
        max_record_bytes=4096,
    )


def spec(name: str = "support", fraction: float = 0.2) -> UploadSpec:
    return UploadSpec(name, "chats.jsonl", SourceFormat.OPENAI_CHAT_JSONL, fraction)


def stored_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "artifacts" / "sha256").iterdir())


def test_an_upload_becomes_a_split_content_addressed_version(core: DataCore, tmp_path: Path):
    body = "\n".join(conversation(i) for i in range(50)).encode()
    version = core.upload(spec(), chunked(body))
    assert version.samples == 50
    assert version.train_samples + version.validation_samples == 50
    assert 3 <= version.validation_samples <= 20
    train = ArtifactStore(tmp_path / "artifacts").path(version.train_split.digest)
    samples = [ChatSample.from_json(line) for line in train.read_text().splitlines()]
    assert len(samples) == version.train_samples
    assert all(s.messages[1].role == "assistant" for s in samples)
    # The same bytes, however chunked, give the same version.
    again = core.upload(spec(), chunked(body, size=1000))
    assert again.id == version.id
    assert core.get_version(version.id) == version
    assert [v.id for v in core.list_versions("support", 10, 0)] == [version.id]


def test_a_small_upload_still_gets_a_validation_sample(core: DataCore):
    version = core.upload(
        spec(fraction=0.01), iter([f"{conversation(1)}\n{conversation(2)}".encode()])
    )
    assert (version.train_samples, version.validation_samples) == (1, 1)


def test_malformed_lines_are_named_and_nothing_is_stored(core: DataCore, tmp_path: Path):
    lines = [
        conversation(1),
        "{not json",
        json.dumps({"messages": [{"role": "bot", "content": "hi"}]}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        b"\xff\xfe".decode("latin-1"),
    ]
    before = stored_files(tmp_path)
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(), iter(["\n".join(lines).encode()]))
    # A one-sided conversation (line 5) is well formed: the quality filter drops it.
    fields = [v.field for v in error.value.violations]
    assert fields == ["line 2", "line 3", "line 6"]
    assert "role" in error.value.violations[1].description
    assert stored_files(tmp_path) == before
    assert core.list_datasets(10, 0) == []


def test_invalid_utf8_is_named(core: DataCore):
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(), iter([conversation(1).encode() + b"\n\xff\xfe\n"]))
    assert error.value.violations[0].field == "line 2"
    assert "UTF-8" in error.value.violations[0].description


def test_an_overlong_line_is_refused_without_reading_it_whole(core: DataCore):
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(), iter([b"x" * 3000, b"y" * 3000]))
    assert error.value.violations[0].field == "line 1"


def test_an_oversized_upload_is_refused(core: DataCore):
    chunk = (conversation(1) + "\n").encode() * 1000
    with pytest.raises(ResourceExhaustedError, match=r"refused at byte \d+"):
        core.upload(spec(), iter([chunk] * 40))
    assert core.list_datasets(10, 0) == []


def test_bad_headers_are_reported_all_at_once(core: DataCore):
    bad = UploadSpec("Bad Name!", "x", None, validation_fraction=1.5)
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(bad, iter([b""]))
    assert {v.field for v in error.value.violations} == {
        "header.dataset_name",
        "header.format",
        "header.validation_fraction",
    }


def test_a_validation_fraction_of_one_makes_an_evaluation_only_version(
    core: DataCore, tmp_path: Path
):
    body = "\n".join(conversation(i) for i in range(30)).encode()
    version = core.upload(spec(fraction=1.0), chunked(body))
    assert (version.train_samples, version.validation_samples) == (0, 30)
    assert version.train_split.size_bytes == 0
    held_out = core.preview(version.id, validation=True, limit=100)
    assert sorted(s.record for s in held_out) == list(range(1, 31))
    # One sample (a single group) is held out too.
    single = core.upload(spec("one", fraction=1.0), iter([conversation(1).encode()]))
    assert (single.train_samples, single.validation_samples) == (0, 1)
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(fraction=-0.1), chunked(body))
    assert error.value.violations[0].description == "must be within [0, 1]"


def test_an_empty_upload_is_refused(core: DataCore):
    with pytest.raises(InvalidArgumentError):
        core.upload(spec(), iter([b"\n\n"]))

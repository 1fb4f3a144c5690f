"""Archives of chat sources: one chat version from a team's mixed support history,
records numbered across members, errors naming the member, and archive bombs refused."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from ownchat_data.chat_jsonl import ChatSample
from ownchat_data.core import BadRecordPolicy, DataCore, SourceFormat, UploadSpec
from ownchat_data.csv_transcript import CsvColumns
from ownchat_data.erasure import ErasureRequest
from ownchat_data.store import DataStore

Members = Sequence[tuple[str, bytes]]
COLUMNS = CsvColumns(conversation_id="ticket", role="author", content="text")
ANSWER = (
    "Hold the reset pin on the back of the router for ten seconds, wait for the light to "
    "blink amber, then open the Acme Home app and reinstall the latest firmware version. "
    "If the error comes back after the update, unplug the power cable for a full minute, "
    "plug it back in, and write to us with the serial number printed under the router."
)


def chat(user: str, assistant: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        }
    )


CHATS = "\n".join(
    chat(f"Question number {i} about routers?", f"Answer number {i}.") for i in range(3)
)
# Records: rows 2 and 4 start the two conversations (the header is row 1).
TRANSCRIPTS = (
    "ticket,author,text\n"
    "7,customer,Is shipping free?\n"
    "7,agent,Above 50 euros.\n"
    "8,customer,Can I pay by invoice?\n"
    "8,agent,Yes for business customers.\n"
)
FAQ = "<h1>FAQ</h1><h2>Do you ship abroad?</h2><p>To the EU.</p><h2>How long?</h2><p>3 days.</p>"
SOURCES: Members = [
    ("chats.jsonl", CHATS.encode()),
    ("transcripts.csv", TRANSCRIPTS.encode()),
    ("faq.html", FAQ.encode()),
]


def tar(members: Members, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_(members: Members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


PACKERS = {"tar": tar, "tar.gz": lambda m: tar(m, compress=True), "zip": zip_}


def chunked(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def core(tmp_path: Path) -> DataCore:
    return DataCore(
        DataStore(tmp_path / "data.db"),
        ArtifactStore(tmp_path / "artifacts"),
        max_upload_bytes=1 << 20,
        max_record_bytes=1 << 14,
    )


def spec(**options: object) -> UploadSpec:
    settings: dict[str, object] = {"validation_fraction": 0.0, "csv_columns": COLUMNS, **options}
    return UploadSpec("support", "support-sources", SourceFormat.ARCHIVE, **settings)  # type: ignore[arg-type]


def records(core: DataCore, version_id: str) -> dict[int, ChatSample]:
    samples = core.preview(version_id, validation=False, limit=100)
    samples += core.preview(version_id, validation=True, limit=100)
    return {s.record: s for s in samples if isinstance(s, ChatSample)}


@pytest.mark.parametrize("packing", list(PACKERS))
def test_mixed_sources_become_one_chat_version_numbered_across_members(
    core: DataCore, packing: str
) -> None:
    version = core.upload(spec(), chunked(PACKERS[packing](SOURCES)))
    assert version.kind == "chat"
    assert (version.samples, version.messages) == (7, 14)
    by_record = records(core, version.id)
    # chats.jsonl lines 1-3; transcripts.csv rows 2 and 4 after record 3; faq.html after 7.
    assert sorted(by_record) == [1, 2, 3, 5, 7, 8, 9]
    assert by_record[5].messages[0].content == "Is shipping free?"
    assert [m.content for m in by_record[9].messages] == ["How long?", "3 days."]


def test_bad_records_are_named_by_member_and_position(core: DataCore) -> None:
    members: Members = [
        ("chats.jsonl", (CHATS.replace('"user"', '"robot"', 1) + "\n").encode()),
        ("transcripts.csv", TRANSCRIPTS.replace("8,customer", "8,martian").encode()),
        ("faq.md", b"## Do you ship abroad?\nTo the EU.\n## How long?\n"),
    ]
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(), iter([tar(members)]))
    assert [v.field for v in error.value.violations] == [
        "chats.jsonl line 1",
        "transcripts.csv row 4",
        "faq.md question 2",
    ]
    assert core.list_datasets(10, 0) == []
    version = core.upload(
        spec(bad_record_policy=BadRecordPolicy.SKIP_AND_REPORT), iter([tar(members)])
    )
    # Skipped records keep the archive's numbers; their reasons say where they were.
    assert [(i.record, i.reason.split(":")[0]) for i in version.skipped] == [
        (1, "chats.jsonl line 1"),
        (7, "transcripts.csv row 4"),
        (9, "faq.md question 2"),
    ]


def test_a_member_that_breaks_its_parser_is_named(core: DataCore) -> None:
    long_line = chat("q" * 20_000, "a").encode()
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(), iter([zip_([SOURCES[0], ("more.jsonl", b"\n" + long_line)])]))
    assert error.value.violations[0].field == "more.jsonl line 2"
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(), iter([zip_([SOURCES[1], ("broken.json", b'[{"conversations": [')])]))
    assert error.value.violations[0].field == "broken.json item 1"
    assert "broken.json" in error.value.message


def tar_with(kind: bytes, name: str, before: Members = ()) -> bytes:
    """A tar of ``before``'s files and then one member of another kind."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for file_name, data in before:
            file_info = tarfile.TarInfo(file_name)
            file_info.size = len(data)
            archive.addfile(file_info, io.BytesIO(data))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "chats.jsonl" if kind == tarfile.SYMTYPE else ""
        archive.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "member", "why"),
    [
        (tar([*SOURCES, ("notes.txt", b"hello")]), "notes.txt", "not a chat source"),
        (zip_([("inner.zip", zip_(SOURCES)), *SOURCES]), "inner.zip", "archive inside"),
        (tar_with(tarfile.DIRTYPE, "export", SOURCES), "export", "directory"),
        (tar_with(tarfile.SYMTYPE, "link.jsonl"), "link.jsonl", "a link"),
        (zip_([("export/", b""), *SOURCES]), "export/", "directory"),
    ],
)
def test_members_that_are_not_chat_sources_refuse_the_upload(
    core: DataCore, tmp_path: Path, archive: bytes, member: str, why: str
) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(), iter([archive]))
    [violation] = error.value.violations
    assert violation.field == member
    assert violation.description.startswith(member) and why in violation.description
    assert core.list_datasets(10, 0) == []
    assert not list((tmp_path / "artifacts").rglob("sha256/*"))


def test_bytes_that_are_no_archive_are_refused(core: DataCore) -> None:
    for body in (CHATS.encode(), b"", gzip.compress(CHATS.encode())):
        with pytest.raises(InvalidArgumentError) as error:
            core.upload(spec(), iter([body]))
        assert "archive" in error.value.message
    with pytest.raises(InvalidArgumentError, match="no member"):
        core.upload(spec(), iter([tar([])]))


@pytest.mark.parametrize("packing", ["tar.gz", "zip"])
def test_an_archive_bomb_is_refused_by_its_decompressed_size(core: DataCore, packing: str) -> None:
    # Two megabytes of blank lines (valid JSONL) compress to a few kilobytes.
    bomb = PACKERS[packing]([*SOURCES, ("blank.jsonl", b"\n" * (2 << 20))])
    assert len(bomb) < 64 << 10
    with pytest.raises(ResourceExhaustedError, match="decompresses to more than"):
        core.upload(spec(), iter([bomb]))
    assert core.list_datasets(10, 0) == []


def test_a_near_duplicate_across_members_is_removed(core: DataCore) -> None:
    chats = chat("My router shows error E42, what should I do?", ANSWER)
    transcript = (
        "ticket,author,text\n"
        '1,customer,"My router shows error E42, what can I do?"\n'
        f'1,agent,"{ANSWER}"\n'
    )
    members: Members = [
        ("chats.jsonl", f"{chats}\n{CHATS}".encode()),
        ("transcripts.csv", transcript.encode()),
    ]
    version = core.upload(spec(), iter([zip_(members)]))
    assert version.sanitization.removed == {"near_duplicate": 1}
    assert version.samples == 4
    # The first of the group, the JSONL conversation, is kept.
    assert 1 in records(core, version.id)


def test_erasing_a_value_found_only_inside_a_zip_member_deletes_the_source(
    core: DataCore, tmp_path: Path
) -> None:
    secret = "quillfeather@zanzibar.example"
    # The address is replaced in the samples; only the uploaded archive holds it, compressed.
    members: Members = [
        (
            "chats.jsonl",
            f"{chat(f'Please write to {secret} about it.', 'We will.')}\n{CHATS}".encode(),
        ),
        *SOURCES[1:],
    ]
    archive = zip_(members)
    assert secret.encode() not in archive
    version = core.upload(spec(), iter([archive]))
    store = ArtifactStore(tmp_path / "artifacts")
    assert store.path(version.source.digest).exists()
    texts = [m.content for s in records(core, version.id).values() for m in s.messages]
    assert "Please write to <EMAIL_1> about it." in texts

    result = core.erase("support", ErasureRequest(frozenset(), (secret.upper(),)))
    assert result.erasure.removed_samples == 0
    assert version.source.digest in result.erasure.deleted_artifacts
    with pytest.raises(NotFoundError):
        store.path(version.source.digest)


def test_erasing_an_archive_record_follows_lineage_across_members(core: DataCore) -> None:
    version = core.upload(spec(), iter([tar(SOURCES, compress=True)]))
    # Record 7: the transcript's second conversation (row 4, after the three chat lines).
    request = ErasureRequest(frozenset({(version.source.digest, 7)}), ())
    result = core.erase("support", request)
    assert result.erasure.removed_samples == 1
    remaining = records(core, result.version.id)
    assert sorted(remaining) == [1, 2, 3, 5, 8, 9]

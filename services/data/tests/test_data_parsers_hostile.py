"""Hostile and arbitrary input to every parser: a sample, a refused record, or a
clear refusal of the file, never a crash and never unbounded memory."""

from __future__ import annotations

import gzip
import io
import resource
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ownchat.errors import ResourceExhaustedError
from ownchat_data.archive import ArchiveReader
from ownchat_data.chat_jsonl import ChatSample, parse_chat_jsonl
from ownchat_data.csv_transcript import CsvColumns, parse_csv_transcript
from ownchat_data.documents import parse_document
from ownchat_data.faq import parse_faq
from ownchat_data.preference_jsonl import PreferenceSample, parse_preference_jsonl
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge
from ownchat_data.sharegpt import parse_sharegpt

LIMIT = 4096
REFUSALS = (MalformedSource, RecordTooLarge)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def drain(parser: object) -> list[object]:
    try:
        return list(parser)  # type: ignore[call-overload]
    except REFUSALS:
        return []


json_like = st.one_of(
    st.binary(max_size=400),
    st.text(alphabet='[]{}":,0123456789 abcfromvaluehumangpt\n\\', max_size=400).map(str.encode),
)


@settings(max_examples=200)
@given(json_like, st.integers(min_value=1, max_value=64))
def test_sharegpt_parser_never_crashes(data: bytes, size: int) -> None:
    for item in drain(parse_sharegpt(chunks(data, size), LIMIT)):
        assert isinstance(item, ChatSample | RecordError)


@settings(max_examples=200)
@given(json_like, st.integers(min_value=1, max_value=64))
def test_jsonl_parsers_never_crash(data: bytes, size: int) -> None:
    for item in drain(parse_chat_jsonl(chunks(data, size), LIMIT)):
        assert isinstance(item, ChatSample | RecordError)
    for item in drain(parse_preference_jsonl(chunks(data, size), LIMIT)):
        assert isinstance(item, PreferenceSample | RecordError)


csv_like = st.one_of(
    st.binary(max_size=400),
    st.text(alphabet='conversation_id,role,content\n"userassistant12 \r', max_size=400).map(
        lambda text: ("conversation_id,role,content\n" + text).encode()
    ),
)


@settings(max_examples=200)
@given(csv_like, st.integers(min_value=1, max_value=64))
def test_csv_parser_never_crashes(data: bytes, size: int) -> None:
    for item in drain(parse_csv_transcript(chunks(data, size), LIMIT, CsvColumns())):
        assert isinstance(item, ChatSample | RecordError)


@settings(max_examples=100)
@given(st.binary(max_size=400), st.sampled_from(["a.txt", "a.md", "a.html"]))
def test_document_parser_never_crashes(data: bytes, name: str) -> None:
    drain(parse_document(chunks(data, 7), name, chunk_chars=50))


faq_like = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.sampled_from(
            ["<h2>", "</h2>", "<dt>", "<dd>", "<p>", "</p>", "<li>", "<pre>", "</pre>", "<script>",
             "## ", "# ", "```", "\n", "Why", "?", " ok ", "<", "&amp;", "\xff"]
        ),
        max_size=60,
    ).map(lambda parts: "".join(parts).encode("utf-8", "surrogateescape")),
)  # fmt: skip


@settings(max_examples=200)
@given(faq_like, st.sampled_from(["faq.html", "faq.md"]), st.integers(min_value=1, max_value=64))
def test_faq_parser_never_crashes(data: bytes, name: str, size: int) -> None:
    for item in drain(parse_faq(chunks(data, size), 200, name)):
        assert isinstance(item, ChatSample | RecordError)


@settings(max_examples=100)
@given(st.binary(max_size=2000))
def test_archive_reader_refuses_what_is_no_archive(data: bytes) -> None:
    reader = ArchiveReader(1 << 20, LIMIT, CsvColumns(), Path(tempfile.gettempdir()))
    with pytest.raises(MalformedSource):
        list(reader.read(chunks(data, 97)))


def test_a_tar_header_bomb_is_refused_by_the_decompressed_size() -> None:
    # A 64 MiB extended header compresses to about 64 KiB, and tarfile reads one
    # whole: the budget must stop it while it is read (the member itself is empty).
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 64 << 20
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb") as compressed:
        compressed.write(header.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(64):
            compressed.write(b"x" * (1 << 20))
        compressed.write(tarfile.TarInfo("chats.jsonl").tobuf(tarfile.USTAR_FORMAT))
        compressed.write(b"\0" * 1024)
    assert bomb.tell() < 1 << 20
    reader = ArchiveReader(1 << 20, LIMIT, CsvColumns(), Path(tempfile.gettempdir()))
    with pytest.raises(ResourceExhaustedError, match="decompresses to more than"):
        list(reader.read(chunks(bomb.getvalue(), 65536)))


@pytest.mark.parametrize(
    "bomb",
    [
        b"[" * 2_000_000,
        b'[{"conversations": ' + b"[" * 1_000_000,
        b"[" + b'{"a": ' * 500_000,
    ],
)
def test_nesting_bombs_are_refused_in_bounded_memory(bomb: bytes) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MalformedSource, match="nested deeper"):
        list(parse_sharegpt(chunks(bomb, 65536), 8 << 20))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024


def test_a_line_bomb_is_refused_by_its_position() -> None:
    with pytest.raises(RecordTooLarge) as error:
        list(parse_chat_jsonl(chunks(b"{}\n" + b"x" * 100_000, 8192), LIMIT))
    assert error.value.record == 2


def test_an_endless_csv_conversation_is_refused_at_its_first_row() -> None:
    rows = "".join(f"7,user,{'x' * 100}\n" for _ in range(200))
    data = f"conversation_id,role,content\n{rows}8,user,hi\n8,assistant,hello\n".encode()
    parsed = list(parse_csv_transcript(chunks(data, 512), LIMIT, CsvColumns()))
    assert isinstance(parsed[0], RecordError) and parsed[0].record == 2
    assert "longer than" in parsed[0].reason
    assert isinstance(parsed[1], ChatSample) and len(parsed[1].messages) == 2

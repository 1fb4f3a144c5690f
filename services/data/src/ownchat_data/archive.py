"""Reading a tar or zip archive of chat sources as one upload.

A team's support history comes as several files (a chat export, a help desk's
CSV transcripts, the FAQ page); an archive of them becomes one chat version.
Each member's format is taken from its name: ``.jsonl`` chat JSONL, ``.json``
ShareGPT, ``.csv`` CSV transcript, ``.html``/``.htm``/``.md``/``.markdown`` FAQ.
Members are read in archive order, each by its format's parser, and their
records are numbered consecutively: a member's record n is the archive's record
(last record number of the members before it) + n, so every sample keeps a
(source digest, record) lineage of its own. :meth:`ArchiveReader.position`
turns such a number back into the member and the position in it
("transcripts.csv row 3").

A member of another name, a directory, a link or an archive inside the archive
refuses the upload, naming the member: skipping it silently would lose data the
team meant to upload. Tar or zip is told from the bytes; a tar may be
gzip-compressed.

Archive bombs: the bytes decompressed (for a tar, its headers too) count against
the upload size limit, and a zip's declared sizes are checked before anything
is read; the parsers' per-record limit applies inside each member.
"""

from __future__ import annotations

import functools
import gzip
import io
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

from ownchat.errors import ResourceExhaustedError
from ownchat_data.chat_jsonl import ChatSample, parse_chat_jsonl
from ownchat_data.csv_transcript import CsvColumns, parse_csv_transcript
from ownchat_data.faq import MARKDOWN_SUFFIXES, parse_faq
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge
from ownchat_data.sharegpt import parse_sharegpt

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Far more files than a team's sources, far fewer than an archive of empty members
# needs to exhaust memory with their headers.
MAX_MEMBERS = 10_000
CHAT_SUFFIXES = (".jsonl", ".json", ".csv", ".html", ".htm", *MARKDOWN_SUFFIXES)
_NESTED_ARCHIVE_SUFFIXES = (
    ".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tbz2", ".txz",
)  # fmt: skip
_READ_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NOT_AN_ARCHIVE = "not a tar (optionally gzip-compressed) or zip archive"
# What reading a damaged archive raises (gzip's BadGzipFile is an OSError).
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)

Parser = Callable[[Iterable[bytes]], Iterator[ChatSample | RecordError]]


class _Budget:
    """The decompressed bytes an archive may still yield."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise ResourceExhaustedError(
                f"the archive decompresses to more than the upload limit of {self.limit} "
                "bytes (nothing was stored)"
            )


class _Counted(io.RawIOBase):
    """A stream whose bytes are taken from a budget as they are read."""

    def __init__(self, raw: IO[bytes] | gzip.GzipFile, budget: _Budget) -> None:
        super().__init__()
        self._raw = raw
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        self._budget.take(len(data))
        view[: len(data)] = data
        return len(data)


def _refuse_kind(name: str, kind: str) -> NoReturn:
    raise MalformedSource(0, f"{name}: {kind}; an archive's members must be files", where=name)


def _too_many(count: int) -> None:
    if count > MAX_MEMBERS:
        raise ResourceExhaustedError(
            f"the archive holds more than {MAX_MEMBERS} members (nothing was stored)"
        )


def _zip_members(spool: IO[bytes], budget: _Budget) -> Iterator[tuple[str, IO[bytes]]]:
    try:
        archive = zipfile.ZipFile(spool)
    except _DAMAGED as error:
        raise MalformedSource(0, f"not a readable zip archive: {error}") from None
    with archive:
        infos = archive.infolist()
        _too_many(len(infos))
        # A member never decompresses past its declared size (zipfile stops there).
        budget.take(sum(info.file_size for info in infos))
        for info in infos:
            mode = info.external_attr >> 16
            if info.is_dir():
                _refuse_kind(info.filename, "a directory")
            if stat.S_ISLNK(mode):
                _refuse_kind(info.filename, "a link")
            if info.flag_bits & 0x1:
                _refuse_kind(info.filename, "encrypted")
            try:
                handle = archive.open(info)
            except (NotImplementedError, *_DAMAGED) as error:
                raise MalformedSource(
                    0, f"{info.filename}: cannot be read: {error}", where=info.filename
                ) from None
            with handle:
                yield info.filename, handle


def _tar_members(spool: IO[bytes], budget: _Budget) -> Iterator[tuple[str, IO[bytes]]]:
    head = spool.read(2)
    spool.seek(0)
    stream: IO[bytes] | gzip.GzipFile = (
        gzip.GzipFile(fileobj=spool, mode="rb") if head == _GZIP_MAGIC else spool
    )
    try:
        # Stream mode reads forward only, every byte through the budget.
        archive = tarfile.open(fileobj=io.BufferedReader(_Counted(stream, budget)), mode="r|")
    except _DAMAGED:
        raise MalformedSource(0, _NOT_AN_ARCHIVE) from None
    with archive:
        count = 0
        while True:
            try:
                info = archive.next()
            except _DAMAGED as error:
                raise MalformedSource(0, f"the tar archive is damaged: {error}") from None
            if info is None:
                return
            count += 1
            _too_many(count)
            if info.isdir():
                _refuse_kind(info.name, "a directory")
            if info.issym() or info.islnk():
                _refuse_kind(info.name, "a link")
            handle = archive.extractfile(info) if info.isreg() else None
            if handle is None:
                _refuse_kind(info.name, "not a regular file")
            with handle:
                yield info.name, handle


def archive_members(spool: IO[bytes], max_bytes: int) -> Iterator[tuple[str, IO[bytes]]]:
    """Each member of a tar or zip archive, in archive order, as (name, its bytes).

    Read each member before asking for the next. Raises MalformedSource for
    bytes that are no archive and for a member that is not a file, and
    ResourceExhaustedError past ``max_bytes`` decompressed.
    """
    budget = _Budget(max_bytes)
    head = spool.read(4)
    spool.seek(0)
    if head in _ZIP_MAGIC and zipfile.is_zipfile(spool):
        spool.seek(0)
        return _zip_members(spool, budget)
    return _tar_members(spool, budget)


@dataclass(frozen=True)
class _Member:
    name: str
    # The archive's last record number before this member's first.
    offset: int
    # What the member's format calls a record: "line", "row", ...
    unit: str


def _shifted(parsed: ChatSample | RecordError, offset: int) -> ChatSample | RecordError:
    if isinstance(parsed, RecordError):
        return RecordError(offset + parsed.record, parsed.reason)
    return replace(parsed, record=offset + parsed.record)


class ArchiveReader:
    """Reads the chat sources inside an uploaded archive and names positions in it."""

    def __init__(
        self, max_bytes: int, max_record_bytes: int, columns: CsvColumns, tmp_dir: Path
    ) -> None:
        self._max_bytes = max_bytes
        self._max_record_bytes = max_record_bytes
        self._columns = columns
        self._tmp_dir = tmp_dir
        self._members: list[_Member] = []

    def _parser(self, name: str) -> tuple[str, Parser]:
        """What a member's records are called, and its parser, by its name."""
        lower = name.lower()
        limit = self._max_record_bytes
        if lower.endswith(".jsonl"):
            return "line", functools.partial(parse_chat_jsonl, max_line_bytes=limit)
        if lower.endswith(".json"):
            return "item", functools.partial(parse_sharegpt, max_record_bytes=limit)
        if lower.endswith(".csv"):
            return "row", functools.partial(
                parse_csv_transcript, max_record_bytes=limit, columns=self._columns
            )
        if lower.endswith((".html", ".htm", *MARKDOWN_SUFFIXES)):
            return "question", functools.partial(parse_faq, max_record_bytes=limit, file_name=name)
        if lower.endswith(_NESTED_ARCHIVE_SUFFIXES):
            reason = "an archive inside the archive is not read; put its files in the archive"
        else:
            reason = f"not a chat source: a member's name must end in {', '.join(CHAT_SUFFIXES)}"
        raise MalformedSource(0, f"{name}: {reason}", where=name)

    def read(self, chunks: Iterable[bytes]) -> Iterator[ChatSample | RecordError]:
        """Every conversation or refused record of every member, numbered across members.

        The archive is spooled to a scratch file first: a zip's directory is at its end.
        """
        with tempfile.TemporaryFile(dir=self._tmp_dir) as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            offset = 0
            for name, handle in archive_members(spool, self._max_bytes):
                unit, parse = self._parser(name)
                self._members.append(_Member(name, offset, unit))
                last = 0
                try:
                    for parsed in parse(iter(functools.partial(handle.read, _READ_BYTES), b"")):
                        last = max(last, parsed.record)
                        yield _shifted(parsed, offset)
                except RecordTooLarge as error:
                    if error.record:
                        raise RecordTooLarge(offset + error.record, error.limit) from None
                    reason = f"{name}: a record is longer than {error.limit} bytes"
                    raise MalformedSource(0, reason, where=name) from None
                except MalformedSource as error:
                    reason = f"{name}: {error.reason}"
                    if error.record:
                        raise MalformedSource(offset + error.record, reason) from None
                    raise MalformedSource(0, reason, where=name) from None
                except _DAMAGED as error:
                    reason = f"{name}: the archive is damaged: {error}"
                    raise MalformedSource(0, reason, where=name) from None
                offset += last
        if not self._members:
            raise MalformedSource(0, "the archive holds no member")

    def position(self, record: int) -> str:
        """Where an archive's record is: "<member> <unit> <n>"."""
        member = None
        for candidate in self._members:
            # A member without records shares its offset with the next: the later one wins.
            if candidate.offset < record:
                member = candidate
        if member is None:
            return f"record {record}"
        return f"{member.name} {member.unit} {record - member.offset}"

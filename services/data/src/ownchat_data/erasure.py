"""Right to erasure: which stored samples and files hold what must be erased.

A sample is erased when it derives from a named source record, or when any of
its texts contains a named value (compared case-insensitively); a chat sample's
expected answer is one of its texts, and a regex answer is also read as the
literal text it spells (``alice@example\\.com`` holds ``alice@example.com``).
A stored file holds erased data when one of its samples is erased, or, for an
uploaded source file, when a sample made from it is erased, when it is the named
record's source, or when its bytes contain a value (also as JSON would escape it,
and as a regex escapes it); an archive's bytes are read decompressed, member by
member, since compression hides the value from a scan of the raw bytes.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import regex

from ownchat.erasure import folded_values, holds_any
from ownchat_data.archive import archive_members
from ownchat_data.pattern_text import literal_readings
from ownchat_data.records import MalformedSource

_SCAN_CHUNK = 1024 * 1024
# What a pattern's author must escape to write a value literally (not "-" or " ").
_REGEX_SPECIAL = regex.compile(r"[.^$*+?()\[\]{}|\\]")


@dataclass(frozen=True)
class ErasureRequest:
    """What to erase: source records ("<digest>:<record>") and values."""

    source_records: frozenset[tuple[str, int]]
    values: tuple[str, ...]

    def value_hashes(self) -> tuple[str, ...]:
        """The values as SHA-256 hashes: what the audit record keeps of them."""
        return tuple(hashlib.sha256(v.encode()).hexdigest() for v in self.values)


def sample_texts(sample: dict[str, Any]) -> list[str]:
    """Every text of a stored sample line (chat, preference or text)."""
    texts: list[str] = []
    for key in ("messages", "prompt"):
        for message in sample.get(key) or []:
            texts.append(str(message["content"]))
    for key in ("chosen", "rejected", "text"):
        if key in sample:
            texts.append(str(sample[key]))
    expected = sample.get("expected")
    if expected:
        answer = str(expected["answer"])
        texts.extend(literal_readings(answer) if expected.get("kind") == "regex" else [answer])
    return texts


def sample_is_erased(sample: dict[str, Any], source_digest: str, request: ErasureRequest) -> bool:
    if (source_digest, int(sample["record"])) in request.source_records:
        return True
    return holds_any(sample_texts(sample), folded_values(request.values))


def _needles(values: Iterable[str]) -> list[bytes]:
    needles = set()
    for value in values:
        # A source file holds a regex expected answer as written: "alice@example\\.com".
        for written in (value, _REGEX_SPECIAL.sub(r"\\\g<0>", value)):
            for form in (
                written,
                json.dumps(written)[1:-1],
                json.dumps(written, ensure_ascii=False)[1:-1],
            ):
                needles.add(form.casefold().encode())
    return sorted(needles)


def _stream_contains(handle: IO[bytes], needles: list[bytes]) -> bool:
    overlap = max(len(n) for n in needles)
    tail = b""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while chunk := handle.read(_SCAN_CHUNK):
        window = tail + decoder.decode(chunk).casefold().encode()
        if any(needle in window for needle in needles):
            return True
        tail = window[-overlap:]
    return False


def file_contains(path: Path, values: Iterable[str]) -> bool:
    """Whether a file's bytes contain any value (case-insensitive), in bounded memory.

    For a tar or zip archive, also whether any member's decompressed bytes do.
    """
    needles = _needles(values)
    if not needles:
        return False
    with path.open("rb") as handle:
        if _stream_contains(handle, needles):
            return True
        handle.seek(0)
        try:
            # No size limit: the archive was within it when it was uploaded.
            members = archive_members(handle, sys.maxsize)
            return any(_stream_contains(member, needles) for _, member in members)
        except MalformedSource:
            # Not an archive: its raw bytes were all there was to read.
            return False

"""What every source-format parser yields: samples, or refused records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RecordError:
    """Why one record of a source file was refused."""

    record: int
    reason: str


class Sample(Protocol):
    """A parsed sample: it knows its source record and its canonical stored line."""

    @property
    def record(self) -> int: ...

    def to_json(self) -> str: ...


class RecordTooLarge(Exception):
    """A single record is longer than allowed; parsing cannot go on safely."""

    def __init__(self, record: int, limit: int) -> None:
        super().__init__(f"record {record} is longer than {limit} bytes")
        self.record = record
        self.limit = limit


class MalformedSource(Exception):
    """The file as a whole cannot be parsed further (broken JSON, bad encoding).

    ``where`` names the part of the upload at fault when no record number can
    (an archive's member); empty otherwise.
    """

    def __init__(self, record: int, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.record = record
        self.reason = reason
        self.where = where

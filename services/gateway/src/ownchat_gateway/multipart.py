"""A ``multipart/form-data`` body read as it arrives, for file uploads.

Starlette's form parser spools a whole file to disk before the route sees it;
this reader hands the route each piece of a file part as soon as it is parsed,
so that an upload can be passed on while it is still arriving. Plain fields are
small and are given whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

# A plain form field (``purpose``) is a word; anything this long is not one.
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16


class MalformedMultipartError(ValueError):
    """The body is not a well-formed ``multipart/form-data`` body (or exceeds its limits)."""


@dataclass(frozen=True)
class PartStart:
    """A part begins: its form field name and, for a file, its file name."""

    name: str
    filename: str | None


@dataclass(frozen=True)
class PartData:
    """The next bytes of the current part."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete."""


PartEvent = PartStart | PartData | PartEnd


@dataclass
class _Headers:
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    name: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; raises when it is not one."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MalformedMultipartError("the body must be multipart/form-data with a boundary")
    return boundary


class MultipartReader:
    """Parses a body chunk by chunk into :data:`PartEvent` s."""

    def __init__(self, content_type: str | None) -> None:
        self._events: list[PartEvent] = []
        self._headers = _Headers()
        self._parts = 0
        self.ended = False
        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def feed(self, chunk: bytes) -> list[PartEvent]:
        """The events the next bytes of the body complete."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise MalformedMultipartError(f"malformed multipart body: {error}") from None
        events, self._events = self._events, []
        return events

    def finish(self) -> None:
        """Checks that the body ended where a multipart body ends."""
        if not self.ended:
            raise MalformedMultipartError("the multipart body ended before its closing boundary")

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise MultipartParseError(f"more than {MAX_PARTS} parts")
        self._headers = _Headers()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._headers.name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers.value += data[start:end]

    def _on_header_end(self) -> None:
        headers = self._headers
        headers.fields.append((bytes(headers.name).lower(), bytes(headers.value)))
        headers.name, headers.value = bytearray(), bytearray()

    def _on_headers_finished(self) -> None:
        disposition = dict(self._headers.fields).get(b"content-disposition")
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise MultipartParseError("a part without a form-data Content-Disposition name")
        filename = options.get(b"filename")
        self._events.append(
            PartStart(
                name=options[b"name"].decode("utf-8", "replace"),
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
            )
        )

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(PartData(data[start:end]))

    def _on_part_end(self) -> None:
        self._events.append(PartEnd())

    def _on_end(self) -> None:
        self.ended = True

"""Parsing plain text, Markdown and HTML documents into text samples.

A document becomes chunks of whole paragraphs of at most ``chunk_chars``
characters (a longer paragraph is cut at sentence or word boundaries), for
continued pre-training. HTML is reduced to its text as it streams in
(scripts and styles dropped, block elements ending paragraphs). Records are
numbered by chunk.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ownchat_data.cleaning import _TextExtractor
from ownchat_data.records import MalformedSource

DEFAULT_CHUNK_CHARS = 2000
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class TextSample:
    """One chunk of a document."""

    text: str
    record: int

    def to_json(self) -> str:
        """The canonical line stored in a split file."""
        return json.dumps(
            {"text": self.text, "record": self.record},
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> TextSample:
        """Reads a line written by :meth:`to_json`."""
        value = json.loads(line)
        return cls(text=value["text"], record=int(value["record"]))


def _text(chunks: Iterable[bytes], is_html: bool) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    extractor = _TextExtractor() if is_html else None
    offset = 0
    for chunk in chunks:
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as error:
            raise MalformedSource(0, f"not valid UTF-8 at byte {offset + error.start}") from None
        offset += len(chunk)
        if extractor is None:
            yield text
            continue
        extractor.feed(text)
        yield "".join(extractor.parts)
        extractor.parts.clear()
    if extractor is not None:
        extractor.close()
        yield "".join(extractor.parts)


def _pieces(paragraph: str, limit: int) -> Iterator[str]:
    """A paragraph cut into pieces of at most ``limit`` characters."""
    if len(paragraph) <= limit:
        yield paragraph
        return
    piece = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            if piece:
                yield piece
                piece = ""
            yield sentence[:cut]
            sentence = sentence[cut:].lstrip()
        if piece and len(piece) + 1 + len(sentence) > limit:
            yield piece
            piece = ""
        piece = f"{piece} {sentence}" if piece else sentence
    if piece:
        yield piece


def parse_document(
    chunks: Iterable[bytes], file_name: str, chunk_chars: int = DEFAULT_CHUNK_CHARS
) -> Iterator[TextSample]:
    """The text chunks of one document."""
    is_html = file_name.lower().endswith((".html", ".htm"))
    pending = ""
    current = ""
    number = 0

    def paragraphs(text: str, final: bool) -> tuple[list[str], str]:
        parts = _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n"))
        rest = "" if final else parts.pop()
        return [" ".join(p.split()) for p in parts if p.strip()], rest

    def emit(paragraph_list: list[str]) -> Iterator[TextSample]:
        nonlocal current, number
        for paragraph in paragraph_list:
            for piece in _pieces(paragraph, chunk_chars):
                if current and len(current) + 2 + len(piece) > chunk_chars:
                    number += 1
                    yield TextSample(current, number)
                    current = ""
                current = f"{current}\n\n{piece}" if current else piece

    for text in _text(chunks, is_html):
        complete, pending = paragraphs(pending + text, final=False)
        yield from emit(complete)
        if len(pending) > 4 * chunk_chars:
            # A very long paragraph: cut it now rather than hold it in memory.
            yield from emit([" ".join(pending.split())])
            pending = ""
    complete, _ = paragraphs(pending, final=True)
    yield from emit(complete)
    if current:
        number += 1
        yield TextSample(current, number)

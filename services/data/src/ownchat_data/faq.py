"""Parsing an HTML or Markdown FAQ: each question and its answer become a one-turn conversation.

The page is Markdown when its file name ends in ``.md`` or ``.markdown``, HTML
otherwise.

In HTML, each heading (``h1``-``h6``) or ``<dt>`` whose text ends with "?"
starts a question; the text of the block elements after it, up to the next
heading or ``<dt>``, is the answer: paragraphs joined by a blank line, list
items and line breaks one a line. A heading or ``<dt>`` not ending with "?" (a
section title) ends the answer before it and is no question; text before the
first question or under a section title belongs to no answer. Scripts and
styles are dropped, inline markup keeps its text.

In Markdown, ATX headings ("#" to "######") ending with "?" are the questions,
and the lines after one, up to the next ATX heading, its answer as written
(runs of blank lines become one). A heading not ending with "?" ends the answer
before it; a "#" line inside a fenced code block is answer text.

Each question becomes a :class:`ChatSample`: the question as the user message,
the answer as the assistant's. A question with no answer text is a bad record.
Records are numbered by question, from 1. The page is parsed as it streams in,
and memory holds one question with its answer.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ownchat_data.chat_jsonl import ChatMessage, ChatSample
from ownchat_data.cleaning import _TextExtractor
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge

MARKDOWN_SUFFIXES = (".md", ".markdown")
_QUESTION_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "dt"}
# Blocks that stand apart from the text around them: a blank line before and after.
_PARAGRAPH_TAGS = {
    "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "figure",
    "footer", "header", "hr", "main", "nav", "ol", "p", "pre", "section", "table", "ul",
}  # fmt: skip
# Elements that start a new line of the same paragraph.
_LINE_TAGS = {"br", "li", "tr"}
_SPACES = re.compile(r"\s+")
# An ATX heading; its optional closing run of "#" is not part of the text.
_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def is_markdown(file_name: str) -> bool:
    """Whether a FAQ is read as Markdown (else as HTML), by its file name."""
    return file_name.lower().endswith(MARKDOWN_SUFFIXES)


@dataclass
class _Questions:
    """The questions found so far: numbers them, and bounds what one may hold."""

    max_chars: int
    count: int = 0
    done: list[tuple[int, str, str]] = field(default_factory=list)
    question: str | None = None
    size: int = 0

    def current(self) -> int:
        """The number of the question being read, or of the next one between questions."""
        return self.count if self.question is not None else self.count + 1

    def grow(self, chars: int) -> None:
        """Counts text held for the current question (or a heading being read)."""
        self.size += chars
        if self.size > self.max_chars:
            raise RecordTooLarge(self.current(), self.max_chars)

    def finish(self, answer: str) -> None:
        """Ends the open question, if any, with its answer."""
        if self.question is not None:
            self.done.append((self.count, self.question, answer))
        self.question = None
        self.size = 0

    def begin(self, heading: str) -> None:
        """A heading's text: a question when it ends with "?", else a section title."""
        if heading.endswith("?"):
            self.count += 1
            self.question = heading
            self.size = len(heading)


def _joined(lines: Iterable[str]) -> str:
    """Lines with runs of blank lines made one, and none at either end."""
    kept: list[str] = []
    for line in lines:
        if line or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).strip("\n")


class _HtmlFaq(_TextExtractor):
    """Splits an HTML page into questions and answers as it is fed.

    The answer's text collects in ``parts`` (with "\\n" for line and paragraph
    breaks) while a question is open; the cleaning step's extractor drops
    scripts and styles.
    """

    def __init__(self, max_chars: int) -> None:
        super().__init__()
        self.questions = _Questions(max_chars)
        self._heading: list[str] | None = None
        self._pre = 0

    def _text(self, text: str) -> None:
        if self._heading is not None:
            self.questions.grow(len(text))
            self._heading.append(text)
        elif self.questions.question is not None:
            self.questions.grow(len(text))
            self.parts.append(text)

    def _break(self, breaks: str) -> None:
        if self._heading is None:
            self._text(breaks)

    def _end_heading(self) -> None:
        if self._heading is None:
            return
        heading = " ".join("".join(self._heading).split())
        self._heading = None
        self.questions.size = 0
        self.questions.begin(heading)

    def _end_answer(self) -> None:
        answer = _joined(" ".join(line.split()) for line in "".join(self.parts).split("\n"))
        self.parts.clear()
        self.questions.finish(answer)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _QUESTION_TAGS:
            self._end_heading()
            self._end_answer()
            self._heading = []
            return
        if tag == "dd":
            # "</dt>" may be left out before "<dd>".
            self._end_heading()
        if tag == "pre":
            self._pre += 1
        if tag in _PARAGRAPH_TAGS:
            self._break("\n\n")
        elif tag in _LINE_TAGS:
            self._break("\n")
        else:
            super().handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _QUESTION_TAGS:
            self._end_heading()
        elif tag in _PARAGRAPH_TAGS:
            self._pre = max(0, self._pre - (tag == "pre"))
            self._break("\n\n")
        elif tag not in _LINE_TAGS:
            super().handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._text(data if self._pre else _SPACES.sub(" ", data))

    def end(self) -> None:
        """The end of the page: the last question ends here."""
        self.close()
        self._end_heading()
        self._end_answer()


class _MarkdownFaq:
    """Splits a Markdown page into questions and answers as it is fed."""

    def __init__(self, max_chars: int) -> None:
        self.questions = _Questions(max_chars)
        self._pending = ""
        self._answer: list[str] = []
        self._fence = ""

    def feed(self, text: str) -> None:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._line(line)
        if len(self._pending) > self.questions.max_chars:
            raise RecordTooLarge(self.questions.current(), self.questions.max_chars)

    def _line(self, line: str) -> None:
        line = line.rstrip()
        fence = _FENCE.match(line)
        if self._fence:
            if fence and fence.group(1).startswith(self._fence) and not line[fence.end() :]:
                self._fence = ""
        elif fence:
            self._fence = fence.group(1)
        elif heading := _ATX_HEADING.match(line):
            self._end_answer()
            self.questions.begin((heading.group(1) or "").strip())
            return
        if self.questions.question is not None:
            self.questions.grow(len(line) + 1)
            self._answer.append(line)

    def _end_answer(self) -> None:
        self.questions.finish(_joined(self._answer))
        self._answer.clear()

    def end(self) -> None:
        """The end of the page: the last question ends here."""
        if self._pending:
            self._line(self._pending)
        self._end_answer()


def _decoded(chunks: Iterable[bytes]) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    for chunk in chunks:
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as error:
            raise MalformedSource(0, f"not valid UTF-8 at byte {offset + error.start}") from None
        offset += len(chunk)
        yield text
    try:
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise MalformedSource(0, "the file ends inside a UTF-8 character") from None


def _samples(questions: _Questions) -> Iterator[ChatSample | RecordError]:
    for number, question, answer in questions.done:
        if not answer.strip():
            shown = question if len(question) <= 80 else question[:77] + "..."
            yield RecordError(number, f"no answer text under the question {shown!r}")
        else:
            messages = (ChatMessage("user", question), ChatMessage("assistant", answer))
            yield ChatSample(messages, 1.0, number)
    questions.done.clear()


def parse_faq(
    chunks: Iterable[bytes], max_record_bytes: int, file_name: str
) -> Iterator[ChatSample | RecordError]:
    """Every question of an HTML or Markdown FAQ as a conversation, or a refused question."""
    markdown = is_markdown(file_name)
    reader = _MarkdownFaq(max_record_bytes) if markdown else _HtmlFaq(max_record_bytes)
    for text in _decoded(chunks):
        reader.feed(text)
        yield from _samples(reader.questions)
    reader.end()
    yield from _samples(reader.questions)
    if reader.questions.count == 0:
        raise MalformedSource(
            0,
            "no question found: a question is a heading"
            + ("" if markdown else " or <dt>")
            + ' whose text ends with "?"',
        )

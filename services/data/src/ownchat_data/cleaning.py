"""Text cleaning of every message: encoding repair, markup, whitespace, boilerplate.

Each function returns the new text; :class:`Cleaner` applies them all to a
conversation and counts which of them changed something, for the version's
sanitization report. Cleaning is conservative: it removes what is never worth
learning (mojibake, HTML tags, e-mail signatures and quoted earlier replies)
and leaves the wording alone.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser

import ftfy

from ownchat_data.chat_jsonl import ChatMessage, ChatSample

_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?/?>|<!--.*?-->", re.S)
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "ul", "ol"}
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# An e-mail client's line above a quoted earlier message, e.g. "On Mon, 3 Jun 2024, Ann wrote:".
_QUOTE_HEADER = re.compile(r"^(On .{4,200}wrote:|-{2,} ?Original Message ?-{2,})\s*$", re.M | re.I)
_SENT_FROM = re.compile(r"^Sent from my [\w .-]{2,40}$", re.M | re.I)
_SIGNATURE = re.compile(r"^-- ?$", re.M)


class _TextExtractor(HTMLParser):
    """Keeps an HTML fragment's text, with line breaks for block elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def repair_encoding(text: str) -> str:
    """Fixes mojibake and normalises Unicode (NFC) with ftfy."""
    return ftfy.fix_text(text)


def strip_markup(text: str) -> str:
    """The text of an HTML fragment; plain text passes unchanged (entities decoded)."""
    if not _TAG.search(text):
        return html.unescape(text) if "&" in text else text
    extractor = _TextExtractor()
    extractor.feed(text)
    extractor.close()
    return "".join(extractor.parts)


def normalize_whitespace(text: str) -> str:
    """One space between words, no trailing spaces, at most one blank line in a row."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def remove_boilerplate(text: str) -> str:
    """Drops quoted earlier replies, "Sent from my ..." lines and "-- " signatures."""
    header = _QUOTE_HEADER.search(text)
    if header and header.start() > 0:
        text = text[: header.start()]
    kept = [line for line in text.split("\n") if not line.lstrip().startswith(">")]
    text = "\n".join(kept)
    text = _SENT_FROM.sub("", text)
    signature = _SIGNATURE.search(text)
    if signature and signature.start() > 0:
        text = text[: signature.start()]
    return text


STEPS = (
    ("encoding_repaired", repair_encoding),
    ("markup_stripped", strip_markup),
    ("boilerplate_removed", remove_boilerplate),
    ("whitespace_normalized", normalize_whitespace),
)


class Cleaner:
    """Cleans every message of conversations and counts what each step changed."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def clean_text(self, text: str) -> str:
        for name, step in STEPS:
            cleaned = step(text)
            if cleaned != text:
                self.counts[name] += 1
                text = cleaned
        return text

    def clean(self, sample: ChatSample) -> ChatSample:
        """The conversation with every message cleaned (messages may become empty)."""
        messages = tuple(ChatMessage(m.role, self.clean_text(m.content)) for m in sample.messages)
        return replace(sample, messages=messages)

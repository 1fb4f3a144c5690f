"""Case-insensitive keyword search that keeps the regex engine's fast literal scan.

A ``(?i)`` pattern of a short word runs several times slower than an exact one, so the
scanner lower-cases each text once and searches exact lower-case literals in it. That is
only sound while lower-casing keeps every offset (it does for nearly all text; a few
characters such as "İ" grow), so otherwise the case-folding pattern runs on the original.
"""

from __future__ import annotations

from collections.abc import Iterator

import regex


def lowered_same_offsets(text: str) -> str | None:
    """``text.lower()`` when it keeps every character's offset, else None."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else None


class Keyword:
    """One literal word, found case-insensitively; boundary rules are the caller's."""

    def __init__(self, word: str) -> None:
        self._exact = regex.compile(regex.escape(word.lower()))
        self._folded = regex.compile(regex.escape(word), regex.IGNORECASE)

    def finditer(self, text: str, lowered: str | None) -> Iterator[regex.Match[str]]:
        """Matches in ``text`` (offsets valid in ``text`` either way)."""
        if lowered is not None:
            return self._exact.finditer(lowered)
        return self._folded.finditer(text)

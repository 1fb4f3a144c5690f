"""The language filter: keep conversations in the languages a team serves.

Language identification is py3langid (langid.py's model, shipped inside the
package, so nothing is fetched). A conversation is judged on its user and
assistant text together; one with too little text to judge is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import py3langid

# Below this many letters an identification is a guess ("Hi" comes out as Afrikaans).
MIN_LETTERS = 20
MAX_CHARS = 4000


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of a text's language, or None when it is too short to tell."""
    if sum(1 for c in text if c.isalpha()) < MIN_LETTERS:
        return None
    code, _ = py3langid.classify(text[:MAX_CHARS])
    return str(code)


def conversation_language(turns: Sequence[tuple[str, str]]) -> str | None:
    """The language of a conversation's user and assistant turns."""
    text = "\n".join(content for role, content in turns if role in ("user", "assistant"))
    return detect_language(text)

"""The text a conversation is compared by: normalised, hashed, cut into word shingles.

Two conversations are exact duplicates when their normalised messages (roles
included) hash alike. Near-duplicates are judged on the words of the user and
assistant turns only: system prompts are often one shared template, and
counting them would make unrelated short conversations look alike.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence

import xxhash

Message = tuple[str, str]
"""One message as (role, content)."""

_WORD = re.compile(r"\w+")
_NEAR_DUP_ROLES = ("user", "assistant")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, every run of whitespace one space, no outer spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalize_messages(messages: Sequence[Message]) -> list[Message]:
    """Each message with its content normalised, so the work is done once per sample."""
    return [(role, normalize_text(content)) for role, content in messages]


def content_digest(messages: Sequence[Message], normalized: bool = False) -> bytes:
    """16 bytes naming a conversation's normalised content (roles and message order kept).

    BLAKE2b because it is fast and 128 bits make an accidental collision
    negligible at any upload size; the digests of all kept samples stay in memory.
    Pass ``normalized=True`` when the contents already went through :func:`normalize_text`.
    """
    digest = hashlib.blake2b(digest_size=16)
    for role, content in messages:
        digest.update(role.encode())
        digest.update(b"\x1f")
        digest.update((content if normalized else normalize_text(content)).encode())
        digest.update(b"\x1e")
    return digest.digest()


def comparison_words(messages: Sequence[Message], normalized: bool = False) -> list[str]:
    """The words near-duplicate detection compares: user and assistant turns, normalised.

    Punctuation is dropped (``\\w+`` words) so that "Hello, world!" and
    "hello world" count as the same text. A conversation with no such words
    (only a system message, or only punctuation) falls back to all its text.
    """
    if not normalized:
        messages = normalize_messages(messages)
    words = _WORD.findall(" ".join(c for r, c in messages if r in _NEAR_DUP_ROLES))
    if words:
        return words
    fallback = " ".join(c for _, c in messages)
    return _WORD.findall(fallback) or [fallback]


def shingles(words: Sequence[str], size: int) -> Iterator[str]:
    """Overlapping runs of ``size`` words joined by a space; one shingle when shorter."""
    if len(words) <= size:
        return iter([" ".join(words)])
    return map(" ".join, zip(*(words[i:] for i in range(size)), strict=False))


def shingle_hashes(words: Sequence[str], size: int) -> Iterator[int]:
    """32-bit xxHash of each shingle's UTF-8 bytes.

    This is the ``hashfunc`` the MinHash is defined over: the signatures equal
    datasketch's ``MinHash(hashfunc=xxhash.xxh32_intdigest)`` updated with the
    encoded shingles. xxh32 is many times faster than datasketch's default SHA-1
    and as good for MinHash, which needs a well-mixed hash, not a secure one.
    """
    return map(xxhash.xxh32_intdigest, map(str.encode, shingles(words, size)))

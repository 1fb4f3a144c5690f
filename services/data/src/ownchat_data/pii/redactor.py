"""Redaction of detected spans in one of three modes, with a count per entity type.

- ``REDACT``: the span becomes its type tag, ``<EMAIL>``; nothing of the value survives.
- ``PLACEHOLDER``: ``<EMAIL_1>``, ``<EMAIL_2>``...: numbered per distinct value within a
  :class:`RedactionScope`, so a conversation still shows that two mentions are one address.
- ``PSEUDONYMIZE``: a realistic surrogate of the same type (see :mod:`.surrogates`), the
  same for the same value wherever it appears, given the same secret salt.

Tags contain no detectable value, so redacting the output again changes nothing; the
surrogates are checked against the scanner so that none reads as a different type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from .entities import EntityType, Span
from .phones import phone_valid
from .scanner import PiiScanner
from .surrogates import canonical, make_surrogate, rng_for

_SURROGATE_ATTEMPTS = 8
_CACHE_LIMIT = 100_000


class RedactionMode(StrEnum):
    """How a detected span is replaced."""

    REDACT = "redact"
    PLACEHOLDER = "placeholder"
    PSEUDONYMIZE = "pseudonymize"


@dataclass
class RedactionScope:
    """Placeholder numbering shared by several texts (a conversation, or a whole dataset)."""

    numbers: dict[tuple[EntityType, str], int] = field(default_factory=dict)
    next_number: Counter[EntityType] = field(default_factory=Counter)

    def number(self, kind: EntityType, key: str) -> int:
        """The placeholder number of a value, assigning the next free one on first sight."""
        number = self.numbers.get((kind, key))
        if number is None:
            self.next_number[kind] += 1
            number = self.numbers[(kind, key)] = self.next_number[kind]
        return number


@dataclass(frozen=True)
class Redaction:
    """The redacted text, what was found in the original, and counts per type."""

    text: str
    spans: tuple[Span, ...]
    counts: Counter[str]


class Redactor:
    """Scans and replaces personal data and secrets in text.

    ``salt`` is required for ``PSEUDONYMIZE``: keep it secret (whoever has it can test
    guesses of original values against surrogates) and keep it fixed for a dataset so
    that surrogates stay consistent across uploads.
    """

    def __init__(
        self,
        mode: RedactionMode = RedactionMode.PLACEHOLDER,
        *,
        salt: bytes | None = None,
        scanner: PiiScanner | None = None,
    ) -> None:
        if mode is RedactionMode.PSEUDONYMIZE and not salt:
            raise ValueError("pseudonymization needs a non-empty secret salt")
        self.mode = mode
        self.scanner = scanner or PiiScanner()
        self._salt = salt or b""
        self._surrogates: dict[tuple[EntityType, str], str] = {}

    def redact(self, text: str, scope: RedactionScope | None = None) -> Redaction:
        """Redacts one text; pass one ``scope`` to all texts that share placeholder numbers."""
        spans = self.scanner.scan(text)
        if not spans:
            return Redaction(text, (), Counter())
        scope = scope if scope is not None else RedactionScope()
        parts: list[str] = []
        last = 0
        for span in spans:
            parts.append(text[last : span.start])
            parts.append(self.replacement(span, scope))
            last = span.end
        parts.append(text[last:])
        counts = Counter(span.type.value for span in spans)
        return Redaction("".join(parts), tuple(spans), counts)

    def redact_conversation(self, texts: Iterable[str]) -> tuple[list[str], Counter[str]]:
        """Redacts the messages of one conversation with one shared placeholder scope."""
        scope = RedactionScope()
        out: list[str] = []
        counts: Counter[str] = Counter()
        for text in texts:
            result = self.redact(text, scope)
            out.append(result.text)
            counts.update(result.counts)
        return out, counts

    def replacement(self, span: Span, scope: RedactionScope) -> str:
        """What ``span`` becomes in the output under this redactor's mode."""
        if self.mode is RedactionMode.REDACT:
            return f"<{span.type.value}>"
        key = canonical(span.type, span.value)
        if self.mode is RedactionMode.PLACEHOLDER:
            return f"<{span.type.value}_{scope.number(span.type, key)}>"
        return self.surrogate(span.type, span.value)

    def surrogate(self, kind: EntityType, value: str) -> str:
        """The pseudonym of ``value``: deterministic given the salt, never the value itself.

        Seeded by the canonical value (so "+1 415..." and "+1-415-..." share digits) and
        shaped by the value as written.
        """
        cached = self._surrogates.get((kind, value))
        if cached is not None:
            return cached
        key = canonical(kind, value)
        result = f"<{kind.value}>"  # used only if every attempt collides (practically never)
        fallback = None
        for attempt in range(_SURROGATE_ATTEMPTS):
            candidate = make_surrogate(kind, value, rng_for(self._salt, kind, key, attempt))
            if not self._acceptable(kind, key, candidate):
                continue
            if kind is not EntityType.PHONE or phone_valid(candidate, context=True):
                result = candidate
                break
            # Random digits are not always a number in service; prefer one that is.
            fallback = fallback or candidate
        else:
            result = fallback or result
        if len(self._surrogates) >= _CACHE_LIMIT:
            self._surrogates.clear()
        self._surrogates[(kind, value)] = result
        return result

    def _acceptable(self, kind: EntityType, key: str, candidate: str) -> bool:
        if canonical(kind, candidate) == key:
            return False
        # A surrogate may read as its own type, never as another (a phone as a card).
        return all(span.type is kind for span in self.scanner.scan(candidate))

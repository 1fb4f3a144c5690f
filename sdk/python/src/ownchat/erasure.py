"""What "holds a value" means for the right to erasure, in every service.

The data service, the evaluator's review queue and the gateway's captured chats
erase by the same rule, so a value erased from one is erased from all: a text
holds a value when it contains it anywhere, compared case-insensitively
(``casefold``). Values shorter than :data:`MIN_VALUE_CHARS` are refused, since
they would match, and delete, far more than the person's data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

MIN_VALUE_CHARS = 3


def too_short(values: Iterable[str]) -> list[str]:
    """The values too short to erase safely (blank ones included)."""
    return [value for value in values if len(value.strip()) < MIN_VALUE_CHARS]


def folded_values(values: Iterable[str]) -> tuple[str, ...]:
    """The values as :func:`holds_any` compares them."""
    return tuple(value.casefold() for value in values)


def holds_any(texts: Iterable[str], folded: Sequence[str]) -> bool:
    """Whether any text contains any value (``folded`` from :func:`folded_values`)."""
    for text in texts:
        text = text.casefold()
        if any(value in text for value in folded):
            return True
    return False

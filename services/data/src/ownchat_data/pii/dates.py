"""Dates of birth: a full calendar date shortly after "born", "DOB", "date of birth"...

A date on its own is not reported (most dates in chats are not birthdays); neither is a
birth year alone or a day and month without a year.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import regex

from .checks import date_valid
from .keywords import Keyword

MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4,
    "april": 4, "may": 5, "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8,
    "sep": 9, "sept": 9, "september": 9, "oct": 10, "october": 10, "nov": 11, "november": 11,
    "dec": 12, "december": 12,
}  # fmt: skip
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))

_KEYWORDS = (Keyword("born"), Keyword("birth"), Keyword("dob"), Keyword("d.o.b"))
# A full date: numeric in any common order, or with the month's name (either order).
DATE = regex.compile(
    rf"""(?ix)
    (?P<n1>[0-9]{{1,4}})(?P<sep>[/.\-])(?P<n2>[0-9]{{1,2}})(?P=sep)(?P<n3>[0-9]{{2,4}})(?![0-9])
  | (?P<m1>{_MONTH})\.?[ \t]+(?P<d1>[0-9]{{1,2}})(?P<o1>st|nd|rd|th)?,?[ \t]+
    (?P<y1>[0-9]{{4}})(?![0-9])
  | (?P<d2>[0-9]{{1,2}})(?P<o2>st|nd|rd|th)?[ \t]+(?:of[ \t]+)?(?P<m2>{_MONTH})\.?,?[ \t]+
    (?P<y2>[0-9]{{4}})(?![0-9])
    """
)
_GAP_LIMIT = 40


def _year(text: str) -> int:
    value = int(text)
    if len(text) == 2:
        return 1900 + value if value > date.today().year % 100 else 2000 + value
    return value


def parse_date(match: regex.Match[str]) -> bool:
    """Whether a match of the date pattern is a real date (either day/month order)."""
    if match.group("n1"):
        n1, n2, n3 = match.group("n1", "n2", "n3")
        if len(n1) == 4:
            return len(n3) <= 2 and date_valid(int(n1), int(n2), int(n3))
        if len(n1) > 2 or len(n3) == 3:
            return False
        year = _year(n3)
        return date_valid(year, int(n2), int(n1)) or date_valid(year, int(n1), int(n2))
    if match.group("m1"):
        month, day, year = match.group("m1", "d1", "y1")
    else:
        month, day, year = match.group("m2", "d2", "y2")
    return date_valid(int(year), MONTHS[month.lower()], int(day))


def find_dates_of_birth(text: str, lowered: str | None) -> Iterator[tuple[int, int]]:
    """Spans of valid dates that start within a few words after a birth keyword.

    ``lowered`` is ``text.lower()`` when it keeps offsets (see :mod:`.keywords`).
    """
    for keyword in _KEYWORDS:
        for m in keyword.finditer(text, lowered):
            if m.start() > 0 and text[m.start() - 1].isalpha():
                continue  # "stubborn", "rebirth", "adobe"
            first = p = m.end()
            if keyword is not _KEYWORDS[1] and first < len(text) and text[first].isalpha():
                continue  # "borne", "dobby"; "birth" may go on ("birthday", "birthdate")
            limit = min(len(text), p + _GAP_LIMIT)
            while p < limit:
                ch = text[p]
                if ch == "\n" or (ch in ".!?;" and p > first and text[p + 1 : p + 2].isspace()):
                    break  # the date must be in the same sentence
                if ch.isalnum() and not text[p - 1].isalnum():
                    found = DATE.match(text, p)
                    if found is not None and parse_date(found):
                        yield found.span()
                        break
                p += 1

"""Phone numbers: a structural pattern finds candidates, libphonenumber's metadata validates.

International numbers (``+CC`` or ``00CC``) are validated for any country. Numbers written
without a country code are tried only in the national formats that carry a recognisable
shape: a trunk prefix ``0`` (GB, DE, FR, IT, NL, AU, IN, JP, BR), an area code in
parentheses (US/CA, BR), or ten NANP / Indian mobile digits. A run of digits with no
separators at all counts only next to a word such as "phone" or "call".
"""

from __future__ import annotations

import phonenumbers
import regex

# Groups of digits, optionally with an international prefix and a parenthesised area code.
# Applied only to small windows around digit clusters, so its backtracking stays cheap.
CANDIDATE = regex.compile(
    r"""
    (?<![\w+.\-/])
    (?:
        (?:\+|00)[1-9][0-9]{0,3}(?:[ .\-]?\(0\))?(?:[ .\-]?(?:\([0-9]{1,5}\)|[0-9]{1,8})){1,6}
      | (?:\([0-9]{1,5}\)|[0-9]{1,8})(?:[ .\-]?(?:\([0-9]{1,5}\)|[0-9]{1,8})){1,6}
    )
    (?![\w])
    """,
    regex.VERBOSE,
)
_GROUP_END = regex.compile(r"[0-9]+\)?")
_DIGIT_GROUP = regex.compile(r"[0-9]+")
_DATE_SHAPE = regex.compile(
    r"[0-9]{4}([-./])[0-9]{1,2}\1[0-9]{1,2}|[0-9]{1,2}([-./])[0-9]{1,2}\2[0-9]{2,4}"
)
_CONTEXT = regex.compile(
    r"phone|tel\b|call|mobile|cell|fax|whats ?app|sms|contact|number|text me|reach|dial"
)

_TRUNK_REGIONS = ("GB", "DE", "FR", "IT", "NL", "AU", "IN", "JP", "BR")
_PAREN_REGIONS = ("US", "BR")
_PLAIN_REGIONS = ("US", "IN")


def has_phone_context(text: str, start: int) -> bool:
    """Whether a phone-ish word appears in the few words before ``start``."""
    return _CONTEXT.search(text[max(0, start - 40) : start].lower()) is not None


def _valid_in(number: str, regions: tuple[str | None, ...]) -> bool:
    for region in regions:
        try:
            parsed = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return True
    return False


def _national_groups_ok(candidate: str) -> bool:
    """Numbers written nationally come in groups of 2-8 digits ("1" may lead, as in 1-800).

    This keeps decimals ("37.1234"), counts ("0 1 1 2 3 5 8") and version strings out.
    """
    groups = _DIGIT_GROUP.findall(candidate)
    if len(groups) == 1:
        return True
    if "." in candidate and (len(groups) < 3 or candidate[0] == "0" and candidate[1] == "."):
        return False
    if len({c for c in candidate if c in " .-"}) > 1 and ")" not in candidate:
        return False  # "20 24-03-2023": one kind of separator per national number
    first, *rest = groups
    if all(len(g) == 2 for g in groups) and (first[0] != "0" or len(groups) < 4):
        return False  # pairs only in the French "01 23 45 67 89" style
    return (2 <= len(first) <= 6 or first == "1") and all(2 <= len(g) <= 8 for g in rest)


def phone_valid(candidate: str, *, context: bool) -> bool:
    """Whether ``candidate`` (as written) is a valid phone number in a supported form."""
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15:
        return False
    if candidate[0] == "+":
        return _valid_in(candidate, (None,))
    if candidate.startswith("00") and "1" <= candidate[2:3] <= "9":
        return _valid_in("+" + candidate[2:], (None,))
    if "/" in candidate or _DATE_SHAPE.search(candidate) or not _national_groups_ok(candidate):
        return False
    bare = candidate.isdigit()
    if bare and not context:
        return False
    if candidate[0] == "(":
        inner = candidate[1]
        return _valid_in(candidate, _TRUNK_REGIONS if inner == "0" else _PAREN_REGIONS)
    if candidate[0] == "0":
        return _valid_in(candidate, _TRUNK_REGIONS)
    if digits in (10, 11) and _plain_grouping(candidate):
        return _valid_in(candidate, _PLAIN_REGIONS)
    return False


def _plain_grouping(candidate: str) -> bool:
    """NANP "415-555-2671" / "1 415 555 2671" or Indian mobile "98765 43210" grouping."""
    lengths = tuple(len(g) for g in _DIGIT_GROUP.findall(candidate))
    return lengths in ((3, 3, 4), (1, 3, 3, 4), (5, 5), (10,), (11,))


def longest_valid_prefix(candidate: str, *, context: bool) -> int:
    """Length of the longest run of whole digit groups from the start that is a valid phone.

    Zero when none is. Trimming from the right separates a number from digits that
    follow it after a space (a year, a count) in the same cluster.
    """
    ends = [m.end() for m in _GROUP_END.finditer(candidate)]
    for end in reversed(ends):
        if sum(ch.isdigit() for ch in candidate[:end]) < 7:
            break
        if phone_valid(candidate[:end], context=context):
            return end
    return 0

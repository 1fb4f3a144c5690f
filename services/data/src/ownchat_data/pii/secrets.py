"""Credentials: provider keys and tokens, private key blocks, passwords in assignments.

Every provider pattern starts with a literal prefix so the regex engine can skip ahead
with a fast substring search; word boundaries are checked by lookarounds.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator

import regex

from .entities import EntityType
from .keywords import Keyword

_NOT_BEFORE = r"(?<![A-Za-z0-9_\-])"
_NOT_AFTER = r"(?![A-Za-z0-9_\-])"


def _mixed(value: str) -> bool:
    """Random keys hold letters and digits; placeholders like ``sk-YOUR_KEY_HERE`` do not.

    Used where the prefix alone is weak (``sk-``); a random 40+ character key has no
    digit with negligible probability.
    """
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _random_looking(value: str) -> bool:
    """Not a placeholder such as ``ghp_XXXXXXXX...`` or ``xoxb-your-token-here``."""
    lowered = value.lower()
    return len(set(lowered)) >= 8 and "xxxx" not in lowered and "your" not in lowered


def _jwt_valid(value: str) -> bool:
    header = value.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        parsed = json.loads(decoded)
    except (binascii.Error, ValueError):
        return False
    return isinstance(parsed, dict) and "alg" in parsed


# (type, pattern, extra check on the whole match)
PROVIDER_PATTERNS: tuple[tuple[EntityType, regex.Pattern[str], Callable[[str], bool]], ...] = (
    (
        EntityType.AWS_ACCESS_KEY,
        regex.compile(_NOT_BEFORE + r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        _random_looking,
    ),
    (
        EntityType.GITHUB_TOKEN,
        regex.compile(_NOT_BEFORE + r"gh[pousr]_[A-Za-z0-9]{36,251}(?![A-Za-z0-9])"),
        _random_looking,
    ),
    (
        EntityType.GITHUB_TOKEN,
        regex.compile(_NOT_BEFORE + r"github_pat_[A-Za-z0-9_]{22,244}(?![A-Za-z0-9_])"),
        _random_looking,
    ),
    (
        EntityType.SLACK_TOKEN,
        regex.compile(_NOT_BEFORE + r"xox[abeoprs]-[A-Za-z0-9-]{10,250}" + _NOT_AFTER),
        _random_looking,
    ),
    (
        EntityType.STRIPE_KEY,
        regex.compile(_NOT_BEFORE + r"[sr]k_(?:live|test)_[A-Za-z0-9]{10,247}(?![A-Za-z0-9])"),
        _random_looking,
    ),
    (
        EntityType.ANTHROPIC_API_KEY,
        regex.compile(
            _NOT_BEFORE + r"sk-ant-[a-z]{2,8}[0-9]{2}-[A-Za-z0-9_\-]{20,200}" + _NOT_AFTER
        ),
        _random_looking,
    ),
    (
        EntityType.OPENAI_API_KEY,
        regex.compile(_NOT_BEFORE + r"sk-(?:[a-z]{3,8}-)?[A-Za-z0-9_\-]{20,200}" + _NOT_AFTER),
        lambda v: _mixed(v) and _random_looking(v) and not v.startswith("sk-ant-"),
    ),
    (
        EntityType.GOOGLE_API_KEY,
        regex.compile(_NOT_BEFORE + r"AIza[0-9A-Za-z_\-]{35}" + _NOT_AFTER),
        _random_looking,
    ),
    (
        EntityType.JWT,
        regex.compile(
            _NOT_BEFORE
            + r"eyJ[A-Za-z0-9_\-]{5,2000}\.eyJ[A-Za-z0-9_\-]{5,8000}\.[A-Za-z0-9_\-]{0,2000}"
            + r"(?![A-Za-z0-9_\-.])"
        ),
        _jwt_valid,
    ),
)

_PEM_BEGIN = regex.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----")
_PEM_BODY = regex.compile(
    r"(?:[ \t]*\r?\n[ \t]*(?:[A-Za-z0-9+/]{8,}={0,2}|Proc-Type:[^\n]*|DEK-Info:[^\n]*|"
    r"Comment:[^\n]*|\\)?)*"
)
_PEM_MAX = 20_000


def find_private_keys(text: str) -> Iterator[tuple[int, int]]:
    """PEM / OpenSSH private key blocks, header to footer (or to the end of the body)."""
    for m in _PEM_BEGIN.finditer(text):
        footer = f"-----END {m.group(1)}PRIVATE KEY{m.group(2) or ''}-----"
        end = text.find(footer, m.end(), m.end() + _PEM_MAX)
        if end >= 0:
            yield m.start(), end + len(footer)
        else:
            # A truncated block: take the base64 lines that follow the header.
            yield m.start(), _PEM_BODY.match(text, m.end()).end()


_PASSWORD_KEYS = (Keyword("pass"), Keyword("pwd"))
_PASSWORD_SUFFIX = regex.compile(r"(?i)word|wd|phrase")
_PASSWORD_VALUE = regex.compile(
    r"""(?:[_\-]?[0-9])?["']?
    (?:[ \t]*(?::=|=>|[:=])|[ \t]+(?P<said>(?i:is|was))(?:[ \t]*:|(?=[ \t])))[ \t]*
    (?:"(?P<dq>[^"\n]{1,128})"|'(?P<sq>[^'\n]{1,128})'|(?P<bare>[^\s"'`,;<>(){}\[\]]{1,128}))""",
    regex.VERBOSE,
)
# Values that name a password rather than being one ("your_password", "<example>").
_PLACEHOLDER_WORDS = ("password", "passwd", "your", "example", "placeholder")
# Template and variable syntax: "${DB_PASS}", "{{ pw }}", "<password>", "%(pw)s", "$1".
_TEMPLATE_STARTS = ("$", "{{", "{%", "<", "%(", "%s")
_DOTTED_IDENTIFIER = regex.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_NOT_PASSWORDS = frozenset(
    """none null nil true false undefined str string int bool boolean text varchar char bytes
    password passwd pwd passphrase pass secret required optional yes no must should the a an
    is are your you will not of and or to be at in for with enter type field input hidden
    empty blank same new old see below above here this that it""".split()
)


def _said_like_a_secret(value: str) -> bool:
    """A password told in a sentence ("my password is hunter2") holds a digit or a symbol;
    "is case-sensitive", "is expired." and "is correct" describe one instead."""
    return any(c.isdigit() or not (c.isalnum() or c in "-.") for c in value)


def _password_value_ok(
    value: str, text: str, end: int, *, quoted: bool, prose: bool, said: bool = False
) -> bool:
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return False
    if not quoted and (len(value) < 4 or (prose and value.isalpha())):
        return False  # "Password: Print", "passes: 7": words and counts, not secrets
    if (
        lowered.rstrip("!?") in _NOT_PASSWORDS
        or value.startswith(_TEMPLATE_STARTS)
        or (not quoted and value[0] in "{[(?:")
        or value.endswith(("(", ":"))
    ):
        return False
    if set(value) <= {"*", "x", "X", ".", "•", "-", "_"}:
        return False
    if not said and end < len(text) and text[end] in "(.":
        return False  # "password.strip()", "password(...)": code using the name
    return _DOTTED_IDENTIFIER.fullmatch(value) is None


def find_passwords(text: str, lowered: str | None) -> Iterator[tuple[int, int]]:
    """The value in ``password=...`` / ``passwd: ...`` / ``"pwd": "..."`` style text, and
    in a sentence after "password is" / "password was".

    ``lowered`` is ``text.lower()`` when it keeps offsets (see :mod:`.keywords`).
    """
    for keyword in _PASSWORD_KEYS:
        for m in keyword.finditer(text, lowered):
            end = m.end()
            suffix = _PASSWORD_SUFFIX.match(text, end) if keyword is _PASSWORD_KEYS[0] else None
            if suffix is not None:
                end = suffix.end()
            elif m.start() > 0 and text[m.start() - 1].isalpha():
                continue  # "bypass=", "cwd=": only the long keywords may be glued to a prefix
            value = _PASSWORD_VALUE.match(text, end)
            if value is None or (value.group("said") and suffix is None):
                continue  # "the pass is valid", "pwd is /home": only "password" is told so
            group = "dq" if value.group("dq") else "sq" if value.group("sq") else "bare"
            start, stop = value.span(group)
            if group == "bare" and text[m.start() - 1 : m.start()] in ("?", "&"):
                # In a query string "&" ends the value; elsewhere it is part of it.
                amp = text.find("&", start, stop)
                stop = stop if amp < 0 else amp
            prose = "=" not in text[value.start() : start]
            quoted = group != "bare"
            said = value.group("said") is not None
            if said and not quoted:
                # The sentence's full stop is not the password's.
                stop = start + len(text[start:stop].rstrip("."))
                if not _said_like_a_secret(text[start:stop]):
                    continue
            if _password_value_ok(
                text[start:stop], text, stop, quoted=quoted, prose=prose, said=said
            ):
                yield start, stop

"""What a regular expression literally says, for the scanners that read text.

A regex expected answer spells its literals with escapes: ``alice@example\\.com``,
``\\+1 415 555 0134``, ``example[.]com``, ``\\x40``. Scanned as written, such a
pattern hides the values it matches from the PII scanner and from erasure's
value search. :func:`literal_readings` undoes the common spellings so those
can see them. It is a best effort at what a pattern's author would write, not
a regex parser: a pattern can always be built so that no reading shows a value.
"""

from __future__ import annotations

import regex

# One unit of a pattern, tried in this order; every character falls in one.
_TOKEN = regex.compile(
    r"""
      \\x(?P<hex2>[0-9A-Fa-f]{2})          # a character by its code point
    | \\u(?P<hex4>[0-9A-Fa-f]{4})
    | \\U(?P<hex8>[0-9A-Fa-f]{8})
    | \\(?P<symbol>[^\p{L}\p{N}])          # \. \+ \( \- "\ ": the character itself
    | \[\\?(?P<single>[^\]\\])\]           # [.] or [\.]: a class of one character
    | (?P<operator>
          \\[\p{L}\p{N}]                   # \d \s \b: a class or an anchor, no literal
        | \(\?(?:P?<[^>]*>|[a-zA-Z-]*[:)]?)  # group openings and inline flags
        | \{\d*(?:,\d*)?\}                 # counted repetition
        | [()|^$?*+{}\[\]]                 # grouping, alternation, anchors, repetition
      )
    | (?P<literal>.)
    """,
    regex.VERBOSE | regex.DOTALL,
)


def _literal(match: regex.Match[str]) -> str | None:
    """The character a token stands for; None for an operator."""
    for name in ("hex2", "hex4", "hex8"):
        digits = match.group(name)
        if digits is not None:
            value = int(digits, 16)
            return chr(value) if value <= 0x10FFFF else match.group(0)
    for name in ("symbol", "single", "literal"):
        if match.group(name) is not None:
            return str(match.group(name))
    return None


def literal_readings(pattern: str) -> list[str]:
    """The pattern as written, then unescaped, then unescaped without its operators.

    The last reading joins alternatives (``(alice|bob)@x\\.com`` reads as
    ``alicebob@x.com``), which lets a scanner see an address the alternation
    splits; the unescaped one keeps ``+`` and parentheses, which phone numbers need.
    """
    unescaped: list[str] = []
    bare: list[str] = []
    for match in _TOKEN.finditer(pattern):
        literal = _literal(match)
        unescaped.append(match.group(0) if literal is None else literal)
        if literal is not None:
            bare.append(literal)
    readings = [pattern]
    for reading in ("".join(unescaped), "".join(bare)):
        if reading not in readings:
            readings.append(reading)
    return readings

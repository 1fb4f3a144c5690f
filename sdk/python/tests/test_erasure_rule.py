"""The rule every service erases by (ownchat.erasure)."""

from __future__ import annotations

from ownchat.erasure import MIN_VALUE_CHARS, folded_values, holds_any, too_short


def test_a_text_holds_a_value_anywhere_in_any_case() -> None:
    folded = folded_values(["Care Plus", "alice@example.com"])
    assert holds_any(["Is CARE PLUS included?"], folded)
    assert holds_any(["nothing here", "mail ALICE@Example.COM today"], folded)
    assert not holds_any(["Care and plus", "alice at example.com"], folded)
    assert not holds_any([], folded)
    # casefold, not lower: the German sharp s matches its "ss" spelling.
    assert holds_any(["STRASSE 5"], folded_values(["Straße 5"]))


def test_values_too_short_to_erase_safely() -> None:
    assert MIN_VALUE_CHARS == 3
    assert too_short(["ab", "  x  ", "", "abc", "Care Plus"]) == ["ab", "  x  ", ""]
    assert too_short(["abc"]) == []

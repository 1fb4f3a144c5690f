"""Redaction modes, placeholder scopes, consistent pseudonyms, and properties over random text."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ownchat_data.pii import EntityType, PiiScanner, RedactionMode, RedactionScope, Redactor
from ownchat_data.pii.checks import iban_valid, luhn_valid, ssn_valid

DATA = Path(__file__).parent / "data"
SAMPLES = [
    (pre, value, post, EntityType(kind))
    for pre, value, post, kind in json.loads((DATA / "pii_samples.json").read_text())
]
SALT = b"test-salt-0123456789"
EMAIL, CARD = "maria.garcia@example.com", "4111 1111 1111 1111"


def test_redact_replaces_each_value_with_its_type_tag() -> None:
    result = Redactor(RedactionMode.REDACT).redact(f"mail {EMAIL}, card {CARD}, again {EMAIL}")
    assert result.text == "mail <EMAIL>, card <CREDIT_CARD>, again <EMAIL>"
    assert result.counts == {"EMAIL": 2, "CREDIT_CARD": 1}
    assert [s.value for s in result.spans] == [EMAIL, CARD, EMAIL]


def test_placeholders_number_distinct_values_within_a_scope() -> None:
    redactor = Redactor(RedactionMode.PLACEHOLDER)
    other = "j.smith@example.org"
    texts, counts = redactor.redact_conversation(
        [f"I am {EMAIL}", f"cc {other} and {EMAIL.upper()}", f"write to {other}"]
    )
    # Case differences in an address are the same address.
    assert texts == ["I am <EMAIL_1>", "cc <EMAIL_2> and <EMAIL_1>", "write to <EMAIL_2>"]
    assert counts == {"EMAIL": 4}
    # A new conversation starts numbering again; a shared scope does not.
    assert redactor.redact(f"hi {other}").text == "hi <EMAIL_1>"
    scope = RedactionScope()
    redactor.redact(f"hi {EMAIL}", scope)
    assert redactor.redact(f"hi {other}", scope).text == "hi <EMAIL_2>"


def test_pseudonyms_are_consistent_across_calls_and_instances_with_one_salt() -> None:
    text = f"mail {EMAIL}, card {CARD}, call +44 20 7946 0958"
    first = Redactor(RedactionMode.PSEUDONYMIZE, salt=SALT).redact(text).text
    again = Redactor(RedactionMode.PSEUDONYMIZE, salt=SALT)
    assert again.redact(text).text == first
    assert again.redact(f"from {EMAIL}").text == "from " + first.split()[1].rstrip(",")
    other_salt = Redactor(RedactionMode.PSEUDONYMIZE, salt=b"another-salt").redact(text).text
    assert other_salt != first
    for value in (EMAIL, CARD, "+44 20 7946 0958"):
        assert value not in first


def test_pseudonyms_keep_type_shape_and_checksums() -> None:
    redactor = Redactor(RedactionMode.PSEUDONYMIZE, salt=SALT)
    scanner = PiiScanner()
    for pre, value, post, kind in SAMPLES:
        fake = redactor.surrogate(kind, value)
        assert fake != value, kind
        if kind is EntityType.CREDIT_CARD:
            digits = "".join(c for c in fake if c.isdigit())
            assert luhn_valid(digits) and len(fake) == len(value)
            assert [c.isdigit() for c in fake] == [c.isdigit() for c in value]
        elif kind is EntityType.IBAN:
            assert iban_valid(fake.replace(" ", "")) and fake[:2] == value[:2]
        elif kind is EntityType.US_SSN:
            digits = "".join(c for c in fake if c.isdigit())
            assert ssn_valid(digits[:3], digits[3:5], digits[5:])
        elif kind is EntityType.EMAIL:
            assert fake.split("@")[1].startswith("example.")
        elif kind is EntityType.IP_ADDRESS:
            address = ipaddress.ip_address(fake.split("/")[0])
            assert address.version == (6 if ":" in value else 4)
        # In its original context the surrogate is found again as the same type only.
        found = scanner.scan(f"Hello team, {pre}{fake}{post} thanks.")
        assert {s.type for s in found} <= {kind}, (kind, fake, found)


def test_pseudonymize_needs_a_salt() -> None:
    with pytest.raises(ValueError, match="salt"):
        Redactor(RedactionMode.PSEUDONYMIZE)


def test_text_without_findings_is_returned_unchanged() -> None:
    result = Redactor(RedactionMode.REDACT).redact("nothing to see, order 42")
    assert result.text == "nothing to see, order 42" and result.spans == ()


# ---- properties -------------------------------------------------------------------------

WORDS = st.sampled_from(
    "the order refund please my is and to of 42 7 2023 ok, thanks! (see below) - : ; ? "
    "support team account invoice hello\n".split(" ")
)
filler = st.lists(WORDS, max_size=8).map(" ".join)
planted = st.lists(st.tuples(filler, st.sampled_from(SAMPLES)), min_size=1, max_size=6)


def _build(parts: list[tuple[str, tuple[str, str, str, EntityType]]], tail: str) -> str:
    return "".join(f"{text} {pre}{value}{post} . " for text, (pre, value, post, _) in parts) + tail


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted, filler, st.sampled_from(list(RedactionMode)))
def test_redaction_never_leaves_a_planted_or_detected_value(
    parts: list[tuple[str, tuple[str, str, str, EntityType]]],
    tail: str,
    mode: RedactionMode,
) -> None:
    text = _build(parts, tail)
    redactor = Redactor(mode, salt=SALT)
    result = redactor.redact(text)
    detected = {(s.type, s.value) for s in result.spans}
    for _, (_, value, _, kind) in parts:
        assert (kind, value) in detected
        assert value not in result.text
    for span in result.spans:
        assert span.value not in result.text or len(span.value) < 8
    assert result.counts.total() == len(result.spans)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted, filler, st.sampled_from([RedactionMode.REDACT, RedactionMode.PLACEHOLDER]))
def test_redacting_redacted_text_finds_nothing_new(
    parts: list[tuple[str, tuple[str, str, str, EntityType]]],
    tail: str,
    mode: RedactionMode,
) -> None:
    redactor = Redactor(mode)
    once = redactor.redact(_build(parts, tail)).text
    twice = redactor.redact(once)
    assert twice.spans == () and twice.text == once


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted, filler)
def test_pseudonymized_text_rescans_to_surrogates_only(
    parts: list[tuple[str, tuple[str, str, str, EntityType]]], tail: str
) -> None:
    redactor = Redactor(RedactionMode.PSEUDONYMIZE, salt=SALT)
    first = redactor.redact(_build(parts, tail))
    originals = {s.value for s in first.spans}
    surrogates = {redactor.surrogate(s.type, s.value) for s in first.spans}
    for span in redactor.scanner.scan(first.text):
        assert span.value not in originals
        assert span.value in surrogates

"""Checksums behind the PII scanner, against published examples and their encoders."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ownchat_data.pii.checks import (
    base58check_encode,
    base58check_valid,
    bech32_encode,
    bech32_valid,
    card_issuer_known,
    iban_mod97,
    iban_valid,
    ipv4_valid,
    ipv6_valid,
    luhn_check_digit,
    luhn_valid,
    ssn_valid,
)


def test_published_examples() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert card_issuer_known("378282246310005") and not card_issuer_known("1234567890123456")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("DE8937040044053201300")  # one character short
    assert base58check_valid("1BoatSLRHtKNngkdXEeobR76b53LETtpyT")
    assert not base58check_valid("1BoatSLRHtKNngkdXEeobR76b53LETtpyX")
    assert bech32_valid("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq")
    assert not bech32_valid("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdz")
    assert ipv4_valid("203.0.113.7") and not ipv4_valid("999.1.1.1")
    assert not ipv4_valid("01.2.3.4")
    assert ipv6_valid("2001:db8::1") and not ipv6_valid("2001:db8:::1")
    assert ssn_valid("078", "05", "1120")
    assert not any(ssn_valid(*p) for p in [("000", "12", "3456"), ("666", "12", "3456")])
    assert not any(ssn_valid(*p) for p in [("912", "12", "3456"), ("123", "00", "4567")])
    assert not ssn_valid("123", "45", "0000")


@given(st.text("0123456789", min_size=1, max_size=18))
def test_luhn_check_digit_completes_any_prefix(prefix: str) -> None:
    assert luhn_valid(prefix + luhn_check_digit(prefix))


@given(st.binary(min_size=20, max_size=20), st.sampled_from([b"\x00", b"\x05"]))
def test_base58check_round_trip(payload: bytes, version: bytes) -> None:
    address = base58check_encode(version + payload)
    assert address[0] in "13" and base58check_valid(address)
    assert not base58check_valid(address[:-1] + ("2" if address[-1] != "2" else "3"))


@given(st.lists(st.integers(0, 31), min_size=32, max_size=32), st.booleans())
def test_bech32_round_trip(program: list[int], m: bool) -> None:
    assert bech32_valid(bech32_encode("bc", [1 if m else 0, *program], m=m))


@given(st.text("0123456789", min_size=18, max_size=18))
def test_iban_check_digits_from_mod97(bban: str) -> None:
    check = 98 - iban_mod97("DE00" + bban)
    assert iban_valid(f"DE{check:02d}{bban}")

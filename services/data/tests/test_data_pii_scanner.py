"""The PII scanner: each type found in context, near misses left alone, overlaps resolved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownchat_data.pii import DEFAULT_TYPES, EntityType, PiiScanner

DATA = Path(__file__).parent / "data"
SAMPLES = [
    (pre, value, post, EntityType(kind))
    for pre, value, post, kind in json.loads((DATA / "pii_samples.json").read_text())
]
SCANNER = PiiScanner()


@pytest.mark.parametrize(("pre", "value", "post", "kind"), SAMPLES, ids=lambda x: str(x)[:24])
def test_each_sample_is_found_with_its_exact_span(
    pre: str, value: str, post: str, kind: EntityType
) -> None:
    text = f"Hello team, {pre}{value}{post} thanks."
    spans = SCANNER.scan(text)
    assert [(s.type, s.value) for s in spans] == [(kind, value)]
    assert text[spans[0].start : spans[0].end] == value


def test_every_default_type_has_a_sample() -> None:
    assert {kind for *_, kind in SAMPLES} == set(DEFAULT_TYPES)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 was declined",  # Luhn fails
        "card 1234 5678 9012 3456",  # no card network starts with 1
        "IBAN GB82 WEST 1234 5698 7654 33",  # mod-97 fails
        "IBAN DE89 3704 0044 0532 0130",  # too short for DE
        "ping 999.1.1.1 fails",
        "ping 1.2.3 and 1.2.3.4.5",
        "SSN 000-12-3456",
        "SSN 666-12-3456",
        "SSN 912-34-5678",
        "SSN 123-00-4567 and 123-45-0000",
        "meeting on 12/03/2024 at 10:30:00",  # a date, but not a birth date
        "born in 1985 in Lyon",  # a year is not a date of birth
        "born on 31/02/1985",  # no such day
        "stubborn 12/03/1985",
        "the sum is 3.14159265358979 and 2.718281828",
        "version 10.0.19045.3693",
        "order #123456789 shipped",
        "commit 3f5a9c1e7b2d4a6f8e0c1b3d5f7a9c2e4b6d8f0a",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "MAC 00:1A:2B:3C:4D:5E and time 12:30:45",
        "slice a[1::2] and std::vector<int> and Foo::Bar",
        "assets icon@2x.png and @app.route('/') and user@localhost",
        "wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyX",  # base58check fails
        "placeholder sk-YOUR_API_KEY_HERE and ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "password: ********",
        'password = os.environ["DB_PASSWORD"]',
        "password: str = Field(...)",
        "password=${DB_PASSWORD} and password: <your password>",
        "Password: must be 8 characters",
        "the password is correct, your password is case-sensitive",
        "password is expired. The password is 8 characters, password is required",
        "boarding pass is A12B and pwd is /home/me, the password island",
        "password is ********, password is ${DB_PASS}, password isn't set",
        "ISBN 978-3-16-148410-0 and 1,234,567.89",
        "counts 0 1 1 2 3 5 8 13 21",
    ],
)
def test_near_misses_are_not_reported(text: str) -> None:
    assert SCANNER.scan(text) == []


def test_bare_digits_are_a_phone_only_next_to_a_phone_word() -> None:
    assert SCANNER.scan("reference 4155552671 attached") == []
    spans = SCANNER.scan("call me on 4155552671 tomorrow")
    assert [(s.type, s.value) for s in spans] == [(EntityType.PHONE, "4155552671")]


def test_token_inside_a_url_is_reported_as_the_token() -> None:
    token = "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"
    spans = SCANNER.scan(f"git clone https://{token}@github.com/acme/app.git")
    assert [(s.type, s.value) for s in spans] == [(EntityType.GITHUB_TOKEN, token)]


def test_the_longer_or_more_specific_span_wins() -> None:
    # The card is also phone-shaped; the URL contains an e-mail; the key is a password value.
    spans = SCANNER.scan(
        "pay 4111-1111-1111-1111 at https://x.example.com/?mail=a@example.com "
        'password="sk_live_4eC39HqLyjWDarjtT1zdp7dc"'
    )
    assert [s.type for s in spans] == [
        EntityType.CREDIT_CARD,
        EntityType.URL,
        EntityType.STRIPE_KEY,
    ]
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_url_keeps_its_own_brackets_and_drops_sentence_punctuation() -> None:
    text = "see [docs](https://example.com/wiki/Foo_(bar)). Or https://example.com/a, ok"
    assert [s.value for s in SCANNER.scan(text)] == [
        "https://example.com/wiki/Foo_(bar)",
        "https://example.com/a",
    ]


def test_types_limit_what_is_scanned() -> None:
    text = "mail a.b@example.com card 4111 1111 1111 1111"
    spans = PiiScanner(types={EntityType.EMAIL}).scan(text)
    assert [s.type for s in spans] == [EntityType.EMAIL]


def test_offsets_hold_when_lower_casing_changes_length() -> None:
    # "İ" lower-cases to two characters; keyword search must then run on the original.
    text = "İİİ İstanbul, DOB: 12/03/1985, Password=Hunter2x"
    spans = SCANNER.scan(text)
    assert [(s.type, text[s.start : s.end]) for s in spans] == [
        (EntityType.DATE_OF_BIRTH, "12/03/1985"),
        (EntityType.PASSWORD, "Hunter2x"),
    ]


@pytest.mark.parametrize(
    ("text", "password"),
    [
        ("my password is hunter2", "hunter2"),
        ("My Password is: P@ssw0rd! thanks", "P@ssw0rd!"),
        ("the password was Tr0ub4dor&3.", "Tr0ub4dor&3"),
        ('the wifi password is "open sesame"', "open sesame"),
        ("my passphrase IS blue42sky", "blue42sky"),
    ],
)
def test_a_password_told_in_a_sentence_is_found(text: str, password: str) -> None:
    assert [(s.type, s.value) for s in SCANNER.scan(text)] == [(EntityType.PASSWORD, password)]


def test_person_names_only_when_asked_and_only_in_context() -> None:
    text = "Hi Maria, my name is John Smith. Regards,\nDr. Watson. Will it rain in May?"
    assert PiiScanner().scan(text) == []
    names = PiiScanner(types={EntityType.PERSON}).scan(text)
    assert [s.value for s in names] == ["Maria", "John Smith", "Watson"]


def test_empty_and_plain_text() -> None:
    assert SCANNER.scan("") == []
    assert SCANNER.scan("Nothing personal here, just 42 apples and 7 pears.") == []

"""The kinds of personal data and secrets the scanner reports, and one detection."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EntityType(StrEnum):
    """What a detected span is; the value is the tag used in redacted text."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CREDIT_CARD = "CREDIT_CARD"
    IBAN = "IBAN"
    IP_ADDRESS = "IP_ADDRESS"
    URL = "URL"
    US_SSN = "US_SSN"
    CRYPTO_WALLET = "CRYPTO_WALLET"
    DATE_OF_BIRTH = "DATE_OF_BIRTH"
    PERSON = "PERSON"
    AWS_ACCESS_KEY = "AWS_ACCESS_KEY"
    GITHUB_TOKEN = "GITHUB_TOKEN"
    SLACK_TOKEN = "SLACK_TOKEN"
    STRIPE_KEY = "STRIPE_KEY"
    OPENAI_API_KEY = "OPENAI_API_KEY"
    ANTHROPIC_API_KEY = "ANTHROPIC_API_KEY"
    GOOGLE_API_KEY = "GOOGLE_API_KEY"
    JWT = "JWT"
    PRIVATE_KEY = "PRIVATE_KEY"
    PASSWORD = "PASSWORD"


# Personal data found by pattern and checksum (the Presidio-comparable set).
PII_TYPES = frozenset(
    {
        EntityType.EMAIL,
        EntityType.PHONE,
        EntityType.CREDIT_CARD,
        EntityType.IBAN,
        EntityType.IP_ADDRESS,
        EntityType.URL,
        EntityType.US_SSN,
        EntityType.CRYPTO_WALLET,
        EntityType.DATE_OF_BIRTH,
    }
)

# Credentials: provider keys and tokens, private keys, passwords in assignments.
SECRET_TYPES = frozenset(
    {
        EntityType.AWS_ACCESS_KEY,
        EntityType.GITHUB_TOKEN,
        EntityType.SLACK_TOKEN,
        EntityType.STRIPE_KEY,
        EntityType.OPENAI_API_KEY,
        EntityType.ANTHROPIC_API_KEY,
        EntityType.GOOGLE_API_KEY,
        EntityType.JWT,
        EntityType.PRIVATE_KEY,
        EntityType.PASSWORD,
    }
)

# What a scanner looks for unless told otherwise; PERSON is opt-in (context rules only).
DEFAULT_TYPES = PII_TYPES | SECRET_TYPES

# When two candidates cover exactly the same text, the higher number wins: checksummed and
# provider-specific findings beat looser ones (a Luhn-valid card over a phone-shaped number,
# a provider key over the password assignment that holds it).
SPECIFICITY = {
    EntityType.PRIVATE_KEY: 90,
    EntityType.JWT: 85,
    EntityType.ANTHROPIC_API_KEY: 82,
    EntityType.AWS_ACCESS_KEY: 80,
    EntityType.GITHUB_TOKEN: 80,
    EntityType.SLACK_TOKEN: 80,
    EntityType.STRIPE_KEY: 80,
    EntityType.GOOGLE_API_KEY: 80,
    EntityType.OPENAI_API_KEY: 75,
    EntityType.IBAN: 70,
    EntityType.CREDIT_CARD: 70,
    EntityType.CRYPTO_WALLET: 70,
    EntityType.US_SSN: 60,
    EntityType.IP_ADDRESS: 55,
    EntityType.DATE_OF_BIRTH: 50,
    EntityType.EMAIL: 45,
    EntityType.URL: 40,
    EntityType.PASSWORD: 30,
    EntityType.PHONE: 20,
    EntityType.PERSON: 10,
}


@dataclass(frozen=True, slots=True)
class Span:
    """One detection: ``text[start:end] == value``."""

    type: EntityType
    start: int
    end: int
    value: str

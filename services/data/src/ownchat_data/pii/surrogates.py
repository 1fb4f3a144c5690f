"""Realistic stand-ins for detected values, derived from HMAC(salt, type, value).

The same salt and value always give the same surrogate, in any process, so one person's
e-mail becomes the same fake address across a conversation and a whole dataset. Each
surrogate keeps the original's shape (separators, grouping, country, key prefix) and,
where the type has a checksum, carries a valid one, so text stays natural for training.
Fake hosts use the reserved ``example.*`` names, IPv4 the private 10/8 block and IPv6 the
2001:db8::/32 documentation prefix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import string

import phonenumbers

from .checks import (
    base58check_encode,
    bech32_encode,
    iban_mod97,
    luhn_check_digit,
)
from .dates import DATE
from .entities import EntityType
from .names import GIVEN_NAMES

_FIRST = sorted(GIVEN_NAMES)
_LAST = """smith johnson williams brown jones garcia miller davis martinez lopez wilson anderson
taylor thomas moore martin lee thompson white harris clark lewis robinson walker young allen
king wright scott hill green adams baker nelson carter mitchell roberts turner phillips
campbell parker evans edwards collins stewart morris murphy cook rogers morgan cooper
peterson reed bailey bell kelly howard ward cox richardson wood watson brooks bennett gray
james hughes price sanders myers long ross foster""".split()
_WORDS = """acme blue cedar delta ember falcon granite harbor iris juniper kestrel lumen maple
nova orbit pine quartz river sierra tundra umber vista willow xenon yonder zephyr""".split()
_PASSWORD_CHARS = string.ascii_letters + string.digits + "!@#$%^&*-_"
_MONTH_NAMES = [
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
]  # fmt: skip
_KEY_PREFIXES = (
    "github_pat_", "sk-ant-", "sk-proj-", "sk-svcacct-", "sk-admin-", "sk_live_", "sk_test_",
    "rk_live_", "rk_test_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xoxb-", "xoxa-", "xoxp-",
    "xoxr-", "xoxs-", "xoxe-", "xoxo-", "AKIA", "ASIA", "ABIA", "ACCA", "AIza", "sk-",
)  # fmt: skip


def rng_for(salt: bytes, kind: EntityType, canonical: str, attempt: int) -> random.Random:
    """A generator seeded by HMAC-SHA256 of the value under the secret salt."""
    message = f"{kind.value}\x00{canonical}\x00{attempt}".encode()
    return random.Random(hmac.new(salt, message, hashlib.sha256).digest())


def canonical(kind: EntityType, value: str) -> str:
    """The form under which two spellings of one value count as the same value."""
    if kind in (EntityType.PHONE, EntityType.CREDIT_CARD, EntityType.US_SSN):
        return "".join(c for c in value if c.isdigit())
    if kind is EntityType.IBAN:
        return value.replace(" ", "").upper()
    if kind in (EntityType.EMAIL, EntityType.PERSON):
        return " ".join(value.lower().split())
    if kind is EntityType.IP_ADDRESS:
        try:
            return str(ipaddress.ip_interface(value.split("%")[0]))
        except ValueError:
            return value
    if kind is EntityType.CRYPTO_WALLET and value.startswith("0x"):
        return value.lower()
    return value


def _same_shape(value: str, rng: random.Random) -> str:
    """Each letter and digit replaced by a random one of the same class and case."""
    out = []
    for ch in value:
        if "0" <= ch <= "9":
            out.append(rng.choice(string.digits))
        elif "a" <= ch <= "z":
            out.append(rng.choice(string.ascii_lowercase))
        elif "A" <= ch <= "Z":
            out.append(rng.choice(string.ascii_uppercase))
        else:
            out.append(ch)
    return "".join(out)


def _replace_digits(value: str, digits: str) -> str:
    it = iter(digits)
    return "".join(next(it) if c.isdigit() else c for c in value)


def _email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    tld = rng.choice(("com", "org", "net"))
    return f"{first}.{last}{rng.randrange(10, 100)}@example.{tld}"


def _phone(value: str, rng: random.Random) -> str:
    """Keeps the international prefix and country code (or the trunk "0" / first digit)."""
    digits = [c for c in value if c.isdigit()]
    keep = 1
    if value.startswith(("+", "00")):
        idd = 0 if value[0] == "+" else 2
        try:
            parsed = phonenumbers.parse("+" + "".join(digits[idd:]))
            keep = idd + len(str(parsed.country_code)) + 1
        except phonenumbers.NumberParseException:
            keep = idd + 2
    new = digits[:keep] + [rng.choice(string.digits) for _ in digits[keep:]]
    return _replace_digits(value, "".join(new))


def _card(value: str, rng: random.Random) -> str:
    digits = "".join(c for c in value if c.isdigit())
    body = digits[:4] + "".join(rng.choice(string.digits) for _ in digits[4:-1])
    return _replace_digits(value, body + luhn_check_digit(body))


def _iban(value: str, rng: random.Random) -> str:
    compact = value.replace(" ", "")
    bban = _same_shape(compact[4:], rng)
    check = 98 - iban_mod97(compact[:2] + "00" + bban)
    new = compact[:2] + f"{check:02d}" + bban
    it = iter(new)
    return "".join(" " if c == " " else next(it) for c in value)


def _ip(value: str, rng: random.Random) -> str:
    address, slash, prefix = value.partition("/")
    if ":" in address:
        host = ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(64))
        new = str(host)
    else:
        new = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return new + slash + prefix


def _url(value: str, rng: random.Random) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value[len("www.") :]
    host = f"{rng.choice(_WORDS)}-{rng.randrange(16**4):04x}.example.com"
    path = "/" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(8))
    has_path = "/" in rest.rstrip("/")
    url = f"{scheme}://{host}" if sep else f"www.{host}"
    if has_path:
        url += path
    if "?" in rest:
        url += f"?id={rng.randrange(16**6):06x}"
    return url


def _ssn(value: str, rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    digits = f"{area:03d}{rng.randrange(1, 100):02d}{rng.randrange(1, 10000):04d}"
    return _replace_digits(value, digits)


def _wallet(value: str, rng: random.Random) -> str:
    if value.startswith("0x"):
        return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40))
    if value.lower().startswith("bc1"):
        taproot = value.lower().startswith("bc1p")
        program = [rng.randrange(32) for _ in range(52 if taproot else 32)]
        return bech32_encode("bc", [1 if taproot else 0, *program], m=taproot)
    version = b"\x05" if value.startswith("3") else b"\x00"
    return base58check_encode(version + rng.randbytes(20))


def _date(value: str, rng: random.Random) -> str:
    m = DATE.fullmatch(value)
    if m is None:
        return value
    year = rng.randrange(1940, 2006)
    month = rng.randrange(1, 13)
    day = rng.randrange(1, 13 if m.group("n1") and len(m.group("n1")) <= 2 else 29)
    edits: list[tuple[str, str]] = []
    if m.group("n1"):
        if len(m.group("n1")) == 4:
            edits = [("n1", f"{year}"), ("n2", f"{month:02d}"), ("n3", f"{day:02d}")]
        else:
            y = f"{year % 100:02d}" if len(m.group("n3")) == 2 else f"{year}"
            edits = [("n1", f"{day:02d}"), ("n2", f"{month:02d}"), ("n3", y)]
    else:
        k = "1" if m.group("m1") else "2"
        name = m.group("m" + k)
        new_month = _MONTH_NAMES[month - 1]
        if name.lower() not in _MONTH_NAMES:
            new_month = new_month[:3]  # the original was abbreviated
        if name[0].isupper():
            new_month = new_month.upper() if name.isupper() else new_month.capitalize()
        edits = [("m" + k, new_month), ("d" + k, str(day)), ("y" + k, str(year))]
        if m.group("o" + k):
            suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10)
            edits.append(("o" + k, suffix or "th"))
    out = value
    for group, new in sorted(edits, key=lambda e: m.start(e[0]), reverse=True):
        out = out[: m.start(group)] + new + out[m.end(group) :]
    return out


def _secret(value: str, rng: random.Random) -> str:
    prefix = next((p for p in _KEY_PREFIXES if value.startswith(p)), "")
    return prefix + _same_shape(value[len(prefix) :], rng)


def _jwt(value: str, rng: random.Random) -> str:
    header, _, rest = value.partition(".")
    payload = base64.urlsafe_b64encode(f'{{"sub":"{rng.getrandbits(48):x}"}}'.encode())
    return f"{header}.{payload.decode().rstrip('=')}.{_same_shape(rest.partition('.')[2], rng)}"


def _private_key(value: str, rng: random.Random) -> str:
    lines = value.split("\n")
    return "\n".join(
        line if line.startswith("-----") or ":" in line else _same_shape(line, rng)
        for line in lines
    )


def _password(value: str, rng: random.Random) -> str:
    length = min(max(len(value), 10), 24)
    return "".join(rng.choice(_PASSWORD_CHARS) for _ in range(length))


def _person(value: str, rng: random.Random) -> str:
    words = value.split()
    names = [rng.choice(_FIRST).capitalize()] + [rng.choice(_LAST).capitalize() for _ in words[1:]]
    return " ".join(names)


def make_surrogate(kind: EntityType, value: str, rng: random.Random) -> str:
    """A fake value of ``kind`` shaped like ``value``."""
    if kind is EntityType.EMAIL:
        return _email(rng)
    if kind is EntityType.PHONE:
        return _phone(value, rng)
    if kind is EntityType.CREDIT_CARD:
        return _card(value, rng)
    if kind is EntityType.IBAN:
        return _iban(value, rng)
    if kind is EntityType.IP_ADDRESS:
        return _ip(value, rng)
    if kind is EntityType.URL:
        return _url(value, rng)
    if kind is EntityType.US_SSN:
        return _ssn(value, rng)
    if kind is EntityType.CRYPTO_WALLET:
        return _wallet(value, rng)
    if kind is EntityType.DATE_OF_BIRTH:
        return _date(value, rng)
    if kind is EntityType.JWT:
        return _jwt(value, rng)
    if kind is EntityType.PRIVATE_KEY:
        return _private_key(value, rng)
    if kind is EntityType.PASSWORD:
        return _password(value, rng)
    if kind is EntityType.PERSON:
        return _person(value, rng)
    return _secret(value, rng)

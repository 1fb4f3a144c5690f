"""Checksums and validity rules that turn pattern candidates into detections.

Each function takes the candidate as written (separators included where noted) and
answers whether it is a well-formed value of its kind; none of them raises.
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress

# ISO 13616 registry: IBAN length per country code.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX = {c: i for i, c in enumerate(_BASE58)}
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_INDEX = {c: i for i, c in enumerate(_BECH32)}
_BECH32M_CONST = 0x2BC830A3


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` pass :func:`luhn_valid`."""
    for d in "0123456789":
        if luhn_valid(partial + d):
            return d
    raise AssertionError("unreachable: one digit always completes a Luhn sum")


def card_issuer_known(digits: str) -> bool:
    """Whether the leading digits belong to a card network (IIN ranges of the big schemes)."""
    n = len(digits)
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    two = int(digits[:2])
    four = int(digits[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16  # Mastercard
    if two in (34, 37):
        return n == 15  # American Express
    if digits.startswith("6011") or two == 65 or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19  # Discover
    if 3528 <= four <= 3589:
        return 16 <= n <= 19  # JCB
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19  # Diners Club
    if two == 62:
        return 16 <= n <= 19  # UnionPay
    if two in (50, 56, 57, 58, 63, 67) or digits[0] == "6":
        return 12 <= n <= 19  # Maestro
    return False


def iban_mod97(compact: str) -> int:
    """ISO 7064 mod 97-10 remainder of an IBAN without spaces (1 means valid)."""
    rearranged = compact[4:] + compact[:4]
    remainder = 0
    for ch in rearranged:
        value = ord(ch) - 48 if ch <= "9" else ord(ch) - 55
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder


def iban_valid(compact: str) -> bool:
    """Country length and mod-97 check of an upper-case IBAN without spaces."""
    return IBAN_LENGTHS.get(compact[:2]) == len(compact) and iban_mod97(compact) == 1


def ipv4_valid(candidate: str) -> bool:
    """Four decimal octets 0-255 without leading zeros (which read as octal or versions)."""
    parts = candidate.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not part.isdigit() or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            return False
        if int(part) > 255:
            return False
    return True


def ipv6_valid(candidate: str) -> bool:
    """A syntactically valid IPv6 address (``ipaddress`` rules, zone allowed)."""
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """Social Security Administration rules: never-issued areas, groups and serials."""
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def base58check_valid(address: str) -> bool:
    """Bitcoin legacy address: base58 payload whose last 4 bytes are its double SHA-256."""
    number = 0
    for ch in address:
        index = _BASE58_INDEX.get(ch)
        if index is None:
            return False
        number = number * 58 + index
    pad = len(address) - len(address.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    raw = b"\x00" * pad + body
    if len(raw) != 25:
        return False
    payload, checksum = raw[:-4], raw[-4:]
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] == checksum


def base58check_encode(payload: bytes) -> str:
    """Encodes a payload with its 4-byte double-SHA-256 checksum in base58."""
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(raw, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_BASE58[rem])
    pad = len(raw) - len(raw.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def _bech32_polymod(values: list[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_valid(address: str) -> bool:
    """Bitcoin segwit address (BIP 173 bech32 or BIP 350 bech32m) with a valid checksum."""
    lowered = address.lower()
    if lowered != address and address.upper() != address:
        return False
    hrp, _, data = lowered.rpartition("1")
    if hrp != "bc" or len(data) < 7:
        return False
    values = [_BECH32_INDEX.get(c, -1) for c in data]
    if -1 in values:
        return False
    return _bech32_polymod(_hrp_expand(hrp) + values) in (1, _BECH32M_CONST)


def bech32_encode(hrp: str, data: list[int], *, m: bool) -> str:
    """Encodes 5-bit groups with a bech32 (or bech32m) checksum."""
    const = _BECH32M_CONST if m else 1
    polymod = _bech32_polymod(_hrp_expand(hrp) + data + [0] * 6) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[d] for d in data + checksum)


def date_valid(year: int, month: int, day: int) -> bool:
    """A real calendar date in a plausible range for a living person's birth."""
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and day >= 1):
        return False
    return day <= calendar.monthrange(year, month)[1]

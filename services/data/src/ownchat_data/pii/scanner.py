"""The PII and secret scanner: typed spans found by pattern, confirmed by checksum or rule.

Speed comes from the shape of the passes, not from one big alternation: each pass is a
regex whose first item is a literal or a narrow character class (``@``, ``://``, a digit,
``AKIA``...), so the engine skips through ordinary prose at memory speed and Python only
sees the rare candidates. Digits go through one pass that finds clusters of digits and
separators; cards, SSNs, IPv4 addresses and phone numbers are then matched inside those
small windows only.
"""

from __future__ import annotations

from collections.abc import Iterable

import regex

from . import phones
from .checks import (
    IBAN_LENGTHS,
    base58check_valid,
    bech32_valid,
    card_issuer_known,
    iban_valid,
    ipv4_valid,
    ipv6_valid,
    luhn_valid,
    ssn_valid,
)
from .dates import find_dates_of_birth
from .entities import DEFAULT_TYPES, SECRET_TYPES, SPECIFICITY, EntityType, Span
from .keywords import Keyword, lowered_same_offsets
from .names import find_person_names
from .secrets import PROVIDER_PATTERNS, find_passwords, find_private_keys

_Found = list[tuple[int, int, EntityType]]
# Credentials with a provider shape: they win over an enclosing URL or password value.
_KEYS = SECRET_TYPES - {EntityType.PASSWORD}

# Seven or more characters of digits and number punctuation, starting and ending on a digit.
_CLUSTER = regex.compile(r"[0-9][0-9 ().\-/]{5,}[0-9]")
_CARD = regex.compile(r"(?<![0-9A-Za-z.\-])[0-9]{4}(?:[ \-]?[0-9]{1,7}){2,5}(?![0-9A-Za-z])")
_SSN = regex.compile(r"(?<![0-9A-Za-z\-])([0-9]{3})([ \-])([0-9]{2})\2([0-9]{4})(?![0-9]|-[0-9])")
_IPV4 = regex.compile(
    r"(?<![0-9A-Za-z.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]{1,2})?(?![0-9A-Za-z]|\.[0-9])"
)
_NEXT_PHONE_START = regex.compile(r"[+(]")
_SSN_KEYWORDS = (Keyword("ssn"), Keyword("social security"))
_SSN_AFTER = regex.compile(
    r"[^0-9\n]{0,24}?(?<![0-9])([0-9]{3})([ .\-]?)([0-9]{2})\2([0-9]{4})(?![0-9])"
)

_IBAN_START = regex.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?=[ ]?[A-Z0-9]{4})")

_EMAIL_DOMAIN = regex.compile(
    r"@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)
_EMAIL_LOCAL_PUNCT = frozenset("._%+-")
# "icon@2x.png" and "module@1.2.js" have an e-mail's shape but name files.
_FILE_SUFFIXES = frozenset(
    "png jpg jpeg gif svg webp ico bmp js mjs ts tsx jsx css scss py rb go rs java json "
    "yaml yml xml html htm txt md pdf zip gz tar mp3 mp4 wav csv log".split()
)

_URL_STARTS = (
    regex.compile(r"(?<![A-Za-z0-9+.\-])https?://"),
    regex.compile(r"(?<![A-Za-z0-9+.\-])ftp://"),
    regex.compile(r"(?<![A-Za-z0-9.\-/@])www\.(?=[A-Za-z0-9\-]+\.)"),
)
# Capped so that text with many schemes and no spaces stays linear.
_URL_BODY = regex.compile(r"[^\s<>\"'`{}|\\^，。、；：！？（）「」【】《》]{0,4096}")
_URL_TRAILING = ".,;:!?'\")]}*_~"
_URL_PAIRS = {")": "(", "]": "["}

_IPV6_ANCHOR = regex.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_BODY = regex.compile(
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9])|[0-9A-Fa-f]{1,4})?"
)
_IPV6_SUFFIX = regex.compile(r"(?:%[0-9A-Za-z]{1,15})?(?:/[0-9]{1,3})?")
_HEX = frozenset("0123456789abcdefABCDEF:")

_BTC_LEGACY = regex.compile(r"(?<![A-Za-z0-9])[13][a-km-zA-HJ-NP-Z1-9]{25,34}(?![A-Za-z0-9])")
_BTC_BECH32 = regex.compile(r"(?<![A-Za-z0-9])bc1[ac-hj-np-z02-9]{11,71}(?![A-Za-z0-9])")
_ETH = regex.compile(r"(?<![A-Za-z0-9])0x[0-9a-fA-F]{40}(?![0-9A-Za-z])")


class PiiScanner:
    """Finds personal data and secrets in text as typed, non-overlapping spans.

    ``types`` limits what is looked for (default :data:`DEFAULT_TYPES`: everything but
    PERSON). A scanner holds only compiled patterns; one instance is safe to share.
    """

    def __init__(self, types: Iterable[EntityType] | None = None) -> None:
        self.types = frozenset(DEFAULT_TYPES if types is None else types)

    def scan(self, text: str) -> list[Span]:
        """Detections in ``text``, sorted by position, overlaps resolved."""
        found: _Found = []
        want = self.types
        lowered = lowered_same_offsets(text)
        if want & {
            EntityType.CREDIT_CARD,
            EntityType.US_SSN,
            EntityType.IP_ADDRESS,
            EntityType.PHONE,
        }:
            self._digit_clusters(text, found)
        if EntityType.US_SSN in want:
            self._ssn_in_context(text, lowered, found)
        if EntityType.IBAN in want:
            self._ibans(text, found)
        if EntityType.EMAIL in want and "@" in text:
            self._emails(text, found)
        if EntityType.URL in want:
            self._urls(text, found)
        if EntityType.IP_ADDRESS in want:
            self._ipv6(text, found)
        if EntityType.CRYPTO_WALLET in want:
            self._wallets(text, found)
        if EntityType.DATE_OF_BIRTH in want:
            found.extend(
                (s, e, EntityType.DATE_OF_BIRTH) for s, e in find_dates_of_birth(text, lowered)
            )
        for kind, pattern, check in PROVIDER_PATTERNS:
            if kind in want:
                for m in pattern.finditer(text):
                    if check(m.group()):
                        found.append((m.start(), m.end(), kind))
        if EntityType.PRIVATE_KEY in want and "PRIVATE KEY" in text:
            found.extend((s, e, EntityType.PRIVATE_KEY) for s, e in find_private_keys(text))
        if EntityType.PASSWORD in want:
            found.extend((s, e, EntityType.PASSWORD) for s, e in find_passwords(text, lowered))
        if EntityType.PERSON in want:
            found.extend((s, e, EntityType.PERSON) for s, e in find_person_names(text))
        return [Span(kind, s, e, text[s:e]) for s, e, kind in _resolve(found)]

    def _digit_clusters(self, text: str, found: _Found) -> None:
        want = self.types
        for cluster in _CLUSTER.finditer(text):
            start, end = cluster.span()
            # A leading "+" or "(" belongs to a phone number but not to the cluster.
            while start > 0 and text[start - 1] in "+(" and cluster.start() - start < 2:
                start -= 1
            if EntityType.CREDIT_CARD in want:
                for m in _CARD.finditer(text, start, end):
                    length = _card_length(m.group())
                    if length:
                        found.append((m.start(), m.start() + length, EntityType.CREDIT_CARD))
            if EntityType.US_SSN in want:
                for m in _SSN.finditer(text, start, end):
                    if ssn_valid(m.group(1), m.group(3), m.group(4)):
                        found.append((m.start(), m.end(), EntityType.US_SSN))
            if EntityType.IP_ADDRESS in want:
                for m in _IPV4.finditer(text, start, end):
                    address, _, prefix = m.group().partition("/")
                    if (
                        ipv4_valid(address)
                        and (not prefix or int(prefix) <= 32)
                        and text[m.start() - 1 : m.start()] not in ("v", "V")
                    ):
                        found.append((m.start(), m.end(), EntityType.IP_ADDRESS))
            if EntityType.PHONE in want:
                self._phones(text, start, end, found)

    @staticmethod
    def _phones(text: str, start: int, end: int, found: _Found) -> None:
        pos = start
        while (m := phones.CANDIDATE.search(text, pos, end)) is not None:
            candidate = m.group()
            context = candidate.isdigit() and phones.has_phone_context(text, m.start())
            length = phones.longest_valid_prefix(candidate, context=context)
            if length:
                found.append((m.start(), m.start() + length, EntityType.PHONE))
                pos = m.start() + length
            else:
                # Retry at the next "+" or "(": "step 2 (415) 555-2671". Not at any digit
                # group, or a run like an IBAN's "0532 0130" would pass as a short number.
                nxt = _NEXT_PHONE_START.search(text, m.start() + 1, end)
                if nxt is None:
                    break
                pos = nxt.start()

    @staticmethod
    def _ssn_in_context(text: str, lowered: str | None, found: _Found) -> None:
        for keyword in _SSN_KEYWORDS:
            for kw in keyword.finditer(text, lowered):
                if kw.start() > 0 and text[kw.start() - 1].isalpha():
                    continue
                m = _SSN_AFTER.match(text, kw.end())
                if m and ssn_valid(m.group(1), m.group(3), m.group(4)):
                    found.append((m.start(1), m.end(4), EntityType.US_SSN))

    @staticmethod
    def _ibans(text: str, found: _Found) -> None:
        for m in _IBAN_START.finditer(text):
            length = IBAN_LENGTHS.get(m.group()[:2])
            if length is None:
                continue
            chars: list[str] = []
            i, n = m.start(), len(text)
            while len(chars) < length and i < n:
                ch = text[i]
                if "A" <= ch <= "Z" or "0" <= ch <= "9":
                    chars.append(ch)
                elif not (ch == " " and len(chars) % 4 == 0 and i + 1 < n and text[i + 1] != " "):
                    break
                i += 1
            if len(chars) == length and not (i < n and text[i].isalnum()):
                if iban_valid("".join(chars)):
                    found.append((m.start(), i, EntityType.IBAN))

    @staticmethod
    def _emails(text: str, found: _Found) -> None:
        for m in _EMAIL_DOMAIN.finditer(text):
            at = m.start()
            i = at
            while i > 0 and at - i < 64:
                ch = text[i - 1]
                if not (ch.isalnum() or ch in _EMAIL_LOCAL_PUNCT):
                    break
                i -= 1
            while i < at and text[i] in _EMAIL_LOCAL_PUNCT:
                i += 1
            local = text[i:at]
            if not local or local.endswith(".") or ".." in local:
                continue
            if m.group().rsplit(".", 1)[1].lower() in _FILE_SUFFIXES:
                continue
            found.append((i, m.end(), EntityType.EMAIL))

    @staticmethod
    def _urls(text: str, found: _Found) -> None:
        for pattern in _URL_STARTS:
            covered = 0
            for m in pattern.finditer(text):
                if m.start() < covered:
                    continue  # a scheme inside the previous URL ("...?next=https://...")
                body = _URL_BODY.match(text, m.end())
                covered = body.end()
                end = _trim_url(text, m.start(), body.end())
                host = text[m.end() : end].split("/", 1)[0]
                if "." in host or host.startswith(("localhost", "[")):
                    found.append((m.start(), end, EntityType.URL))

    @staticmethod
    def _ipv6(text: str, found: _Found) -> None:
        pos = 0
        while (m := _IPV6_ANCHOR.search(text, pos)) is not None:
            left = m.start()
            while left > 0 and m.start() - left < 40 and text[left - 1] in _HEX:
                left -= 1
            pos = m.end() - 1
            if left > 0 and (text[left - 1].isalnum() or text[left - 1] in "_.:"):
                continue
            body = _IPV6_BODY.match(text, left)
            if body is None:
                continue
            end = body.end()
            candidate = body.group()
            if candidate.endswith(":") and not candidate.endswith("::"):
                candidate, end = candidate[:-1], end - 1
            if end < len(text) and (text[end].isalnum() or text[end] == "_"):
                continue
            pos = max(pos, end)
            if not ipv6_valid(candidate) or not _plausible_ipv6(candidate):
                continue
            suffix = _IPV6_SUFFIX.match(text, end)
            if suffix.group() and ipv6_valid(candidate + suffix.group().split("/")[0]):
                end = suffix.end()
            found.append((left, end, EntityType.IP_ADDRESS))

    @staticmethod
    def _wallets(text: str, found: _Found) -> None:
        for m in _BTC_LEGACY.finditer(text):
            if base58check_valid(m.group()):
                found.append((m.start(), m.end(), EntityType.CRYPTO_WALLET))
        if "bc1" in text:
            for m in _BTC_BECH32.finditer(text):
                if bech32_valid(m.group()):
                    found.append((m.start(), m.end(), EntityType.CRYPTO_WALLET))
        if "0x" in text:
            for m in _ETH.finditer(text):
                found.append((m.start(), m.end(), EntityType.CRYPTO_WALLET))


def _card_length(candidate: str) -> int:
    """Length of the longest leading run of groups that is a valid card number, else 0."""
    separators = {c for c in candidate if not c.isdigit()}
    if len(separators) > 1:
        return 0
    sep = separators.pop() if separators else None
    groups = candidate.split(sep) if sep else [candidate]
    for count in range(len(groups), 0, -1):
        digits = "".join(groups[:count])
        if len(digits) < 13:
            break
        if len(digits) <= 19 and card_issuer_known(digits) and luhn_valid(digits):
            if sep and not all(len(g) <= 6 for g in groups[:count]):
                continue
            return len(sep.join(groups[:count])) if sep else len(digits)
    return 0


def _trim_url(text: str, start: int, end: int) -> int:
    """Drops sentence punctuation after a URL, keeping brackets the URL itself opened."""
    while end > start:
        ch = text[end - 1]
        if ch not in _URL_TRAILING:
            break
        opener = _URL_PAIRS.get(ch)
        if opener is not None:
            url = text[start:end]
            if url.count(opener) >= url.count(ch):
                break
        end -= 1
    return end


def _plausible_ipv6(candidate: str) -> bool:
    """Rejects slices and scopes that parse as IPv6: ``a[1::2]``, ``Face::Bad``, ``::1``."""
    groups = [g for g in candidate.replace(".", ":").split(":") if g]
    if not any(c.isdigit() for c in candidate):
        return False
    if len(groups) >= 3:
        return True
    return any(len(g) >= 3 or not g.isdigit() for g in groups) and len(groups) == 2


def _resolve(found: _Found) -> _Found:
    """Non-overlapping spans.

    A provider key or token beats anything that is not one (a token inside a URL is
    reported as the token); otherwise the longest span wins, then the more specific
    type, then the first.
    """
    found.sort(key=lambda f: (f[0], f[0] - f[1], -SPECIFICITY[f[2]]))
    kept: _Found = []
    for item in found:
        if kept and item[0] < kept[-1][1]:
            if _beats(item, kept[-1]):
                kept[-1] = item
                # The winner may now reach spans kept before the one it replaced.
                while len(kept) > 1 and kept[-2][1] > item[0]:
                    if not _beats(item, kept[-2]):
                        del kept[-1]
                        break
                    del kept[-2]
            continue
        kept.append(item)
    return kept


def _beats(new: tuple[int, int, EntityType], old: tuple[int, int, EntityType]) -> bool:
    new_key, old_key = new[2] in _KEYS, old[2] in _KEYS
    if new_key != old_key:
        return new_key
    new_len, old_len = new[1] - new[0], old[1] - old[0]
    if new_len != old_len:
        return new_len > old_len
    return SPECIFICITY[new[2]] > SPECIFICITY[old[2]]

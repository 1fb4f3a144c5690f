"""Writes the labelled PII test set: support-chat text with planted entities and exact spans.

Run: .venv/bin/python benchmarks/make_pii_labelled.py
     (writes services/data/tests/data/pii_labelled.jsonl; deterministic, seed fixed)

Each line is ``{"id": n, "text": ..., "entities": [{"type", "start", "end", "value"}]}``
with the data service's entity type names. Values are generated to be well-formed
(valid Luhn, IBAN check digits, base58check, phone numbers valid in libphonenumber's
metadata), then written in the many ways people type them: international phones in a
dozen styles and ~20 countries, national formats for the countries the scanner claims,
IBANs grouped or compact, compressed and IPv4-mapped IPv6, URLs with query strings and
markdown around them, keys inside code blocks and config files. Lines with no entities
carry near misses (bad checksums, impossible octets, never-issued SSNs, dates that are not
birthdays, placeholder keys) that count against precision.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "services/data/tests/data/pii_labelled.jsonl"
SEED = 20261122

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
B62 = string.ascii_letters + string.digits
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

FIRST = "maria john wei priya ahmed sofia liam olga kenji fatima lucas emma".split()
LAST = "garcia smith chen patel hassan rossi nguyen ivanova tanaka okafor silva berg".split()
DOMAINS = "example.com acme-corp.io mail.example.org shop.example.co.uk contoso.net".split()
MONTHS = "January February March April May June July August September October November December"


class Gen:
    """Random well-formed values of each entity type."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    # ---- personal data -------------------------------------------------------------
    def email(self) -> str:
        r = self.r
        first, last = r.choice(FIRST), r.choice(LAST)
        local = r.choice(
            [
                f"{first}.{last}",
                f"{first}_{last}{r.randrange(100)}",
                f"{first[0]}{last}",
                f"{first}+support",
                f"{first}.{last}-{r.randrange(1990, 2010)}",
                f"{first.upper()}.{last.capitalize()}",
            ]
        )
        return f"{local}@{r.choice(DOMAINS)}"

    def phone(self) -> str:
        r = self.r
        international = r.random() < 0.6
        regions = (
            "US GB DE FR IN BR AU JP IT NL ES MX CN ZA NG SG SE CH PL KR IE CA".split()
            if international
            else "US CA GB DE FR IN BR AU JP NL".split()
        )
        while True:
            region = r.choice(regions)
            kind = r.choice([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE])
            example = phonenumbers.example_number_for_type(region, kind)
            assert example is not None, region
            national = str(example.national_number)
            digits = national[:-4] + "".join(r.choice(string.digits) for _ in range(4))
            number = phonenumbers.parse(f"+{example.country_code}{digits}")
            if phonenumbers.is_valid_number(number):
                break
        if international:
            text = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
            style = r.randrange(6)
            if style == 1:
                text = text.replace(" ", "-")
            elif style == 2:
                text = phonenumbers.format_number(number, PhoneNumberFormat.E164)
            elif style == 3:
                text = "00" + text[1:]
            elif style == 4 and region == "GB":
                cc, rest = text.split(" ", 1)
                text = f"{cc} (0){rest}"
            elif style == 5 and region in ("US", "CA"):
                text = text.replace("-", ".").replace(" ", ".")
            return text
        text = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        if region in ("US", "CA"):
            d = str(number.national_number)
            text = r.choice(
                [
                    text,
                    f"{d[:3]}-{d[3:6]}-{d[6:]}",
                    f"{d[:3]}.{d[3:6]}.{d[6:]}",
                    f"1-{d[:3]}-{d[3:6]}-{d[6:]}",
                ]
            )
        return text

    def card(self) -> str:
        r = self.r
        prefix, length = r.choice(
            [("4", 16), ("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
             ("6011", 16), ("3530", 16), ("36", 14), ("62", 16), ("4", 19)]
        )  # fmt: skip
        body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
        digits = body + _luhn_digit(body)
        style = r.randrange(3)
        if style == 0:
            return digits
        sep = " " if style == 1 else "-"
        if length == 15:
            return sep.join([digits[:4], digits[4:10], digits[10:]])
        if length == 14:
            return sep.join([digits[:4], digits[4:10], digits[10:]])
        return sep.join(digits[i : i + 4] for i in range(0, length, 4))

    def iban(self) -> str:
        r = self.r
        country, layout = r.choice(IBAN_LAYOUTS)
        bban = "".join(
            r.choice(string.digits if c == "n" else string.ascii_uppercase) for c in layout
        )
        check = 98 - _mod97(country + "00" + bban)
        compact = f"{country}{check:02d}{bban}"
        if r.random() < 0.6:
            return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
        return compact

    def ip(self) -> str:
        r = self.r
        style = r.randrange(7)
        if style <= 2:
            octets = [r.randrange(1, 224), r.randrange(256), r.randrange(256), r.randrange(1, 255)]
            text = ".".join(map(str, octets))
            return text + (f"/{r.choice([16, 24, 28])}" if style == 2 else "")
        address = ipaddress.IPv6Address(
            (0x2001 << 112) | (r.getrandbits(16) << 96) | r.getrandbits(64)
        )
        if style == 3:
            return address.exploded
        if style == 4:
            return str(address)
        if style == 5:
            return f"fe80::{r.getrandbits(16):x}:{r.getrandbits(16):x}:{r.getrandbits(16):x}"
        v4 = f"{r.randrange(1, 224)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
        return f"::ffff:{v4}"

    def url(self) -> str:
        r = self.r
        host = r.choice(
            ["www.example.com", "app.acme-corp.io", "portal.contoso.net", "docs.example.org"]
        )
        path = r.choice(
            [
                "",
                "/",
                "/orders/84213",
                "/account/settings",
                "/reset-password",
                "/files/invoice_2023.pdf",
            ]
        )
        query = r.choice(
            [
                "",
                "?token=abc123&user=42",
                "?utm_source=mail&utm_campaign=spring",
                "?q=refund+policy#section-2",
            ]
        )
        if r.random() < 0.15:
            return f"www.{host.split('.', 1)[1]}{path}{query}"
        return f"{r.choice(['https', 'https', 'http'])}://{host}{path}{query}"

    def ssn(self) -> str:
        r = self.r
        area = r.choice([a for a in range(1, 900) if a != 666])
        sep = r.choice(["-", "-", "-", " "])
        return f"{area:03d}{sep}{r.randrange(1, 100):02d}{sep}{r.randrange(1, 10000):04d}"

    def wallet(self) -> str:
        r = self.r
        kind = r.randrange(4)
        if kind == 0:
            return _base58check(b"\x00" + r.randbytes(20))
        if kind == 1:
            return _base58check(b"\x05" + r.randbytes(20))
        if kind == 2:
            data = [0] + [r.randrange(32) for _ in range(32)]
            return _bech32("bc", data)
        return "0x" + "".join(r.choice("0123456789abcdefABCDEF") for _ in range(40))

    def dob(self) -> str:
        r = self.r
        y, m, d = r.randrange(1940, 2006), r.randrange(1, 13), r.randrange(1, 29)
        month = MONTHS.split()[m - 1]
        suffix = "th" if 10 <= d <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
        return r.choice(
            [
                f"{m:02d}/{d:02d}/{y}",
                f"{d:02d}/{m:02d}/{y}",
                f"{y}-{m:02d}-{d:02d}",
                f"{d:02d}.{m:02d}.{y}",
                f"{month} {d}, {y}",
                f"{d} {month} {y}",
                f"{month[:3]} {d} {y}",
                f"{d}{suffix} of {month} {y}",
                f"{month} {d}{suffix}, {y}",
            ]
        )

    # ---- secrets ---------------------------------------------------------------------
    def _rand(self, n: int, alphabet: str = B62) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def aws(self) -> str:
        return "AKIA" + self._rand(16, string.ascii_uppercase + string.digits)

    def github(self) -> str:
        if self.r.random() < 0.3:
            return "github_pat_" + self._rand(22) + "_" + self._rand(59)
        return self.r.choice(["ghp_", "gho_", "ghs_"]) + self._rand(36)

    def slack(self) -> str:
        return (
            f"{self.r.choice(['xoxb', 'xoxp'])}-{self._rand(11, string.digits)}-"
            f"{self._rand(12, string.digits)}-{self._rand(24)}"
        )

    def stripe(self) -> str:
        return self.r.choice(["sk_live_", "rk_live_", "sk_test_"]) + self._rand(24)

    def openai(self) -> str:
        if self.r.random() < 0.5:
            return "sk-proj-" + self._rand(48, B62 + "_-")
        return "sk-" + self._rand(20) + "T3BlbkFJ" + self._rand(20)

    def anthropic(self) -> str:
        return "sk-ant-api03-" + self._rand(93, B62 + "_-") + "AA"

    def google(self) -> str:
        return "AIza" + self._rand(35, B62 + "_-")

    def jwt(self) -> str:
        def enc(obj: dict[str, object]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

        header = enc({"alg": self.r.choice(["HS256", "RS256"]), "typ": "JWT"})
        payload = enc(
            {"sub": str(self.r.randrange(10**9)), "name": self.r.choice(FIRST), "iat": 1700000000}
        )
        return f"{header}.{payload}.{self._rand(43, B62 + '_-')}"

    def private_key(self) -> str:
        kind = self.r.choice(["RSA ", "EC ", "OPENSSH ", ""])
        lines = [self._rand(64, B62 + "+/") for _ in range(self.r.randrange(3, 7))]
        lines.append(self._rand(self.r.randrange(8, 60), B62 + "+/") + "==")
        body = "\n".join(lines)
        return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"

    def password(self) -> str:
        r = self.r
        return r.choice(
            [
                r.choice(["Summer", "Winter", "Dragon", "Monkey", "Sunshine"])
                + str(r.randrange(10, 2030))
                + r.choice("!#$"),
                self._rand(r.randrange(10, 17), B62 + "!@#%^&*"),
                r.choice(FIRST).capitalize() + "_" + str(r.randrange(100, 999)),
            ]
        )


IBAN_LAYOUTS = [
    ("DE", "n" * 18), ("GB", "aaaa" + "n" * 14), ("FR", "n" * 23), ("ES", "n" * 20),
    ("IT", "a" + "n" * 22), ("NL", "aaaa" + "n" * 10), ("BE", "n" * 12), ("CH", "n" * 17),
    ("AT", "n" * 16), ("PL", "n" * 24), ("SE", "n" * 20), ("NO", "n" * 11), ("DK", "n" * 14),
    ("IE", "aaaa" + "n" * 14), ("PT", "n" * 21), ("FI", "n" * 14), ("SA", "n" * 20),
    ("AE", "n" * 19), ("TR", "n" * 22), ("BR", "n" * 23 + "aa"),
]  # fmt: skip


def _luhn_digit(body: str) -> str:
    for d in string.digits:
        total = 0
        for i, ch in enumerate(reversed(body + d)):
            v = int(ch) * (2 if i % 2 else 1)
            total += v - 9 if v > 9 else v
        if total % 10 == 0:
            return d
    raise AssertionError


def _mod97(compact: str) -> int:
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97


def _base58check(payload: bytes) -> str:
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, rem = divmod(n, 58)
        out = B58[rem] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def _bech32(hrp: str, data: list[int]) -> str:
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    values = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + data + [0] * 6
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    polymod = chk ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32[d] for d in data + checksum)


# Templates: {TYPE} slots are filled with generated values and labelled.
TEMPLATES: dict[str, list[str]] = {
    "EMAIL": [
        "Hi, I can't log in. My email is {EMAIL} and I registered last week.",
        "Please send the invoice to {EMAIL}, not to my old address.",
        "Could you update the contact on the account from {EMAIL} to {EMAIL}?",
        "You can reach our finance team at <{EMAIL}> for anything billing related.",
        "The reset link never arrived at {EMAIL}. Spam folder is empty too.",
        "cc: {EMAIL}; {EMAIL}",
    ],
    "PHONE": [
        "Please call me back at {PHONE}, I'm available after 3pm.",
        "My mobile number changed, the new one is {PHONE}.",
        "You can text me on WhatsApp ({PHONE}) if that is easier.",
        "Tel: {PHONE}\nFax: {PHONE}",
        "Our office line is {PHONE} and the support hotline is {PHONE}.",
        "I tried calling {PHONE} three times yesterday but nobody picked up.",
        "Customer asked for a callback on {PHONE} regarding ticket 5521.",
    ],
    "CREDIT_CARD": [
        "The charge on card {CREDIT_CARD} appeared twice this month.",
        "I paid with my Visa ending in... actually here is the full number: {CREDIT_CARD}",
        "Card number: {CREDIT_CARD}, expiry 09/27, please refund the last order.",
        "Can you remove {CREDIT_CARD} from my saved payment methods?",
    ],
    "IBAN": [
        "Refund should go to IBAN {IBAN}, the account holder is on file.",
        "Our bank details changed. New IBAN: {IBAN} (BIC stays the same).",
        "I sent the transfer from {IBAN} yesterday, reference INV-2291.",
        "Please pay the deposit into {IBAN}.",
    ],
    "IP_ADDRESS": [
        "Our server at {IP_ADDRESS} keeps timing out when it calls your API.",
        "Login attempts came from {IP_ADDRESS} and {IP_ADDRESS}, neither is ours.",
        "Whitelist {IP_ADDRESS} on the firewall please.",
        "```\n$ ping {IP_ADDRESS}\nRequest timed out.\n```",
        "The VPN assigns {IP_ADDRESS} but DNS still resolves to the old host.",
    ],
    "URL": [
        "See the screenshot here: {URL}",
        "The page {URL} returns a 404 since the update.",
        "I followed [this guide]({URL}) and it still fails.",
        "Your docs ({URL}) say the limit is 100 requests.",
        "Redirect loop between {URL} and {URL}, please check.",
        "Link: {URL}.",
    ],
    "US_SSN": [
        "My SSN is {US_SSN} if you need it for the tax form.",
        "For the W-9: social security number {US_SSN}, name as on the card.",
        "Applicant SSN: {US_SSN}",
        "I entered {US_SSN} as my social but the form rejects it.",
    ],
    "CRYPTO_WALLET": [
        "Send the payout to my wallet {CRYPTO_WALLET} please.",
        "Deposit address: {CRYPTO_WALLET}",
        "I transferred 0.05 BTC from {CRYPTO_WALLET} two hours ago, still not credited.",
        "Withdrawals should go to {CRYPTO_WALLET} from now on.",
    ],
    "DATE_OF_BIRTH": [
        "For verification: I was born on {DATE_OF_BIRTH}.",
        "Name: Maria Garcia, DOB: {DATE_OF_BIRTH}, member since 2019.",
        "Date of birth {DATE_OF_BIRTH} - please correct it, the system shows a different one.",
        "My son was born {DATE_OF_BIRTH} and the insurance needs his details.",
        "Birthday: {DATE_OF_BIRTH}",
        "D.O.B. {DATE_OF_BIRTH}",
    ],
    "AWS_ACCESS_KEY": [
        "```bash\nexport AWS_ACCESS_KEY_ID={AWS_ACCESS_KEY}\nexport AWS_REGION=us-east-1\n```",
        "The bucket policy fails with key {AWS_ACCESS_KEY}, is it disabled?",
        "[default]\naws_access_key_id = {AWS_ACCESS_KEY}",
    ],
    "GITHUB_TOKEN": [
        "I set GITHUB_TOKEN={GITHUB_TOKEN} in the workflow and it still gets 403.",
        "```yaml\nenv:\n  TOKEN: {GITHUB_TOKEN}\n```",
        "git clone https://{GITHUB_TOKEN}@github.com/acme/app.git fails",
    ],
    "SLACK_TOKEN": [
        "Our bot token {SLACK_TOKEN} stopped working after the workspace migration.",
        '```python\nclient = WebClient(token="{SLACK_TOKEN}")\n```',
    ],
    "STRIPE_KEY": [
        "```js\nconst stripe = require('stripe')('{STRIPE_KEY}');\n```",
        "Webhook signature fails, secret key is {STRIPE_KEY}.",
    ],
    "OPENAI_API_KEY": [
        '```python\nclient = OpenAI(api_key="{OPENAI_API_KEY}")\n```',
        "OPENAI_API_KEY={OPENAI_API_KEY} is in my .env but I get 401.",
        "Is {OPENAI_API_KEY} still valid? It says quota exceeded.",
    ],
    "ANTHROPIC_API_KEY": [
        '```bash\ncurl -H "x-api-key: {ANTHROPIC_API_KEY}" "$API_BASE/v1/messages"\n```',
        "ANTHROPIC_API_KEY={ANTHROPIC_API_KEY}",
    ],
    "GOOGLE_API_KEY": [
        '<script src="maps.js?key={GOOGLE_API_KEY}"></script> shows a grey map.',
        "The Places call with key={GOOGLE_API_KEY} returns REQUEST_DENIED.",
    ],
    "JWT": [
        "Authorization: Bearer {JWT}",
        "The token {JWT} expires immediately, is the clock off?",
    ],
    "PRIVATE_KEY": [
        "Here is the deploy key, I know I shouldn't paste it:\n```\n{PRIVATE_KEY}\n```",
        "{PRIVATE_KEY}\nthat is the key from the server, does it match the cert?",
    ],
    "PASSWORD": [
        "Login is admin and password: {PASSWORD} on the staging box.",
        "```ini\n[database]\nuser = app\npassword = {PASSWORD}\n```",
        "DB_PASSWORD={PASSWORD}",
        '```json\n{"username": "jdoe", "password": "{PASSWORD}"}\n```',
        "mysql -u root --password='{PASSWORD}' shop",
        "I set passwd={PASSWORD} but the service still refuses it.",
    ],
}

# Sentences with several entities of different kinds, the hardest layouts.
MIXED = [
    "Hi, it's {DATE_OF_BIRTH_CTX}. Email {EMAIL}, phone {PHONE}, card {CREDIT_CARD}.",
    "Ticket from {EMAIL} (IP {IP_ADDRESS}): cannot open {URL}",
    "Payout details - IBAN: {IBAN}; backup wallet: {CRYPTO_WALLET}; call {PHONE}",
    "```env\nDATABASE_HOST=db.internal\nDB_PASSWORD={PASSWORD}\nSTRIPE_SECRET={STRIPE_KEY}\nGITHUB_TOKEN={GITHUB_TOKEN}\n```",
    "Customer {EMAIL} says SSN {US_SSN} was shown on page {URL}",
]

# Near misses: each looks like an entity but is not one; none is labelled.
NEGATIVES = [
    "The card 4111 1111 1111 1112 was declined (that number fails the check digit).",
    "Please double check the IBAN, GB82 WEST 1234 5698 7654 33 bounced.",
    "Ping 999.1.1.1 obviously fails, it is not an address.",
    "The form rejects 000-12-3456 and 666-45-6789 as invalid SSNs.",
    "SSN 912-34-5678 starts with 9, those are never issued.",
    "Order #123456789 shipped on 12/03/2024 and should arrive Friday.",
    "Upgrade to v1.2.3.4 fixed the crash; build 2024.05.17 is older.",
    "The meeting is on March 3, 2024 at 10:30:00 in room 4.",
    "Pi is 3.14159265358979 and e is 2.718281828.",
    "Commit 3f5a9c1e7b2d4a6f8e0c1b3d5f7a9c2e4b6d8f0a broke the build.",
    "Use sk-YOUR_API_KEY_HERE as a placeholder in the README.",
    "password: ******** (hidden in the screenshot)",
    "The request id is 550e8400-e29b-41d4-a716-446655440000.",
    "Tracking number 1Z999AA10123456784 shows delivered.",
    "In C++ write std::vector<int> v; and slices like a[1::2] in Python.",
    "The total was $1,234,567.89 for 12 345 units.",
    "Set the password field to required and the type to string.",
    "Times: 08:15:00, 12:30:45 and 23:59:59.",
    "MAC address 00:1A:2B:3C:4D:5E is the printer.",
    "Wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyX has a typo in the last character.",
    "Retina assets are named icon@2x.png and logo@3x.png.",
    "Call the function with @decorator syntax, e.g. @app.route('/').",
    "The ISBN is 978-3-16-148410-0.",
    "Our office was born out of a 2019 hackathon.",
    "Version 10.0.19045.3693 of Windows is affected.",
    "Coordinates 48.8584, 2.2945 are the Eiffel Tower.",
]


def build(rng: random.Random) -> list[dict[str, object]]:
    """The records of the labelled set."""
    gen = Gen(rng)
    makers: dict[str, Callable[[], str]] = {
        "EMAIL": gen.email, "PHONE": gen.phone, "CREDIT_CARD": gen.card, "IBAN": gen.iban,
        "IP_ADDRESS": gen.ip, "URL": gen.url, "US_SSN": gen.ssn, "CRYPTO_WALLET": gen.wallet,
        "DATE_OF_BIRTH": gen.dob, "AWS_ACCESS_KEY": gen.aws, "GITHUB_TOKEN": gen.github,
        "SLACK_TOKEN": gen.slack, "STRIPE_KEY": gen.stripe, "OPENAI_API_KEY": gen.openai,
        "ANTHROPIC_API_KEY": gen.anthropic, "GOOGLE_API_KEY": gen.google, "JWT": gen.jwt,
        "PRIVATE_KEY": gen.private_key, "PASSWORD": gen.password,
    }  # fmt: skip
    rounds = {"PHONE": 16, "EMAIL": 8, "URL": 8, "IP_ADDRESS": 8, "DATE_OF_BIRTH": 7}
    records: list[dict[str, object]] = []

    def fill(template: str) -> None:
        text, entities = "", []
        for piece in _split(template):
            if piece.startswith("{") and piece.endswith("}"):
                kind = piece[1:-1]
                if kind == "DATE_OF_BIRTH_CTX":
                    prefix = "Maria, born "
                    text += prefix
                    kind = "DATE_OF_BIRTH"
                value = makers[kind]()
                start = len(text)
                text += value
                entities.append({"type": kind, "start": start, "end": len(text), "value": value})
            else:
                text += piece
        records.append({"id": len(records), "text": text, "entities": entities})

    for kind, templates in TEMPLATES.items():
        for _ in range(rounds.get(kind, 6 if kind in _PII else 4)):
            for template in templates:
                fill(template)
    for _ in range(6):
        for template in MIXED:
            fill(template)
    for sentence in NEGATIVES:
        records.append({"id": len(records), "text": sentence, "entities": []})
    rng.shuffle(records)
    for i, record in enumerate(records):
        record["id"] = i
    return records


_PII = {
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "IBAN",
    "IP_ADDRESS",
    "URL",
    "US_SSN",
    "CRYPTO_WALLET",
    "DATE_OF_BIRTH",
}


def _split(template: str) -> list[str]:
    """Template pieces: literal text and ``{TYPE}`` slots (JSON braces are left alone)."""
    out, i = [], 0
    while i < len(template):
        j = template.find("{", i)
        k = template.find("}", j) if j >= 0 else -1
        if (
            j < 0
            or k < 0
            or not template[j + 1 : k].replace("_", "").isalpha()
            or not template[j + 1 : k].isupper()
        ):
            out.append(template[i:] if j < 0 else template[i : j + 1])
            i = len(template) if j < 0 else j + 1
            continue
        out.extend([template[i:j], template[j : k + 1]])
        i = k + 1
    return [p for p in out if p]


def main() -> None:
    records = build(random.Random(SEED))
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with OUTPUT.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    for record in records:
        for entity in record["entities"]:  # type: ignore[attr-defined]
            counts[entity["type"]] = counts.get(entity["type"], 0) + 1
    print(f"{len(records)} records, {sum(counts.values())} entities -> {OUTPUT}")
    for kind, n in sorted(counts.items()):
        print(f"  {kind:18s} {n}")


if __name__ == "__main__":
    main()

"""PII and secret detection and redaction for chat text (no transport code here).

Scan::

    spans = PiiScanner().scan(text)          # [Span(type, start, end, value), ...]

Redact a conversation, numbering placeholders per distinct value::

    redactor = Redactor(RedactionMode.PLACEHOLDER)
    texts, counts = redactor.redact_conversation(m.content for m in sample.messages)

Pseudonymize consistently across a dataset: one ``Redactor`` with a fixed secret salt.
See docs/data-pii.md for what is detected and what is not.
"""

from .entities import DEFAULT_TYPES, PII_TYPES, SECRET_TYPES, EntityType, Span
from .redactor import Redaction, RedactionMode, RedactionScope, Redactor
from .scanner import PiiScanner

__all__ = [
    "DEFAULT_TYPES",
    "PII_TYPES",
    "SECRET_TYPES",
    "EntityType",
    "PiiScanner",
    "Redaction",
    "RedactionMode",
    "RedactionScope",
    "Redactor",
    "Span",
]

"""Task checks: does a generated reply give the expected answer?

A sample of a validation split may carry its own expected answer (``"expected":
{"answer": ..., "kind": "exact" | "contains" | "regex"}``); otherwise a run's
task check, when it has one, takes the reference reply as the expected answer.
Exact and contains compare normalised texts (trimmed, case-folded, every run of
white space one space), as OpenAI evals' Match and Includes do; a sample's
regex answer must be found in the reply; a run's regex extracts the answer from
the reference and from the reply and compares the two, as lm-eval-harness's
regex filters do before an exact match.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import regex

# User-supplied patterns run in the evaluation thread: a pathological one must
# fail its run, not hang the evaluator.
REGEX_TIMEOUT_SECONDS = 5.0


class CheckKind(Enum):
    """How a reply is compared with the expected answer."""

    EXACT = "exact"
    CONTAINS = "contains"
    REGEX = "regex"


@dataclass(frozen=True)
class TaskCheck:
    """A run's task check, applied to samples without an expected answer of their own."""

    kind: CheckKind
    pattern: str = ""


@dataclass(frozen=True)
class ExpectedAnswer:
    """The answer a sample expects, and how to compare."""

    answer: str
    kind: CheckKind


@dataclass(frozen=True)
class CheckOutcome:
    """The result of checking one reply."""

    passed: bool
    expected: str
    own_answer: bool


def normalize(text: str) -> str:
    """Trimmed, case-folded, with every run of white space as one space."""
    return " ".join(text.split()).casefold()


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """The compiled pattern; raises ``regex.error`` when it is malformed."""
    return regex.compile(pattern)


def _extract(pattern: regex.Pattern[str], text: str) -> str | None:
    match = pattern.search(text, timeout=REGEX_TIMEOUT_SECONDS)
    if match is None:
        return None
    value = match.group(1) if pattern.groups else match.group(0)
    return normalize(value or "")


def _compare(kind: CheckKind, answer: str, reply: str) -> bool:
    if kind is CheckKind.EXACT:
        return normalize(reply) == normalize(answer)
    if kind is CheckKind.CONTAINS:
        return normalize(answer) in normalize(reply)
    return compile_pattern(answer).search(reply, timeout=REGEX_TIMEOUT_SECONDS) is not None


def check_reply(
    reply: str, reference: str, expected: ExpectedAnswer | None, run_check: TaskCheck | None
) -> CheckOutcome | None:
    """Checks one reply; None when the sample is not checked."""
    if expected is not None:
        return CheckOutcome(_compare(expected.kind, expected.answer, reply), expected.answer, True)
    if run_check is None:
        return None
    if run_check.kind is not CheckKind.REGEX:
        return CheckOutcome(_compare(run_check.kind, reference, reply), reference, False)
    pattern = compile_pattern(run_check.pattern)
    wanted = _extract(pattern, reference)
    if wanted is None:
        return None
    return CheckOutcome(_extract(pattern, reply) == wanted, wanted, False)

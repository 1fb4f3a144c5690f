"""Validation samples as evaluation sees them: a prompt, a reference, maybe an expected answer.

A split file holds one conversation a line (``{"messages": [...], ...}``, the
data service's canonical form). The reference of a conversation is its last
assistant turn and the prompt (its context) is everything before that turn,
as lm-eval-harness and OpenAI evals treat chat samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ownchat_evaluator.checks import CheckKind, ExpectedAnswer

Message = dict[str, str]


@dataclass(frozen=True)
class EvalSample:
    """One conversation of a validation split and its position there."""

    index: int
    messages: list[Message]
    expected: ExpectedAnswer | None = None

    @property
    def last_assistant(self) -> int | None:
        """The position of the last assistant turn, if any."""
        for position in range(len(self.messages) - 1, -1, -1):
            if self.messages[position]["role"] == "assistant":
                return position
        return None

    @property
    def context(self) -> list[Message]:
        """The messages before the last assistant turn (all of them without one)."""
        last = self.last_assistant
        return list(self.messages if last is None else self.messages[:last])

    @property
    def reference(self) -> str | None:
        """The last assistant turn's text; None when the conversation has none."""
        last = self.last_assistant
        return None if last is None else self.messages[last]["content"]


class SplitFormatError(ValueError):
    """A line of a split file is not a sample this evaluator can read."""


def _expected(value: Any, line: int) -> ExpectedAnswer | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ExpectedAnswer(value, CheckKind.EXACT)
    if isinstance(value, dict) and isinstance(value.get("answer"), str):
        kind = value.get("kind", CheckKind.EXACT.value)
        try:
            return ExpectedAnswer(value["answer"], CheckKind(kind))
        except ValueError:
            pass
    raise SplitFormatError(
        f"line {line}: 'expected' must be a string or "
        '{"answer": "...", "kind": "exact" | "contains" | "regex"}'
    )


def read_samples(split_file: Path, max_samples: int) -> list[EvalSample]:
    """The samples of a split file, at most ``max_samples`` (0: all), in file order."""
    samples: list[EvalSample] = []
    with split_file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if max_samples and len(samples) >= max_samples:
                break
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                messages = [{"role": m["role"], "content": m["content"]} for m in value["messages"]]
            except (ValueError, KeyError, TypeError) as error:
                raise SplitFormatError(f"line {number}: not a chat sample ({error})") from None
            samples.append(
                EvalSample(len(samples), messages, _expected(value.get("expected"), number))
            )
    return samples


def any_expected_answers(split_file: Path, max_samples: int) -> bool:
    """Whether any of the first samples of a split carries an expected answer."""
    return any(s.expected is not None for s in read_samples(split_file, max_samples))

"""What a Generate request asks for and what it streams back, as plain types.

A request gives a conversation (rendered through the model's chat template)
or a raw text prompt (tokenized as it is, for text completions), never both.
Validation refuses a bad request with every problem at once, before anything
reaches the engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from ownchat.errors import ErrorInfo, FieldViolation, InvalidArgumentError

ROLES = ("system", "user", "assistant")
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOKENS = 256
MAX_TEMPERATURE = 2.0
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_MODEL_ID_CHARS = 256
MAX_CONVERSATION_ID_CHARS = 256
MAX_SEED = 2**63 - 1

# The stable mark of a prompt longer than the context (google.rpc.ErrorInfo),
# part of the API's contract: callers rely on it rather than on the wording.
ERROR_DOMAIN = "ownchat.serving.v1"
CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"


@dataclass(frozen=True)
class ChatTurn:
    """One message of the conversation; role is system, user or assistant."""

    role: str
    content: str


@dataclass(frozen=True)
class Sampling:
    """How to sample a reply; ``None`` fields take the defaults."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ResolvedSampling:
    """Sampling with every default filled in and checked."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class GenerateInput:
    """A Generate request: ``messages`` or ``prompt``, not both.

    ``prompt`` is raw text, tokenized as it is (with the tokenizer's own
    special tokens, such as a BOS) and no chat template; empty means none.
    ``conversation_id`` keeps a conversation on one side of a canary split
    (when empty, its first user message does, or the prompt). ``deadline`` is
    when the caller stops waiting, on the ``time.monotonic()`` clock; None for
    no deadline.
    """

    messages: Sequence[ChatTurn] = ()
    sampling: Sampling = field(default_factory=Sampling)
    model_id: str = ""
    request_id: str = ""
    conversation_id: str = ""
    deadline: float | None = None
    prompt: str = ""

    @property
    def prompt_field(self) -> str:
        """The request field its prompt came from, to name in errors."""
        return "prompt" if self.prompt else "messages"


class FinishReason(Enum):
    """Why a reply ended."""

    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True)
class GenerateChunk:
    """One streamed piece of a reply.

    Every chunk but the last carries new text; the last carries no text, the
    finish reason and the token counts.
    """

    text: str
    model_id: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _sampling_violations(sampling: Sampling) -> list[FieldViolation]:
    violations = []
    if sampling.temperature is not None and not (
        math.isfinite(sampling.temperature) and 0 <= sampling.temperature <= MAX_TEMPERATURE
    ):
        violations.append(
            FieldViolation("sampling.temperature", f"must be within [0, {MAX_TEMPERATURE:g}]")
        )
    if sampling.top_p is not None and not (
        math.isfinite(sampling.top_p) and 0 < sampling.top_p <= 1
    ):
        violations.append(FieldViolation("sampling.top_p", "must be within (0, 1]"))
    if sampling.max_tokens is not None and sampling.max_tokens < 1:
        violations.append(FieldViolation("sampling.max_tokens", "must be at least 1"))
    if len(sampling.stop) > MAX_STOP_STRINGS:
        violations.append(
            FieldViolation("sampling.stop", f"at most {MAX_STOP_STRINGS} stop strings")
        )
    for index, stop in enumerate(sampling.stop):
        if not 0 < len(stop) <= MAX_STOP_CHARS:
            violations.append(
                FieldViolation(
                    f"sampling.stop[{index}]", f"must be 1 to {MAX_STOP_CHARS} characters"
                )
            )
    if sampling.seed is not None and not 0 <= sampling.seed <= MAX_SEED:
        violations.append(FieldViolation("sampling.seed", f"must be within 0..{MAX_SEED}"))
    return violations


def validate_generate(request: GenerateInput) -> ResolvedSampling:
    """Checks a request and returns its sampling with the defaults filled in."""
    violations = []
    if request.prompt and request.messages:
        violations.append(FieldViolation("prompt", "give messages or a prompt, not both"))
    elif not request.prompt and not request.messages:
        violations.append(
            FieldViolation("messages", "at least one message is required (or a prompt)")
        )
    for index, turn in enumerate(request.messages):
        if turn.role not in ROLES:
            violations.append(
                FieldViolation(f"messages[{index}].role", "must be system, user or assistant")
            )
    if len(request.model_id) > MAX_MODEL_ID_CHARS:
        violations.append(
            FieldViolation("model_id", f"must be at most {MAX_MODEL_ID_CHARS} characters")
        )
    if len(request.conversation_id) > MAX_CONVERSATION_ID_CHARS:
        violations.append(
            FieldViolation(
                "conversation_id", f"must be at most {MAX_CONVERSATION_ID_CHARS} characters"
            )
        )
    violations += _sampling_violations(request.sampling)
    if violations:
        raise InvalidArgumentError("invalid generate request", violations)
    sampling = request.sampling
    return ResolvedSampling(
        temperature=DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature,
        top_p=DEFAULT_TOP_P if sampling.top_p is None else sampling.top_p,
        max_tokens=DEFAULT_MAX_TOKENS if sampling.max_tokens is None else sampling.max_tokens,
        stop=tuple(sampling.stop),
        seed=sampling.seed,
    )


def check_prompt_fits(prompt_tokens: int, max_model_len: int, field: str = "messages") -> None:
    """Refuses a prompt that leaves no room in the context for a reply.

    ``field`` is where the prompt came from: ``messages`` or ``prompt``. The
    error carries the ErrorInfo reason CONTEXT_LENGTH_EXCEEDED.
    """
    if prompt_tokens >= max_model_len:
        what = "prompt is" if field == "prompt" else "conversation is"
        how = "tokenized" if field == "prompt" else "rendered"
        raise InvalidArgumentError(
            f"the {what} {prompt_tokens} tokens once {how}; the deployed model's context is "
            f"{max_model_len} tokens, and at least one must be left for the reply",
            [
                FieldViolation(
                    field,
                    f"{how} prompt of {prompt_tokens} tokens exceeds the limit of "
                    f"{max_model_len - 1} tokens",
                )
            ],
            error_info=ErrorInfo(
                CONTEXT_LENGTH_EXCEEDED,
                ERROR_DOMAIN,
                {"prompt_tokens": str(prompt_tokens), "max_model_len": str(max_model_len)},
            ),
        )

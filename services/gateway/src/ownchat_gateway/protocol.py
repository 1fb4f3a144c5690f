"""OpenAI's wire types: the chat and (legacy) text completion requests the
gateway accepts and what it returns.

Only the fields ownchat acts on are declared; other fields OpenAI clients send
(``frequency_penalty``, ``logprobs``, ...) are accepted and ignored, as vLLM's
server does, so that existing clients keep working. Fields that would change
what a reply is (``n`` above 1, ``echo``, ``best_of``) are refused instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# serving's max_tokens is an int32; a longer reply than any context is refused here, as 400.
MAX_TOKENS_LIMIT = 2**31 - 1


class TextPart(BaseModel):
    """One part of a message's content given as a list; only text is supported."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of the conversation."""

    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string (list parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """Options of a streamed reply."""

    include_usage: bool = False


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    strings = [value] if isinstance(value, str) else value or []
    if any(not s for s in strings):
        raise ValueError("stop strings must not be empty")
    return value


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is generated.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI's "store the output": captures the chat for review (scrubbed first);
    # unset follows the gateway's capture_conversations setting.
    store: bool | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        return _check_stop(value)

    def stop_list(self) -> list[str]:
        """``stop`` as a list, whether it came as one string or several."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_limit(self) -> int | None:
        """The newer ``max_completion_tokens`` wins over the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions`` (OpenAI's legacy text completions)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    # One string, or a list of one string; token id arrays are not accepted.
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's default for this endpoint, unlike chat's.
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is generated.")
    best_of: int | None = Field(default=None, ge=1, le=1, description="Only one candidate.")
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_text_prompt(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(value, str):
            return value
        if len(value) == 1 and isinstance(value[0], str):
            return value
        if value and all(isinstance(item, str) for item in value):
            raise ValueError("only one prompt per request is supported; send a list of one string")
        raise ValueError("must be a string (token id arrays are not supported)")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported; leave it false")
        return value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        return _check_stop(value)

    def prompt_text(self) -> str:
        """The one prompt, whether it came as a string or a list of one."""
        if isinstance(self.prompt, str):
            return self.prompt
        first = self.prompt[0]
        assert isinstance(first, str), "checked by the validator"
        return first

    def stop_list(self) -> list[str]:
        """``stop`` as a list, whether it came as one string or several."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The reply."""

    role: Literal["assistant"] = "assistant"
    content: str


FinishReason = Literal["stop", "length"]


class Choice(BaseModel):
    """The one choice of a reply."""

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A whole reply (``object: chat.completion``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    """What a chunk adds to the reply."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """The one choice of a chunk."""

    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed reply (``object: chat.completion.chunk``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    # Present (and null) on every chunk but the last when include_usage is asked for.
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    """The one choice of a text completion, whole or one chunk of it."""

    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: FinishReason | None = None


class TextCompletion(BaseModel):
    """A whole text completion, or one server-sent event of a streamed one (same object)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    # On a whole completion; on a stream, only when include_usage asks (null
    # until the last chunk, which carries it with no choices).
    usage: Usage | None = None


class Model(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ownchat"


class ModelList(BaseModel):
    """The body of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: ``{"error": {...}}``."""

    error: ErrorDetail

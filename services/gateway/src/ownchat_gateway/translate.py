"""Translation between OpenAI's chat and text completion shapes and ``ownchat.serving.v1``.

Plain functions over protobuf messages and pydantic models: no transport here, so
all of it is unit-tested without a server.

Text completions (``/v1/completions``) send serving the raw ``prompt``, which it
tokenizes as it is, without the chat template.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ownchat.common.v1 import common_pb2
from ownchat.roles import ROLE_BY_NAME
from ownchat.serving.v1 import serving_pb2
from ownchat_gateway.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionRequest,
    Delta,
    FinishReason,
    Model,
    ModelList,
    TextCompletion,
    Usage,
)

# Names that mean "whatever is live" rather than a model version id.
DEFAULT_MODEL_NAMES = frozenset({"", "default"})

# OpenAI's "developer" role is its newer name for "system".
_ROLES = {**ROLE_BY_NAME, "developer": common_pb2.ROLE_SYSTEM}

_FINISH_REASONS: dict[int, FinishReason] = {
    serving_pb2.FINISH_REASON_STOP: "stop",
    serving_pb2.FINISH_REASON_LENGTH: "length",
}

# A caller's request id is forwarded as gRPC metadata and echoed in a header, so it
# must be short printable ASCII; anything else is replaced by a fresh one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class IncompleteReplyError(Exception):
    """Serving ended the stream without the final message (finish reason and usage)."""


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-Id`` when it is safe to forward, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def new_completion_id(kind: Literal["chatcmpl", "cmpl"] = "chatcmpl") -> str:
    """An id in OpenAI's style for one reply (``cmpl-`` for a text completion)."""
    return f"{kind}-{uuid.uuid4().hex}"


def _sampling(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> serving_pb2.SamplingParams:
    sampling = serving_pb2.SamplingParams(stop=body.stop_list())
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if body.seed is not None:
        sampling.seed = body.seed
    return sampling


def _model_id(requested: str) -> str:
    model = requested.strip()
    return "" if model in DEFAULT_MODEL_NAMES else model


def to_generate_request(
    body: ChatCompletionRequest, request_id: str
) -> serving_pb2.GenerateRequest:
    """The Generate call for a chat-completions body.

    ``user`` becomes the conversation id, so one end user stays on one side of a canary.
    """
    return serving_pb2.GenerateRequest(
        model_id=_model_id(body.model),
        messages=[
            common_pb2.ChatMessage(role=_ROLES[message.role], content=message.text())
            for message in body.messages
        ],
        sampling=_sampling(body, body.token_limit()),
        conversation_id=body.user or "",
        request_id=request_id,
    )


def to_text_generate_request(
    body: CompletionRequest, request_id: str
) -> serving_pb2.GenerateRequest:
    """The Generate call for a text-completions body: its prompt as it is, no chat template.

    ``user`` becomes the conversation id, as for chat.
    """
    return serving_pb2.GenerateRequest(
        model_id=_model_id(body.model),
        prompt=body.prompt_text(),
        sampling=_sampling(body, body.max_tokens),
        conversation_id=body.user or "",
        request_id=request_id,
    )


def _finish_reason(response: serving_pb2.GenerateResponse) -> FinishReason | None:
    return _FINISH_REASONS.get(response.finish_reason)


def _usage(response: serving_pb2.GenerateResponse) -> Usage:
    prompt = response.usage.prompt_tokens
    completion = response.usage.completion_tokens
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def to_completion(
    responses: Iterable[serving_pb2.GenerateResponse],
    *,
    completion_id: str,
    created: int,
    requested_model: str,
) -> ChatCompletion:
    """A whole reply from the Generate stream's messages."""
    builder = ReplyBuilder(completion_id, created, requested_model)
    for response in responses:
        builder.add(response)
    return builder.completion()


@dataclass
class ReplyBuilder:
    """Follows one Generate stream and builds OpenAI's reply or chunks from it."""

    completion_id: str
    created: int
    requested_model: str
    include_usage: bool = False
    model: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    _texts: list[str] = field(default_factory=list)
    _started: bool = False

    def add(self, response: serving_pb2.GenerateResponse) -> list[ChatCompletionChunk]:
        """Takes one Generate message; returns the chunks it becomes when streaming."""
        if response.model_id and not self.model:
            self.model = response.model_id
        chunks: list[ChatCompletionChunk] = []
        if not self._started:
            # OpenAI's first chunk announces the role with empty content.
            self._started = True
            chunks.append(self._chunk(Delta(role="assistant", content="")))
        if response.text:
            self._texts.append(response.text)
            chunks.append(self._chunk(Delta(content=response.text)))
        reason = _finish_reason(response)
        if reason is not None:
            self.finish_reason = reason
            self.usage = _usage(response)
            chunks.append(self._chunk(Delta(), finish_reason=reason))
            if self.include_usage:
                chunks.append(
                    ChatCompletionChunk(
                        id=self.completion_id,
                        created=self.created,
                        model=self._model(),
                        choices=[],
                        usage=self.usage,
                    )
                )
        return chunks

    def completion(self) -> ChatCompletion:
        """The whole reply; raises :class:`IncompleteReplyError` if the stream was cut."""
        self.check_finished()
        assert self.finish_reason is not None and self.usage is not None
        return ChatCompletion(
            id=self.completion_id,
            created=self.created,
            model=self._model(),
            choices=[
                Choice(
                    message=AssistantMessage(content=self.text()),
                    finish_reason=self.finish_reason,
                )
            ],
            usage=self.usage,
        )

    def text(self) -> str:
        """The reply's text so far."""
        return "".join(self._texts)

    def check_finished(self) -> None:
        """Raises :class:`IncompleteReplyError` when no final message came."""
        if self.finish_reason is None or self.usage is None:
            raise IncompleteReplyError("the reply ended before its final message")

    def _model(self) -> str:
        return self.model or self.requested_model

    def _chunk(
        self, delta: Delta, finish_reason: FinishReason | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.completion_id,
            created=self.created,
            model=self._model(),
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
        )


def chunk_event(chunk: ChatCompletionChunk, include_usage: bool) -> str:
    """One server-sent event carrying a chunk.

    ``usage`` is on every chunk (null until the last) when asked for, and absent
    otherwise, as OpenAI sends it.
    """
    return _model_event(chunk, include_usage)


def _model_event(chunk: ChatCompletionChunk | TextCompletion, include_usage: bool) -> str:
    # pydantic's own JSON writer: one pass in Rust instead of a dict, then json.
    body = chunk.model_dump_json(exclude=None if include_usage else _NO_USAGE)
    return f"data: {body}\n\n"


_NO_USAGE = {"usage"}


def sse_event(payload: dict[str, Any]) -> str:
    """A ``data:`` event with a JSON payload."""
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


DONE_EVENT = "data: [DONE]\n\n"


def to_model_list(deployments: Iterable[serving_pb2.Deployment]) -> ModelList:
    """The live deployments as OpenAI's model list, one entry per model version."""
    models: dict[str, Model] = {}
    for deployment in deployments:
        if deployment.state != serving_pb2.DEPLOYMENT_STATE_LIVE:
            continue
        if deployment.model_id in models:
            continue
        created = deployment.create_time.seconds if deployment.HasField("create_time") else 0
        models[deployment.model_id] = Model(id=deployment.model_id, created=created)
    return ModelList(data=list(models.values()))


def now() -> int:
    """Epoch seconds, for ``created``."""
    return int(time.time())


@dataclass
class TextReplyBuilder:
    """Follows one Generate stream and builds OpenAI's text completion or its chunks."""

    completion_id: str
    created: int
    requested_model: str
    include_usage: bool = False
    model: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    _texts: list[str] = field(default_factory=list)

    def add(self, response: serving_pb2.GenerateResponse) -> list[TextCompletion]:
        """Takes one Generate message; returns the chunks it becomes when streaming."""
        if response.model_id and not self.model:
            self.model = response.model_id
        chunks: list[TextCompletion] = []
        reason = _finish_reason(response)
        if response.text or reason is not None:
            self._texts.append(response.text)
            chunks.append(self._chunk([CompletionChoice(text=response.text, finish_reason=reason)]))
        if reason is not None:
            self.finish_reason = reason
            self.usage = _usage(response)
            if self.include_usage:
                chunks.append(self._chunk([], usage=self.usage))
        return chunks

    def completion(self) -> TextCompletion:
        """The whole completion; raises :class:`IncompleteReplyError` if the stream was cut."""
        self.check_finished()
        assert self.finish_reason is not None and self.usage is not None
        choice = CompletionChoice(text="".join(self._texts), finish_reason=self.finish_reason)
        return self._chunk([choice], usage=self.usage)

    def check_finished(self) -> None:
        """Raises :class:`IncompleteReplyError` when no final message came."""
        if self.finish_reason is None or self.usage is None:
            raise IncompleteReplyError("the reply ended before its final message")

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> TextCompletion:
        return TextCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model or self.requested_model,
            choices=choices,
            usage=usage,
        )


def text_chunk_event(chunk: TextCompletion, include_usage: bool) -> str:
    """One server-sent event carrying a text completion chunk (``usage`` as for chat)."""
    return _model_event(chunk, include_usage)

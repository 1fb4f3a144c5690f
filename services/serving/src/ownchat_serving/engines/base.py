"""The one interface every inference engine offers the serving core.

It is exactly what the core uses of an engine: load a model directory, render
a conversation or tokenize a raw prompt to prompt ids, stream or complete a
reply, count the requests still held, and shut down. vLLM's engine
(``ownchat_serving.engine``), the Transformers reference engine and the ONNX
Runtime engine all satisfy it; which one serves is chosen per deployment.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Protocol

from ownchat_serving.engine import (
    Adapter,
    EngineLoadError,
    EngineOptions,
    EngineRequestError,
    EngineStep,
    EngineUnavailableError,
)
from ownchat_serving.generation import ChatTurn, ResolvedSampling

__all__ = [
    "Adapter",
    "Engine",
    "EngineLoadError",
    "EngineOptions",
    "EngineRequestError",
    "EngineStep",
    "EngineUnavailableError",
]


class Engine(Protocol):
    """A loaded model taking requests.

    Errors: ``load`` raises EngineLoadError; ``stream`` and ``complete`` raise
    EngineRequestError for a request the engine refuses and
    EngineUnavailableError when the engine stops under a request (shut down,
    or ``dead``). A reply cut off by ``shutdown`` ends with the finish reason
    "abort".
    """

    # Longest prompt plus reply, in tokens: the model's own limit or the
    # configured one, whichever is lower.
    max_model_len: int
    # Whether requests may name a LoRA adapter of the model (vLLM started for it).
    serves_adapters: bool

    @classmethod
    async def load(cls, model_dir: Path, options: EngineOptions) -> Engine:
        """Loads a model directory (safetensors only, no remote code) and starts serving it."""
        ...

    def render(self, turns: Sequence[ChatTurn]) -> list[int]:
        """The prompt's token ids: the conversation through the model's chat template."""
        ...

    def tokenize(self, prompt: str) -> list[int]:
        """A raw text prompt's token ids, without the chat template.

        The tokenizer adds its own special tokens, as it does for any text (a
        BOS where it has one), so the model reads what it was trained to read.
        """
        ...

    def stream(
        self,
        prompt_ids: list[int],
        sampling: ResolvedSampling,
        request_id: str,
        adapter: Adapter | None = None,
    ) -> AsyncGenerator[EngineStep, None]:
        """Generates a reply, one engine step's new text at a time, through ``adapter`` if any.

        The last step carries the finish reason ("stop", "length" or "abort");
        closing the iterator early (a cancelled caller) frees the request.
        """
        ...

    async def complete(
        self,
        prompt_ids: list[int],
        sampling: ResolvedSampling,
        request_id: str,
        adapter: Adapter | None = None,
    ) -> EngineStep:
        """Generates a whole reply and returns it at once (warm-up, reference runs)."""
        ...

    def unfinished_requests(self) -> int:
        """Requests the engine still holds, running or waiting."""
        ...

    @property
    def dead(self) -> bool:
        """Whether the engine stopped on its own (its process died), not by ``shutdown``.

        A dead engine serves nothing more; the core starts a new one for the
        deployment. In-process engines cannot die apart from the service.
        """
        ...

    async def shutdown(self) -> None:
        """Ends the replies still running (as aborted) and frees the model."""
        ...

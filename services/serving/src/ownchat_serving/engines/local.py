"""Requests on an in-process decoder: worker threads, streaming, cancellation.

The Transformers and ONNX Runtime engines decode in this process, one
sequence per request (batch size 1, no batching across requests). Up to
``max_num_seqs`` requests (default ``DEFAULT_CONCURRENCY``) decode at once,
each in its own worker thread; later ones wait their turn in arrival order
and count as unfinished meanwhile. A worker hands its text to the event loop
token by token; a reader slower than the decoder gets what piled up as one
step. A caller that goes away stops its reply before the next token and waits
for its worker to let go, so the request is freed when ``stream`` returns.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from ownchat.chat_template import render
from ownchat_serving.engine import (
    Adapter,
    EngineLoadError,
    EngineOptions,
    EngineRequestError,
    EngineStep,
    EngineUnavailableError,
    first_line,
)
from ownchat_serving.engines.decoding import DecodeLimits, Decoder, Detokenizer, decode
from ownchat_serving.generation import ChatTurn, ResolvedSampling

logger = logging.getLogger("ownchat.serving")

DEFAULT_CONCURRENCY = 2
_SEED_BOUND = 2**63


def check_safetensors(model_dir: Path) -> None:
    """Refuses a model directory without safetensors weights (pickled weights can run code)."""
    if not any(model_dir.glob("*.safetensors")):
        raise EngineLoadError(
            f"no *.safetensors weights in {model_dir.name}; only safetensors are loaded"
        )


def context_length(config: Any, options: EngineOptions) -> int:
    """The configured context, or the model's own when that is shorter."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    own = getattr(text_config, "max_position_embeddings", None)
    return min(options.max_model_len, int(own)) if own else options.max_model_len


def eos_ids(model_dir: Path, config: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end a reply: the generation config's, the model's and the tokenizer's."""
    found: list[Any] = [getattr(config, "eos_token_id", None), tokenizer.eos_token_id]
    try:
        from transformers import GenerationConfig

        generation = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
        found.append(generation.eos_token_id)
    except OSError:
        pass  # no generation_config.json
    ids: set[int] = set()
    for value in found:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


class _Request:
    """One request's hand-over from its worker thread to its reader on the event loop."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.id = request_id
        self._loop = loop
        self._queue: asyncio.Queue[tuple[str, int, str | None] | BaseException] = asyncio.Queue()
        self._lock = threading.Lock()
        self._ended = False
        self.cancelled = threading.Event()

    def put(self, item: tuple[str, int, str | None] | BaseException) -> None:
        """From any thread; nothing is delivered after the request's end."""
        with self._lock:
            if self._ended:
                return
            if isinstance(item, BaseException) or item[2] is not None:
                self._ended = True
        # The loop is gone only when the service is going away: nobody reads.
        with suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def emit(self, text: str, tokens: int, finish: str | None) -> None:
        self.put((text, tokens, finish))

    async def next_step(self, prompt_tokens: int) -> EngineStep:
        """What the worker produced since the last call, as one step; waits for at least a token."""
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        texts, tokens, finish = [], 0, None
        for item in items:
            if isinstance(item, BaseException):
                raise EngineUnavailableError(f"generation failed: {first_line(item)}") from item
            texts.append(item[0])
            tokens += item[1]
            finish = item[2] or finish
        return EngineStep("".join(texts), tokens, prompt_tokens, finish)


class LocalEngine:
    """Requests decoded in this process by a ``Decoder``, a few at a time.

    The Transformers and ONNX Runtime engines are this with their own decoder
    and ``load``.
    """

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Any,
        model_dir: Path,
        max_model_len: int,
        eos: frozenset[int],
        options: EngineOptions,
    ) -> None:
        self._decoder = decoder
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self.model_dir = model_dir
        self.max_model_len = max_model_len
        self._eos = eos
        self.concurrency = options.max_num_seqs or DEFAULT_CONCURRENCY
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ownchat-decode")
        # Unseeded requests draw their seeds from here: reproducible per engine start.
        self._seeds = np.random.default_rng(options.seed)
        self._requests: dict[str, _Request] = {}
        self._held = 0
        self._held_lock = threading.Lock()
        self._closed = False
        # LoRA adapters are vLLM's alone; merge an adapter to serve it here.
        self.serves_adapters = False

    def render(self, turns: Sequence[ChatTurn]) -> list[int]:
        """The prompt's token ids: the conversation through the chat template."""
        messages = [{"role": t.role, "content": t.content} for t in turns]
        with self._tokenizer_lock:
            text = render(self._tokenizer, messages, prompt=True)
            # The template writes its own special tokens.
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(ids)

    def tokenize(self, prompt: str) -> list[int]:
        """A raw prompt's token ids, with the tokenizer's own special tokens (a BOS where
        it adds one) and no chat template."""
        with self._tokenizer_lock:
            ids = self._tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return list(ids)

    def _check(self, prompt_ids: list[int], request_id: str, adapter: Adapter | None) -> None:
        if adapter is not None:
            raise EngineRequestError("this engine serves no LoRA adapters")
        if self._closed:
            raise EngineUnavailableError("the engine has been shut down")
        if not prompt_ids:
            raise EngineRequestError("the prompt is empty")
        if len(prompt_ids) >= self.max_model_len:
            raise EngineRequestError(
                f"the prompt is {len(prompt_ids)} tokens; the context is {self.max_model_len}"
            )
        if not all(0 <= token < self._decoder.vocab_size for token in prompt_ids):
            raise EngineRequestError("the prompt has token ids outside the vocabulary")
        if request_id in self._requests:
            raise EngineRequestError(f"request id {request_id!r} is already running")

    def _work(
        self, request: _Request, prompt_ids: list[int], sampling: ResolvedSampling, seed: int
    ) -> None:
        try:
            limits = DecodeLimits(
                max_tokens=min(sampling.max_tokens, self.max_model_len - len(prompt_ids)),
                eos_ids=self._eos,
            )
            decode(
                self._decoder.new_sequence(),
                prompt_ids,
                sampling,
                limits,
                Detokenizer(self._tokenizer, prompt_ids, sampling.stop, self._tokenizer_lock),
                np.random.default_rng(seed),
                request.cancelled.is_set,
                request.emit,
            )
        except Exception as error:  # noqa: BLE001 - handed to the reader, which reports it
            logger.exception("generation failed", extra={"request_id": request.id})
            request.put(error)
        finally:
            self._release()

    def _release(self) -> None:
        with self._held_lock:
            self._held -= 1

    async def _run(
        self,
        prompt_ids: list[int],
        sampling: ResolvedSampling,
        request_id: str,
        adapter: Adapter | None = None,
    ) -> AsyncGenerator[EngineStep, None]:
        self._check(prompt_ids, request_id, adapter)
        seed = sampling.seed
        if seed is None:
            seed = int(self._seeds.integers(_SEED_BOUND))
        request = _Request(request_id, asyncio.get_running_loop())
        self._requests[request_id] = request
        with self._held_lock:
            self._held += 1
        work: Future[None] = self._executor.submit(
            self._work, request, list(prompt_ids), sampling, seed
        )
        try:
            while True:
                step = await request.next_step(len(prompt_ids))
                yield step
                if step.finish_reason is not None:
                    return
        finally:
            del self._requests[request_id]
            request.cancelled.set()
            if work.cancel():
                self._release()  # it never started
            elif not work.done():
                # At most one forward pass: the worker checks before each.
                with suppress(Exception):
                    await asyncio.wrap_future(work)

    def stream(
        self,
        prompt_ids: list[int],
        sampling: ResolvedSampling,
        request_id: str,
        adapter: Adapter | None = None,
    ) -> AsyncGenerator[EngineStep, None]:
        """Generates a reply, one step's new text at a time; refuses an adapter."""
        return self._run(prompt_ids, sampling, request_id, adapter)

    async def complete(
        self,
        prompt_ids: list[int],
        sampling: ResolvedSampling,
        request_id: str,
        adapter: Adapter | None = None,
    ) -> EngineStep:
        """Generates a whole reply and returns it at once (warm-up, reference runs)."""
        texts, tokens, last = [], 0, None
        async for step in self._run(prompt_ids, sampling, request_id, adapter):
            texts.append(step.text)
            tokens += step.new_tokens
            last = step
        if last is None:
            raise EngineUnavailableError("the engine returned nothing")
        return EngineStep("".join(texts), tokens, last.prompt_tokens, last.finish_reason)

    def unfinished_requests(self) -> int:
        """Requests decoding or waiting for a worker."""
        with self._held_lock:
            return self._held

    @property
    def dead(self) -> bool:
        """Never: the decoder runs in this process, which lives as long as the service."""
        return False

    async def shutdown(self) -> None:
        """Ends the replies in flight as aborted, waits for the workers, frees the model."""
        if self._closed:
            return
        self._closed = True
        for request in list(self._requests.values()):
            request.cancelled.set()
            request.emit("", 0, "abort")
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._decoder.close()

"""One model loaded in vLLM's async engine, in this process.

vLLM's engine core runs in its own process (and a worker process beside it on
CPU); this wrapper owns the client side: it renders conversations with the
model's chat template (or tokenizes a raw prompt), streams one step's new text
at a time (DELTA output), aborts a request the moment its caller goes away,
and shuts the engine's processes down. vLLM is imported on first load, so a
service with nothing deployed starts without it.

An engine started with ``adapters`` serves LoRA adapters of its model too: a
request names its adapter, which vLLM loads on first use and keeps (up to
``max_loras`` at once), so every adapter of one base shares one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import platform
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ownchat.chat_template import render
from ownchat_serving.generation import ChatTurn, ResolvedSampling

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.engine.async_llm import AsyncLLM

# Nothing is fetched or reported over the network: no usage statistics, no hub.
_OFFLINE_ENVIRONMENT = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@dataclass(frozen=True)
class EngineOptions:
    """How to start an engine (from the service's settings)."""

    max_model_len: int = 2048
    kv_cache_bytes: int = 1024**3
    enforce_eager: bool = True
    prefix_caching: bool = True
    dtype: str = "auto"
    max_num_seqs: int | None = None
    seed: int = 0
    # For engines that serve LoRA adapters: how many at once, and their largest rank.
    max_loras: int = 4
    max_lora_rank: int = 16
    # vLLM's tensor parallelism: one engine's weights split over this many GPUs.
    tensor_parallel_size: int = 1


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter to apply to one request: its files and a number unique to them."""

    name: str
    id: int
    path: Path


@dataclass(frozen=True)
class EngineStep:
    """What one engine step produced for one request."""

    text: str
    new_tokens: int
    prompt_tokens: int
    # vLLM's reason on the request's last step: "stop", "length" or "abort".
    finish_reason: str | None


class EngineLoadError(Exception):
    """The model could not be loaded or warmed up."""


class EngineUnavailableError(Exception):
    """The engine stopped (shut down or crashed) while a request was running."""


class EngineRequestError(Exception):
    """The engine refused a request as malformed."""


def _configure_environment() -> None:
    for key, value in _OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 with AVX512-BF16 or AMX).

    Other architectures are left to vLLM's own choice.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def engine_dtype(requested: str, on_cpu: bool) -> str:
    """The dtype to give vLLM.

    ``auto`` takes the checkpoint's dtype (bfloat16 for most chat models). On a
    CPU without native bfloat16 every product is converted in software; there
    float32 is the faster choice by far (SmolLM2-135M on 2 AVX2 cores: prefill of
    400 tokens 1.7 s in float32 against 10 s in bfloat16, decode steps alike).
    """
    if requested == "auto" and on_cpu and not cpu_has_native_bf16():
        return "float32"
    return requested


def engine_config(model_dir: Path, options: EngineOptions, adapters: bool = False) -> VllmConfig:
    """vLLM's configuration of an engine on a model directory: safetensors only, no
    remote code. The serving benchmark starts its offline baseline from it too."""
    _configure_environment()
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    args = AsyncEngineArgs(
        model=str(model_dir),
        tokenizer=str(model_dir),
        trust_remote_code=False,
        load_format="safetensors",
        dtype=engine_dtype(options.dtype, current_platform.is_cpu()),  # type: ignore[arg-type]
        kv_cache_memory_bytes=options.kv_cache_bytes,
        enforce_eager=options.enforce_eager,
        enable_prefix_caching=options.prefix_caching,
        max_num_seqs=options.max_num_seqs,
        seed=options.seed,
        disable_log_stats=True,
        enable_lora=adapters,
        max_loras=options.max_loras,
        max_lora_rank=options.max_lora_rank,  # type: ignore[arg-type]
        tensor_parallel_size=options.tensor_parallel_size,
    )
    config = args.create_engine_config()
    # The configured length is a ceiling; a model with a shorter context keeps its own.
    if options.max_model_len < config.model_config.max_model_len:
        args = dataclasses.replace(args, max_model_len=options.max_model_len)
        config = args.create_engine_config()
    return config


def _start_engine(model_dir: Path, options: EngineOptions, adapters: bool) -> AsyncLLM:
    """Builds the engine; blocks for the whole start, so it runs in a thread."""
    from vllm.v1.engine.async_llm import AsyncLLM

    config = engine_config(model_dir, options, adapters)
    return AsyncLLM.from_vllm_config(config, disable_log_stats=True)


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer, from local files only; it must have a chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    if not getattr(tokenizer, "chat_template", None):
        raise EngineLoadError("the model's tokenizer has no chat template")
    return tokenizer


def first_line(error: BaseException) -> str:
    """An exception as one short line, for load errors shown to callers."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip().rstrip(":")


class VllmEngine:
    """A loaded model taking requests."""

    def __init__(
        self, llm: AsyncLLM, tokenizer: Any, model_dir: Path, adapters: bool = False
    ) -> None:
        self._llm = llm
        self._tokenizer = tokenizer
        self.model_dir = model_dir
        self.serves_adapters = adapters
        self.max_model_len: int = llm.model_config.max_model_len
        self._closed = False
        self._running: set[str] = set()

    @classmethod
    async def load(
        cls, model_dir: Path, options: EngineOptions, adapters: bool = False
    ) -> VllmEngine:
        """Starts an engine on a model directory (safetensors only, no remote code).

        ``adapters``: also serve LoRA adapters of this model, per request.
        """
        try:
            tokenizer = await asyncio.to_thread(load_tokenizer, model_dir)
            # Handed over through a box, not as the thread's result: the
            # executor's futures keep their result alive, and the engine must
            # be freed once shut down.
            box: list[AsyncLLM] = []
            await asyncio.to_thread(lambda: box.append(_start_engine(model_dir, options, adapters)))
            llm = box.pop()
        except EngineLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - vLLM raises many kinds while loading
            raise EngineLoadError(first_line(error)) from error
        return cls(llm, tokenizer, model_dir, adapters)

    def render(self, turns: Sequence[ChatTurn]) -> list[int]:
        """The prompt's token ids: the conversation through the chat template."""
        text = render(
            self._tokenizer, [{"role": t.role, "content": t.content} for t in turns], prompt=True
        )
        # The template writes its own special tokens.
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(ids)

    def tokenize(self, prompt: str) -> list[int]:
        """A raw prompt's token ids, with the tokenizer's own special tokens (a BOS where
        it adds one), as vLLM's own text completions tokenize it."""
        return list(self._tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def _params(self, sampling: ResolvedSampling, final_only: bool) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
        )

    def _lora(self, adapter: Adapter | None) -> Any:
        if adapter is None:
            return None
        if not self.serves_adapters:
            raise EngineRequestError("this engine was started without LoRA adapters")
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.id, str(adapter.path))

    async def _run(
        self, prompt_ids: list[int], params: Any, request_id: str, adapter: Adapter | None
    ) -> AsyncGenerator[EngineStep, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._closed:
            raise EngineUnavailableError("the engine has been shut down")
        lora = self._lora(adapter)
        finished = False
        self._running.add(request_id)
        try:
            async for output in self._llm.generate(
                {"prompt_token_ids": prompt_ids}, params, request_id=request_id, lora_request=lora
            ):
                completion = output.outputs[0]
                finished = output.finished
                yield EngineStep(
                    text=completion.text,
                    new_tokens=len(completion.token_ids),
                    prompt_tokens=len(output.prompt_token_ids or prompt_ids),
                    finish_reason=completion.finish_reason if finished else None,
                )
        except (VLLMClientError, ValueError) as error:
            finished = True
            raise EngineRequestError(str(error)) from error
        except EngineDeadError as error:
            finished = True
            raise EngineUnavailableError("the engine stopped") from error
        finally:
            self._running.discard(request_id)
            # Cancelled, timed out or abandoned: free the request's KV cache now.
            if not finished and not self._closed:
                try:
                    await self._llm.abort(request_id)
                except Exception:  # noqa: BLE001 - the engine may be going away
                    pass

    def stream(
        self,
        prompt_ids: list[int],
        sampling: ResolvedSampling,
        request_id: str,
        adapter: Adapter | None = None,
    ) -> AsyncGenerator[EngineStep, None]:
        """Generates a reply, one step's new text at a time."""
        return self._run(prompt_ids, self._params(sampling, final_only=False), request_id, adapter)

    async def complete(
        self,
        prompt_ids: list[int],
        sampling: ResolvedSampling,
        request_id: str,
        adapter: Adapter | None = None,
    ) -> EngineStep:
        """Generates a whole reply and returns it at once (warm-up, reference runs)."""
        last: EngineStep | None = None
        async for step in self._run(
            prompt_ids, self._params(sampling, final_only=True), request_id, adapter
        ):
            last = step
        if last is None:
            raise EngineUnavailableError("the engine returned nothing")
        return last

    def unfinished_requests(self) -> int:
        """Requests the engine still holds."""
        if self._closed:
            return 0
        return int(self._llm.get_num_unfinished_requests())

    @property
    def dead(self) -> bool:
        """Whether the engine core's process died (vLLM's monitor noticed) or stopped reading."""
        return not self._closed and bool(self._llm.errored)

    async def shutdown(self) -> None:
        """Stops the engine's processes; waiting for them runs off the event loop."""
        if self._closed:
            return
        self._closed = True
        # Replies still running end now, as aborted, rather than wait forever
        # for outputs that will not come. A dead engine may refuse.
        if self._running:
            with contextlib.suppress(Exception):
                await self._llm.abort(list(self._running))
        # Stop reading outputs: otherwise the reader sees the engine's
        # processes exit and logs it as a crash.
        reader = getattr(self._llm, "output_handler", None)
        if reader is not None:
            reader.cancel()
        await asyncio.to_thread(self._llm.shutdown)
        # vLLM's finalizer would shut down again at interpreter exit, when the
        # modules it needs are gone: let it run now, while they are there.
        del self._llm
        gc.collect()

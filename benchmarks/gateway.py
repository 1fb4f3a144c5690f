"""The gateway's own cost, without an engine's noise: the real gateway process
(``python -m ownchat_gateway``) in front of a serving stand-in that answers at once.

Usage: python benchmarks/gateway.py [--requests 400] [--rounds 3]

The serving benchmark measures the gateway's TTFT beside vLLM, whose prefill
makes a TTFT on a CPU hundreds of milliseconds long and its jitter larger than
the gateway's part. Here serving is a stand-in in its own process that answers
a Generate call with two messages straight away (as serving coalesces an engine
step), so what a client waits for is the transport and the layers in between.

One request at a time, the paths interleaved request by request so that both
see the same machine: a streamed Generate straight to the stand-in over gRPC
(the baseline), and a streamed chat completion through the gateway, read as
``vllm bench serve`` reads server-sent events (``SseClient``). The gateway's
TTFT added is the median over pairs of REST minus gRPC; its CPU time per
request is what its processes used over the REST requests (it idles during the
gRPC ones). Writes ``benchmarks/results/gateway.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import merge_results  # noqa: E402
from serving_load import (  # noqa: E402
    GrpcClient,
    Prompt,
    RequestRecord,
    SseClient,
    median_interval,
)

COMMAND = "python benchmarks/gateway.py"
PROMPT = Prompt("How do I reset my password?", prompt_tokens=8, max_tokens=8)


def serve_stand_in(port: int) -> None:
    """Serving as the gateway sees it, answering at once (run in its own process)."""
    from grpc import aio

    from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc

    class StandIn(serving_pb2_grpc.ServingServiceServicer):
        async def Generate(  # noqa: N802 - gRPC's method name
            self, request: serving_pb2.GenerateRequest, context: aio.ServicerContext
        ) -> AsyncIterator[serving_pb2.GenerateResponse]:
            yield serving_pb2.GenerateResponse(text="To reset it, ", model_id="mv_live")
            yield serving_pb2.GenerateResponse(
                text="open Settings.",
                model_id="mv_live",
                finish_reason=serving_pb2.FINISH_REASON_STOP,
                usage=serving_pb2.Usage(prompt_tokens=8, completion_tokens=6),
            )

    async def run() -> None:
        server = aio.server()
        # Only Generate is called; the rest stay UNIMPLEMENTED.
        serving_pb2_grpc.add_ServingServiceServicer_to_server(StandIn(), server)  # type: ignore[abstract]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


@contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway was not ready in 120 s:\n{log.read_text()}")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children, alive now."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def measure(
    serving_address: str, gateway_url: str, token: str, gateway_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    grpc_client = GrpcClient(serving_address, token)
    rest_client = SseClient(gateway_url, token)
    grpc_ttft: list[float] = []
    rest_ttft: list[float] = []
    rest_cpu = 0.0
    try:
        # Warm both paths (channels, connections, the gateway's first-call work).
        for _ in range(20):
            await grpc_client.one(PROMPT, RequestRecord(sent=time.perf_counter()))
            await rest_client.one(PROMPT, RequestRecord(sent=time.perf_counter()))
        for round_index in range(args.rounds):
            for _ in range(args.requests):
                record = RequestRecord(sent=time.perf_counter())
                await grpc_client.one(PROMPT, record)
                assert record.first_text is not None
                grpc_ttft.append((record.first_text - record.sent) * 1000)

                before = cpu_seconds(gateway_pid)
                record = RequestRecord(sent=time.perf_counter())
                await rest_client.one(PROMPT, record)
                assert record.first_text is not None
                rest_ttft.append((record.first_text - record.sent) * 1000)
                rest_cpu += cpu_seconds(gateway_pid) - before
            added = [r - g for r, g in zip(rest_ttft, grpc_ttft, strict=True)]
            print(
                f"round {round_index + 1}/{args.rounds}: gRPC {statistics.median(grpc_ttft):.2f} "
                f"ms, REST {statistics.median(rest_ttft):.2f} ms, added "
                f"{statistics.median(added):.2f} ms (median so far)",
                flush=True,
            )
    finally:
        await grpc_client.close()
        await rest_client.close()
    count = len(rest_ttft)
    added = [r - g for r, g in zip(rest_ttft, grpc_ttft, strict=True)]
    return {
        "pairs": count,
        "grpc_ttft_ms": statistics.median(grpc_ttft),
        "rest_ttft_ms": statistics.median(rest_ttft),
        "added_ms": statistics.median(added),
        "added_interval_ms": median_interval(added),
        "cpu_ms_per_request": rest_cpu / count * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="pairs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stand-in-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_in_port:
        serve_stand_in(args.stand_in_port)
        return

    from ownchat.auth import load_or_create_token
    from ownchat.testing import free_port

    with tempfile.TemporaryDirectory(prefix="ownchat-gateway-bench-") as work:
        home = Path(work)
        token = load_or_create_token(home, None)
        serving_port, gateway_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OWNCHAT_")}
        env |= {
            "OWNCHAT_HOME": str(home),
            "OWNCHAT_SERVING_ADDRESS": f"127.0.0.1:{serving_port}",
            "OWNCHAT_GATEWAY_PORT": str(gateway_port),
        }
        url = f"http://127.0.0.1:{gateway_port}"
        stand_in = [sys.executable, __file__, "--stand-in-port", str(serving_port)]
        gateway_log = home / "gateway.log"
        with (
            started(stand_in, env, home / "serving.log"),
            started([sys.executable, "-m", "ownchat_gateway"], env, gateway_log) as gateway,
        ):
            wait_ready(url, gateway, gateway_log)
            figures = asyncio.run(
                measure(f"127.0.0.1:{serving_port}", url, token, gateway.pid, args)
            )

    pairs = figures["pairs"]
    low, high = figures["added_interval_ms"]
    work_note = (
        f"{pairs} streamed requests a path, one at a time, interleaved; a serving stand-in "
        "that answers at once, in its own process; REST read as vllm bench serve reads it"
    )
    metrics = [
        {
            "name": "gateway_ttft_added_ms_median",
            "unit": "ms",
            "higher_is_better": False,
            "ours": round(figures["added_ms"], 2),
            "baseline": None,
            "baseline_name": None,
            "ratio": None,
            "notes": "median over pairs of TTFT through the gateway minus straight gRPC, 95% "
            f"interval [{low:.2f}, {high:.2f}] ms; {work_note}",
        },
        {
            "name": "gateway_ttft_ms_median",
            "unit": "ms",
            "higher_is_better": False,
            "ours": round(figures["rest_ttft_ms"], 2),
            "baseline": round(figures["grpc_ttft_ms"], 2),
            "baseline_name": "grpc-straight-to-serving",
            "ratio": round(figures["rest_ttft_ms"] / figures["grpc_ttft_ms"], 3),
            "notes": work_note,
        },
        {
            "name": "gateway_cpu_ms_per_stream",
            "unit": "ms",
            "higher_is_better": False,
            "ours": round(figures["cpu_ms_per_request"], 2),
            "baseline": None,
            "baseline_name": None,
            "ratio": None,
            "notes": "CPU time (user + system) of the gateway's processes per streamed request",
        },
    ]
    merge_results("gateway", COMMAND, metrics)
    for metric in metrics:
        print(f"{metric['name']}: {metric['ours']} {metric['unit']}")


if __name__ == "__main__":
    main()

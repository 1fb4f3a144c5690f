"""Prometheus metrics every ownchat server exports."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "ownchat_rpc_requests_total",
    "gRPC calls handled, by method and status code.",
    ["method", "code"],
)
RPC_DURATION = Histogram(
    "ownchat_rpc_duration_seconds",
    "Time from a call's arrival to its last response message.",
    ["method"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
)


def serve_metrics(host: str, port: int | None) -> int | None:
    """Starts the metrics endpoint when a port is configured; returns the port."""
    if port is None:
        return None
    server, _ = start_http_server(port, addr=host)
    bound: int = server.server_port
    return bound

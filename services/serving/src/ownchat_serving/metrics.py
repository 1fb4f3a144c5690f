"""Prometheus metrics of serving, beside the per-RPC ones every server exports.

Replies are counted by model version and outcome; their latencies (time to
first token and the engine's part of it, time between tokens) and decoding
speed are histograms; the admission queues show as gauges. GPU memory and
utilisation come from NVML (``gpu``) when a GPU is present.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

REPLIES = Counter(
    "ownchat_serving_replies_total",
    "Generate requests by the model version that took them (empty before one was chosen) "
    "and how they ended: ok, invalid_argument, not_found, failed_precondition, "
    "resource_exhausted, unavailable, deadline_exceeded, cancelled, internal.",
    ["model_id", "outcome"],
)
REPLIES_IN_FLIGHT = Gauge(
    "ownchat_serving_replies_in_flight", "Replies being produced right now, all engines."
)
QUEUE_DEPTH = Gauge(
    "ownchat_serving_queue_depth",
    "Requests waiting for a reply slot, all engines (each engine's queue is bounded).",
)
PROMPT_TOKENS = Counter("ownchat_serving_prompt_tokens_total", "Tokens of rendered prompts.")
COMPLETION_TOKENS = Counter("ownchat_serving_completion_tokens_total", "Tokens generated.")
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TIME_TO_FIRST_TOKEN = Histogram(
    "ownchat_serving_time_to_first_token_seconds",
    "From a Generate request's arrival (queueing included) to its first generated token.",
    buckets=_FIRST_TOKEN_BUCKETS,
)
ENGINE_TIME_TO_FIRST_TOKEN = Histogram(
    "ownchat_serving_engine_time_to_first_token_seconds",
    "From a rendered prompt handed to its engine to the engine's first generated token: "
    "the part of the time to first token that is the engine's, not the service's.",
    buckets=_FIRST_TOKEN_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "ownchat_serving_inter_token_latency_seconds",
    "Time per generated token after the first, one observation per engine step.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
OUTPUT_TOKENS_PER_SECOND = Histogram(
    "ownchat_serving_output_tokens_per_second",
    "A finished reply's decoding speed: its tokens after the first step over the time they took.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
DEPLOY_SECONDS = Histogram(
    "ownchat_serving_deploy_seconds",
    "Time to verify, load and warm a model before it goes live.",
    buckets=(1, 5, 10, 20, 30, 60, 120, 300, 600),
)
ENGINE_RESTARTS = Counter(
    "ownchat_serving_engine_restarts_total",
    "Engines started again after their process died, by model version.",
    ["model_id"],
)


class ReplyMeter:
    """The latency metrics of one reply, fed as its engine steps arrive."""

    def __init__(self, arrived: float) -> None:
        """``arrived``: ``time.perf_counter()`` when the request came in."""
        self._arrived = arrived
        self._submitted = arrived
        self._first: float | None = None
        self._last = arrived
        self._after_first = 0
        self.tokens = 0

    def submitted(self) -> None:
        """The prompt is being handed to the engine now (its slot was waited for)."""
        self._submitted = time.perf_counter()

    def step(self, new_tokens: int) -> None:
        """Records an engine step that produced ``new_tokens`` tokens."""
        if new_tokens <= 0:
            return
        now = time.perf_counter()
        COMPLETION_TOKENS.inc(new_tokens)
        if self._first is None:
            self._first = now
            TIME_TO_FIRST_TOKEN.observe(now - self._arrived)
            ENGINE_TIME_TO_FIRST_TOKEN.observe(now - self._submitted)
        else:
            INTER_TOKEN_LATENCY.observe((now - self._last) / new_tokens)
            self._after_first += new_tokens
        self._last = now
        self.tokens += new_tokens

    def finished(self) -> None:
        """Records the decoding speed of a reply that ran to its end."""
        if self._first is None or not self._after_first or self._last <= self._first:
            return
        OUTPUT_TOKENS_PER_SECOND.observe(self._after_first / (self._last - self._first))

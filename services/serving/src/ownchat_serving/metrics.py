"""Prometheus metrics of serving, beside the per-RPC ones every server exports."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REPLIES_IN_FLIGHT = Gauge(
    "ownchat_serving_replies_in_flight", "Generate streams being produced right now."
)
PROMPT_TOKENS = Counter("ownchat_serving_prompt_tokens_total", "Tokens of rendered prompts.")
COMPLETION_TOKENS = Counter("ownchat_serving_completion_tokens_total", "Tokens generated.")
TIME_TO_FIRST_TEXT = Histogram(
    "ownchat_serving_time_to_first_text_seconds",
    "From a Generate request's arrival to its first text.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEPLOY_SECONDS = Histogram(
    "ownchat_serving_deploy_seconds",
    "Time to verify, load and warm a model before it goes live.",
    buckets=(1, 5, 10, 20, 30, 60, 120, 300, 600),
)

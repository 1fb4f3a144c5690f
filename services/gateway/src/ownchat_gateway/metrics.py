"""The gateway's own Prometheus metrics, beside BentoML's HTTP ones on ``/metrics``.

BentoML runs its workers with ``PROMETHEUS_MULTIPROC_DIR`` set, so counters made
here in any worker are summed on ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter

RATE_LIMITED = Counter(
    "ownchat_gateway_rate_limited_total",
    "Requests refused with 429, by the limit that refused them.",
    ["limit"],
)
TOKENS = Counter(
    "ownchat_gateway_tokens_total",
    "Tokens of the replies served, prompt and completion.",
    ["kind"],
)
CHATS_CAPTURED = Counter(
    "ownchat_gateway_chats_captured_total",
    "Chats asked to be captured, by outcome: stored (scrubbed), or not_scrubbed "
    "(the data service could not scrub them, so nothing was kept).",
    ["outcome"],
)
FEEDBACK = Counter("ownchat_gateway_feedback_total", "Thumbs on replies.", ["rating"])
WEBHOOK_REPLIES = Counter(
    "ownchat_gateway_webhook_replies_total",
    "Replies to chat platforms' messages, by platform and outcome (posted, apology, post_failed).",
    ["platform", "outcome"],
)

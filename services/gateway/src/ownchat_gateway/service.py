"""The gateway as a BentoML service: REST outside, a gRPC client of serving, the
evaluator, the data service and the trainer inside.

Run it with ``python -m ownchat_gateway``; that starts
``bentoml serve ownchat_gateway.service:Gateway``. BentoML provides the HTTP server,
``/livez``, ``/healthz``, ``/readyz`` and ``/metrics`` (all without a token). Four
FastAPI apps are mounted, as in BentoVLLM: the OpenAI-compatible API at ``/v1``,
the admin API (API keys) at ``/admin/v1``, the reviewer page at ``/review`` and the
chat platforms' webhooks (Slack, Telegram) at ``/webhooks``.
BentoML does not serve gRPC for new-style services, hence the REST edge.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import bentoml

from ownchat.auth import load_or_create_token
from ownchat.config import ClientSettings
from ownchat.logs import JsonFormatter
from ownchat_gateway.admin import create_admin_app
from ownchat_gateway.app import create_app
from ownchat_gateway.config import GatewaySettings, tracing_config
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.feedback.loop import FeedbackLoop
from ownchat_gateway.feedback.settings import CaptureSettings
from ownchat_gateway.feedback.store import CaptureStore
from ownchat_gateway.keys import KeyStore
from ownchat_gateway.limits import UsageStore
from ownchat_gateway.review import create_review_app
from ownchat_gateway.upstream import (
    DataUpstream,
    EvaluatorUpstream,
    ServingUpstream,
    TrainerUpstream,
)
from ownchat_gateway.webhooks.app import create_webhooks_app
from ownchat_gateway.webhooks.settings import WebhookSettings

# Read at import so that BentoML's own limits follow the gateway's settings; the
# server process and its workers see the same environment and config file.
SETTINGS = GatewaySettings()
openai_app = create_app(SETTINGS)
admin_app = create_admin_app(SETTINGS)
review_app = create_review_app(SETTINGS)
webhooks_app = create_webhooks_app(SETTINGS, WebhookSettings())

# BentoML answers 504 itself when a response has not started within its traffic
# timeout; leave the gateway's own deadline room to answer first, in OpenAI's shape.
_TRAFFIC_TIMEOUT_MARGIN_SECONDS = 30.0


def _use_json_logs(level: str) -> None:
    """Turns BentoML's text logs in this worker into JSON lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter("gateway"))
    for name in ("", "bentoml", "uvicorn.error", "circus"):
        logging.getLogger(name).handlers[:] = [handler]
    logging.getLogger().setLevel(level.upper())
    # bentoml.access already logs each request; uvicorn's line would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _exit_when_orphaned(parent: int, period_seconds: float = 1.0) -> None:
    """Stops this worker when BentoML's supervisor is gone.

    Workers run in their own session, so a supervisor killed outright (SIGKILL)
    would leave them serving; they notice and drain instead.
    """
    while os.getppid() == parent:
        time.sleep(period_seconds)
    os.kill(os.getpid(), signal.SIGTERM)


@bentoml.asgi_app(openai_app, path="/v1")
@bentoml.asgi_app(admin_app, path="/admin/v1")
@bentoml.asgi_app(review_app, path="/review")
@bentoml.asgi_app(webhooks_app, path="/webhooks")
@bentoml.service(
    name="ownchat-gateway",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.request_timeout_seconds + _TRAFFIC_TIMEOUT_MARGIN_SECONDS},
    tracing=tracing_config(SETTINGS),
)
class Gateway:
    """One gateway worker: the credentials it accepts and the channels behind it."""

    def __init__(self) -> None:
        if SETTINGS.json_logs:
            _use_json_logs(SETTINGS.log_level)
        threading.Thread(
            target=_exit_when_orphaned, args=(os.getppid(),), name="orphan-watch", daemon=True
        ).start()
        client = ClientSettings()
        token = load_or_create_token(SETTINGS.home, SETTINGS.token)
        # gateway.db (or the database_url's database): the keys and the counters.
        database = SETTINGS.store_location("gateway", "gateway")
        data = DataUpstream(client, token)
        evaluator = EvaluatorUpstream(client, token)
        self.context = GatewayContext(
            settings=SETTINGS,
            token=token,
            upstream=ServingUpstream(client, token, SETTINGS.request_timeout_seconds),
            evaluator=evaluator,
            # Every worker opens the one database; SQLite's WAL lets them share
            # the file, and the rate limits' counters with it.
            keys=KeyStore(database),
            usage=UsageStore(database),
            data=data,
            trainer=TrainerUpstream(client, token),
            # Captured chats, scrubbed, in a file of their own (see feedback.store).
            feedback=FeedbackLoop(
                CaptureStore(SETTINGS.store_location("gateway", "captured")),
                data,
                evaluator,
                CaptureSettings(enabled=SETTINGS.capture_conversations),
            ),
        )
        for app in (openai_app, admin_app, review_app, webhooks_app):
            app.state.context = self.context
        logging.getLogger("ownchat.gateway").info(
            "gateway ready",
            extra={
                "serving_address": client.serving_address,
                "evaluator_address": client.evaluator_address,
            },
        )

    @bentoml.on_shutdown
    async def close(self) -> None:
        """Posts the chat replies being written, then closes the channels, the key
        store and the counters."""
        await webhooks_app.state.webhooks.close()
        await self.context.close()

"""Server-sent events as an ASGI response that stops its source when the client goes.

Starlette's ``StreamingResponse`` listens for the client going away through an
anyio task group (a task for the body, one for ``receive`` and their cancel
scopes) on servers that speak ASGI before 2.4, uvicorn among them: on a stream of
a few short events, the largest single cost of the gateway's time to first
token. Here the body is written from the request's own task, and one plain task
waits for ``http.disconnect`` and calls ``stop`` (the upstream call's cancel),
which ends the body's iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Send
from starlette.types import Scope as ASGIScope

# Proxies must pass each event on as it comes rather than buffer the body.
SSE_HEADERS: dict[str, Any] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` of ``bodies``; ``stop`` is called if the client goes first.

    ``stop`` must make the iteration of ``bodies`` end or raise
    ``asyncio.CancelledError`` (a grpc.aio call's ``cancel`` does).
    """

    def __init__(self, bodies: AsyncGenerator[bytes, None], stop: Callable[[], object]) -> None:
        super().__init__(bodies, media_type="text/event-stream", headers=SSE_HEADERS)
        self._bodies = bodies
        self._stop = stop

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            self._stop()

        watcher = asyncio.create_task(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for body in self._bodies:
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # The source ended because ``stop`` cancelled it, not this task.
            current = asyncio.current_task()
            if not gone.is_set() or (current is not None and current.cancelling()):
                raise
        except OSError:
            # A server of ASGI 2.4 or later raises on writing to a client that is gone.
            self._stop()
            raise ClientDisconnect() from None
        finally:
            watcher.cancel()
            await self._bodies.aclose()

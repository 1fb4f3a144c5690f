"""EventStreamResponse on its own: what it writes, and how it stops its source when
the client goes (a disconnect message, or a send that fails on ASGI 2.4 servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from ownchat_gateway.event_stream import EventStreamResponse

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"spec_version": "2.3"}}


class Source:
    """Events until told to stop; then its wait raises CancelledError, as a
    cancelled grpc.aio call's iteration does."""

    def __init__(self, events: list[bytes], then_wait: bool = False) -> None:
        self.events = events
        self.then_wait = then_wait
        self.stopped = asyncio.Event()
        self.closed = False

    def stop(self) -> None:
        self.stopped.set()

    async def bodies(self) -> AsyncGenerator[bytes, None]:
        try:
            for event in self.events:
                yield event
            if self.then_wait:
                await self.stopped.wait()
                raise asyncio.CancelledError
        finally:
            self.closed = True


def test_writes_each_body_then_ends() -> None:
    async def run() -> list[dict[str, Any]]:
        source = Source([b"data: 1\n\n", b"data: [DONE]\n\n"])
        sent: list[dict[str, Any]] = []
        complete = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await complete.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if not message.get("more_body", True):
                complete.set()

        await EventStreamResponse(source.bodies(), source.stop)(SCOPE, receive, send)
        assert source.closed
        assert not source.stopped.is_set()
        return sent

    sent = asyncio.run(run())
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache"
    assert b"content-length" not in headers
    assert [m["body"] for m in sent[1:]] == [b"data: 1\n\n", b"data: [DONE]\n\n", b""]
    assert sent[-1]["more_body"] is False


def test_client_gone_stops_the_source_and_ends_quietly() -> None:
    async def run() -> None:
        source = Source([b"data: 1\n\n"], then_wait=True)
        first_written = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await first_written.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                first_written.set()

        await asyncio.wait_for(
            EventStreamResponse(source.bodies(), source.stop)(SCOPE, receive, send), 5
        )
        assert source.stopped.is_set()
        assert source.closed

    asyncio.run(run())


def test_a_failed_send_stops_the_source() -> None:
    async def run() -> None:
        source = Source([b"data: 1\n\n"], then_wait=True)

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("connection reset")

        with pytest.raises(ClientDisconnect):
            await EventStreamResponse(source.bodies(), source.stop)(SCOPE, receive, send)
        assert source.stopped.is_set()
        assert source.closed

    asyncio.run(run())


def test_cancelling_the_request_is_not_swallowed() -> None:
    async def run() -> None:
        source = Source([], then_wait=True)

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            return None

        task = asyncio.create_task(
            EventStreamResponse(source.bodies(), source.stop)(SCOPE, receive, send)
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert source.closed

    asyncio.run(run())

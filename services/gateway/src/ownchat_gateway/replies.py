"""A Generate call answered as OpenAI answers: whole, or as server-sent events.

Shared by chat and text completions: each gives its reply builder (which turns
serving's messages into OpenAI's chunks) and how a chunk is written as an event.
The first message from serving is awaited before a stream is answered, so that an
error at the start (unknown model, bad argument) still gets its HTTP status; a
later error can only be sent as an ``error`` event. A client that goes away
cancels the call, so the engine stops generating.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

import grpc
from fastapi.responses import Response

from ownchat.serving.v1 import serving_pb2
from ownchat_gateway.errors import bad_gateway, from_rpc_error
from ownchat_gateway.event_stream import EventStreamResponse
from ownchat_gateway.translate import DONE_EVENT, IncompleteReplyError, sse_event
from ownchat_gateway.upstream import GenerateCall

ChunkT = TypeVar("ChunkT")

# Called once a reply is whole, with when it started (time.perf_counter()).
Finished = Callable[[float], None]


class Builder(Protocol[ChunkT]):
    """Follows a Generate stream (ReplyBuilder, TextReplyBuilder)."""

    include_usage: bool

    def add(self, response: serving_pb2.GenerateResponse) -> list[ChunkT]: ...

    def check_finished(self) -> None: ...


class Reply(Generic[ChunkT]):
    """One Generate call and the builder that follows it."""

    def __init__(
        self, call: GenerateCall, builder: Builder[ChunkT], request_id: str, finished: Finished
    ) -> None:
        self._call = call
        self._builder = builder
        self._request_id = request_id
        self._finished = finished

    async def collect(self) -> None:
        """Reads the whole reply into the builder; OpenAI-shaped errors on failure."""
        started = time.perf_counter()
        try:
            async for response in self._call:
                self._builder.add(response)
            self._builder.check_finished()
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._request_id) from None
        except IncompleteReplyError:
            raise bad_gateway(self._request_id) from None
        finally:
            self._call.cancel()
        self._finished(started)

    async def stream(self, event: Callable[[ChunkT, bool], str]) -> Response:
        """Server-sent events of the reply, each chunk written by ``event``."""
        responses = self._call.__aiter__()
        started = time.perf_counter()
        try:
            first: serving_pb2.GenerateResponse = await anext(responses)
        except StopAsyncIteration:
            raise bad_gateway(self._request_id) from None
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._request_id) from None
        builder, request_id = self._builder, self._request_id

        def events_of(response: serving_pb2.GenerateResponse) -> bytes:
            # One body write per serving message: serving coalesces an engine
            # step into a message, and each write crosses every ASGI layer.
            chunks = builder.add(response)
            return "".join(event(chunk, builder.include_usage) for chunk in chunks).encode()

        async def bodies() -> AsyncGenerator[bytes, None]:
            try:
                yield events_of(first)
                async for response in responses:
                    yield events_of(response)
                builder.check_finished()
                self._finished(started)
            except grpc.RpcError as error:
                yield sse_event(from_rpc_error(error, request_id).body()).encode()
            except IncompleteReplyError:
                yield sse_event(bad_gateway(request_id).body()).encode()
            finally:
                self._call.cancel()
            yield DONE_EVENT.encode()

        return EventStreamResponse(bodies(), self._call.cancel)

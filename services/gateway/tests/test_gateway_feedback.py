"""The feedback loop against the real data service (scrubbing) and the real evaluator's
review queue, both on loopback gRPC servers: what is stored and enqueued is scrubbed,
a thumbs-down goes to review first, and nothing is kept when scrubbing fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent import futures
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from ownchat.config import ClientSettings
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat_gateway.app import create_app
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.feedback.loop import THUMBS_DOWN_PRIORITY, FeedbackLoop
from ownchat_gateway.feedback.settings import CaptureSettings
from ownchat_gateway.feedback.store import CaptureStore, Rating
from ownchat_gateway.keys import KeyStore
from ownchat_gateway.limits import UsageStore
from ownchat_gateway.upstream import DataUpstream, EvaluatorUpstream, ServingUpstream

TOKEN = "gateway-test-token"  # the conftest's evaluator checks this one
AUTH = [("authorization", f"Bearer {TOKEN}")]
EMAIL = "ann.smith@example.org"
T = TypeVar("T")


def _free_address() -> str:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.stop(None)
    return f"127.0.0.1:{port}"


def _run(
    tmp_path: Path,
    store: CaptureStore,
    data: str,
    evaluator: str,
    work: Callable[[FeedbackLoop], Awaitable[T]],
) -> T:
    """Runs ``work`` with a loop over fresh clients (grpc.aio channels belong to one loop)."""
    client = ClientSettings(
        home=tmp_path,
        token=TOKEN,
        data_address=data,
        evaluator_address=evaluator,
        timeout_seconds=10,
    )

    async def main() -> T:
        scrubber, queue = DataUpstream(client, TOKEN), EvaluatorUpstream(client, TOKEN)
        try:
            return await work(FeedbackLoop(store, scrubber, queue))
        finally:
            await scrubber.close()
            await queue.close()

    return asyncio.run(main())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CaptureStore]:
    capture_store = CaptureStore(tmp_path / "gateway" / "captured.db")
    yield capture_store
    capture_store.close()


CONVERSATION = (
    ("system", "You are the support bot."),
    ("user", f"I am Ann, write to {EMAIL} about order 4411."),
)
REPLY = f"Sure, I will email {EMAIL} today."


def _next(evaluator: Any) -> evaluator_pb2.ReviewItem:
    response = evaluator.stub.NextReviewItem(
        evaluator_pb2.NextReviewItemRequest(reviewer="reviewer-1"), metadata=AUTH
    )
    return response.item


def test_gateway_capture_stores_and_enqueues_only_scrubbed_text(
    tmp_path: Path, data_address: str, evaluator: Any, store: CaptureStore
) -> None:
    async def work(loop: FeedbackLoop) -> object:
        return await loop.capture(
            response_id="chatcmpl-1",
            model_id="mv_live",
            key_id="ak_1",
            messages=CONVERSATION,
            reply=REPLY,
            request_id="req-1",
        )

    chat = _run(tmp_path, store, data_address, evaluator.address, work)
    assert chat is not None
    kept = store.chat("chatcmpl-1")
    assert kept is not None and kept.review_item_id
    stored_text = " ".join(text for _, text in kept.messages) + kept.reply
    assert EMAIL not in stored_text and "order 4411" in stored_text
    # One placeholder scope: the address has the same placeholder in the question and reply.
    placeholder = kept.reply.split("email ")[1].split(" today")[0]
    assert placeholder in kept.messages[1][1]
    item = _next(evaluator)
    assert item.id == kept.review_item_id
    assert item.kind == evaluator_pb2.REVIEW_KIND_RATING
    assert EMAIL not in item.reply_a and all(EMAIL not in m.content for m in item.context)
    assert [m.content for m in item.context] == [text for _, text in kept.messages]


def test_gateway_thumbs_down_goes_to_review_first(
    tmp_path: Path, data_address: str, evaluator: Any, store: CaptureStore
) -> None:
    async def work(loop: FeedbackLoop) -> tuple[object, ...]:
        for n in (1, 2):
            await loop.capture(
                response_id=f"chatcmpl-{n}",
                model_id="mv_live",
                key_id="ak_1",
                messages=CONVERSATION,
                reply=f"reply {n}",
                request_id=f"req-{n}",
            )
        down = await loop.feedback(
            response_id="chatcmpl-2",
            rating=Rating.DOWN,
            comment=f"wrong, and do not email {EMAIL}",
            key_id="ak_2",
            request_id="req-3",
        )
        up = await loop.feedback(
            response_id="chatcmpl-1",
            rating=Rating.UP,
            comment="",
            key_id="ak_2",
            request_id="req-4",
        )
        stranger = await loop.feedback(
            response_id="chatcmpl-never",
            rating=Rating.DOWN,
            comment="",
            key_id="ak_2",
            request_id="req-5",
        )
        return down, up, stranger

    down, up, stranger = _run(tmp_path, store, data_address, evaluator.address, work)
    (down_feedback, down_captured) = down
    assert down_captured and down_feedback.review_item_id
    assert EMAIL not in down_feedback.comment and "wrong" in down_feedback.comment
    assert up[1] and not up[0].review_item_id
    assert stranger[1] is False and not stranger[0].review_item_id
    assert [f.rating for f in store.feedback("chatcmpl-2")] == [Rating.DOWN]
    # Enqueued after two rating items, the correction is offered first.
    first = _next(evaluator)
    assert first.id == down_feedback.review_item_id
    assert first.kind == evaluator_pb2.REVIEW_KIND_CORRECTION
    assert first.reply_a == "reply 2"


def test_gateway_capture_keeps_nothing_when_scrubbing_fails(
    tmp_path: Path, evaluator: Any, store: CaptureStore
) -> None:
    async def work(loop: FeedbackLoop) -> object:
        return await loop.capture(
            response_id="chatcmpl-9",
            model_id="mv_live",
            key_id="ak_1",
            messages=CONVERSATION,
            reply=REPLY,
            request_id="req-9",
        )

    # No data service listens there.
    assert _run(tmp_path, store, _free_address(), evaluator.address, work) is None
    assert store.chat("chatcmpl-9") is None
    assert not _next(evaluator).id

    async def comment(loop: FeedbackLoop) -> object:
        return await loop.feedback(
            response_id="chatcmpl-9",
            rating=Rating.DOWN,
            comment=f"mail {EMAIL}",
            key_id="ak_1",
            request_id="req-10",
        )

    with pytest.raises(grpc.RpcError):
        _run(tmp_path, store, _free_address(), evaluator.address, comment)
    assert store.feedback("chatcmpl-9") == []


def test_gateway_thumbs_down_priority_is_above_the_default() -> None:
    assert THUMBS_DOWN_PRIORITY > 0


# --- through the /v1 app, with the official openai client --------------------------------


@pytest.fixture
def captured_v1(
    tmp_path: Path,
    data_address: str,
    evaluator: Any,
    echo_serving: Any,
    serve_app: Callable[[Starlette], AbstractContextManager[str]],
) -> Iterator[tuple[str, CaptureStore]]:
    """The /v1 app over the echo serving, the real data service and evaluator, capturing
    by default (``capture_conversations``)."""
    home = tmp_path / "home"
    settings = GatewaySettings(home=home, token=TOKEN, capture_conversations=True)
    client = ClientSettings(
        home=home,
        token=TOKEN,
        serving_address=echo_serving.address,
        data_address=data_address,
        evaluator_address=evaluator.address,
        timeout_seconds=10,
    )
    capture_store = CaptureStore(home / "gateway" / "captured.db")
    data, queue = DataUpstream(client, TOKEN), EvaluatorUpstream(client, TOKEN)
    context = GatewayContext(
        settings=settings,
        token=TOKEN,
        upstream=ServingUpstream(client, TOKEN, 30),
        evaluator=queue,
        keys=KeyStore(home / "gateway" / "gateway.db"),
        usage=UsageStore(home / "gateway" / "gateway.db"),
        data=data,
        feedback=FeedbackLoop(
            capture_store, data, queue, CaptureSettings(enabled=settings.capture_conversations)
        ),
    )
    app = create_app(settings)
    app.state.context = context

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await context.close()

    with serve_app(Starlette(routes=[Mount("/v1", app=app)], lifespan=lifespan)) as url:
        yield url, capture_store


def _wait_captured(store: CaptureStore, response_id: str) -> Any:
    deadline = time.monotonic() + 20
    while (chat := store.chat(response_id)) is None:
        assert time.monotonic() < deadline, f"{response_id} was not captured"
        time.sleep(0.05)
    return chat


def test_gateway_chats_are_captured_and_thumbs_down_reaches_review(
    captured_v1: tuple[str, CaptureStore], evaluator: Any
) -> None:
    url, store = captured_v1
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    question = f"My email is {EMAIL}, where is order 4411?"
    whole = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": question}]
    )
    chat = _wait_captured(store, whole.id)
    assert EMAIL not in chat.messages[0][1] and "order 4411" in chat.messages[0][1]
    assert chat.reply.startswith("Answer: ") and EMAIL not in chat.reply
    assert chat.model_id == "mv_live"

    pieces = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "streamed?"}], stream=True
    )
    streamed_id = {chunk.id for chunk in pieces}.pop()
    assert _wait_captured(store, streamed_id).reply == "Answer: streamed?"

    # store=false is honoured even where the gateway captures by default.
    private = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "off the record"}], store=False
    )

    response = httpx.post(
        f"{url}/v1/feedback",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"response_id": whole.id, "rating": "down", "comment": f"reply to {EMAIL}"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["captured"] is True and answer["review_item_id"]
    assert answer["object"] == "chat.completion.feedback" and answer["rating"] == "down"
    (kept,) = store.feedback(whole.id)
    assert EMAIL not in kept.comment
    first = _next(evaluator)
    assert first.id == answer["review_item_id"]
    assert first.kind == evaluator_pb2.REVIEW_KIND_CORRECTION
    time.sleep(0.5)
    assert store.chat(private.id) is None


def test_gateway_feedback_bad_input(captured_v1: tuple[str, CaptureStore]) -> None:
    url, _ = captured_v1
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for body in (
        {"response_id": "chatcmpl-x", "rating": "meh"},
        {"response_id": "", "rating": "up"},
        {"response_id": "chatcmpl-x", "rating": "up", "comment": "x" * 2001},
        {"rating": "up"},
    ):
        response = httpx.post(f"{url}/v1/feedback", headers=auth, json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
    anonymous = httpx.post(f"{url}/v1/feedback", json={"response_id": "a", "rating": "up"})
    assert anonymous.status_code == 401
    # A thumb on a reply that was not captured is kept, and says so.
    response = httpx.post(
        f"{url}/v1/feedback", headers=auth, json={"response_id": "chatcmpl-none", "rating": "up"}
    )
    assert response.status_code == 200
    assert response.json()["captured"] is False and response.json()["review_item_id"] is None

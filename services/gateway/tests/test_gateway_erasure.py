"""Right to erasure in the captured chats: the store on SQLite and PostgreSQL deletes
exactly the chats and feedback holding a value (the data service's rule: anywhere,
any case), and ``POST /admin/v1/captured-chats:erase`` answers in protobuf JSON to
admins only, refusing values too short to erase safely."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format

from ownchat import database
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.gateway.v1 import gateway_pb2
from ownchat.postgres import store_file_bytes
from ownchat_gateway.admin import create_admin_app
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.feedback.loop import FeedbackLoop
from ownchat_gateway.feedback.store import CapturedChat, CaptureStore, ErasedCaptures, Rating
from ownchat_gateway.keys import Scope

NewKey = Callable[..., tuple[str, str]]
ERASE = "/admin/v1/captured-chats:erase"
# As asked; the chats spell them in other cases, one outside ASCII.
VALUES = ("José Smith", "ann.smith@example.org")
RESPONSE_IDS = ("chatcmpl-a", "chatcmpl-b", "chatcmpl-c", "chatcmpl-d")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _chat(response_id: str, question: str, reply: str, review_item_id: str) -> CapturedChat:
    return CapturedChat(
        response_id=response_id,
        model_id="mv_live",
        key_id="ak_1",
        messages=(("system", "Be brief."), ("user", question)),
        reply=reply,
        create_time=1_700_000_000.0,
        review_item_id=review_item_id,
    )


def _fill(store: CaptureStore) -> None:
    """a: a value in a user message; b: one in the reply; c: clean, but a thumb's
    comment holds one; d: clean, and so is its thumb."""
    store.add_chat(_chat("chatcmpl-a", "Hi, I am JOSÉ SMITH.", "Hello.", "ri_a"))
    store.add_feedback("chatcmpl-a", Rating.DOWN, "too short", "ak_1", "ri_a_down")
    store.add_feedback("chatcmpl-a", Rating.UP, "", "ak_1")
    # Not taken by the review queue: no item id to report.
    store.add_chat(_chat("chatcmpl-b", "Who is on call?", "Ask Ann.Smith@Example.ORG.", ""))
    store.add_chat(_chat("chatcmpl-c", "What is 2 + 2?", "4.", "ri_c"))
    store.add_feedback("chatcmpl-c", Rating.DOWN, "mail ANN.SMITH@example.org", "ak_2", "ri_c_down")
    store.add_feedback("chatcmpl-c", Rating.UP, "right", "ak_2")
    store.add_chat(_chat("chatcmpl-d", "Name a colour.", "Blue.", "ri_d"))
    store.add_feedback("chatcmpl-d", Rating.UP, "nice", "ak_3")


def _texts(store: CaptureStore, response_ids: Sequence[str]) -> list[str]:
    """Every text the store keeps for these replies."""
    texts: list[str] = []
    for response_id in response_ids:
        chat = store.chat(response_id)
        if chat is not None:
            texts += [content for _, content in chat.messages] + [chat.reply]
        texts += [feedback.comment for feedback in store.feedback(response_id)]
    return texts


@pytest.fixture
def store(store_location: Path | str) -> Iterator[CaptureStore]:
    capture_store = CaptureStore(store_location)
    yield capture_store
    capture_store.close()


def test_gateway_erase_deletes_exactly_what_holds_a_value(store: CaptureStore) -> None:
    _fill(store)
    erased = store.erase(VALUES)
    assert erased == ErasedCaptures(
        response_ids=("chatcmpl-a", "chatcmpl-b"),
        feedback=3,  # both thumbs on a, and the one on c whose comment holds the address
        review_item_ids=("ri_a", "ri_a_down", "ri_c_down"),
    )
    assert store.chat("chatcmpl-a") is None and store.chat("chatcmpl-b") is None
    assert store.feedback("chatcmpl-a") == []
    # c stays with its clean thumb; d untouched.
    assert store.chat("chatcmpl-c") is not None
    assert [f.comment for f in store.feedback("chatcmpl-c")] == ["right"]
    assert store.chat("chatcmpl-d") is not None
    assert [f.comment for f in store.feedback("chatcmpl-d")] == ["nice"]
    folded = [value.casefold() for value in VALUES]
    assert not [t for t in _texts(store, RESPONSE_IDS) if any(v in t.casefold() for v in folded)]
    # Nothing left to erase: a second run deletes nothing.
    assert store.erase(VALUES) == ErasedCaptures((), 0, ())


def test_gateway_erase_leaves_nothing_in_the_store_files(store_location: Path | str) -> None:
    """While the gateway runs (its store open), the erased chats are neither in the
    SQLite file's free pages nor in its log's older frames, nor in PostgreSQL's
    tables' and indexes' pages."""
    store = CaptureStore(store_location)
    try:
        _fill(store)

        def stored() -> bytes:
            return store_file_bytes(store_location).lower()

        # Messages are stored as JSON, which escapes the É: its ASCII neighbours are found.
        assert b"i am jos" in stored() and b"ann.smith@example.org" in stored()
        store.erase(VALUES)
        assert b"i am jos" not in stored()
        assert b"ann.smith@example.org" not in stored()
        assert b"name a colour." in stored()  # what no value held is kept
    finally:
        store.close()


def test_gateway_erase_pages_through_every_row(
    store: CaptureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of two: the rows deleted from a page must not hide the next page's.
    monkeypatch.setattr(database, "BATCH_ROWS", 2)
    for number in range(7):
        reply = "Ask José Smith." if number % 2 == 0 else "No."
        store.add_chat(_chat(f"chatcmpl-{number}", "Who?", reply, f"ri_{number}"))
        store.add_feedback(f"chatcmpl-{number}", Rating.UP, "", "ak_1")
    store.add_feedback("chatcmpl-1", Rating.DOWN, "josé smith again", "ak_1")
    erased = store.erase(["josé smith"])
    assert erased.response_ids == ("chatcmpl-0", "chatcmpl-2", "chatcmpl-4", "chatcmpl-6")
    assert erased.feedback == 5
    assert erased.review_item_ids == ("ri_0", "ri_2", "ri_4", "ri_6")
    assert [f.comment for f in store.feedback("chatcmpl-1")] == [""]


def test_gateway_erase_refuses_short_values(store: CaptureStore) -> None:
    _fill(store)
    # "" would hold in every text.
    for values in ([""], ["ok"], ["José Smith", " a "]):
        with pytest.raises(ValueError, match="3 characters"):
            store.erase(values)
    assert all(store.chat(response_id) is not None for response_id in RESPONSE_IDS)


class _Unused:
    """The capture's scrubber and review queue, which an erasure never calls."""

    async def scrub_texts(self, texts: Sequence[str], request_id: str) -> list[str]:
        raise AssertionError("an erasure scrubbed")

    async def enqueue_review_item(self, item: evaluator_pb2.ReviewItem, request_id: str) -> str:
        raise AssertionError("an erasure enqueued")


@pytest.fixture
def captured(context: GatewayContext, tmp_path: Path) -> CaptureStore:
    """The context's capture store (SQLite), filled; the context closes it."""
    capture_store = CaptureStore(tmp_path / "home" / "gateway" / "captured.db")
    _fill(capture_store)
    context.feedback = FeedbackLoop(capture_store, _Unused(), _Unused())
    return capture_store


def test_gateway_admin_erases_captured_chats(
    http: TestClient, context: GatewayContext, captured: CaptureStore, new_key: NewKey
) -> None:
    _, secret = new_key(context, "ops", Scope.ADMIN)
    response = http.post(ERASE, json={"values": list(VALUES)}, headers=bearer(secret))
    assert response.status_code == 200
    # protobuf JSON: lowerCamelCase names, int64 as a string.
    assert response.json() == {
        "erasedResponseIds": ["chatcmpl-a", "chatcmpl-b"],
        "erasedFeedback": "3",
        "reviewItemIds": ["ri_a", "ri_a_down", "ri_c_down"],
    }
    answer = json_format.ParseDict(response.json(), gateway_pb2.EraseCapturedChatsResponse())
    assert answer.erased_feedback == 3
    assert captured.chat("chatcmpl-a") is None and captured.chat("chatcmpl-d") is not None


def test_gateway_erase_needs_the_admin_scope(
    http: TestClient, context: GatewayContext, captured: CaptureStore, new_key: NewKey
) -> None:
    _, secret = new_key(context, "reviewer", Scope.CHAT, Scope.REVIEW, Scope.FINE_TUNE)
    response = http.post(ERASE, json={"values": list(VALUES)}, headers=bearer(secret))
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert http.post(ERASE, json={"values": list(VALUES)}).status_code == 401
    assert captured.chat("chatcmpl-a") is not None


@pytest.mark.parametrize(
    "body", [{"values": ["ab"]}, {"values": ["José Smith", "  a  "]}, {"values": []}, {}, None]
)
def test_gateway_erase_refuses_missing_or_short_values(
    http: TestClient, token: str, captured: CaptureStore, body: object
) -> None:
    response = http.post(ERASE, json=body, headers=bearer(token))
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "values",
        "invalid_request",
    )
    assert "values" in error["message"]
    assert all(captured.chat(response_id) is not None for response_id in RESPONSE_IDS)


def test_gateway_erase_without_capture_store_erases_nothing(
    http: TestClient, context: GatewayContext, token: str
) -> None:
    assert context.feedback is None
    response = http.post(ERASE, json={"values": list(VALUES)}, headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"erasedResponseIds": [], "erasedFeedback": "0", "reviewItemIds": []}


def test_gateway_erase_is_in_the_admin_openapi_document(context: GatewayContext) -> None:
    with TestClient(create_admin_app(context.settings)) as client:
        document = client.get("/openapi.json").json()
    operation = document["paths"]["/captured-chats:erase"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["values"]
    assert schema["properties"]["values"]["items"]["minLength"] == 3
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(answer["properties"]) == {"erasedResponseIds", "erasedFeedback", "reviewItemIds"}

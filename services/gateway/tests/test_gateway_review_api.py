"""The reviewer page's JSON API over HTTP against the real evaluator's review queue:
the key's id as reviewer, blind pairwise items, skips, expired leases, progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ownchat.common.v1 import common_pb2
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.keys import Scope

NewKey = Callable[..., tuple[str, str]]
USER = common_pb2.ROLE_USER
LEASE_SECONDS = 600.0  # the evaluator fixture's lease


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def rating_item(question: str, reply: str = "a reply") -> evaluator_pb2.ReviewItem:
    return evaluator_pb2.ReviewItem(
        kind=evaluator_pb2.REVIEW_KIND_RATING,
        context=[common_pb2.ChatMessage(role=USER, content=question)],
        reply_a=reply,
        source="eval_run_secret_source",
        model_id_a="mv_rated",
    )


def pair_item(question: str) -> evaluator_pb2.ReviewItem:
    return evaluator_pb2.ReviewItem(
        kind=evaluator_pb2.REVIEW_KIND_PAIRWISE,
        context=[
            common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="be kind"),
            common_pb2.ChatMessage(role=USER, content=question),
        ],
        reply_a="reply of the candidate",
        reply_b="reply of the baseline",
        model_id_a="mv_candidate",
        model_id_b="mv_baseline",
        source="eval_run_secret_source",
    )


def enqueue(evaluator: Any, token: str, *items: evaluator_pb2.ReviewItem) -> list[str]:
    response = evaluator.stub.EnqueueReviewItems(
        evaluator_pb2.EnqueueReviewItemsRequest(items=items),
        metadata=[("authorization", f"Bearer {token}")],
    )
    return list(response.item_ids)


def reviews_of(evaluator: Any, token: str, reviewer: str = "") -> list[evaluator_pb2.Review]:
    return list(
        evaluator.stub.ListReviews(
            evaluator_pb2.ListReviewsRequest(reviewer=reviewer),
            metadata=[("authorization", f"Bearer {token}")],
        ).reviews
    )


@pytest.fixture
def ann(review_context: GatewayContext, new_key: NewKey) -> tuple[str, dict[str, str]]:
    key_id, secret = new_key(review_context, "Ann Reviewer", Scope.REVIEW)
    return key_id, bearer(secret)


def test_gateway_review_me_names_the_key(
    review_http: TestClient,
    review_context: GatewayContext,
    new_key: NewKey,
    ann: tuple[str, dict[str, str]],
    token: str,
) -> None:
    key_id, headers = ann
    assert review_http.get("/review/api/me", headers=headers).json() == {
        "reviewer": key_id,
        "name": "Ann Reviewer",
    }
    assert review_http.get("/review/api/me", headers=bearer(token)).json() == {
        "reviewer": "operator",
        "name": "operator",
    }
    _, admin = new_key(review_context, "root", Scope.ADMIN)
    assert review_http.get("/review/api/me", headers=bearer(admin)).status_code == 200
    _, chat = new_key(review_context, "bot", Scope.CHAT)
    refused = review_http.post("/review/api/next", json={}, headers=bearer(chat))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "insufficient_scope")
    assert "'review'" in refused.json()["error"]["message"]
    assert review_http.get("/review/api/progress").status_code == 401


def test_gateway_review_page_is_public_and_locked_down(review_http: TestClient) -> None:
    page = review_http.get("/review/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="review.js"' in page.text and "http" not in page.text.lower()
    script = review_http.get("/review/review.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text and "textContent" in script.text
    assert review_http.get("/review/review.css").status_code == 200
    missing = review_http.get("/review/other.js")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


def test_gateway_review_rating_is_stored_under_the_key_id(
    review_http: TestClient, evaluator: Any, token: str, ann: tuple[str, dict[str, str]]
) -> None:
    key_id, headers = ann
    (item_id,) = enqueue(evaluator, token, rating_item("How do I reset it?", "<b>Hold</b> it"))
    assert review_http.get("/review/api/progress", headers=headers).json()["left"] == 1

    answer = review_http.post("/review/api/next", json={"kind": None}, headers=headers)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    item = answer.json()["item"]
    assert item["id"] == item_id and item["kind"] == "rating"
    assert item["context"] == [{"role": "user", "content": "How do I reset it?"}]
    assert item["reply"] == "<b>Hold</b> it"
    assert item["lease_expire_time"].endswith("Z")
    assert "mv_rated" not in answer.text and "secret_source" not in answer.text

    submitted = review_http.post(
        f"/review/api/items/{item_id}/review",
        json={"rating": 4, "tags": [" helpful ", "", "short"]},
        headers=headers,
    )
    assert submitted.status_code == 200
    (review,) = reviews_of(evaluator, token)
    assert (review.id, review.reviewer, review.item_id) == (
        submitted.json()["review_id"],
        key_id,
        item_id,
    )
    assert (review.rating, list(review.tags)) == (4, ["helpful", "short"])

    progress = review_http.get("/review/api/progress", headers=headers).json()
    assert (progress["done"], progress["left"]) == (1, 0)
    assert progress["kinds"]["rating"]["done"] == 1
    assert review_http.post("/review/api/next", headers=headers).json() == {"item": None}


def test_gateway_review_pairwise_is_blind(
    review_http: TestClient, evaluator: Any, token: str, ann: tuple[str, dict[str, str]]
) -> None:
    key_id, headers = ann
    (item_id,) = enqueue(evaluator, token, pair_item("Which plan?"))
    answer = review_http.post("/review/api/next", json={"kind": "pairwise"}, headers=headers)
    item = answer.json()["item"]
    assert set(item) == {"id", "kind", "context", "reply_a", "reply_b", "lease_expire_time"}
    assert {item["reply_a"], item["reply_b"]} == {"reply of the candidate", "reply of the baseline"}
    assert [turn["role"] for turn in item["context"]] == ["system", "user"]
    for hidden in ("mv_candidate", "mv_baseline", "secret_source"):
        assert hidden not in answer.text
    shown_b = "mv_candidate" if item["reply_b"] == "reply of the candidate" else "mv_baseline"
    review_http.post(
        f"/review/api/items/{item_id}/review", json={"preferred": "b"}, headers=headers
    ).raise_for_status()
    (review,) = reviews_of(evaluator, token, reviewer=key_id)
    assert (review.preferred_model_id, review.tie) == (shown_b, False)


def test_gateway_review_kind_filter_and_bad_reviews(
    review_http: TestClient, evaluator: Any, token: str, ann: tuple[str, dict[str, str]]
) -> None:
    _, headers = ann
    rating_id, pair_id = enqueue(evaluator, token, rating_item("q1"), pair_item("q2"))
    item = review_http.post("/review/api/next", json={"kind": "pairwise"}, headers=headers)
    assert item.json()["item"]["id"] == pair_id
    wrong = review_http.post(
        f"/review/api/items/{pair_id}/review", json={"rating": 3}, headers=headers
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] in {"rating", "preferred"}
    for body in ({"preferred": "c"}, {"rating": 9}, {"unknown": 1}):
        bad = review_http.post(f"/review/api/items/{pair_id}/review", json=body, headers=headers)
        assert bad.status_code == 400, body
    bad_kind = review_http.post("/review/api/next", json={"kind": "essay"}, headers=headers)
    assert (bad_kind.status_code, bad_kind.json()["error"]["param"]) == (400, "kind")
    # Not leased to Ann: refused with the precondition's name as the code.
    not_leased = review_http.post(
        f"/review/api/items/{rating_id}/review", json={"rating": 3}, headers=headers
    )
    assert (not_leased.status_code, not_leased.json()["error"]["code"]) == (409, "not_leased")
    unknown = review_http.post("/review/api/items/rvi_nope/release", headers=headers)
    assert unknown.status_code == 404


def test_gateway_review_skip_gives_the_item_to_others(
    review_http: TestClient,
    review_context: GatewayContext,
    new_key: NewKey,
    evaluator: Any,
    token: str,
    ann: tuple[str, dict[str, str]],
) -> None:
    _, headers = ann
    (item_id,) = enqueue(evaluator, token, rating_item("skip me"))
    assert review_http.post("/review/api/next", headers=headers).json()["item"]["id"] == item_id
    released = review_http.post(f"/review/api/items/{item_id}/release", headers=headers)
    assert (released.status_code, released.json()) == (200, {})
    assert review_http.post("/review/api/next", headers=headers).json() == {"item": None}
    _, bob = new_key(review_context, "Bob", Scope.REVIEW)
    taken = review_http.post("/review/api/next", headers=bearer(bob)).json()["item"]
    assert taken["id"] == item_id
    assert reviews_of(evaluator, token) == []


def test_gateway_review_expired_lease_is_named(
    review_http: TestClient,
    review_context: GatewayContext,
    new_key: NewKey,
    evaluator: Any,
    token: str,
    ann: tuple[str, dict[str, str]],
) -> None:
    _, headers = ann
    (item_id,) = enqueue(evaluator, token, rating_item("slow"))
    review_http.post("/review/api/next", headers=headers).raise_for_status()
    evaluator.clock.advance(LEASE_SECONDS + 1)
    _, bob = new_key(review_context, "Bob", Scope.REVIEW)
    assert review_http.post("/review/api/next", headers=bearer(bob)).json()["item"]["id"] == item_id
    late = review_http.post(
        f"/review/api/items/{item_id}/review", json={"rating": 2}, headers=headers
    )
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "lease_expired"
    assert reviews_of(evaluator, token) == []


def test_gateway_review_evaluator_down_is_503(
    http: TestClient, context: GatewayContext, new_key: NewKey
) -> None:
    _, secret = new_key(context, "Ann", Scope.REVIEW)
    answer = http.post("/review/api/next", headers=bearer(secret))
    assert answer.status_code == 503
    assert answer.json()["error"]["message"] == (
        "the evaluator service is unavailable; try again later"
    )

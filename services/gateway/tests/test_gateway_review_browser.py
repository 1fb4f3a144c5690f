"""The reviewer page end to end in a real headless Chromium (Debian's, driven by
Playwright): the real gateway process (``python -m ownchat_gateway``) in front of
the real evaluator's review queue.

A reviewer signs in with a key made through the admin API, rates, compares and
corrects with keyboard shortcuts and clicks, skips, meets an expired lease, a
network error and an empty queue; the evaluator must then hold exactly those
reviews, attributed to the key's id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ownchat.common.v1 import common_pb2
from ownchat.evaluator.v1 import evaluator_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
LEASE_SECONDS = 600.0  # the evaluator fixture's lease
USER = common_pb2.ROLE_USER
# Model output is untrusted: the page must show this as text, never as markup.
HOSTILE_REPLY = "Press <b>reset</b> <img src=x onerror=\"document.title='owned'\"> for 5 s."

GatewayProcess = Callable[[Path, dict[str, str]], AbstractContextManager[str]]


def _item(kind: int, question: str, reply: str, **fields: Any) -> evaluator_pb2.ReviewItem:
    return evaluator_pb2.ReviewItem(
        kind=kind,
        context=[common_pb2.ChatMessage(role=USER, content=question)],
        reply_a=reply,
        source="eval_run_hidden_source",
        **fields,
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make setup does, as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def gateway_url(
    tmp_path: Path, evaluator: Any, token: str, gateway_process: GatewayProcess
) -> Iterator[str]:
    env = {
        "OWNCHAT_TOKEN": token,
        "OWNCHAT_EVALUATOR_ADDRESS": evaluator.address,
        # Nothing here talks to serving.
        "OWNCHAT_SERVING_ADDRESS": "127.0.0.1:9",
    }
    with gateway_process(tmp_path / "gateway-home", env) as url:
        yield url


def test_gateway_reviewer_page_in_chromium(
    browser: Any, gateway_url: str, evaluator: Any, token: str
) -> None:
    from playwright.sync_api import expect

    # The machine may be busy: wait longer than Playwright's 5 s before failing.
    expect.set_options(timeout=20_000)
    auth = [("authorization", f"Bearer {token}")]
    operator = {"Authorization": f"Bearer {token}"}

    def new_key(name: str, scope: str) -> tuple[str, str]:
        answer = httpx.post(
            f"{gateway_url}/admin/v1/api-keys",
            json={"name": name, "scopes": [scope]},
            headers=operator,
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json()["apiKey"]["id"], answer.json()["secret"]

    def enqueue(*items: evaluator_pb2.ReviewItem) -> list[str]:
        request = evaluator_pb2.EnqueueReviewItemsRequest(items=items)
        return list(evaluator.stub.EnqueueReviewItems(request, metadata=auth).item_ids)

    ann_id, ann_secret = new_key("Ann <Reviewer>", "SCOPE_REVIEW")
    _, chat_secret = new_key("chat bot", "SCOPE_CHAT")
    rating_id, pair_id, correction_id = enqueue(
        _item(evaluator_pb2.REVIEW_KIND_RATING, "How do I reset the router?", HOSTILE_REPLY),
        _item(
            evaluator_pb2.REVIEW_KIND_PAIRWISE,
            "Which plan suits a family?",
            "The Family plan.",
            reply_b="Any plan works.",
            model_id_a="mv_candidate",
            model_id_b="mv_baseline",
        ),
        _item(evaluator_pb2.REVIEW_KIND_CORRECTION, "Opening hours?", "We never close."),
    )

    page = browser.new_page()
    page.set_default_timeout(30_000)
    api_bodies: list[str] = []

    def keep_api_body(response: Any) -> None:
        if "/review/api/" in response.url:
            api_bodies.append(response.text())

    page.on("response", keep_api_body)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    # /review redirects to /review/, where the page's relative paths resolve.
    page.goto(f"{gateway_url}/review")
    assert page.url == f"{gateway_url}/review/"
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_label("Reviewer key")).to_be_focused()

    # A key without the review scope is turned away with a clear message.
    page.get_by_label("Reviewer key").fill(chat_secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#error")).to_contain_text("needs the review scope")
    expect(page.locator("#workspace")).to_be_hidden()

    page.get_by_label("Reviewer key").fill(ann_secret)
    page.get_by_label("Reviewer key").press("Enter")
    expect(page.locator("#reviewer-name")).to_have_text("Ann <Reviewer>")
    expect(page.locator("#done-count")).to_have_text("0")
    expect(page.locator("#left-count")).to_have_text("3")
    assert page.evaluate("sessionStorage.getItem('ownchat.review.key')") == ann_secret

    # 1. Rating: the hostile reply is shown as text; 4 by keyboard, tags, Enter.
    expect(page.locator("#item-title")).to_have_text("Rate the reply")
    expect(page.locator("#rating-reply")).to_have_text(HOSTILE_REPLY)
    assert page.locator("#rating-reply img, #rating-reply b").count() == 0
    expect(page.locator("#item-title")).to_be_focused()
    page.keyboard.press("4")
    expect(page.get_by_label("4 ★★★★")).to_be_checked()
    page.get_by_label("Tags (optional, separated by commas)").fill("helpful, too long")
    page.get_by_label("Tags (optional, separated by commas)").press("Enter")
    expect(page.locator("#done-count")).to_have_text("1")
    expect(page.locator("#status")).to_contain_text("Review saved.")

    # 2. Pairwise, blind: choose B with its key, Enter submits.
    expect(page.locator("#item-title")).to_have_text("Which reply is better?")
    reply_b = page.locator("#reply-b").inner_text()
    assert {page.locator("#reply-a").inner_text(), reply_b} == {
        "The Family plan.",
        "Any plan works.",
    }
    preferred_model = "mv_candidate" if reply_b == "The Family plan." else "mv_baseline"
    page.keyboard.press("b")
    expect(page.get_by_label("B is better")).to_be_checked()
    page.keyboard.press("Enter")
    expect(page.locator("#done-count")).to_have_text("2")

    # 3. Correction: the reply is prefilled; rewritten, Ctrl+Enter submits.
    expect(page.locator("#item-title")).to_have_text("Correct the reply")
    box = page.get_by_label("Write the better reply (Ctrl+Enter submits)")
    expect(box).to_have_value("We never close.")
    box.fill("We are open 9:00 to 17:00,\nMonday to Friday.")
    box.press("Control+Enter")
    expect(page.locator("#done-count")).to_have_text("3")

    # The queue is empty now, and says so.
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty")).to_contain_text("The queue is empty")
    expect(page.locator("#left-count")).to_have_text("0")

    # 4. Skip with s: the skipped item is not offered again.
    skipped_id, late_id, offline_id = enqueue(
        _item(evaluator_pb2.REVIEW_KIND_RATING, "Skip me", "A reply to skip."),
        _item(evaluator_pb2.REVIEW_KIND_RATING, "Too slow", "A reply held too long."),
        _item(evaluator_pb2.REVIEW_KIND_RATING, "Offline", "A reply rated after a failure."),
    )
    page.get_by_role("button", name="Check again").click()
    expect(page.locator("#rating-reply")).to_have_text("A reply to skip.")
    expect(page.locator("#left-count")).to_have_text("3")
    page.keyboard.press("s")
    expect(page.locator("#rating-reply")).to_have_text("A reply held too long.")
    expect(page.locator("#status")).to_contain_text("Item skipped.")

    # 5. The lease runs out and other reviewers take the items (first in, first
    # out: the skipped one first): Ann's answer is refused.
    evaluator.clock.advance(LEASE_SECONDS + 1)
    taken = [
        evaluator.stub.NextReviewItem(
            evaluator_pb2.NextReviewItemRequest(reviewer=name), metadata=auth
        ).item.id
        for name in ("bob", "carol")
    ]
    assert taken == [skipped_id, late_id]
    page.get_by_label("3 ★★★").check()
    page.get_by_role("button", name="Submit (Enter)").click()
    expect(page.locator("#error")).to_contain_text("ran out")
    expect(page.locator("#item")).to_be_hidden()
    expect(page.locator("#done-count")).to_have_text("3")

    # 6. A network error is reported, and the next try works.
    page.route("**/review/api/next", lambda route: route.abort())
    page.get_by_role("button", name="Take next item (n)").click()
    expect(page.locator("#error")).to_contain_text("Network error")
    page.unroute("**/review/api/next")
    page.keyboard.press("n")
    expect(page.locator("#rating-reply")).to_have_text("A reply rated after a failure.")
    expect(page.locator("#error")).to_have_text("")

    # The key survives a reload of the tab; the held item comes back.
    page.reload()
    expect(page.locator("#reviewer-name")).to_have_text("Ann <Reviewer>")
    expect(page.locator("#rating-reply")).to_have_text("A reply rated after a failure.")
    page.get_by_text("5 ★★★★★ excellent").click()
    page.get_by_role("button", name="Submit (Enter)").click()
    expect(page.locator("#done-count")).to_have_text("4")
    expect(page.locator("#empty")).to_be_visible()

    # Signing out forgets the key; a revoked key cannot sign in again.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('ownchat.review.key')") is None
    httpx.post(
        f"{gateway_url}/admin/v1/api-keys/{ann_id}:revoke", headers=operator, timeout=10
    ).raise_for_status()
    page.get_by_label("Reviewer key").fill(ann_secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#error")).to_contain_text("unknown or has been revoked")

    # Nothing the browser received named the models or the source; no script ran.
    assert api_bodies and not any(
        hidden in body
        for body in api_bodies
        for hidden in ("mv_candidate", "mv_baseline", "hidden_source")
    )
    assert dialogs == [] and page.title() == "ownchat review"
    page.close()

    # The evaluator holds exactly these reviews, all by Ann's key id.
    reviews = evaluator.stub.ListReviews(
        evaluator_pb2.ListReviewsRequest(page_size=100), metadata=auth
    ).reviews
    assert [(r.item_id, r.reviewer) for r in reviews] == [
        (rating_id, ann_id),
        (pair_id, ann_id),
        (correction_id, ann_id),
        (offline_id, ann_id),
    ]
    rating, pair, correction, offline = reviews
    assert (rating.rating, list(rating.tags)) == (4, ["helpful", "too long"])
    assert (pair.preferred_model_id, pair.tie) == (preferred_model, False)
    assert correction.correction == "We are open 9:00 to 17:00,\nMonday to Friday."
    assert offline.rating == 5
    assert skipped_id not in {r.item_id for r in reviews}
    stats = evaluator.stub.GetReviewStats(evaluator_pb2.GetReviewStatsRequest(), metadata=auth)
    assert [(r.reviewer, r.reviews) for r in stats.reviewers] == [(ann_id, 4)]

"""The reviewer page and its JSON API, mounted by the BentoML service at ``/review``.

``GET /review/``
    The page; no credential needed (it is where one signs in).
``GET /review/api/me``
    ``{"reviewer", "name"}``: the id reviews are attributed to, the name shown.
``POST /review/api/next`` with ``{"kind": "rating" | "pairwise" | "correction" | null}``
    ``{"item": {...}}``, or ``{"item": null}`` when nothing is left for this reviewer.
``POST /review/api/items/{id}/review`` with ``{"rating", "tags", "preferred", "correction"}``
    ``{"review_id"}``.
``POST /review/api/items/{id}/release``
    ``{}``: the item is skipped, given back for others.
``GET /review/api/progress``
    ``{"done", "left", "kinds"}``: this reviewer's reviews, items still wanting reviews.

The API needs a key with the review scope (or admin, or the ownchat token). The
reviewer the evaluator hears of is the key's id (two keys may share a name, an
id is never reused); the page shows the key's name. Items reach the browser without
model ids or source, so a pairwise comparison stays blind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.roles import NAME_BY_ROLE
from ownchat_gateway.access import Principal
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import context_of
from ownchat_gateway.edge import add_not_found_route, new_app
from ownchat_gateway.errors import from_rpc_error, unauthorized
from ownchat_gateway.keys import Scope
from ownchat_gateway.middleware import principal_of, request_id_of

PAGE_DIR = Path(__file__).parent / "review_page"
KindName = Literal["rating", "pairwise", "correction"]

KIND_NAMES: dict[evaluator_pb2.ReviewKind.ValueType, KindName] = {
    evaluator_pb2.REVIEW_KIND_RATING: "rating",
    evaluator_pb2.REVIEW_KIND_PAIRWISE: "pairwise",
    evaluator_pb2.REVIEW_KIND_CORRECTION: "correction",
}
KIND_NUMBERS = {name: number for number, name in KIND_NAMES.items()}

# The page's files: the only paths served without a credential.
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/review.js": ("review.js", "text/javascript; charset=utf-8"),
    "/review.css": ("review.css", "text/css; charset=utf-8"),
}
# Model output is untrusted: the page runs only its own script and loads
# nothing from elsewhere, so text that slipped into markup could not run.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_API_HEADERS = {"Cache-Control": "no-store"}


class NextItemBody(BaseModel):
    """Asks for the next item, of one kind or any."""

    model_config = ConfigDict(extra="forbid")

    kind: KindName | None = None


class ReviewBody(BaseModel):
    """A review; which fields apply depends on the item's kind (the evaluator checks)."""

    model_config = ConfigDict(extra="forbid")

    rating: int = Field(default=0, ge=0, le=5, description="1 to 5 for a rating item.")
    tags: list[str] = Field(default_factory=list, max_length=20)
    preferred: Literal["a", "b", "tie", ""] = ""
    correction: str = ""


def required_scope(path: str) -> Scope | None:
    """The API needs the review scope; the page's files need no credential."""
    if path == "/api" or path.startswith("/api/"):
        return Scope.REVIEW
    return None


def item_view(item: evaluator_pb2.ReviewItem) -> dict[str, Any]:
    """What the browser sees of a leased item: no model ids, no source."""
    kind = KIND_NAMES.get(item.kind)
    view: dict[str, Any] = {
        "id": item.id,
        "kind": kind,
        "context": [
            {"role": NAME_BY_ROLE.get(turn.role, "user"), "content": turn.content}
            for turn in item.context
        ],
        "lease_expire_time": (
            item.lease_expire_time.ToJsonString() if item.HasField("lease_expire_time") else None
        ),
    }
    if kind == "pairwise":
        view["reply_a"] = item.reply_a
        view["reply_b"] = item.reply_b
    else:
        view["reply"] = item.reply_a
    return view


def progress_view(stats: evaluator_pb2.GetReviewStatsResponse, reviewer: str) -> dict[str, Any]:
    """This reviewer's count and what the queue still wants, per kind and in all."""
    done = next((r.reviews for r in stats.reviewers if r.reviewer == reviewer), 0)
    kinds = {
        KIND_NAMES[counts.kind]: {
            "open": counts.open_items,
            "leased": counts.leased_items,
            "done": counts.done_items,
        }
        for counts in stats.counts
        if counts.kind in KIND_NAMES
    }
    left = sum(k["open"] + k["leased"] for k in kinds.values())
    return {"done": done, "left": left, "kinds": kinds}


def review_request(
    item_id: str, reviewer: str, body: ReviewBody
) -> evaluator_pb2.SubmitReviewRequest:
    """The SubmitReview call for a review from the page."""
    return evaluator_pb2.SubmitReviewRequest(
        item_id=item_id,
        reviewer=reviewer,
        rating=body.rating,
        tags=[tag.strip() for tag in body.tags if tag.strip()],
        preferred=body.preferred,
        correction=body.correction,
    )


def _reviewer(request: Request) -> Principal:
    principal = principal_of(request.scope)
    if principal is None:  # the middleware lets no API call through without one
        raise unauthorized()
    return principal


def _json(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers=_API_HEADERS)


def create_review_app(settings: GatewaySettings) -> FastAPI:
    """The page and its API; ``app.state.context`` must be set before it takes requests."""
    app = new_app(settings, "ownchat reviewer page", required_scope)

    def serve(file_name: str, media_type: str) -> Any:
        async def page_file() -> Response:
            return FileResponse(PAGE_DIR / file_name, media_type=media_type, headers=_PAGE_HEADERS)

        return page_file

    for path, (file_name, media_type) in _FILES.items():
        app.add_api_route(path, serve(file_name, media_type), methods=["GET"])

    @app.get("/api/me", response_model=None)
    async def me(request: Request) -> JSONResponse:
        """Who the credential belongs to: the reviewer id sent on and the name shown."""
        reviewer = _reviewer(request)
        return _json({"reviewer": reviewer.id, "name": reviewer.name})

    @app.post("/api/next", response_model=None)
    async def next_item(request: Request, body: NextItemBody | None = None) -> JSONResponse:
        """Leases the next item to this reviewer (the same one while the lease lives)."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        kind = body.kind if body else None
        call = evaluator_pb2.NextReviewItemRequest(
            reviewer=_reviewer(request).id,
            kind=KIND_NUMBERS[kind] if kind else evaluator_pb2.REVIEW_KIND_UNSPECIFIED,
        )
        try:
            response = await context.evaluator.next_review_item(call, request_id)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id, "evaluator") from None
        return _json({"item": item_view(response.item) if response.HasField("item") else None})

    @app.post("/api/items/{item_id}/review", response_model=None)
    async def submit(item_id: str, body: ReviewBody, request: Request) -> JSONResponse:
        """Stores this reviewer's review of an item they hold."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        call = review_request(item_id, _reviewer(request).id, body)
        try:
            response = await context.evaluator.submit_review(call, request_id)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id, "evaluator") from None
        return _json({"review_id": response.review_id})

    @app.post("/api/items/{item_id}/release", response_model=None)
    async def release(item_id: str, request: Request) -> JSONResponse:
        """Gives an item back unreviewed; this reviewer is not offered it again."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        call = evaluator_pb2.ReleaseReviewItemRequest(
            item_id=item_id, reviewer=_reviewer(request).id
        )
        try:
            await context.evaluator.release_review_item(call, request_id)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id, "evaluator") from None
        return _json({})

    @app.get("/api/progress", response_model=None)
    async def progress(request: Request) -> JSONResponse:
        """How many reviews this reviewer gave and how many items still want reviews."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            stats = await context.evaluator.get_review_stats(
                evaluator_pb2.GetReviewStatsRequest(), request_id
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id, "evaluator") from None
        return _json(progress_view(stats, _reviewer(request).id))

    add_not_found_route(app, "/review")
    return app

"""``POST /v1/feedback``: a thumb up or down on a reply, by its response id
(the ``id`` of the chat completion), with an optional comment."""

from __future__ import annotations

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ownchat_gateway.context import context_of
from ownchat_gateway.errors import GatewayError, from_rpc_error
from ownchat_gateway.feedback.store import Rating
from ownchat_gateway.middleware import principal_of, request_id_of

MAX_COMMENT_CHARS = 2000


class FeedbackRequest(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=128, description="The completion's id.")
    rating: Rating
    comment: str = Field(default="", max_length=MAX_COMMENT_CHARS)


def add_feedback_routes(app: FastAPI) -> None:
    """Adds ``POST /feedback`` to the OpenAI-compatible app."""

    @app.post("/feedback", response_model=None)
    async def feedback(body: FeedbackRequest, request: Request) -> JSONResponse:
        """Keeps a thumb on a reply; a thumbs-down on a captured reply goes to review first."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        principal = principal_of(request.scope)
        if context.feedback is None:
            raise GatewayError(
                503, "feedback is not set up in this gateway", "server_error", code="unavailable"
            )
        try:
            kept, captured = await context.feedback.feedback(
                response_id=body.response_id,
                rating=body.rating,
                comment=body.comment,
                key_id=principal.id if principal else "",
                request_id=request_id,
            )
        except grpc.RpcError as error:
            # The comment could not be scrubbed: it is not kept unscrubbed.
            raise from_rpc_error(error, request_id, service="data") from None
        return JSONResponse(
            {
                "object": "chat.completion.feedback",
                "id": f"fb_{kept.id}",
                "response_id": kept.response_id,
                "rating": kept.rating.value,
                "captured": captured,
                "review_item_id": kept.review_item_id or None,
                "created_at": int(kept.create_time),
            }
        )

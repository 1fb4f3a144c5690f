"""One chat message in, the deployed model's whole reply out."""

from __future__ import annotations

import grpc

from ownchat.common.v1 import common_pb2
from ownchat.serving.v1 import serving_pb2
from ownchat_gateway.upstream import ServingUpstream

# Said when the model cannot answer, so that the person is not left waiting.
APOLOGY = "Sorry, I cannot answer right now. Please try again in a moment."


async def model_reply(
    upstream: ServingUpstream,
    text: str,
    conversation_id: str,
    request_id: str,
    max_tokens: int,
) -> str:
    """The live model's reply to ``text``; raises ``grpc.RpcError`` when serving fails.

    ``conversation_id`` keeps one thread on one side of a canary.
    """
    request = serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        sampling=serving_pb2.SamplingParams(max_tokens=max_tokens),
        conversation_id=conversation_id,
        request_id=request_id,
    )
    call = upstream.generate(request, request_id)
    pieces: list[str] = []
    try:
        async for response in call:
            pieces.append(response.text)
    finally:
        call.cancel()
    reply = "".join(pieces).strip()
    if not reply:
        raise EmptyReplyError("the model wrote nothing")
    return reply


class EmptyReplyError(Exception):
    """The model's reply was empty: nothing worth posting."""


REPLY_ERRORS = (grpc.RpcError, EmptyReplyError)

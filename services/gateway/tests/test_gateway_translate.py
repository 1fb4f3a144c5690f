"""OpenAI <-> serving translation, as plain functions."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ownchat.common.v1 import common_pb2
from ownchat.serving.v1 import serving_pb2
from ownchat_gateway.protocol import ChatCompletionRequest
from ownchat_gateway.translate import (
    DONE_EVENT,
    IncompleteReplyError,
    ReplyBuilder,
    chunk_event,
    request_id_from,
    to_completion,
    to_generate_request,
    to_model_list,
)


def _body(**fields: object) -> ChatCompletionRequest:
    base: dict[str, object] = {"model": "mv_1", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**base, **fields})


def _stream() -> list[serving_pb2.GenerateResponse]:
    return [
        serving_pb2.GenerateResponse(text="Hel", model_id="mv_live"),
        serving_pb2.GenerateResponse(text="lo", model_id="mv_live"),
        serving_pb2.GenerateResponse(
            finish_reason=serving_pb2.FINISH_REASON_LENGTH,
            usage=serving_pb2.Usage(prompt_tokens=7, completion_tokens=2),
            model_id="mv_live",
        ),
    ]


def test_gateway_request_carries_messages_and_sampling() -> None:
    body = _body(
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ],
        temperature=0.2,
        top_p=0.9,
        max_tokens=10,
        stop="END",
        seed=42,
        user="alice",
    )
    request = to_generate_request(body, "req-1")
    assert request.model_id == "mv_1"
    assert [(m.role, m.content) for m in request.messages] == [
        (common_pb2.ROLE_SYSTEM, "be brief"),
        (common_pb2.ROLE_SYSTEM, "ab"),
        (common_pb2.ROLE_USER, "hi"),
        (common_pb2.ROLE_ASSISTANT, "hello"),
    ]
    sampling = request.sampling
    assert sampling.temperature == pytest.approx(0.2)
    assert sampling.top_p == pytest.approx(0.9)
    assert sampling.max_tokens == 10
    assert list(sampling.stop) == ["END"]
    assert sampling.seed == 42
    assert request.conversation_id == "alice"
    assert request.request_id == "req-1"


def test_gateway_request_leaves_unset_sampling_unset() -> None:
    sampling = to_generate_request(_body(), "r").sampling
    for name in ("temperature", "top_p", "max_tokens", "seed"):
        assert not sampling.HasField(name), name
    assert list(sampling.stop) == []


def test_gateway_max_completion_tokens_wins_and_stop_list_passes() -> None:
    request = to_generate_request(
        _body(max_tokens=5, max_completion_tokens=9, stop=["a", "b"]), "r"
    )
    assert request.sampling.max_tokens == 9
    assert list(request.sampling.stop) == ["a", "b"]


@pytest.mark.parametrize("model", ["", "default", " default "])
def test_gateway_default_model_means_live_deployment(model: str) -> None:
    assert to_generate_request(_body(model=model), "r").model_id == ""


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"temperature": 3},
        {"top_p": 0},
        {"max_tokens": 0},
        {"n": 2},
        {"stop": ["ok", ""]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    ],
)
def test_gateway_rejects_bad_bodies(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _body(**fields)


def test_gateway_ignores_unknown_openai_fields() -> None:
    assert _body(frequency_penalty=0.5, logprobs=False).model == "mv_1"


def test_gateway_whole_reply() -> None:
    completion = to_completion(
        _stream(), completion_id="chatcmpl-x", created=123, requested_model="mv_1"
    )
    payload = completion.model_dump()
    assert payload == {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 123,
        "model": "mv_live",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "length",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }


def test_gateway_reply_cut_short_is_an_error() -> None:
    with pytest.raises(IncompleteReplyError):
        to_completion(_stream()[:2], completion_id="c", created=0, requested_model="m")


def test_gateway_model_falls_back_to_the_requested_one() -> None:
    final = serving_pb2.GenerateResponse(
        text="x", finish_reason=serving_pb2.FINISH_REASON_STOP, usage=serving_pb2.Usage()
    )
    completion = to_completion([final], completion_id="c", created=0, requested_model="mv_9")
    assert completion.model == "mv_9"
    assert completion.choices[0].finish_reason == "stop"


def _events(include_usage: bool) -> list[dict[str, object]]:
    builder = ReplyBuilder("chatcmpl-s", 5, "default", include_usage=include_usage)
    events: list[str] = []
    for response in _stream():
        events += [chunk_event(chunk, include_usage) for chunk in builder.add(response)]
    for event in events:
        assert event.startswith("data: ") and event.endswith("\n\n")
    return [json.loads(event[len("data: ") :]) for event in events]


def test_gateway_stream_chunks_in_openai_order() -> None:
    chunks = _events(include_usage=False)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-s" for c in chunks)
    assert all("usage" not in c for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]  # type: ignore[index]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d["content"] or "" for d in deltas) == "Hello"
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]  # type: ignore[index]
    assert reasons == [None, None, None, "length"]
    assert DONE_EVENT == "data: [DONE]\n\n"


def test_gateway_stream_usage_chunk_when_asked() -> None:
    chunks = _events(include_usage=True)
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_gateway_model_list_has_only_live_versions() -> None:
    live = serving_pb2.Deployment(id="d2", model_id="mv_2", state=serving_pb2.DEPLOYMENT_STATE_LIVE)
    live.create_time.seconds = 1700000000
    canary = serving_pb2.Deployment(
        id="d3", model_id="mv_3", state=serving_pb2.DEPLOYMENT_STATE_LIVE, traffic_percent=10
    )
    retired = serving_pb2.Deployment(
        id="d1", model_id="mv_1", state=serving_pb2.DEPLOYMENT_STATE_RETIRED
    )
    listing = to_model_list([live, canary, retired]).model_dump()
    assert listing["object"] == "list"
    assert [(m["id"], m["object"], m["created"]) for m in listing["data"]] == [
        ("mv_2", "model", 1700000000),
        ("mv_3", "model", 0),
    ]


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("abc-123", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("bad id", False),
        ("é", False),
        (None, False),
    ],
)
def test_gateway_request_id_is_forwarded_only_when_safe(header: str | None, kept: bool) -> None:
    value = request_id_from(header)
    assert (value == header) is kept
    assert value

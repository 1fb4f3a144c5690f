"""``POST /v1/completions`` and the prompt size limits (TestClient, no serving behind):
what is refused before serving, and the text completion shapes built from
Generate messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette

from ownchat.serving.v1 import serving_pb2
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.protocol import CompletionRequest
from ownchat_gateway.translate import (
    IncompleteReplyError,
    TextReplyBuilder,
    text_chunk_event,
    to_text_generate_request,
)

ContextFactory = Callable[..., GatewayContext]
Edge = Callable[[GatewayContext], Starlette]


@pytest.fixture
def small(context_factory: ContextFactory, edge: Edge) -> Iterator[TestClient]:
    """A gateway that takes prompts of at most 40 characters and 3 messages."""
    context = context_factory(max_prompt_chars=40, max_prompt_messages=3)
    with TestClient(edge(context)) as client:
        client.headers["Authorization"] = f"Bearer {context.token}"
        yield client


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"prompt": "hi", "n": 2}, "n", "less than or equal to 1"),
        ({"prompt": "hi", "best_of": 3}, "best_of", "less than or equal to 1"),
        ({"prompt": "hi", "echo": True}, "echo", "echo is not supported"),
        ({"prompt": ["one", "two"]}, "prompt", "only one prompt per request"),
        ({"prompt": [1, 2, 3]}, "prompt", "token id arrays are not supported"),
        ({"prompt": [[1, 2]]}, "prompt", "token id arrays are not supported"),
        ({"prompt": "hi", "stop": ["", "x"]}, "stop", "must not be empty"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"model": "default"}, "prompt", "Field required"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": [""]}, "prompt", "must not be empty"),
    ],
)
def test_gateway_completions_refuses_what_it_cannot_honour(
    small: TestClient, body: dict[str, object], param: str, says: str
) -> None:
    answer = small.post("/v1/completions", json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert says in error["message"]


def test_gateway_completions_prompt_size_limit(small: TestClient) -> None:
    answer = small.post("/v1/completions", json={"prompt": ["x" * 41]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("string_above_max_length", "prompt")
    assert "maximum length 40, but got a string with length 41" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_completions_go_to_serving(small: TestClient, stream: bool) -> None:
    # Serving is not running here: a request it would take is answered 503.
    answer = small.post("/v1/completions", json={"prompt": ["Once upon"], "stream": stream})
    assert answer.status_code == 503


def test_gateway_completions_send_the_prompt_as_it_is() -> None:
    body = CompletionRequest(
        model="mv_1", prompt=["  Once upon\n"], max_tokens=8, stop="\n\n", user="u-1"
    )
    request = to_text_generate_request(body, "req-1")
    assert request.prompt == "  Once upon\n" and not request.messages
    assert (request.model_id, request.conversation_id, request.request_id) == (
        "mv_1",
        "u-1",
        "req-1",
    )
    assert request.sampling.max_tokens == 8 and list(request.sampling.stop) == ["\n\n"]


def test_gateway_chat_prompt_size_limits(small: TestClient) -> None:
    def chat(*contents: str) -> dict[str, object]:
        return {"messages": [{"role": "user", "content": c} for c in contents]}

    many = small.post("/v1/chat/completions", json=chat("a", "b", "c", "d"))
    assert many.status_code == 400
    error = many.json()["error"]
    assert (error["code"], error["param"]) == ("array_above_max_length", "messages")
    assert "maximum length 3, but got an array with length 4" in error["message"]

    long = small.post("/v1/chat/completions", json=chat("x" * 20, "y" * 21))
    assert long.status_code == 400
    error = long.json()["error"]
    assert (error["code"], error["param"]) == ("string_above_max_length", "messages")
    assert "41 characters" in error["message"]

    # Within both limits the request goes on to serving (absent here).
    assert small.post("/v1/chat/completions", json=chat("x" * 20, "y" * 20)).status_code == 503


def _responses() -> list[serving_pb2.GenerateResponse]:
    return [
        serving_pb2.GenerateResponse(text="Once", model_id="mv_1"),
        serving_pb2.GenerateResponse(text=" upon", model_id="mv_1"),
        serving_pb2.GenerateResponse(
            text=" a",
            finish_reason=serving_pb2.FINISH_REASON_LENGTH,
            usage=serving_pb2.Usage(prompt_tokens=4, completion_tokens=3),
            model_id="mv_1",
        ),
    ]


def test_gateway_text_completion_whole() -> None:
    builder = TextReplyBuilder("cmpl-1", 1700000000, "default")
    for response in _responses():
        builder.add(response)
    assert builder.completion().model_dump() == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "mv_1",
        "choices": [
            {"text": "Once upon a", "index": 0, "logprobs": None, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
    }


@pytest.mark.parametrize("include_usage", [False, True])
def test_gateway_text_completion_chunks(include_usage: bool) -> None:
    builder = TextReplyBuilder("cmpl-1", 1700000000, "default", include_usage=include_usage)
    events = [
        text_chunk_event(chunk, include_usage)
        for response in _responses()
        for chunk in builder.add(response)
    ]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events]
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert all(p["object"] == "text_completion" and p["id"] == "cmpl-1" for p in payloads)
    texts = [p["choices"][0]["text"] for p in payloads if p["choices"]]
    assert texts == ["Once", " upon", " a"]
    reasons = [p["choices"][0]["finish_reason"] for p in payloads if p["choices"]]
    assert reasons == [None, None, "length"]
    if include_usage:
        assert payloads[-1]["choices"] == []
        assert payloads[-1]["usage"]["total_tokens"] == 7
        assert all(p["usage"] is None for p in payloads[:-1])
    else:
        assert all("usage" not in p for p in payloads)


def test_gateway_text_completion_cut_short_is_incomplete() -> None:
    builder = TextReplyBuilder("cmpl-1", 1700000000, "default")
    builder.add(_responses()[0])
    with pytest.raises(IncompleteReplyError):
        builder.completion()

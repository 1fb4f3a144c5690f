"""The gRPC -> HTTP error table and OpenAI's error shape, as plain functions."""

from __future__ import annotations

import grpc
import pytest
from fastapi.exceptions import RequestValidationError
from grpc import aio
from grpc_status import rpc_status
from pydantic import ValidationError

from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OwnchatError,
    PreconditionViolation,
    ResourceExhaustedError,
    UnavailableError,
)
from ownchat_gateway.edge import validation_error
from ownchat_gateway.errors import (
    RPC_TO_HTTP,
    from_ownchat_error,
    from_rpc_error,
    openai_param,
)
from ownchat_gateway.protocol import ChatCompletionRequest


def _aio_error(error: OwnchatError) -> aio.AioRpcError:
    """What grpc.aio raises when an ownchat server fails a call with this error."""
    status = rpc_status.to_status(error.to_status())
    return aio.AioRpcError(
        status.code, aio.Metadata(), aio.Metadata(*status.trailing_metadata), status.details
    )


def _plain_error(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    """A status without google.rpc details, as the transport itself produces."""
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_gateway_status_table(code: grpc.StatusCode, status: int) -> None:
    error = from_rpc_error(_plain_error(code, "detail"), "req-1")
    assert error.status == status
    body = error.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]


def test_gateway_table_covers_every_4xx_the_brief_names() -> None:
    assert {c: m.status for c, m in RPC_TO_HTTP.items() if m.status < 500} == {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.FAILED_PRECONDITION: 409,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
    }


def test_gateway_field_violations_become_param() -> None:
    upstream = InvalidArgumentError(
        "bad sampling",
        [
            FieldViolation("sampling.temperature", "must be at most 2"),
            FieldViolation("model_id", "malformed"),
        ],
    )
    error = from_rpc_error(_aio_error(upstream), "r")
    assert error.status == 400
    assert error.param == "temperature"
    assert error.type == "invalid_request_error"
    assert "temperature: must be at most 2" in error.message
    assert "model: malformed" in error.message


def test_gateway_not_found_keeps_the_services_message() -> None:
    error = from_rpc_error(_aio_error(NotFoundError("model version", "mv_x")), "r")
    assert (error.status, error.code) == (404, "not_found")
    assert "mv_x" in error.message


def test_gateway_failed_precondition_is_conflict() -> None:
    error = from_rpc_error(_aio_error(FailedPreconditionError("no deployment is live")), "r")
    assert error.status == 409
    assert error.message == "no deployment is live"


def test_gateway_retry_after_from_retry_info() -> None:
    error = from_rpc_error(_aio_error(ResourceExhaustedError("busy", 2.2)), "r")
    assert error.status == 429
    assert error.headers == {"Retry-After": "3"}


def test_gateway_no_retry_after_without_retry_info() -> None:
    error = from_rpc_error(_plain_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"), "r")
    assert error.status == 429
    assert "Retry-After" not in error.headers


def test_gateway_server_errors_are_sanitized() -> None:
    leak = "failed to connect to all addresses; last error: 10.0.0.7:50054 refused"
    unavailable = from_rpc_error(_plain_error(grpc.StatusCode.UNAVAILABLE, leak), "r")
    assert "10.0.0.7" not in unavailable.message
    internal = from_rpc_error(_plain_error(grpc.StatusCode.INTERNAL, "Traceback: secret"), "req-9")
    assert "secret" not in internal.message and "req-9" in internal.message
    assert internal.type == "server_error"


def test_gateway_deliberate_unavailable_keeps_its_message() -> None:
    error = from_rpc_error(_aio_error(UnavailableError("no model is deployed")), "r")
    assert (error.status, error.message) == (503, "no model is deployed")


def test_gateway_openai_param_names() -> None:
    assert openai_param("sampling.max_tokens") == "max_tokens"
    assert openai_param("model_id") == "model"
    assert openai_param("messages.0.content") == "messages.0.content"


def test_gateway_validation_error_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"messages": [{"role": "robot", "content": "x"}]})
    errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    error = validation_error(RequestValidationError(errors))
    assert (error.status, error.param) == (400, "messages.0.role")
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_gateway_precondition_type_becomes_the_code() -> None:
    expired = FailedPreconditionError(
        "the lease expired",
        [PreconditionViolation("LEASE_EXPIRED", "review_item:rvi_1", "ask for the next item")],
    )
    error = from_rpc_error(_aio_error(expired), "r", "evaluator")
    assert (error.status, error.code, error.message) == (409, "lease_expired", "the lease expired")
    plain = from_rpc_error(_aio_error(FailedPreconditionError("no deployment is live")), "r")
    assert plain.code == "failed_precondition"


def test_gateway_fixed_messages_name_the_service() -> None:
    down = _plain_error(grpc.StatusCode.UNAVAILABLE, "10.0.0.7:50053 refused")
    assert from_rpc_error(down, "r", "evaluator").message == (
        "the evaluator service is unavailable; try again later"
    )
    late = _plain_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
    assert from_rpc_error(late, "r").message == "the model did not answer in time"
    assert "evaluator" in from_rpc_error(late, "r", "evaluator").message


def test_gateway_own_errors_use_the_same_table() -> None:
    bad = InvalidArgumentError(
        "invalid API key request", [FieldViolation("name", "must name the key")]
    )
    error = from_ownchat_error(bad, "r")
    assert (error.status, error.param, error.type) == (400, "name", "invalid_request_error")
    assert "name: must name the key" in error.message
    missing = from_ownchat_error(NotFoundError("API key", "ak_x"), "r")
    assert (missing.status, missing.code) == (404, "not_found")
    hidden = from_ownchat_error(OwnchatError("disk path /secret/x"), "req-5")
    assert hidden.status == 500 and "/secret" not in hidden.message and "req-5" in hidden.message


def test_gateway_prompt_over_the_context_is_context_length_exceeded() -> None:
    # Serving's own check, so that a change of its wording fails here.
    generation = pytest.importorskip("ownchat_serving.generation")
    with pytest.raises(InvalidArgumentError) as caught:
        generation.check_prompt_fits(300, 256)
    error = from_rpc_error(_aio_error(caught.value), "req-1")
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    assert "300 tokens" in error.message
    # Other bad arguments keep their code.
    other = InvalidArgumentError("bad", [FieldViolation("messages", "must not be empty")])
    assert from_rpc_error(_aio_error(other), "req-1").code == "invalid_argument"
    # A raw prompt's is named by its own field.
    with pytest.raises(InvalidArgumentError) as caught:
        generation.check_prompt_fits(300, 256, "prompt")
    error = from_rpc_error(_aio_error(caught.value), "req-1")
    assert (error.code, error.param) == ("context_length_exceeded", "prompt")
    # Serving's ErrorInfo decides, not its wording.
    worded = InvalidArgumentError(
        "too long", [FieldViolation("prompt", "prompt of 300 tokens exceeds the limit of 255")]
    )
    assert from_rpc_error(_aio_error(worded), "req-1").code == "invalid_argument"

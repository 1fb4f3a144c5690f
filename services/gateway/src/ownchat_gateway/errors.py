"""Errors in OpenAI's shape, and the one table from gRPC status codes to HTTP.

| gRPC code            | HTTP | type                  | note                               |
|----------------------|------|-----------------------|------------------------------------|
| INVALID_ARGUMENT     | 400  | invalid_request_error | param = the first field violation  |
| OUT_OF_RANGE         | 400  | invalid_request_error |                                    |
| NOT_FOUND            | 404  | invalid_request_error | e.g. an unknown model version      |
| ALREADY_EXISTS       | 409  | invalid_request_error |                                    |
| FAILED_PRECONDITION  | 409  | invalid_request_error | see below                          |
| ABORTED              | 409  | invalid_request_error |                                    |
| RESOURCE_EXHAUSTED   | 429  | rate_limit_error      | Retry-After from google.rpc.RetryInfo |
| UNAUTHENTICATED      | 401  | authentication_error  |                                    |
| PERMISSION_DENIED    | 403  | permission_error      |                                    |
| UNAVAILABLE          | 503  | server_error          |                                    |
| DEADLINE_EXCEEDED    | 504  | server_error          |                                    |
| anything else        | 500  | server_error          | message replaced by a fixed one    |

FAILED_PRECONDITION is 409 Conflict rather than 400: the request itself is well
formed, the system's state (say, no deployment live yet) refuses it, and the same
request can succeed once that state changes, which is what 409 tells a client.
When the status names the unmet precondition (``google.rpc.PreconditionFailure``),
its type, lower-cased, is the error's ``code`` (``lease_expired``), so that a
client can tell one refusal from another without reading the message.

Messages of 4xx statuses are written by the services for callers and are passed
on. Messages of 5xx statuses are not: a transport failure's text names internal
addresses, and an internal error's text is not meant for the outside. The one
exception is an UNAVAILABLE the service raised on purpose (it carries a
``google.rpc`` status), such as "no model is deployed".

An INVALID_ARGUMENT from serving for a prompt longer than the model's context
becomes OpenAI's ``context_length_exceeded``: serving marks it with a
``google.rpc.ErrorInfo`` of reason :data:`CONTEXT_LENGTH_EXCEEDED` (its
contract), so its wording may change freely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ownchat.errors import InvalidArgumentError, OwnchatError, describe_rpc_error
from ownchat_gateway.limits import Refusal, Refused, duration_text


@dataclass(frozen=True)
class HttpStatus:
    """Where one gRPC code lands in HTTP and in OpenAI's error vocabulary."""

    status: int
    type: str
    code: str


RPC_TO_HTTP: dict[grpc.StatusCode, HttpStatus] = {
    grpc.StatusCode.INVALID_ARGUMENT: HttpStatus(400, "invalid_request_error", "invalid_argument"),
    grpc.StatusCode.OUT_OF_RANGE: HttpStatus(400, "invalid_request_error", "out_of_range"),
    grpc.StatusCode.NOT_FOUND: HttpStatus(404, "invalid_request_error", "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: HttpStatus(409, "invalid_request_error", "already_exists"),
    grpc.StatusCode.FAILED_PRECONDITION: HttpStatus(
        409, "invalid_request_error", "failed_precondition"
    ),
    grpc.StatusCode.ABORTED: HttpStatus(409, "invalid_request_error", "aborted"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: HttpStatus(429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAUTHENTICATED: HttpStatus(401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: HttpStatus(403, "permission_error", "permission_denied"),
    grpc.StatusCode.UNAVAILABLE: HttpStatus(503, "server_error", "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: HttpStatus(504, "server_error", "timeout"),
}
INTERNAL = HttpStatus(500, "server_error", "internal_error")

# Serving's ErrorInfo for a prompt longer than the model's context (its Generate
# RPC's contract in ownchat/serving/v1/serving.proto).
SERVING_ERROR_DOMAIN = "ownchat.serving.v1"
CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"

# Serving names fields by their protobuf path; callers know OpenAI's names.
_PARAM_NAMES = {"model_id": "model", "conversation_id": "user"}
_PARAM_PREFIXES = ("sampling.",)

_FIXED_MESSAGES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "the {service} service refused the gateway's credentials",
    grpc.StatusCode.UNAVAILABLE: "the {service} service is unavailable; try again later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the {service} service did not answer in time",
}
# Serving's deadline is a whole reply: what ran out of time is the model.
_SERVING_DEADLINE = "the model did not answer in time"


@dataclass
class GatewayError(Exception):
    """An error answered in OpenAI's shape with its HTTP status."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def unauthorized() -> GatewayError:
    """No credential, a wrong one, or a revoked key."""
    return GatewayError(
        401,
        "missing, unknown or revoked API key: send 'Authorization: Bearer <key>'",
        "authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(scope: str) -> GatewayError:
    """A valid key without the scope the endpoint needs."""
    return GatewayError(
        403,
        f"this API key does not have the '{scope}' scope this endpoint needs",
        "permission_error",
        code="insufficient_scope",
    )


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    """A body that does not validate."""
    return GatewayError(400, message, "invalid_request_error", code="invalid_request", param=param)


def body_too_large(limit: int) -> GatewayError:
    """A body over the configured limit."""
    return GatewayError(
        413,
        f"request body is larger than {limit} bytes",
        "invalid_request_error",
        code="request_too_large",
    )


def prompt_too_large(message: str, param: str, *, too_many_items: bool) -> GatewayError:
    """A prompt over the gateway's own size limits, with OpenAI's codes for such limits."""
    code = "array_above_max_length" if too_many_items else "string_above_max_length"
    return GatewayError(400, message, "invalid_request_error", code=code, param=param)


def rate_limited(refusal: Refusal, key_id: str, headers: dict[str, str]) -> GatewayError:
    """429 for a key over one of its limits, worded and typed as OpenAI's.

    OpenAI answers ``type: requests`` or ``type: tokens`` with code
    ``rate_limit_exceeded`` for its per-minute limits, and ``insufficient_quota``
    (type and code) when a quota is spent. ``Retry-After`` is whole seconds.
    """
    seconds = max(1, math.ceil(refusal.retry_after_seconds))
    all_headers = {**headers, "Retry-After": str(seconds)}
    if refusal.limit is Refused.QUOTA:
        return GatewayError(
            429,
            f"API key {key_id} has used its quota of {refusal.allowed} tokens for today "
            f"(UTC): used {refusal.used}. It renews at 00:00 UTC, in {duration_text(seconds)}.",
            "insufficient_quota",
            code="insufficient_quota",
            headers=all_headers,
        )
    what = "requests per min (RPM)" if refusal.limit is Refused.REQUESTS else "tokens per min (TPM)"
    return GatewayError(
        429,
        f"Rate limit reached for API key {key_id} on {what}: Limit {refusal.allowed}, "
        f"Used {refusal.used}. Please try again in {seconds}s.",
        refusal.limit.value,
        code="rate_limit_exceeded",
        headers=all_headers,
    )


def internal_error(request_id: str) -> GatewayError:
    """Anything unexpected, with nothing of its cause but the request id to look it up."""
    return GatewayError(
        INTERNAL.status, f"internal error (request id {request_id})", INTERNAL.type, INTERNAL.code
    )


def bad_gateway(request_id: str) -> GatewayError:
    """Serving answered, but not as its contract says (a reply cut short)."""
    return GatewayError(
        502,
        f"the serving service ended the reply early (request id {request_id})",
        "server_error",
        code="bad_gateway",
    )


def openai_param(field_path: str) -> str:
    """The OpenAI parameter name for a serving field path."""
    for prefix in _PARAM_PREFIXES:
        if field_path.startswith(prefix):
            field_path = field_path[len(prefix) :]
    head, dot, rest = field_path.partition(".")
    return _PARAM_NAMES.get(head, head) + dot + rest


def _rich_status(call: Any) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(call)
    except ValueError:  # details disagreeing with the status: ignore the details
        return None


def _retry_after(status: status_pb2.Status | None) -> str | None:
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = info.retry_delay.ToTimedelta().total_seconds()
            return str(max(1, math.ceil(seconds)))
    return None


def _precondition_type(status: status_pb2.Status | None) -> str | None:
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            for violation in failure.violations:
                if violation.type:
                    return violation.type.lower()
    return None


def _fixed_message(code: grpc.StatusCode, service: str) -> str:
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and service == "serving":
        return _SERVING_DEADLINE
    return _FIXED_MESSAGES[code].format(service=service)


def from_rpc_error(error: grpc.RpcError, request_id: str, service: str = "serving") -> GatewayError:
    """The HTTP answer for a failed call to ``service`` (sync or grpc.aio)."""
    description = describe_rpc_error(error)
    rich = _rich_status(error)
    mapped = RPC_TO_HTTP.get(description.code)
    if mapped is None:
        return internal_error(request_id)
    message = description.message
    if mapped.status >= 500 or description.code is grpc.StatusCode.UNAUTHENTICATED:
        deliberate = rich is not None and description.code is grpc.StatusCode.UNAVAILABLE
        if not deliberate:
            message = _fixed_message(description.code, service)
    param = None
    if description.violations:
        param = openai_param(description.violations[0].field)
        details = "; ".join(
            f"{openai_param(v.field)}: {v.description}" for v in description.violations
        )
        message = f"{message} ({details})" if message else details
    headers: dict[str, str] = {}
    retry_after = _retry_after(rich)
    if retry_after is not None and description.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        headers["Retry-After"] = retry_after
    code = mapped.code
    if description.code is grpc.StatusCode.FAILED_PRECONDITION:
        code = _precondition_type(rich) or code
    info = description.error_info
    if (
        description.code is grpc.StatusCode.INVALID_ARGUMENT
        and info is not None
        and (info.domain, info.reason) == (SERVING_ERROR_DOMAIN, CONTEXT_LENGTH_EXCEEDED)
    ):
        code = "context_length_exceeded"
    return GatewayError(
        mapped.status,
        message or mapped.code,
        mapped.type,
        code=code,
        param=param,
        headers=headers,
    )


def from_ownchat_error(error: OwnchatError, request_id: str) -> GatewayError:
    """The HTTP answer for an error the gateway's own store raised, by the same table."""
    mapped = RPC_TO_HTTP.get(error.code)
    if mapped is None or mapped.status >= 500:
        return internal_error(request_id)
    violations = error.violations if isinstance(error, InvalidArgumentError) else []
    message = error.message
    if violations:
        message += " (" + "; ".join(f"{v.field}: {v.description}" for v in violations) + ")"
    return GatewayError(
        mapped.status,
        message,
        mapped.type,
        code=mapped.code,
        param=violations[0].field if violations else None,
    )

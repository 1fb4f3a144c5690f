"""Domain errors that carry their gRPC status, and their mapping to it.

Cores raise these; one interceptor (``ownchat.interceptors``) turns them into
canonical status codes with ``google.rpc`` details. Clients turn a failed
call back into a readable message with :func:`describe_rpc_error`.

An error may also carry an :class:`ErrorInfo` (``google.rpc.ErrorInfo``): a
stable reason that callers branch on instead of the message's wording.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status


@dataclass(frozen=True)
class ErrorInfo:
    """A stable, machine-readable reason for an error (``google.rpc.ErrorInfo``).

    ``reason`` is UPPER_SNAKE_CASE and unique within ``domain`` (the API that
    raises it, such as ``ownchat.serving.v1``); its contract documents it, so
    callers can rely on it where a message's wording may change. ``metadata``
    carries facts about this occurrence (a limit, a count) as strings.
    """

    reason: str
    domain: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, or one bad record of an upload."""

    field: str
    description: str


class OwnchatError(Exception):
    """Base of the errors that cores raise on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # Sent as a google.rpc.ErrorInfo beside the other details when set.
    error_info: ErrorInfo | None = None

    def __init__(self, message: str, *, error_info: ErrorInfo | None = None) -> None:
        super().__init__(message)
        self.message = message
        if error_info is not None:
            self.error_info = error_info

    def details(self) -> list[any_pb2.Any]:
        """The ``google.rpc`` details sent with the status."""
        return []

    def to_status(self) -> status_pb2.Status:
        """The rich status for ``context.abort_with_status``."""
        details = list(self.details())
        if self.error_info is not None:
            info = self.error_info
            details.append(
                _pack(
                    error_details_pb2.ErrorInfo(
                        reason=info.reason, domain=info.domain, metadata=info.metadata
                    )
                )
            )
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


class InvalidArgumentError(OwnchatError):
    """The request, or an uploaded file, is malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        error_info: ErrorInfo | None = None,
    ) -> None:
        super().__init__(message, error_info=error_info)
        self.violations = violations or []

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        return [_pack(bad_request)]


class NotFoundError(OwnchatError):
    """A named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource_type: str, resource_name: str) -> None:
        super().__init__(f"{resource_type} {resource_name!r} not found")
        self.resource_type = resource_type
        self.resource_name = resource_name

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ResourceInfo(
            resource_type=self.resource_type,
            resource_name=self.resource_name,
            description=self.message,
        )
        return [_pack(info)]


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition."""

    type: str
    subject: str
    description: str


class FailedPreconditionError(OwnchatError):
    """The system is not in a state that allows the call."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, violations: list[PreconditionViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    def details(self) -> list[any_pb2.Any]:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in self.violations
            ]
        )
        return [_pack(failure)]


class ResourceExhaustedError(OwnchatError):
    """Overload or a quota: try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(self.retry_after_seconds * 1000))
        return [_pack(retry)]


class UnavailableError(OwnchatError):
    """A dependency (another service, the engine) is not reachable now."""

    code = grpc.StatusCode.UNAVAILABLE


@dataclass
class RpcErrorDescription:
    """A failed call in plain terms, for people and for the gateway."""

    code: grpc.StatusCode
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    # The status's google.rpc.ErrorInfo, when the service sent one.
    error_info: ErrorInfo | None = None

    def __str__(self) -> str:
        lines = [f"{self.code.name}: {self.message}"]
        lines += [f"  {v.field}: {v.description}" for v in self.violations]
        return "\n".join(lines)


def describe_rpc_error(error: grpc.RpcError) -> RpcErrorDescription:
    """Reads the code, message, field violations and ErrorInfo of a failed call (sync or
    grpc.aio)."""
    call: Any = error if isinstance(error, grpc.Call | aio.AioRpcError) else None
    code = call.code() if call else grpc.StatusCode.UNKNOWN
    message = (call.details() if call else str(error)) or ""
    violations: list[FieldViolation] = []
    error_info: ErrorInfo | None = None
    try:
        status = rpc_status.from_call(call) if call else None
    except ValueError:  # details that disagree with the status: keep code and message
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                ]
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and error_info is None:
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                error_info = ErrorInfo(info.reason, info.domain, dict(info.metadata))
    return RpcErrorDescription(
        code=code, message=message, violations=violations, error_info=error_info
    )


class RemoteError(OwnchatError):
    """A call to another ownchat service failed; carries that call's status on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def remote_error(error: grpc.RpcError, service: str) -> RemoteError:
    """The error to raise when a call to another service fails.

    NOT_FOUND, INVALID_ARGUMENT and FAILED_PRECONDITION pass through unchanged;
    a service that cannot be reached or answered too late becomes UNAVAILABLE;
    anything else becomes INTERNAL, naming the service.
    """
    description = describe_rpc_error(error)
    passed_through = {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    if description.code in passed_through:
        return RemoteError(description.code, description.message)
    if description.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return RemoteError(
            grpc.StatusCode.UNAVAILABLE,
            f"the {service} service is unavailable: {description.message}",
        )
    return RemoteError(
        grpc.StatusCode.INTERNAL,
        f"the {service} service failed: {description.code.name} {description.message}",
    )

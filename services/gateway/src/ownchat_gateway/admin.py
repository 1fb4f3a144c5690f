"""The admin API, mounted by the BentoML service at ``/admin/v1``: API keys, and
the right to erasure in the captured chats.

``POST /admin/v1/api-keys`` with ``CreateApiKeyRequest``
    ``CreateApiKeyResponse``: the key and its secret, shown this once.
``GET /admin/v1/api-keys``
    ``ListApiKeysResponse``: every key, revoked ones included, without secrets.
``POST /admin/v1/api-keys/{id}:revoke`` with no body or ``RevokeApiKeyRequest``
    ``RevokeApiKeyResponse``: the key, revoked from the next request on.
``GET /admin/v1/capture-settings``
    ``GetCaptureSettingsResponse``: which chats are captured for review when the
    request does not say (``store``).
``PATCH /admin/v1/capture-settings`` with ``UpdateCaptureSettingsRequest``
    ``UpdateCaptureSettingsResponse``: only the fields the body names change
    (``{"settings": {"enabled": true, "samplePercent": 10}}``); every worker
    follows within a second.
``POST /admin/v1/captured-chats:erase`` with ``EraseCapturedChatsRequest``
    ``EraseCapturedChatsResponse``: the captured chats and feedback deleted because
    they held one of the values (``ownchat data erase`` calls it).

Bodies are the ``ownchat.gateway.v1`` messages in protobuf's JSON mapping
(``{"name": "alice", "scopes": ["SCOPE_REVIEW"]}``; answers use lowerCamelCase
names, as ``json_format`` writes them). Only the ownchat token or a key with the
admin scope may call them. A new key's secret is in the create answer only.
A key's limits (``requestsPerMinute``, ``tokensPerMinute``, ``tokensPerDay``)
are 0 for the gateway's default and -1 for none.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from google.protobuf.message import Message

from ownchat.erasure import MIN_VALUE_CHARS, too_short
from ownchat.errors import FieldViolation, InvalidArgumentError
from ownchat.gateway.v1 import gateway_pb2
from ownchat.timestamps import to_timestamp
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import context_of
from ownchat_gateway.edge import add_not_found_route, new_app
from ownchat_gateway.errors import invalid_request
from ownchat_gateway.feedback.loop import FeedbackLoop
from ownchat_gateway.feedback.settings import CaptureSettings, check_sample_percent
from ownchat_gateway.feedback.store import ErasedCaptures
from ownchat_gateway.keys import ApiKey, NewApiKey, Scope
from ownchat_gateway.middleware import principal_of, request_id_of

logger = logging.getLogger("ownchat.gateway")

M = TypeVar("M", bound=Message)

SCOPE_TO_PROTO: dict[Scope, gateway_pb2.Scope.ValueType] = {
    Scope.CHAT: gateway_pb2.SCOPE_CHAT,
    Scope.FINE_TUNE: gateway_pb2.SCOPE_FINE_TUNE,
    Scope.REVIEW: gateway_pb2.SCOPE_REVIEW,
    Scope.ADMIN: gateway_pb2.SCOPE_ADMIN,
}
SCOPE_FROM_PROTO = {number: scope for scope, number in SCOPE_TO_PROTO.items()}

# What the erase route takes and answers, for the OpenAPI document (its body is
# read by hand, as protobuf JSON). int64 is a JSON string in that mapping.
_ERASE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "title": "EraseCapturedChatsRequest",
                    "type": "object",
                    "required": ["values"],
                    "additionalProperties": False,
                    "properties": {
                        "values": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "minLength": MIN_VALUE_CHARS},
                            "description": "Matched case-insensitively anywhere in a text; "
                            f"each needs {MIN_VALUE_CHARS} characters or more, spaces around "
                            "it not counted.",
                        }
                    },
                }
            }
        },
    }
}
_ERASE_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "What was erased.",
        "content": {
            "application/json": {
                "schema": {
                    "title": "EraseCapturedChatsResponse",
                    "type": "object",
                    "properties": {
                        "erasedResponseIds": {"type": "array", "items": {"type": "string"}},
                        "erasedFeedback": {"type": "string", "format": "int64"},
                        "reviewItemIds": {"type": "array", "items": {"type": "string"}},
                    },
                }
            }
        },
    }
}

# The capture settings' JSON, in and out.
_SETTINGS_SCHEMA: dict[str, Any] = {
    "title": "CaptureSettings",
    "type": "object",
    "properties": {
        "enabled": {
            "type": "boolean",
            "description": "Capture chats whose request does not say store.",
        },
        "samplePercent": {
            "type": "integer",
            "minimum": 0,
            "maximum": 100,
            "description": "The share of those chats captured while enabled, in percent.",
        },
        "datasetName": {"type": "string", "maxLength": 0, "description": "Must be empty."},
        "updateTime": {"type": "string", "format": "date-time", "readOnly": True},
        "updatedBy": {"type": "string", "readOnly": True},
    },
}
_SETTINGS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "title": "UpdateCaptureSettingsRequest",
                    "type": "object",
                    "required": ["settings"],
                    "properties": {"settings": _SETTINGS_SCHEMA},
                }
            }
        },
    }
}
_SETTINGS_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The capture settings in force.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"settings": _SETTINGS_SCHEMA},
                }
            }
        },
    }
}


def required_scope(path: str) -> Scope:
    """Every admin path needs the admin scope (the ownchat token has it)."""
    return Scope.ADMIN


def api_key_to_proto(key: ApiKey) -> gateway_pb2.ApiKey:
    """A stored key as the contract's message, without its secret."""
    message = gateway_pb2.ApiKey(
        id=key.id,
        name=key.name,
        scopes=sorted(SCOPE_TO_PROTO[s] for s in key.scopes),
        requests_per_minute=key.requests_per_minute,
        tokens_per_day=key.tokens_per_day,
        tokens_per_minute=key.tokens_per_minute,
        create_time=to_timestamp(key.create_time),
    )
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(to_timestamp(key.revoke_time))
    return message


def new_key_from_proto(request: gateway_pb2.CreateApiKeyRequest) -> NewApiKey:
    """The key asked for; an unspecified or unknown scope is refused."""
    scopes: list[Scope] = []
    violations: list[FieldViolation] = []
    for index, number in enumerate(request.scopes):
        scope = SCOPE_FROM_PROTO.get(number)
        if scope is None:
            violations.append(
                FieldViolation(
                    f"scopes[{index}]",
                    "must be SCOPE_CHAT, SCOPE_FINE_TUNE, SCOPE_REVIEW or SCOPE_ADMIN",
                )
            )
        elif scope not in scopes:
            scopes.append(scope)
    if violations:
        raise InvalidArgumentError("invalid API key request", violations)
    return NewApiKey(
        name=request.name,
        scopes=tuple(scopes),
        requests_per_minute=request.requests_per_minute,
        tokens_per_day=request.tokens_per_day,
        tokens_per_minute=request.tokens_per_minute,
    )


def erase_values_from_proto(request: gateway_pb2.EraseCapturedChatsRequest) -> list[str]:
    """The values to erase; none, or a short one (which would match far more than
    the person's data), is refused."""
    values = list(request.values)
    if not values:
        raise invalid_request("values: give at least one value to erase", param="values")
    if too_short(values):
        raise invalid_request(
            f"values: each value needs {MIN_VALUE_CHARS} characters or more", param="values"
        )
    return values


def erased_to_proto(erased: ErasedCaptures) -> gateway_pb2.EraseCapturedChatsResponse:
    """What the store deleted, as the contract's message."""
    return gateway_pb2.EraseCapturedChatsResponse(
        erased_response_ids=erased.response_ids,
        erased_feedback=erased.feedback,
        review_item_ids=erased.review_item_ids,
    )


def capture_settings_to_proto(settings: CaptureSettings) -> gateway_pb2.CaptureSettings:
    """The settings in force as the contract's message."""
    message = gateway_pb2.CaptureSettings(
        enabled=settings.enabled,
        sample_percent=settings.sample_percent,
        updated_by=settings.updated_by,
    )
    if settings.update_time is not None:
        message.update_time.CopyFrom(to_timestamp(settings.update_time))
    return message


def capture_update_from_proto(
    request: gateway_pb2.UpdateCaptureSettingsRequest, named: set[str]
) -> tuple[bool | None, int | None]:
    """The enabled flag and sample share to set, None for each the body left out
    (``named``: the fields of ``settings`` the body named, in either JSON spelling)."""
    settings = request.settings
    if settings.dataset_name:
        raise invalid_request(
            "settings.dataset_name: must be empty; captured chats go to the review queue, "
            "and reach datasets through its export (ownchat eval queue export)",
            param="settings.dataset_name",
        )
    enabled = settings.enabled if "enabled" in named else None
    sample = None
    if named & {"samplePercent", "sample_percent"}:
        sample = settings.sample_percent
        # Refused before the store is read.
        check_sample_percent(sample)
    if enabled is None and sample is None:
        raise invalid_request(
            "settings: name at least one of enabled and samplePercent", param="settings"
        )
    return enabled, sample


def _feedback_of(request: Request) -> FeedbackLoop:
    feedback = context_of(request).feedback
    if feedback is None:
        # Only a gateway built without a capture store (never the service's).
        raise invalid_request("this gateway does not capture chats")
    return feedback


async def _parse(request: Request, message: M) -> M:
    """The body as a protobuf message in its JSON mapping; an empty body is the empty message."""
    parsed, _ = await _parse_named(request, message)
    return parsed


async def _parse_named(request: Request, message: M) -> tuple[M, dict[str, Any]]:
    """The body as a protobuf message, and the JSON object it was read from."""
    body = await request.body()
    if not body.strip():
        return message, {}
    name = message.DESCRIPTOR.name
    try:
        document = json.loads(body)
    except ValueError:
        raise invalid_request(f"request body is not valid JSON (a {name})") from None
    if not isinstance(document, dict):
        raise invalid_request(f"request body must be a JSON object (a {name})")
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        raise invalid_request(f"request body is not a valid {name}: {error}") from None
    return message, document


def _answer(message: Message) -> JSONResponse:
    body: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )
    return JSONResponse(body)


def create_admin_app(settings: GatewaySettings) -> FastAPI:
    """The admin app; ``app.state.context`` must be set before it takes requests."""
    app = new_app(settings, "ownchat gateway admin", required_scope)

    @app.post("/api-keys", response_model=None)
    async def create_api_key(request: Request) -> JSONResponse:
        """Creates a key; the answer carries its secret, shown this once."""
        context = context_of(request)
        asked = await _parse(request, gateway_pb2.CreateApiKeyRequest())
        created = context.keys.create(new_key_from_proto(asked))
        caller = principal_of(request.scope)
        # The secret is never logged; the id is what names the key from now on.
        logger.info(
            "api key created",
            extra={
                "request_id": request_id_of(request.scope),
                "api_key_id": created.key.id,
                "scopes": sorted(created.key.scopes),
                "by": caller.id if caller else None,
            },
        )
        return _answer(
            gateway_pb2.CreateApiKeyResponse(
                api_key=api_key_to_proto(created.key), secret=created.secret
            )
        )

    @app.get("/api-keys", response_model=None)
    async def list_api_keys(request: Request) -> JSONResponse:
        """Every key, revoked ones included, oldest first, without secrets."""
        context = context_of(request)
        keys = context.keys.list()
        return _answer(gateway_pb2.ListApiKeysResponse(api_keys=map(api_key_to_proto, keys)))

    @app.post("/api-keys/{key_id}:revoke", response_model=None)
    async def revoke_api_key(key_id: str, request: Request) -> JSONResponse:
        """Revokes a key at once; its secret is refused from the next request on."""
        context = context_of(request)
        asked = await _parse(request, gateway_pb2.RevokeApiKeyRequest())
        if asked.api_key_id and asked.api_key_id != key_id:
            raise invalid_request(
                "api_key_id in the body differs from the key in the path", param="api_key_id"
            )
        key = context.keys.revoke(key_id)
        caller = principal_of(request.scope)
        logger.info(
            "api key revoked",
            extra={
                "request_id": request_id_of(request.scope),
                "api_key_id": key.id,
                "by": caller.id if caller else None,
            },
        )
        return _answer(gateway_pb2.RevokeApiKeyResponse(api_key=api_key_to_proto(key)))

    @app.get("/capture-settings", response_model=None, responses=_SETTINGS_ANSWER)
    async def get_capture_settings(request: Request) -> JSONResponse:
        """The capture settings in force."""
        settings = _feedback_of(request).settings(fresh=True)
        return _answer(
            gateway_pb2.GetCaptureSettingsResponse(settings=capture_settings_to_proto(settings))
        )

    @app.patch(
        "/capture-settings",
        response_model=None,
        openapi_extra=_SETTINGS_BODY,
        responses=_SETTINGS_ANSWER,
    )
    async def update_capture_settings(request: Request) -> JSONResponse:
        """Changes the fields of the capture settings the body names."""
        feedback = _feedback_of(request)
        asked, document = await _parse_named(request, gateway_pb2.UpdateCaptureSettingsRequest())
        named = document.get("settings")
        enabled, sample = capture_update_from_proto(
            asked, set(named) if isinstance(named, dict) else set()
        )
        caller = principal_of(request.scope)
        settings = feedback.update_settings(
            enabled=enabled, sample_percent=sample, updated_by=caller.id if caller else ""
        )
        logger.info(
            "capture settings changed",
            extra={
                "request_id": request_id_of(request.scope),
                "enabled": settings.enabled,
                "sample_percent": settings.sample_percent,
                "by": settings.updated_by,
            },
        )
        return _answer(
            gateway_pb2.UpdateCaptureSettingsResponse(settings=capture_settings_to_proto(settings))
        )

    @app.post(
        "/captured-chats:erase",
        response_model=None,
        openapi_extra=_ERASE_BODY,
        responses=_ERASE_ANSWER,
    )
    async def erase_captured_chats(request: Request) -> JSONResponse:
        """Deletes the captured chats and feedback holding any of the values."""
        context = context_of(request)
        values = erase_values_from_proto(
            await _parse(request, gateway_pb2.EraseCapturedChatsRequest())
        )
        if context.feedback is None:
            # No capture store: nothing was ever captured, so nothing holds the values.
            return _answer(gateway_pb2.EraseCapturedChatsResponse())
        # A scan of every chat: off the event loop, which keeps answering chats meanwhile.
        erased = await asyncio.to_thread(context.feedback.store.erase, values)
        caller = principal_of(request.scope)
        # Counts only: the values are the very data being erased.
        logger.info(
            "captured chats erased",
            extra={
                "request_id": request_id_of(request.scope),
                "chats": len(erased.response_ids),
                "feedback": erased.feedback,
                "by": caller.id if caller else None,
            },
        )
        return _answer(erased_to_proto(erased))

    add_not_found_route(app, "/admin/v1")
    return app

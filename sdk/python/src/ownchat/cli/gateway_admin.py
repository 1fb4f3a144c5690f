"""Calls to the gateway's admin endpoints (``/admin/v1``) with the ownchat token.

The gateway speaks REST only; its admin bodies are the protobuf JSON of
``ownchat.gateway.v1.GatewayAdminService``. Used by ``ownchat keys`` and by
``ownchat data erase``, which erases captured chats too.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ownchat.auth import bearer, load_or_create_token
from ownchat.config import ClientSettings


class GatewayCallError(Exception):
    """An admin call the gateway refused or that could not reach it."""


def admin_call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call to ``/admin/v1/<path>`` with the ownchat token; returns the JSON answer."""
    settings = ClientSettings()
    token = load_or_create_token(settings.home, settings.token)
    url = f"{settings.gateway_url.rstrip('/')}/admin/v1/{path}"
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": bearer(token), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_seconds) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = error.reason
        raise GatewayCallError(f"the gateway answered {error.code}: {message}") from None
    except urllib.error.URLError as error:
        raise GatewayCallError(f"cannot reach the gateway at {url}: {error.reason}") from None

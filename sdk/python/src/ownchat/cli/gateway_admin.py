"""Calls to the gateway's admin endpoints (``/admin/v1``) with the ownchat token.

The gateway speaks REST only; its admin bodies are the protobuf JSON of
``ownchat.gateway.v1.GatewayAdminService``. Used by ``ownchat keys``, ``ownchat
capture`` and ``ownchat data erase``, which erases captured chats too.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import typer

from ownchat.auth import bearer, load_or_create_token
from ownchat.cli.common import error_console
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


def admin_call_or_exit(
    method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`admin_call` for a command: a refusal is printed and the command exits 1."""
    try:
        return admin_call(method, path, body)
    except GatewayCallError as error:
        error_console.print(f"[red]error[/red] {error}")
        raise typer.Exit(1) from None


def when(stamp: str | None) -> str:
    """A protobuf JSON timestamp for people (UTC, to the second); "" for none."""
    if not stamp:
        return ""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")

"""``ownchat keys``: the gateway's API keys, through its admin endpoints.

ownchat keys create --name alice --scope review [--scope chat]
ownchat keys create --name bot --scope chat --rpm 60 --tpm 20000 --token-quota 500000
ownchat keys list
ownchat keys revoke ak_0123456789abcdef

Calls go to ``$OWNCHAT_GATEWAY_URL`` (http://127.0.0.1:3000 by default) with the
ownchat token. A key's secret is printed once, by ``create``; the gateway keeps
only its hash. A limit left out, or ``default``, is the gateway's default
(``OWNCHAT_GATEWAY_DEFAULT_*``); ``unlimited`` lifts it for that key.
"""

from __future__ import annotations

import urllib.parse
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from ownchat.cli.common import console
from ownchat.cli.gateway_admin import admin_call_or_exit, when

keys_app = typer.Typer(
    help="API keys of the gateway, for chat clients and reviewers.", no_args_is_help=True
)


class ScopeName(StrEnum):
    """The scopes a key may hold, as the command line names them."""

    CHAT = "chat"
    FINE_TUNE = "fine-tune"
    REVIEW = "review"
    ADMIN = "admin"


# ownchat.gateway.v1.Scope in protobuf's JSON mapping.
SCOPE_JSON = {
    ScopeName.CHAT: "SCOPE_CHAT",
    ScopeName.FINE_TUNE: "SCOPE_FINE_TUNE",
    ScopeName.REVIEW: "SCOPE_REVIEW",
    ScopeName.ADMIN: "SCOPE_ADMIN",
}
SCOPE_NAMES = {value: name.value for name, value in SCOPE_JSON.items()}

# A key's limit values that are not counts (ownchat.gateway.v1.ApiKey).
DEFAULT_LIMIT = 0
UNLIMITED = -1
_LIMIT_WORDS = {"default": DEFAULT_LIMIT, "unlimited": UNLIMITED, "none": UNLIMITED}


def parse_limit(text: str | int) -> int:
    """A limit from the command line: a count, ``default`` or ``unlimited``."""
    if isinstance(text, int):  # the option's default
        return text
    word = _LIMIT_WORDS.get(text.strip().lower())
    if word is not None:
        return word
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter("must be a count, 'default' or 'unlimited'") from None
    if value < UNLIMITED:
        raise typer.BadParameter("must be a count, 'default' or 'unlimited'")
    return value


def limits_text(key: dict[str, Any]) -> str:
    """A key's own limits as ``keys list`` shows them: those that are not the default."""
    parts = []
    for field, unit in (
        ("requestsPerMinute", "rpm"),
        ("tokensPerMinute", "tpm"),
        ("tokensPerDay", "tokens/day"),
    ):
        # int64 fields come as JSON strings.
        number = int(key.get(field) or DEFAULT_LIMIT)
        if number != DEFAULT_LIMIT:
            parts.append(f"{'unlimited' if number == UNLIMITED else number} {unit}")
    return ", ".join(parts) or "default"


def _scopes(key: dict[str, Any]) -> str:
    return ", ".join(SCOPE_NAMES.get(s, s) for s in key.get("scopes", []))


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A name for people, such as who holds the key.")],
    scope: Annotated[list[ScopeName], typer.Option(help="What the key may do (repeatable).")],
    requests_per_minute: Annotated[
        int,
        typer.Option(
            "--rpm",
            "--requests-per-minute",
            parser=parse_limit,
            metavar="N|default|unlimited",
            show_default="default",
            help="Requests per minute.",
        ),
    ] = DEFAULT_LIMIT,
    tokens_per_minute: Annotated[
        int,
        typer.Option(
            "--tpm",
            "--tokens-per-minute",
            parser=parse_limit,
            metavar="N|default|unlimited",
            show_default="default",
            help="Tokens (prompt plus completion) per minute.",
        ),
    ] = DEFAULT_LIMIT,
    tokens_per_day: Annotated[
        int,
        typer.Option(
            "--token-quota",
            "--tokens-per-day",
            parser=parse_limit,
            metavar="N|default|unlimited",
            show_default="default",
            help="Token quota: tokens per UTC day.",
        ),
    ] = DEFAULT_LIMIT,
    secret_only: Annotated[bool, typer.Option(help="Print only the secret, for scripts.")] = False,
) -> None:
    """Create a key and print its secret, which is shown only this once."""
    answer = admin_call_or_exit(
        "POST",
        "api-keys",
        {
            "name": name,
            "scopes": [SCOPE_JSON[s] for s in scope],
            "requestsPerMinute": requests_per_minute,
            "tokensPerMinute": tokens_per_minute,
            "tokensPerDay": tokens_per_day,
        },
    )
    if secret_only:
        typer.echo(answer["secret"])
        return
    key = answer["apiKey"]
    console.print(
        f"created key [bold]{key['id']}[/bold] ({escape(key['name'])}; {_scopes(key)}; "
        f"limits: {limits_text(key)})"
    )
    console.print("secret, shown only now: store it where its holder can find it")
    # Plain output: the secret must not be wrapped or styled.
    typer.echo(answer["secret"])


@keys_app.command("list")
def list_keys() -> None:
    """List every key, revoked ones included, without secrets."""
    keys = admin_call_or_exit("GET", "api-keys").get("apiKeys", [])
    if not keys:
        console.print("no API keys yet; create one with `ownchat keys create`")
        return
    # Ids are what people copy: never wrapped.
    table = Table(Column("id", no_wrap=True), "name", "scopes", "limits", "created", "revoked")
    for key in keys:
        table.add_row(
            key["id"],
            escape(key["name"]),
            _scopes(key),
            limits_text(key),
            when(key.get("createTime")),
            when(key.get("revokeTime")),
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (ak_...).")]) -> None:
    """Revoke a key; the gateway refuses it from the next request on."""
    key = admin_call_or_exit("POST", f"api-keys/{urllib.parse.quote(key_id, safe='')}:revoke")[
        "apiKey"
    ]
    console.print(
        f"revoked key [bold]{key['id']}[/bold] ({escape(key['name'])}) at {when(key['revokeTime'])}"
    )

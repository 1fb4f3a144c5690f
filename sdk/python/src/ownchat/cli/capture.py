"""``ownchat capture``: which live chats the gateway captures for review.

ownchat capture show
ownchat capture set --on [--sample 10]
ownchat capture set --off

A request's ``store: true`` is always captured and ``store: false`` never; these
settings decide for the chats that say neither. Captured chats are scrubbed of
personal data by the data service before they are kept, and go to the
evaluator's review queue. Calls go to ``$OWNCHAT_GATEWAY_URL`` with the ownchat
token; every gateway worker follows a change within a second.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ownchat.cli.common import console
from ownchat.cli.gateway_admin import admin_call_or_exit, when

capture_app = typer.Typer(
    help="Which live chats the gateway captures for the review queue.", no_args_is_help=True
)

PATH = "capture-settings"


def _describe(settings: dict[str, Any]) -> str:
    if not settings.get("enabled"):
        state = "off: only chats whose request says store=true are captured"
    else:
        share = settings.get("samplePercent", 0)
        state = f"on for {share}% of chats that do not say store=false"
    changed = when(settings.get("updateTime"))
    by = settings.get("updatedBy")
    origin = f" (set {changed} by {by})" if changed else " (the gateway's default)"
    return f"capture {state}{origin}"


@capture_app.command("show")
def show() -> None:
    """Show the capture settings in force."""
    console.print(_describe(admin_call_or_exit("GET", PATH)["settings"]))


@capture_app.command("set")
def set_settings(
    enabled: Annotated[
        bool | None,
        typer.Option("--on/--off", help="Capture chats that do not say store, or not."),
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            min=0,
            max=100,
            metavar="PERCENT",
            help="The share of those chats captured while on, 0 to 100.",
        ),
    ] = None,
) -> None:
    """Change the capture settings; what is not given stays as it is."""
    if enabled is None and sample is None:
        raise typer.BadParameter("give --on, --off or --sample")
    settings: dict[str, Any] = {}
    if enabled is not None:
        settings["enabled"] = enabled
    if sample is not None:
        settings["samplePercent"] = sample
    answer = admin_call_or_exit("PATCH", PATH, {"settings": settings})
    console.print(_describe(answer["settings"]))

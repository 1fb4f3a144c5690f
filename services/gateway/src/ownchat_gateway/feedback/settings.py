"""Which chats are captured when the request does not say: the capture settings.

A request's ``store: true`` is always captured and ``store: false`` never. For the
others, the operator's settings decide (``PATCH /admin/v1/capture-settings``):
captured while enabled, a ``sample_percent`` share of them. Until an operator
changes them, they are the gateway's ``capture_conversations`` setting at 100%.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ownchat_gateway.errors import invalid_request

FULL_SAMPLE_PERCENT = 100


def check_sample_percent(percent: int) -> None:
    """Refuses a share outside 0 to 100 with a 400 naming the field."""
    if not 0 <= percent <= FULL_SAMPLE_PERCENT:
        raise invalid_request(
            f"settings.sample_percent: must be from 0 to {FULL_SAMPLE_PERCENT}, not {percent}",
            param="settings.sample_percent",
        )


@dataclass(frozen=True)
class CaptureSettings:
    """The settings in force, and who set them (None while they are the defaults)."""

    enabled: bool
    sample_percent: int = FULL_SAMPLE_PERCENT
    update_time: float | None = None
    updated_by: str = ""

    def __post_init__(self) -> None:
        check_sample_percent(self.sample_percent)

    def captures(self, asked: bool | None, response_id: str) -> bool:
        """Whether the chat answered as ``response_id`` is captured; ``asked`` is its
        request's ``store``.

        The sample is drawn from the response id, so a reply is in or out of it
        whichever worker asks, and however often.
        """
        if asked is not None:
            return asked
        if not self.enabled or self.sample_percent <= 0:
            return False
        if self.sample_percent >= FULL_SAMPLE_PERCENT:
            return True
        digest = hashlib.blake2b(response_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest) % FULL_SAMPLE_PERCENT < self.sample_percent

"""Page tokens of the List RPCs: an opaque offset."""

from __future__ import annotations

import base64

from ownchat.errors import FieldViolation, InvalidArgumentError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_window(page_size: int, page_token: str) -> tuple[int, int]:
    """The (limit, offset) a List request asks for."""
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            "invalid page size", [FieldViolation("page_size", f"must be within 0..{MAX_PAGE_SIZE}")]
        )
    offset = 0
    if page_token:
        try:
            offset = int(base64.urlsafe_b64decode(page_token.encode()).decode())
        except ValueError:
            raise InvalidArgumentError(
                "invalid page token", [FieldViolation("page_token", "not a token of this API")]
            ) from None
        if offset < 0:
            raise InvalidArgumentError(
                "invalid page token", [FieldViolation("page_token", "not a token of this API")]
            )
    return page_size or DEFAULT_PAGE_SIZE, offset


def next_page_token(limit: int, offset: int, returned: int) -> str:
    """The token of the next page, or empty when this page was the last."""
    if returned < limit:
        return ""
    return base64.urlsafe_b64encode(str(offset + limit).encode()).decode()

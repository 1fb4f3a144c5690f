"""Capture a chat, take a thumb on it, and route it to the review queue.

A captured chat is scrubbed by the data service (one placeholder scope for the
whole conversation) before it is stored or enqueued; when the data service cannot
scrub, nothing is kept. Every captured chat becomes a rating item in the
evaluator's queue; a thumbs-down on it adds a correction item at a higher
priority, so reviewers see those first and their better answers can go back into
training (the evaluator exports corrections as an SFT dataset version).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ownchat.common.v1 import common_pb2
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.roles import ROLE_BY_NAME
from ownchat_gateway.feedback.settings import CaptureSettings
from ownchat_gateway.feedback.store import CapturedChat, CaptureStore, Feedback, Rating
from ownchat_gateway.metrics import CHATS_CAPTURED, FEEDBACK

logger = logging.getLogger("ownchat.gateway.feedback")

# Thumbs-down corrections are offered before anything enqueued at 0.
THUMBS_DOWN_PRIORITY = 10
_ROLES = {**ROLE_BY_NAME, "developer": common_pb2.ROLE_SYSTEM}
# How long a worker keeps the capture settings it read: a change reaches every
# worker within this, and a reply does not cost a read of the store.
SETTINGS_TTL_SECONDS = 1.0
# Opt-in: nothing is captured by default unless a request asks.
CAPTURE_OFF = CaptureSettings(enabled=False)


class Scrubber(Protocol):
    """Replaces personal data in texts (the data service's ScrubText)."""

    async def scrub_texts(self, texts: Sequence[str], request_id: str) -> list[str]: ...


class ReviewQueue(Protocol):
    """Enqueues items in the evaluator's review queue."""

    async def enqueue_review_item(self, item: evaluator_pb2.ReviewItem, request_id: str) -> str: ...


class FeedbackLoop:
    """Capture and feedback over the store, the scrubber and the queue."""

    def __init__(
        self,
        store: CaptureStore,
        scrubber: Scrubber,
        queue: ReviewQueue,
        default_settings: CaptureSettings = CAPTURE_OFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``default_settings`` hold until an operator sets others in the store."""
        self.store = store
        self._scrubber = scrubber
        self._queue = queue
        self._default_settings = default_settings
        self._clock = clock
        self._settings: CaptureSettings | None = None
        self._settings_read_at = 0.0
        self._captures: set[asyncio.Task[CapturedChat | None]] = set()

    def settings(self, *, fresh: bool = False) -> CaptureSettings:
        """The capture settings in force, as read at most a second ago (``fresh``: now)."""
        now = self._clock()
        if fresh or self._settings is None or now - self._settings_read_at >= SETTINGS_TTL_SECONDS:
            self._settings = self.store.capture_settings() or self._default_settings
            self._settings_read_at = now
        return self._settings

    def update_settings(
        self, *, enabled: bool | None, sample_percent: int | None, updated_by: str
    ) -> CaptureSettings:
        """Changes the settings given (None keeps one as it is), for every worker."""
        current = self.settings(fresh=True)
        self._settings = self.store.set_capture_settings(
            enabled=current.enabled if enabled is None else enabled,
            sample_percent=current.sample_percent if sample_percent is None else sample_percent,
            updated_by=updated_by,
        )
        self._settings_read_at = self._clock()
        return self._settings

    def capture_later(
        self,
        *,
        response_id: str,
        model_id: str,
        key_id: str,
        messages: Sequence[tuple[str, str]],
        reply: str,
        request_id: str,
    ) -> None:
        """Captures in the background: the caller has its reply already."""
        task = asyncio.ensure_future(
            self.capture(
                response_id=response_id,
                model_id=model_id,
                key_id=key_id,
                messages=messages,
                reply=reply,
                request_id=request_id,
            )
        )
        self._captures.add(task)  # a running task must be referenced to be kept
        task.add_done_callback(self._captures.discard)

    async def close(self, timeout: float = 10.0) -> None:
        """Lets the captures in flight finish (cancelling them after ``timeout``), then
        closes the store."""
        if self._captures:
            _, pending = await asyncio.wait(self._captures, timeout=timeout)
            for task in pending:
                task.cancel()
        self.store.close()

    async def capture(
        self,
        *,
        response_id: str,
        model_id: str,
        key_id: str,
        messages: Sequence[tuple[str, str]],
        reply: str,
        request_id: str,
    ) -> CapturedChat | None:
        """Scrubs, stores and enqueues a chat; None (and nothing kept) when it cannot scrub.

        Runs after the reply was sent: a failure here never reaches the caller.
        """
        try:
            scrubbed = await self._scrubber.scrub_texts(
                [content for _, content in messages] + [reply], request_id
            )
        except Exception as error:  # noqa: BLE001 - any failure means: keep nothing
            logger.warning(
                "chat not captured: it could not be scrubbed",
                extra={"request_id": request_id, "response_id": response_id, "error": str(error)},
            )
            CHATS_CAPTURED.labels("not_scrubbed").inc()
            return None
        context = tuple(
            (role, text) for (role, _), text in zip(messages, scrubbed[:-1], strict=True)
        )
        chat = CapturedChat(
            response_id=response_id,
            model_id=model_id,
            key_id=key_id,
            messages=context,
            reply=scrubbed[-1],
            create_time=time.time(),
        )
        item_id = await self._enqueue(chat, evaluator_pb2.REVIEW_KIND_RATING, 0, request_id)
        chat = dataclasses.replace(chat, review_item_id=item_id)
        self.store.add_chat(chat)
        CHATS_CAPTURED.labels("stored").inc()
        return chat

    async def feedback(
        self, *, response_id: str, rating: Rating, comment: str, key_id: str, request_id: str
    ) -> tuple[Feedback, bool]:
        """Keeps a thumb (its comment scrubbed) and whether the reply had been captured.

        A thumbs-down on a captured reply enqueues a correction item ahead of the
        rest. Raises when the comment cannot be scrubbed: it is not kept unscrubbed.
        """
        if comment:
            (comment,) = await self._scrubber.scrub_texts([comment], request_id)
        chat = self.store.chat(response_id)
        item_id = ""
        if chat is not None and rating is Rating.DOWN:
            item_id = await self._enqueue(
                chat, evaluator_pb2.REVIEW_KIND_CORRECTION, THUMBS_DOWN_PRIORITY, request_id
            )
        feedback = self.store.add_feedback(response_id, rating, comment, key_id, item_id)
        FEEDBACK.labels(rating.value).inc()
        return feedback, chat is not None

    async def _enqueue(
        self,
        chat: CapturedChat,
        kind: evaluator_pb2.ReviewKind.ValueType,
        priority: int,
        request_id: str,
    ) -> str:
        """The new item's id; "" when the evaluator cannot take it (the chat stays stored)."""
        item = evaluator_pb2.ReviewItem(
            kind=kind,
            context=[
                common_pb2.ChatMessage(role=_ROLES.get(role, common_pb2.ROLE_USER), content=text)
                for role, text in chat.messages
            ],
            reply_a=chat.reply,
            model_id_a=chat.model_id,
            source=f"chat:{chat.response_id}",
            priority=priority,
        )
        try:
            return await self._queue.enqueue_review_item(item, request_id)
        except Exception as error:  # noqa: BLE001 - the chat is kept; the queue can catch up
            logger.warning(
                "captured chat not enqueued for review",
                extra={
                    "request_id": request_id,
                    "response_id": chat.response_id,
                    "error": str(error),
                },
            )
            return ""

"""The gateway's own prompt size limits, checked before anything reaches serving.

The body size limit bounds bytes; these bound what the model is asked to read:
``max_prompt_messages`` messages of a chat and ``max_prompt_chars`` characters of
content in all. A prompt within them may still exceed the deployed model's
context, in tokens; serving refuses that, and the gateway answers it as
OpenAI's ``context_length_exceeded``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.errors import prompt_too_large
from ownchat_gateway.protocol import ChatMessage


def check_chat_prompt(messages: Sequence[ChatMessage], settings: GatewaySettings) -> None:
    """Raises a 400 for a conversation over the message or character limit."""
    if len(messages) > settings.max_prompt_messages:
        raise prompt_too_large(
            f"Invalid 'messages': array too long. Expected an array with maximum length "
            f"{settings.max_prompt_messages}, but got an array with length {len(messages)} "
            "instead.",
            "messages",
            too_many_items=True,
        )
    chars = sum(len(message.text()) for message in messages)
    if chars > settings.max_prompt_chars:
        raise prompt_too_large(
            f"Invalid 'messages': the conversation has {chars} characters of content; "
            f"this gateway accepts at most {settings.max_prompt_chars}.",
            "messages",
            too_many_items=False,
        )


def check_text_prompt(prompt: str, settings: GatewaySettings) -> None:
    """Raises a 400 for a text prompt over the character limit."""
    if len(prompt) > settings.max_prompt_chars:
        raise prompt_too_large(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{settings.max_prompt_chars}, but got a string with length {len(prompt)} instead.",
            "prompt",
            too_many_items=False,
        )

"""Chat roles between their OpenAI names and the ``ownchat.common.v1.Role`` enum."""

from __future__ import annotations

from ownchat.common.v1 import common_pb2

ROLE_BY_NAME: dict[str, common_pb2.Role.ValueType] = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}
NAME_BY_ROLE: dict[common_pb2.Role.ValueType, str] = {
    role: name for name, role in ROLE_BY_NAME.items()
}

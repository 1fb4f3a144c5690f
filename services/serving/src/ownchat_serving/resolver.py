"""How a model id becomes files: the resolver the core is given.

In the service the trainer's model registry answers (``trainer_resolver``);
tests hand the core a plain function over a local artifact store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum


class ModelKind(Enum):
    """What a registered model is; an adapter is served on an engine of its base (vLLM)."""

    BASE = "base"
    FULL = "full"
    LORA_ADAPTER = "lora_adapter"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ResolvedModel:
    """A model version's files in the artifact store and whether it may be deployed.

    For a LoRA adapter, ``base_model_id`` and ``base_artifact_digest`` name the
    model it adapts and that model's files; a block on the base blocks it too.
    """

    model_id: str
    artifact_digest: str
    kind: ModelKind = ModelKind.FULL
    blocked_reason: str = ""
    base_model_id: str = ""
    base_artifact_digest: str = ""


# Raises NotFoundError for an unknown id, UnavailableError when the registry
# cannot be reached.
ModelResolver = Callable[[str], Awaitable[ResolvedModel]]

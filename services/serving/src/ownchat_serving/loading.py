"""Bringing a model version's files up as a warmed engine, with every check first.

The files must match their manifest in the artifact store and hold
safetensors weights; the engine must then load them and produce a first
reply. Used for a new deployment, for reloading the live ones when the
service starts, and for starting an engine again after its process died.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

from ownchat.artifacts import ArtifactStore
from ownchat.errors import FailedPreconditionError, NotFoundError, PreconditionViolation
from ownchat_serving.engine import Adapter, EngineLoadError, EngineOptions
from ownchat_serving.engines import Engine, load_engine
from ownchat_serving.generation import ChatTurn, ResolvedSampling
from ownchat_serving.store import EngineKind

WARMUP = (ChatTurn("user", "Hello"),)


@dataclass(frozen=True)
class Loader:
    """Where model files come from and how engines are started."""

    artifacts: ArtifactStore
    options: EngineOptions
    # Where ONNX exports of model versions are kept (the service's own folder).
    export_root: Path

    async def verified(self, model_id: str, digest: str) -> Path:
        """The directory of a model's files once they match their manifest and hold
        safetensors weights; FailedPreconditionError naming what is wrong otherwise."""
        try:
            directory = self.artifacts.path(digest)
            tampered = await asyncio.to_thread(self.artifacts.verify_tree, digest)
        except (NotFoundError, OSError, ValueError, KeyError):
            raise FailedPreconditionError(
                f"the files of model {model_id!r} ({digest}) are missing from the artifact "
                "store or have no manifest",
                [PreconditionViolation("MODEL_FILES", digest, "not a stored model directory")],
            ) from None
        if tampered:
            shown = ", ".join(tampered[:5]) + (" ..." if len(tampered) > 5 else "")
            raise FailedPreconditionError(
                f"the files of model {model_id!r} do not match their manifest: {shown}",
                [
                    PreconditionViolation("MODEL_FILES_TAMPERED", name, "hash differs")
                    for name in tampered
                ],
            )
        if not any(directory.glob("*.safetensors")):
            raise FailedPreconditionError(
                f"model {model_id!r} has no safetensors weights; only safetensors are loaded",
                [PreconditionViolation("MODEL_FORMAT", model_id, "no *.safetensors file")],
            )
        return directory

    async def load(
        self, model_id: str, digest: str, kind: EngineKind, adapters: bool = False
    ) -> Engine:
        """Verifies the files, then loads and warms them; ``adapters`` as ``load_engine``'s.

        Raises FailedPreconditionError naming what is wrong with the files or
        why the engine would not start.
        """
        directory = await self.verified(model_id, digest)
        try:
            engine = await load_engine(
                kind, directory, self.options, export_root=self.export_root, adapters=adapters
            )
        except EngineLoadError as error:
            raise FailedPreconditionError(
                f"model {model_id!r} could not be loaded: {error}",
                [PreconditionViolation("MODEL_LOAD", model_id, str(error))],
            ) from error
        try:
            await self.warm(engine, model_id)
        except BaseException:
            await engine.shutdown()
            raise
        return engine

    async def warm(self, engine: Engine, model_id: str, adapter: Adapter | None = None) -> None:
        """A first short reply, through ``adapter`` if any (vLLM then loads it)."""
        try:
            warmup = ResolvedSampling(temperature=0.0, top_p=1.0, max_tokens=2, stop=(), seed=None)
            await engine.complete(
                engine.render(WARMUP), warmup, f"warmup-{uuid.uuid4().hex}", adapter
            )
        except Exception as error:  # noqa: BLE001 - any failure means it cannot serve
            raise FailedPreconditionError(
                f"model {model_id!r} loaded but failed its first generation: {error}",
                [PreconditionViolation("MODEL_WARMUP", model_id, str(error))],
            ) from error

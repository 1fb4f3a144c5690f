"""The model registry: base models, imported once on first use, and fine-tuned versions.

A base model enters the registry the first time anything names it (GetModel,
ListModels, CreateTrainingJob): it is exported to a safetensors checkpoint,
stored in the artifact store and recorded. Each base model has its own lock,
so concurrent first uses import it once and a slow import of one base model
does not hold up another.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ownchat.artifacts import ArtifactStore
from ownchat.errors import FailedPreconditionError, NotFoundError
from ownchat_trainer.base_models import BaseModelSource, discover, export_checkpoint
from ownchat_trainer.records import Model, ModelKind
from ownchat_trainer.store import TrainerStore

logger = logging.getLogger("ownchat.trainer.registry")

Exporter = Callable[[BaseModelSource, Path], None]


class ModelRegistry:
    """Finds models by name, importing base models on first use."""

    def __init__(
        self,
        store: TrainerStore,
        artifacts: ArtifactStore,
        model_dirs: list[Path],
        scratch_dir: Path,
        include_embedded: bool = True,
        exporter: Exporter = export_checkpoint,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._model_dirs = list(model_dirs)
        self._scratch = scratch_dir
        self._include_embedded = include_embedded
        self._export = exporter
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _sources(self) -> dict[str, BaseModelSource]:
        return discover(self._model_dirs, self._include_embedded)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _stored(self, name: str) -> Model | None:
        """The registered model, unless it is a base model whose files have gone."""
        model = self._store.get_model(name)
        if model is None:
            return None
        try:
            self._artifacts.path(model.artifact.digest)
        except NotFoundError:
            if model.kind is ModelKind.BASE:
                return None
            raise FailedPreconditionError(
                f"the files of model {name!r} are missing from the artifact store"
            ) from None
        return model

    def known(self, name: str) -> bool:
        """Whether a name is a registered model or an importable base model (no import)."""
        return self._store.get_model(name) is not None or name in self._sources()

    def base_names(self) -> list[str]:
        """The names of every importable base model."""
        return sorted(self._sources())

    def get(self, name: str) -> Model:
        """A model by name; a base model is imported first if it has not been yet."""
        model = self._stored(name)
        if model is not None:
            return model
        source = self._sources().get(name)
        if source is None:
            raise NotFoundError("model", name)
        with self._lock_for(name):
            model = self._stored(name)
            if model is not None:
                return model
            return self._import(source)

    def _import(self, source: BaseModelSource) -> Model:
        started = time.perf_counter()
        logger.info("importing base model", extra={"model": source.name})
        self._scratch.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self._scratch, prefix="import-"))
        try:
            self._export(source, staging / "model")
            artifact = self._artifacts.put_tree(staging / "model")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        model = self._store.put_base_model(source.name, artifact)
        seconds = time.perf_counter() - started
        logger.info(
            "imported base model",
            extra={
                "model": source.name,
                "seconds": round(seconds, 1),
                "digest": artifact.digest,
                "size_bytes": artifact.size_bytes,
            },
        )
        return model

    def prefetch(self, name: str) -> None:
        """Starts importing a base model in the background if it is not registered yet."""
        if self._store.get_model(name) is not None:
            return

        def run() -> None:
            try:
                self.get(name)
            except Exception:  # noqa: BLE001 - the job that needs it reports the error
                logger.exception("background import failed", extra={"model": name})

        threading.Thread(target=run, name=f"import-{name}", daemon=True).start()

    def list(self, limit: int, offset: int) -> list[Model]:
        """Registered models, newest first, after importing every base model not yet in."""
        for name in self.base_names():
            try:
                self.get(name)
            except (FailedPreconditionError, NotFoundError) as error:
                logger.warning("base model unavailable", extra={"model": name, "error": str(error)})
        return self._store.list_models(limit, offset)

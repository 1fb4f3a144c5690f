"""The model registry: base models, imported once on first use, and fine-tuned versions.

A base model enters the registry the first time anything names it (GetModel,
ListModels, CreateTrainingJob): it is exported to a safetensors checkpoint,
stored in the artifact store and recorded. Each base model has its own lock,
so concurrent first uses import it once and a slow import of one base model
does not hold up another.

A LoRA adapter version can be merged into its base on request: the merged
model is a new full version named ``<adapter id>:merged``, with the adapter's
lineage (base model, job, dataset version, metrics and any block). The merge
runs in a child process, so the service itself never loads a model's weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ownchat.artifacts import Artifact, ArtifactStore
from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from ownchat_trainer.base_models import BaseModelSource, discover, export_checkpoint
from ownchat_trainer.records import Model, ModelKind
from ownchat_trainer.store import TrainerStore, merged_name

logger = logging.getLogger("ownchat.trainer.registry")

Exporter = Callable[[BaseModelSource, Path], None]

# Config keys that hold a model's context length, in the order Transformers' models use them.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
# The merge, run as ``python -c`` with the base, adapter and target directories.
_MERGE_SCRIPT = (
    "import sys; from pathlib import Path; "
    "from ownchat_trainer.engine.lora import merge_adapter; "
    "merge_adapter(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))"
)


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

    def root_base(self, model: Model) -> str:
        """The base model a model's line of fine-tuning started from."""
        if model.kind is ModelKind.LORA_ADAPTER:
            parent = self._store.get_model(model.base_model)
            return model.base_model if parent is None else self.root_base(parent)
        return model.base_model

    def context_length(self, name: str) -> int | None:
        """A model's context in tokens from its config, or None when it cannot be read
        without importing it (the embedded GGUF model before its first use)."""
        model = self._store.get_model(name)
        directory: Path | None = None
        if model is not None:
            try:
                directory = self._artifacts.path(model.artifact.digest)
            except NotFoundError:
                directory = None
        if directory is None:
            source = self._sources().get(name)
            directory = source.directory if source is not None else None
        try:
            config = json.loads((directory / "config.json").read_text()) if directory else {}
        except (OSError, ValueError):
            return None
        for key in _CONTEXT_KEYS:
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def merge_adapter(self, model_id: str) -> Model:
        """Merges an adapter version into its base: a new full version, ``<id>:merged``.

        Merging the same adapter again returns the version made the first time.
        """
        adapter = self.get(model_id)
        if adapter.kind is not ModelKind.LORA_ADAPTER:
            raise InvalidArgumentError(
                f"model {model_id!r} is not a LoRA adapter; only an adapter can be merged",
                [FieldViolation("model_id", f"a {adapter.kind.value} model, not a LoRA adapter")],
            )
        name = merged_name(model_id)
        with self._lock_for(name):
            existing = self._store.get_model(name)
            if existing is not None:
                return existing
            base = self.get(adapter.base_model)
            started = time.perf_counter()
            artifact = self._merge(
                self._artifacts.path(base.artifact.digest),
                self._artifacts.path(adapter.artifact.digest),
            )
            merged = self._store.add_model(
                Model(
                    id=name,
                    kind=ModelKind.FULL,
                    base_model=self.root_base(adapter),
                    artifact=artifact,
                    create_time=time.time(),
                    suffix=adapter.suffix,
                    job_id=adapter.job_id,
                    dataset_version_id=adapter.dataset_version_id,
                    metrics=dict(adapter.metrics),
                    # Trained on the same data: blocked for the same reason.
                    blocked_reason=adapter.blocked_reason,
                )
            )
        logger.info(
            "merged adapter",
            extra={
                "model": model_id,
                "merged": name,
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
        return merged

    def _merge(self, base_dir: Path, adapter_dir: Path) -> Artifact:
        self._scratch.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self._scratch, prefix="merge-"))
        try:
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            # Merging never needs a GPU; leaving them to training jobs.
            env["CUDA_VISIBLE_DEVICES"] = ""
            result = subprocess.run(
                [sys.executable, "-c", _MERGE_SCRIPT, str(base_dir), str(adapter_dir)]
                + [str(staging / "model")],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if result.returncode != 0:
                lines = [line for line in result.stderr.splitlines() if line.strip()]
                raise FailedPreconditionError(
                    "merging the adapter failed: " + (lines[-1] if lines else "no message")
                )
            return self._artifacts.put_tree(staging / "model")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def list(self, limit: int, offset: int) -> list[Model]:
        """Registered models, newest first, after importing every base model not yet in."""
        for name in self.base_names():
            try:
                self.get(name)
            except (FailedPreconditionError, NotFoundError) as error:
                logger.warning("base model unavailable", extra={"model": name, "error": str(error)})
        return self._store.list_models(limit, offset)

"""The evaluator's core: evaluation runs of model versions on dataset versions.

Knows nothing of gRPC. A run is validated when created (the model and the
dataset version must exist), then computed in a background thread; runs that
a restart interrupted are queued again when the service comes back.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ownchat.errors import FieldViolation, InvalidArgumentError
from ownchat_evaluator.store import EvalRun, EvalStore, MetricResult, RunState

logger = logging.getLogger("ownchat.evaluator")

PERPLEXITY = "perplexity"
SUPPORTED_METRICS = (PERPLEXITY,)

ModelLookup = Callable[[str], Path]
"""Resolves a model id to its checkpoint directory; raises NotFoundError."""

DatasetLookup = Callable[[str], Path]
"""Resolves a dataset version id to its validation split file; raises NotFoundError."""


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate."""

    model_id: str
    dataset_version_id: str
    metrics: Sequence[str | None]
    max_samples: int = 0


def read_conversations(split_file: Path, max_samples: int) -> list[list[dict[str, str]]]:
    """The conversations of a split file, at most ``max_samples`` (0: all)."""
    conversations: list[list[dict[str, str]]] = []
    with split_file.open(encoding="utf-8") as handle:
        for line in handle:
            if max_samples and len(conversations) >= max_samples:
                break
            conversations.append(json.loads(line)["messages"])
    return conversations


class EvaluatorCore:
    """Creates evaluation runs and computes them one at a time."""

    def __init__(
        self,
        store: EvalStore,
        models: ModelLookup,
        datasets: DatasetLookup,
        batch_size: int = 8,
        max_length: int = 2048,
    ) -> None:
        self._store = store
        self._models = models
        self._datasets = datasets
        self._batch_size = batch_size
        self._max_length = max_length
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval")

    def resume_unfinished(self) -> None:
        """Queues again the runs a restart interrupted."""
        for run in self._store.unfinished():
            self._store.update(run.id, state=RunState.QUEUED, completed=0)
            self._executor.submit(self._execute, run.id)

    def create_run(self, request: EvalRequest) -> EvalRun:
        violations = []
        metrics = [m or PERPLEXITY for m in request.metrics] or [PERPLEXITY]
        for index, metric in enumerate(metrics):
            if metric not in SUPPORTED_METRICS:
                violations.append(
                    FieldViolation(f"metrics[{index}]", "only METRIC_PERPLEXITY is available yet")
                )
        if request.max_samples < 0:
            violations.append(FieldViolation("max_samples", "must be 0 (all) or more"))
        if not request.model_id:
            violations.append(FieldViolation("model_id", "required"))
        if not request.dataset_version_id:
            violations.append(FieldViolation("dataset_version_id", "required"))
        if violations:
            raise InvalidArgumentError("invalid evaluation request", violations)
        self._models(request.model_id)
        self._datasets(request.dataset_version_id)
        run = EvalRun(
            id=f"eval_{secrets.token_hex(8)}",
            model_id=request.model_id,
            dataset_version_id=request.dataset_version_id,
            metrics=list(dict.fromkeys(metrics)),
            max_samples=request.max_samples,
            state=RunState.QUEUED,
            completed=0,
            total=0,
            create_time=time.time(),
        )
        self._store.add(run)
        self._executor.submit(self._execute, run.id)
        return run

    def get_run(self, run_id: str) -> EvalRun:
        return self._store.get(run_id)

    def list_runs(self, limit: int, offset: int) -> list[EvalRun]:
        return self._store.list_runs(limit, offset)

    def wait(self, run_id: str, timeout: float) -> EvalRun:
        """Polls until a run ends (for tests and the CLI's in-process use)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self._store.get(run_id)
            if run.state in (RunState.SUCCEEDED, RunState.FAILED) or time.monotonic() > deadline:
                return run
            time.sleep(0.1)

    def _execute(self, run_id: str) -> None:
        try:
            self._compute(run_id)
        except Exception as error:  # noqa: BLE001 - a failed run records why
            logger.exception("evaluation failed", extra={"eval_run_id": run_id})
            self._store.update(
                run_id, state=RunState.FAILED, error=f"{type(error).__name__}: {error}"
            )

    def _compute(self, run_id: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ownchat_evaluator.perplexity import corpus_perplexity

        run = self._store.get(run_id)
        model_dir = self._models(run.model_id)
        conversations = read_conversations(self._datasets(run.dataset_version_id), run.max_samples)
        self._store.update(run_id, state=RunState.RUNNING, completed=0, total=len(conversations))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
        context = min(self._max_length, getattr(model.config, "max_position_embeddings", 2048))
        result = corpus_perplexity(
            model,
            tokenizer,
            conversations,
            max_length=context,
            batch_size=self._batch_size,
            on_progress=lambda done: self._store.update(run_id, completed=done),
        )
        details = (
            f"assistant tokens only, whole conversations truncated at {context} tokens "
            f"(no stride), {result.tokens} tokens over {result.conversations} conversations"
        )
        self._store.update(
            run_id,
            state=RunState.SUCCEEDED,
            results=[MetricResult(PERPLEXITY, result.perplexity, details)],
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

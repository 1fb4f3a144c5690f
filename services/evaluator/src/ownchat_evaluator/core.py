"""The evaluator's core: evaluation runs, comparisons and the promotion gate.

Knows nothing of gRPC. A run is validated when created (the request's fields,
then the model and the dataset version must exist, then what depends on the
model), stored with its resolved configuration, then computed in a background
thread, one run at a time: perplexity over the validation conversations, then
greedy replies to their last user turn for the reply metrics. Per-sample
outputs are kept for comparisons, reports and human review. Runs that a
restart interrupted are queued again when the service comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import regex
import torch

from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    OwnchatError,
    PreconditionViolation,
)
from ownchat_evaluator.bootstrap import DEFAULT_RESAMPLES
from ownchat_evaluator.checks import CheckKind, TaskCheck, check_reply, compile_pattern
from ownchat_evaluator.compare import Comparison, compare_runs
from ownchat_evaluator.curves import CurveLookup, LossCurve
from ownchat_evaluator.gate import (
    GateInputs,
    GateThresholds,
    GateVerdict,
    WinRateLookup,
    check_gate,
)
from ownchat_evaluator.modeling import (
    default_precision,
    load_model,
    model_context,
    resolve_device,
)
from ownchat_evaluator.replies import DEFAULT_REFUSAL_PATTERNS, is_refusal
from ownchat_evaluator.report import (
    MAX_WORST_EXAMPLES,
    Report,
    render_comparison_report,
    render_run_report,
)
from ownchat_evaluator.results import RunTimings, metric_results
from ownchat_evaluator.review.validation import check_erasure_values
from ownchat_evaluator.run_config import (
    DEFAULT_MAX_NEW_TOKENS,
    METRICS,
    PERPLEXITY,
    PRECISIONS,
    TASK_ACCURACY,
    RunConfig,
    canonical_metrics,
)
from ownchat_evaluator.samples import EvalSample, any_expected_answers, read_samples
from ownchat_evaluator.store import ErasedEvalSamples, EvalRun, EvalStore, RunState, SampleOutput

logger = logging.getLogger("ownchat.evaluator")

ModelLookup = Callable[[str], Path]
"""Resolves a model id to its checkpoint directory; raises NotFoundError."""

DatasetLookup = Callable[[str], Path]
"""Resolves a dataset version id to its validation split file; raises NotFoundError."""

MAX_NEW_TOKENS_LIMIT = 4096
# Padded tokens per perplexity forward pass when not configured: a CPU gains
# little from wide batches (its matrix products are already efficient) and
# loses to padding; a GPU needs wide ones to be kept busy.
AUTO_TOKENS_PER_BATCH = {"cpu": 4096, "cuda": 32768}
MAX_REFUSAL_PATTERNS = 100
MAX_RESAMPLES = 100_000


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate and how; zero values take the defaults."""

    model_id: str
    dataset_version_id: str
    metrics: Sequence[str | None]
    max_samples: int = 0
    max_new_tokens: int = 0
    context_length: int = 0
    stride: int = 0
    task_check: TaskCheck | None = None
    refusal_patterns: Sequence[str] = ()
    seed: int = 0
    repeat_eval_run_id: str = ""
    precision: str = ""


@dataclass(frozen=True)
class RunOptions:
    """How the evaluator computes runs (from its settings)."""

    max_length: int = 2048
    tokens_per_batch: int = 0
    max_rows: int = 64
    generation_batch_size: int = 16
    device: str = "auto"
    resamples: int = DEFAULT_RESAMPLES


def _validate_fields(request: EvalRequest) -> list[FieldViolation]:
    violations = []
    for index, metric in enumerate(request.metrics):
        if metric is not None and metric not in METRICS:
            violations.append(FieldViolation(f"metrics[{index}]", "not a known metric"))
    if request.max_samples < 0:
        violations.append(FieldViolation("max_samples", "must be 0 (all) or more"))
    if not 0 <= request.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        violations.append(
            FieldViolation("max_new_tokens", f"must be within 0..{MAX_NEW_TOKENS_LIMIT}")
        )
    if request.context_length < 0:
        violations.append(FieldViolation("context_length", "must be 0 (default) or more"))
    if request.stride < 0:
        violations.append(FieldViolation("stride", "must be 0 (default) or more"))
    if request.precision and request.precision not in PRECISIONS:
        violations.append(FieldViolation("precision", f"one of {', '.join(PRECISIONS)}"))
    if len(request.refusal_patterns) > MAX_REFUSAL_PATTERNS:
        violations.append(
            FieldViolation("refusal_patterns", f"at most {MAX_REFUSAL_PATTERNS} phrases")
        )
    for index, pattern in enumerate(request.refusal_patterns):
        if not pattern.strip():
            violations.append(FieldViolation(f"refusal_patterns[{index}]", "must not be empty"))
    check = request.task_check
    wanted = {m for m in request.metrics if m is not None}
    if check is not None:
        if TASK_ACCURACY not in wanted:
            violations.append(
                FieldViolation("task_check", "given, but the task accuracy metric is not asked for")
            )
        if check.kind is CheckKind.REGEX:
            try:
                compile_pattern(check.pattern)
            except regex.error as error:
                violations.append(FieldViolation("task_check.pattern", f"not a pattern: {error}"))
            if not check.pattern:
                violations.append(
                    FieldViolation("task_check.pattern", "required for a regex check")
                )
        elif check.pattern:
            violations.append(FieldViolation("task_check.pattern", "only for a regex check"))
    return violations


def _repeat_violations(request: EvalRequest) -> list[FieldViolation]:
    given = {
        "metrics": bool(request.metrics),
        "max_samples": bool(request.max_samples),
        "max_new_tokens": bool(request.max_new_tokens),
        "context_length": bool(request.context_length),
        "stride": bool(request.stride),
        "task_check": request.task_check is not None,
        "refusal_patterns": bool(request.refusal_patterns),
        "seed": bool(request.seed),
        "precision": bool(request.precision),
    }
    return [
        FieldViolation(name, "must be left unset when repeat_eval_run_id is given")
        for name, set_ in given.items()
        if set_
    ]


def _new_config(request: EvalRequest) -> RunConfig:
    metrics = canonical_metrics([m or PERPLEXITY for m in request.metrics] or [PERPLEXITY])
    return RunConfig(
        metrics=metrics,
        max_samples=request.max_samples,
        max_new_tokens=request.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        context_length=request.context_length,
        stride=request.stride,
        task_check=request.task_check,
        refusal_patterns=list(request.refusal_patterns or DEFAULT_REFUSAL_PATTERNS),
        seed=request.seed,
        precision=request.precision,
    )


class EvaluatorCore:
    """Creates evaluation runs and computes them one at a time; compares them; gates models."""

    def __init__(
        self,
        store: EvalStore,
        models: ModelLookup,
        datasets: DatasetLookup,
        options: RunOptions | None = None,
        gate: GateThresholds | None = None,
        win_rates: WinRateLookup | None = None,
        curves: CurveLookup | None = None,
    ) -> None:
        self._store = store
        self._models = models
        self._datasets = datasets
        self._options = options or RunOptions()
        self._gate = gate or GateThresholds()
        self._win_rates = win_rates
        self._curves = curves
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval")

    def set_win_rates(self, win_rates: WinRateLookup | None) -> None:
        """Sets where human win rates come from (the review queue, built after the core)."""
        self._win_rates = win_rates

    def resume_unfinished(self) -> None:
        """Queues again the runs a restart interrupted."""
        for run in self._store.unfinished():
            self._store.update(run.id, state=RunState.QUEUED, completed=0)
            self._executor.submit(self._execute, run.id)

    # Runs.

    def create_run(self, request: EvalRequest) -> EvalRun:
        """Validates a request, stores the run with its resolved configuration and queues it."""
        source = self._store.get(request.repeat_eval_run_id) if request.repeat_eval_run_id else None
        violations = _validate_fields(request)
        if source is not None:
            violations += _repeat_violations(request)
        model_id = request.model_id or (source.model_id if source else "")
        dataset_version_id = request.dataset_version_id or (
            source.dataset_version_id if source else ""
        )
        if not model_id:
            violations.append(FieldViolation("model_id", "required"))
        if not dataset_version_id:
            violations.append(FieldViolation("dataset_version_id", "required"))
        if violations:
            raise InvalidArgumentError("invalid evaluation request", violations)
        model_dir = self._models(model_id)
        split = self._datasets(dataset_version_id)
        config = source.config if source is not None else _new_config(request)
        config = self._resolve_windows(config, model_dir)
        if not config.precision:
            device = resolve_device(self._options.device)
            config = dataclasses.replace(config, precision=default_precision(device))
        if TASK_ACCURACY in config.metrics and config.task_check is None:
            if not any_expected_answers(split, config.max_samples):
                raise InvalidArgumentError(
                    "invalid evaluation request",
                    [
                        FieldViolation(
                            "task_check",
                            "required for the task accuracy metric: the dataset version's "
                            "samples carry no expected answers",
                        )
                    ],
                )
        run = EvalRun(
            id=f"eval_{secrets.token_hex(8)}",
            model_id=model_id,
            dataset_version_id=dataset_version_id,
            config=config,
            state=RunState.QUEUED,
            completed=0,
            total=0,
            create_time=time.time(),
            repeated_from=source.id if source else "",
        )
        self._store.add(run)
        self._executor.submit(self._execute, run.id)
        return run

    def _resolve_windows(self, config: RunConfig, model_dir: Path) -> RunConfig:
        """Fills in the context length and stride from the model; refuses what it cannot take."""
        limit = model_context(model_dir)
        context = config.context_length or min(self._options.max_length, limit or 2**31)
        stride = config.stride or max(1, context // 2)
        violations = []
        if limit is not None and context > limit:
            violations.append(
                FieldViolation("context_length", f"the model's context is {limit} tokens")
            )
        if context < 2:
            violations.append(FieldViolation("context_length", "must be 2 tokens or more"))
        elif stride >= context:
            violations.append(
                FieldViolation("stride", f"must be less than the context length ({context})")
            )
        if config.generates and config.max_new_tokens >= context:
            violations.append(
                FieldViolation(
                    "max_new_tokens", f"must be less than the context length ({context})"
                )
            )
        if violations:
            raise InvalidArgumentError("invalid evaluation request", violations)
        return dataclasses.replace(config, context_length=context, stride=stride)

    def get_run(self, run_id: str) -> EvalRun:
        """One run; NotFoundError when there is none."""
        return self._store.get(run_id)

    def list_runs(self, limit: int, offset: int, model_id: str = "") -> list[EvalRun]:
        """Runs newest first, optionally of one model."""
        return self._store.list_runs(limit, offset, model_id)

    def list_samples(self, run_id: str, limit: int, offset: int) -> list[SampleOutput]:
        """A run's per-sample outputs in split order."""
        self._store.get(run_id)
        return self._store.samples(run_id, limit, offset)

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
                run_id,
                state=RunState.FAILED,
                error=f"{type(error).__name__}: {error}",
                end_time=time.time(),
            )

    def _compute(self, run_id: str) -> None:
        from ownchat_evaluator.generation import generate_replies
        from ownchat_evaluator.perplexity import corpus_perplexity

        started = time.perf_counter()
        run = self._store.get(run_id)
        config = run.config
        model_dir = self._models(run.model_id)
        split_file = self._datasets(run.dataset_version_id)
        samples = read_samples(split_file, config.max_samples)
        if not samples:
            raise ValueError("the validation split holds no samples")
        device = resolve_device(self._options.device)
        total = len(samples) * config.passes
        self._store.update(
            run_id,
            state=RunState.RUNNING,
            completed=0,
            total=total,
            start_time=time.time(),
            device=str(device),
        )
        torch.manual_seed(config.seed)
        if not config.precision:
            # A run stored before precision was a setting: the device's default.
            config = dataclasses.replace(config, precision=default_precision(device))
            self._store.update(run_id, config=config)
        model, tokenizer = load_model(model_dir, device, config.precision)
        timings = RunTimings(load=time.perf_counter() - started)
        if not config.context_length:
            # A run stored before windows were configurable: resolve them now.
            config = self._resolve_windows(config, model_dir)
            self._store.update(run_id, config=config)

        perplexity = None
        if PERPLEXITY in config.metrics:
            phase = time.perf_counter()
            perplexity = corpus_perplexity(
                model,
                tokenizer,
                [s.messages for s in samples],
                context_length=config.context_length,
                stride=config.stride,
                tokens_per_batch=self._options.tokens_per_batch
                or AUTO_TOKENS_PER_BATCH.get(device.type, 4096),
                max_rows=self._options.max_rows,
                on_progress=lambda done: self._store.update(run_id, completed=done),
            )
            timings.perplexity = time.perf_counter() - phase
        replies: dict[int, tuple[str, int]] = {}
        if config.generates:
            phase = time.perf_counter()
            offset = len(samples) if perplexity else 0
            answerable = [s for s in samples if s.reference is not None]
            generated = generate_replies(
                model,
                tokenizer,
                [s.context for s in answerable],
                max_new_tokens=config.max_new_tokens,
                context_length=config.context_length,
                batch_size=self._options.generation_batch_size,
                on_progress=lambda done: self._store.update(run_id, completed=offset + done),
            )
            replies = {
                s.index: (r.text, r.tokens) for s, r in zip(answerable, generated, strict=True)
            }
            timings.generation = time.perf_counter() - phase
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

        outputs = [
            _output(
                sample,
                config,
                replies.get(sample.index),
                perplexity.sample_nll[i] if perplexity else 0.0,
                perplexity.sample_tokens[i] if perplexity else 0,
            )
            for i, sample in enumerate(samples)
        ]
        results = metric_results(
            config, outputs, perplexity, timings, started, self._options.resamples
        )
        if not split_file.exists():
            # An erasure deletes every file holding the erased data: this run read
            # such a file, so its samples would bring the data back.
            raise RuntimeError(
                f"{run.dataset_version_id}'s validation split was erased while the run went "
                "on; nothing of the run is kept: evaluate the dataset's new version"
            )
        self._store.put_samples(run_id, outputs)
        timings.wall = time.perf_counter() - started
        self._store.update(
            run_id,
            state=RunState.SUCCEEDED,
            completed=total,
            results=results,
            end_time=time.time(),
            timings=timings.as_dict(),
        )
        logger.info(
            "evaluation finished",
            extra={"eval_run_id": run_id, **timings.as_dict(), "bleu_share": timings.bleu_share},
        )

    def erase_samples(self, values: Sequence[str]) -> ErasedEvalSamples:
        """Right to erasure in the runs' per-sample outputs, by the rule every service
        shares (:mod:`ownchat.erasure`; see ``EvalStore.erase_samples``). Nothing
        holding a value is not an error."""
        violations = check_erasure_values(values)
        if violations:
            raise InvalidArgumentError("invalid erasure request", violations)
        return self._store.erase_samples(list(values))

    # Comparisons and the gate.

    def compare(
        self, baseline_run_id: str, candidate_run_id: str, resamples: int = 0, seed: int = 0
    ) -> Comparison:
        """Deltas of every shared metric with paired bootstrap intervals."""
        violations = []
        if not baseline_run_id:
            violations.append(FieldViolation("baseline_eval_run_id", "required"))
        if not candidate_run_id:
            violations.append(FieldViolation("candidate_eval_run_id", "required"))
        if not 0 <= resamples <= MAX_RESAMPLES:
            violations.append(FieldViolation("resamples", f"must be within 0..{MAX_RESAMPLES}"))
        if violations:
            raise InvalidArgumentError("invalid comparison request", violations)
        baseline = self._store.get(baseline_run_id)
        candidate = self._store.get(candidate_run_id)
        return compare_runs(
            baseline,
            self._store.samples(baseline.id),
            candidate,
            self._store.samples(candidate.id),
            resamples or self._options.resamples,
            seed,
        )

    def check_gate(
        self,
        model_id: str,
        eval_run_id: str = "",
        baseline_model_id: str = "",
        baseline_eval_run_id: str = "",
    ) -> GateVerdict:
        """Checks a model version against every configured promotion threshold."""
        if not model_id:
            raise InvalidArgumentError(
                "invalid gate request", [FieldViolation("model_id", "required")]
            )
        run = self._given_run(eval_run_id, model_id, "eval_run_id")
        baseline_run = self._given_run(
            baseline_eval_run_id, baseline_model_id, "baseline_eval_run_id"
        )
        if run and baseline_run and run.dataset_version_id != baseline_run.dataset_version_id:
            raise FailedPreconditionError(
                f"runs {run.id} and {baseline_run.id} evaluated different dataset versions",
                [
                    PreconditionViolation(
                        "EVAL_RUNS_COMPARABLE", baseline_run.id, "a different dataset version"
                    )
                ],
            )
        baseline_model_id = baseline_model_id or (baseline_run.model_id if baseline_run else "")
        run_missing = ""
        if run is None and self._gate.run_thresholds():
            dataset = baseline_run.dataset_version_id if baseline_run else ""
            found = self._store.succeeded_runs(model_id, dataset)
            run = found[0] if found else None
            on = f" on dataset version {dataset}" if dataset else ""
            run_missing = f"model {model_id} has no finished evaluation run{on}"
        baseline_missing = ""
        if (
            baseline_run is None
            and baseline_model_id
            and run is not None
            and self._gate.max_perplexity_regression is not None
        ):
            baseline_run, baseline_missing = self._baseline_run(baseline_model_id, run)
        win_rate = None
        if (
            self._gate.min_human_win_rate is not None
            and baseline_model_id
            and baseline_model_id != model_id
            and self._win_rates is not None
        ):
            win_rate = self._win_rates(model_id, baseline_model_id)
        return check_gate(
            self._gate,
            GateInputs(
                model_id=model_id,
                run=run,
                run_missing=run_missing,
                baseline_model_id=baseline_model_id,
                baseline_run=baseline_run,
                baseline_run_missing=baseline_missing,
                win_rate=None if win_rate is None else (float(win_rate[0]), int(win_rate[1])),
            ),
        )

    # Reports.

    def render_report(
        self,
        eval_run_id: str = "",
        comparison: tuple[str, str] | None = None,
        worst_examples: int = 0,
    ) -> Report:
        """The HTML report of one finished run, or of (baseline, candidate) runs compared."""
        violations = []
        if comparison is None and not eval_run_id:
            violations.append(FieldViolation("eval_run_id", "required: a run, or a comparison"))
        if comparison is not None:
            for field, value in zip(
                ("comparison.baseline_eval_run_id", "comparison.candidate_eval_run_id"),
                comparison,
                strict=True,
            ):
                if not value:
                    violations.append(FieldViolation(field, "required"))
        if not 0 <= worst_examples <= MAX_WORST_EXAMPLES:
            violations.append(
                FieldViolation("worst_examples", f"must be within 0..{MAX_WORST_EXAMPLES}")
            )
        if violations:
            raise InvalidArgumentError("invalid report request", violations)
        if comparison is None:
            run = self._store.get(eval_run_id)
            if run.state is not RunState.SUCCEEDED:
                raise FailedPreconditionError(
                    f"run {run.id} is {run.state.value}: only a finished run has a report",
                    [PreconditionViolation("EVAL_RUN_STATE", run.id, run.state.value)],
                )
            return render_run_report(
                run, self._store.samples(run.id), self._curve(run.model_id), worst_examples
            )
        # Refuses runs that do not compare, saying why, before anything is drawn.
        deltas = self.compare(*comparison)
        baseline, candidate = (self._store.get(run_id) for run_id in comparison)
        model_ids = dict.fromkeys((baseline.model_id, candidate.model_id))
        return render_comparison_report(
            baseline,
            self._store.samples(baseline.id),
            candidate,
            self._store.samples(candidate.id),
            deltas,
            [self._curve(model_id) for model_id in model_ids],
            worst_examples,
        )

    def _curve(self, model_id: str) -> LossCurve:
        """A model's training curve; a report without it, saying why, when it cannot be had."""
        if self._curves is None:
            return LossCurve(model_id, note=f"{model_id}: training curves are not available here.")
        try:
            return self._curves(model_id)
        except OwnchatError as error:
            logger.warning(
                "no training curve for the report",
                extra={"model_id": model_id, "error": str(error)},
            )
            return LossCurve(
                model_id, note=f"{model_id}: the trainer could not say how it trained ({error})."
            )

    def _given_run(self, run_id: str, model_id: str, field: str) -> EvalRun | None:
        if not run_id:
            return None
        run = self._store.get(run_id)
        if model_id and run.model_id != model_id:
            raise InvalidArgumentError(
                "invalid gate request",
                [FieldViolation(field, f"run {run_id} evaluated {run.model_id}, not {model_id}")],
            )
        if run.state is not RunState.SUCCEEDED:
            raise FailedPreconditionError(
                f"run {run_id} is {run.state.value}, not succeeded",
                [PreconditionViolation("EVAL_RUN_STATE", run_id, f"{run.state.value}")],
            )
        return run

    def _baseline_run(self, baseline_model_id: str, run: EvalRun) -> tuple[EvalRun | None, str]:
        """The baseline's newest run measured like the candidate's, or why there is none."""
        for candidate in self._store.succeeded_runs(baseline_model_id, run.dataset_version_id):
            same = (candidate.config.context_length, candidate.config.stride, candidate.max_samples)
            if same == (run.config.context_length, run.config.stride, run.max_samples):
                return candidate, ""
        return None, (
            f"baseline model {baseline_model_id} has no finished run on dataset version "
            f"{run.dataset_version_id} with the candidate's context length, stride and "
            f"max_samples ({run.config.context_length}, {run.config.stride}, {run.max_samples})"
        )

    def close(self) -> None:
        """Stops taking runs; the one computing is abandoned and resumed at the next start."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _output(
    sample: EvalSample,
    config: RunConfig,
    reply: tuple[str, int] | None,
    nll: float,
    scored_tokens: int,
) -> SampleOutput:
    reference = sample.reference or ""
    outcome = None
    if reply is not None and TASK_ACCURACY in config.metrics:
        outcome = check_reply(reply[0], reference, sample.expected, config.task_check)
    return SampleOutput(
        index=sample.index,
        context=sample.context,
        reference=reference,
        reply=None if reply is None else reply[0],
        reply_tokens=0 if reply is None else reply[1],
        nll=nll,
        scored_tokens=scored_tokens,
        refused=None if reply is None else is_refusal(reply[0], config.refusal_patterns),
        check_passed=None if outcome is None else outcome.passed,
        expected="" if outcome is None else outcome.expected,
    )

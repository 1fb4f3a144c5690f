"""Protobuf <-> plain types for the run side of EvaluatorService (runs, samples,
comparisons, the gate, reports). Only translation: no decisions are taken here."""

from __future__ import annotations

from ownchat.common.v1 import common_pb2
from ownchat.errors import FieldViolation, InvalidArgumentError
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.timestamps import to_timestamp
from ownchat_evaluator.checks import CheckKind, TaskCheck
from ownchat_evaluator.compare import Comparison
from ownchat_evaluator.core import EvalRequest
from ownchat_evaluator.gate import GateVerdict
from ownchat_evaluator.report import Report
from ownchat_evaluator.run_config import (
    BFLOAT16,
    BLEU,
    CHRF,
    FLOAT32,
    PERPLEXITY,
    REFUSAL_RATE,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_P95,
    TASK_ACCURACY,
)
from ownchat_evaluator.store import EvalRun, RunState, SampleOutput

METRIC_NAMES = {
    evaluator_pb2.METRIC_UNSPECIFIED: None,
    evaluator_pb2.METRIC_PERPLEXITY: PERPLEXITY,
    evaluator_pb2.METRIC_BLEU: BLEU,
    evaluator_pb2.METRIC_CHRF: CHRF,
    evaluator_pb2.METRIC_TASK_ACCURACY: TASK_ACCURACY,
    evaluator_pb2.METRIC_RESPONSE_LENGTH: RESPONSE_LENGTH,
    evaluator_pb2.METRIC_RESPONSE_LENGTH_P95: RESPONSE_LENGTH_P95,
    evaluator_pb2.METRIC_REFUSAL_RATE: REFUSAL_RATE,
}
METRIC_ENUMS = {name: number for number, name in METRIC_NAMES.items() if name}
_STATES = {
    RunState.QUEUED: evaluator_pb2.EVAL_RUN_STATE_QUEUED,
    RunState.RUNNING: evaluator_pb2.EVAL_RUN_STATE_RUNNING,
    RunState.SUCCEEDED: evaluator_pb2.EVAL_RUN_STATE_SUCCEEDED,
    RunState.FAILED: evaluator_pb2.EVAL_RUN_STATE_FAILED,
}
_CHECK_KINDS = {
    evaluator_pb2.TASK_CHECK_KIND_EXACT: CheckKind.EXACT,
    evaluator_pb2.TASK_CHECK_KIND_CONTAINS: CheckKind.CONTAINS,
    evaluator_pb2.TASK_CHECK_KIND_REGEX: CheckKind.REGEX,
}
_CHECK_ENUMS = {kind: number for number, kind in _CHECK_KINDS.items()}
_PRECISIONS = {
    evaluator_pb2.PRECISION_FLOAT32: FLOAT32,
    evaluator_pb2.PRECISION_BFLOAT16: BFLOAT16,
}
_PRECISION_ENUMS = {name: number for number, name in _PRECISIONS.items()}


def request_from_proto(request: evaluator_pb2.CreateEvalRunRequest) -> EvalRequest:
    """The core's request; unknown metric values become names the core refuses."""
    task_check = None
    if request.HasField("task_check"):
        kind = _CHECK_KINDS.get(request.task_check.kind)
        if kind is None:
            raise InvalidArgumentError(
                "invalid evaluation request",
                [FieldViolation("task_check.kind", "required: exact, contains or regex")],
            )
        task_check = TaskCheck(kind, request.task_check.pattern)
    return EvalRequest(
        model_id=request.model_id,
        dataset_version_id=request.dataset_version_id,
        metrics=[METRIC_NAMES.get(m, f"unknown-{m}") for m in request.metrics],
        max_samples=request.max_samples,
        max_new_tokens=request.max_new_tokens,
        context_length=request.context_length,
        stride=request.stride,
        task_check=task_check,
        refusal_patterns=list(request.refusal_patterns),
        seed=request.seed,
        repeat_eval_run_id=request.repeat_eval_run_id,
        # Unspecified is "" (the default); unknown values become a name the core refuses.
        precision=_PRECISIONS.get(request.precision, f"unknown-{request.precision}")
        if request.precision
        else "",
    )


def run_to_proto(run: EvalRun) -> evaluator_pb2.EvalRun:
    """A run as the API shows it."""
    config = run.config
    message = evaluator_pb2.EvalRun(
        id=run.id,
        model_id=run.model_id,
        dataset_version_id=run.dataset_version_id,
        metrics=[METRIC_ENUMS[m] for m in run.metrics],
        state=_STATES[run.state],
        progress=common_pb2.Progress(completed=run.completed, total=run.total, unit="samples"),
        results=[
            evaluator_pb2.MetricValue(
                metric=METRIC_ENUMS[r.metric],
                value=r.value,
                details=r.details,
                ci_low=r.ci_low,
                ci_high=r.ci_high,
            )
            for r in run.results
        ],
        error=run.error,
        create_time=to_timestamp(run.create_time),
        max_samples=run.max_samples,
        max_new_tokens=config.max_new_tokens,
        refusal_patterns=config.refusal_patterns,
        context_length=config.context_length,
        stride=config.stride,
        seed=config.seed,
        repeated_eval_run_id=run.repeated_from,
        device=run.device,
        timings_seconds=run.timings,
        precision=_PRECISION_ENUMS.get(config.precision, evaluator_pb2.PRECISION_UNSPECIFIED),
    )
    if config.task_check is not None:
        message.task_check.CopyFrom(
            evaluator_pb2.TaskCheck(
                kind=_CHECK_ENUMS[config.task_check.kind], pattern=config.task_check.pattern
            )
        )
    if run.start_time is not None:
        message.start_time.CopyFrom(to_timestamp(run.start_time))
    if run.end_time is not None:
        message.end_time.CopyFrom(to_timestamp(run.end_time))
    return message


def sample_to_proto(sample: SampleOutput) -> evaluator_pb2.EvalSample:
    """One sample's outputs as the API shows them."""
    roles = {
        "system": common_pb2.ROLE_SYSTEM,
        "user": common_pb2.ROLE_USER,
        "assistant": common_pb2.ROLE_ASSISTANT,
    }
    return evaluator_pb2.EvalSample(
        index=sample.index,
        context=[
            common_pb2.ChatMessage(
                role=roles.get(m["role"], common_pb2.ROLE_UNSPECIFIED), content=m["content"]
            )
            for m in sample.context
        ],
        reference=sample.reference,
        reply=sample.reply or "",
        reply_tokens=sample.reply_tokens,
        nll=sample.nll,
        scored_tokens=sample.scored_tokens,
        refused=sample.refused,
        check_passed=sample.check_passed,
        expected=sample.expected,
    )


def comparison_to_proto(comparison: Comparison) -> evaluator_pb2.CompareModelsResponse:
    """A comparison as the API shows it."""
    return evaluator_pb2.CompareModelsResponse(
        deltas=[
            evaluator_pb2.MetricDelta(
                metric=METRIC_ENUMS[d.metric],
                delta=d.delta,
                ci_low=d.ci_low,
                ci_high=d.ci_high,
                baseline_value=d.baseline_value,
                candidate_value=d.candidate_value,
            )
            for d in comparison.deltas
        ],
        samples=comparison.samples,
        resamples=comparison.resamples,
        seed=comparison.seed,
    )


def verdict_to_proto(verdict: GateVerdict) -> evaluator_pb2.CheckPromotionGateResponse:
    """The gate's verdict as the API shows it."""
    return evaluator_pb2.CheckPromotionGateResponse(
        passed=verdict.passed,
        checks=[
            evaluator_pb2.GateCheck(
                threshold=c.threshold,
                value=c.value if c.value is not None else 0.0,
                passed=c.passed,
                name=c.name,
                limit=c.limit,
                measured=c.measured,
                reason=c.reason,
            )
            for c in verdict.checks
        ],
        summary=verdict.summary,
        eval_run_id=verdict.eval_run_id,
        baseline_eval_run_id=verdict.baseline_eval_run_id,
    )


def report_to_proto(report: Report) -> evaluator_pb2.RenderEvalReportResponse:
    """A rendered report as the API returns it."""
    return evaluator_pb2.RenderEvalReportResponse(
        html=report.html,
        images=[evaluator_pb2.ReportImage(name=i.name, png=i.png) for i in report.images],
    )

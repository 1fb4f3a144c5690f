"""EvaluatorService over gRPC: protobuf in, plain Python to the core, protobuf out."""

from __future__ import annotations

import grpc

from ownchat.common.v1 import common_pb2
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.paging import next_page_token, page_window
from ownchat.timestamps import to_timestamp
from ownchat_evaluator.core import PERPLEXITY, EvalRequest, EvaluatorCore
from ownchat_evaluator.store import EvalRun, RunState

_METRIC_NAMES = {
    evaluator_pb2.METRIC_UNSPECIFIED: None,
    evaluator_pb2.METRIC_PERPLEXITY: PERPLEXITY,
    evaluator_pb2.METRIC_BLEU: "bleu",
    evaluator_pb2.METRIC_CHRF: "chrf",
    evaluator_pb2.METRIC_TASK_ACCURACY: "task_accuracy",
}
_METRIC_ENUMS = {name: number for number, name in _METRIC_NAMES.items() if name}
_STATES = {
    RunState.QUEUED: evaluator_pb2.EVAL_RUN_STATE_QUEUED,
    RunState.RUNNING: evaluator_pb2.EVAL_RUN_STATE_RUNNING,
    RunState.SUCCEEDED: evaluator_pb2.EVAL_RUN_STATE_SUCCEEDED,
    RunState.FAILED: evaluator_pb2.EVAL_RUN_STATE_FAILED,
}


def run_to_proto(run: EvalRun) -> evaluator_pb2.EvalRun:
    return evaluator_pb2.EvalRun(
        id=run.id,
        model_id=run.model_id,
        dataset_version_id=run.dataset_version_id,
        metrics=[_METRIC_ENUMS[m] for m in run.metrics],
        state=_STATES[run.state],
        progress=common_pb2.Progress(completed=run.completed, total=run.total, unit="samples"),
        results=[
            evaluator_pb2.MetricValue(
                metric=_METRIC_ENUMS[r.metric], value=r.value, details=r.details
            )
            for r in run.results
        ],
        error=run.error,
        create_time=to_timestamp(run.create_time),
        max_samples=run.max_samples,
    )


class EvaluatorServicer(evaluator_pb2_grpc.EvaluatorServiceServicer):
    """Translates EvaluatorService calls for :class:`EvaluatorCore`.

    Comparisons, gates and the review queue are not overridden yet: the
    generated base answers UNIMPLEMENTED until the full evaluator lands.
    """

    def __init__(self, core: EvaluatorCore) -> None:
        self._core = core

    def CreateEvalRun(
        self, request: evaluator_pb2.CreateEvalRunRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.CreateEvalRunResponse:
        run = self._core.create_run(
            EvalRequest(
                model_id=request.model_id,
                dataset_version_id=request.dataset_version_id,
                metrics=[_METRIC_NAMES.get(m, f"unknown-{m}") for m in request.metrics],
                max_samples=request.max_samples,
            )
        )
        return evaluator_pb2.CreateEvalRunResponse(eval_run=run_to_proto(run))

    def GetEvalRun(
        self, request: evaluator_pb2.GetEvalRunRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.GetEvalRunResponse:
        return evaluator_pb2.GetEvalRunResponse(
            eval_run=run_to_proto(self._core.get_run(request.eval_run_id))
        )

    def ListEvalRuns(
        self, request: evaluator_pb2.ListEvalRunsRequest, context: grpc.ServicerContext
    ) -> evaluator_pb2.ListEvalRunsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        runs = self._core.list_runs(limit, offset)
        return evaluator_pb2.ListEvalRunsResponse(
            eval_runs=[run_to_proto(r) for r in runs],
            next_page_token=next_page_token(limit, offset, len(runs)),
        )

"""Evaluation reports: the renderer on tiny runs (values, intervals, escaping, PNGs,
worst examples, loss curves), and RenderEvalReport over a real gRPC server."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from ownchat.config import ClientSettings
from ownchat.errors import NotFoundError, OwnchatError, UnavailableError, describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from ownchat_evaluator.compare import compare_runs
from ownchat_evaluator.core import EvaluatorCore
from ownchat_evaluator.curves import LossCurve, LossPoint, base_model_curve, curve_from_points
from ownchat_evaluator.lookups import TrainingCurves
from ownchat_evaluator.report import (
    render_comparison_report,
    render_run_report,
    verdict,
)
from ownchat_evaluator.run_config import RunConfig
from ownchat_evaluator.servicer import EvaluatorServicer
from ownchat_evaluator.statistics import statistic
from ownchat_evaluator.store import EvalRun, EvalStore, MetricResult, RunState, SampleOutput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = '<script>alert("x")</script>'
METRICS = ["perplexity", "bleu", "task_accuracy"]


def _outputs(nll: list[float], replies: list[str], passed: list[bool | None]) -> list[SampleOutput]:
    return [
        SampleOutput(
            index=i,
            context=[{"role": "user", "content": f"Question {i} <b>bold</b>?"}],
            reference=f"The answer to question {i} is {i * 7}.",
            reply=reply,
            reply_tokens=len(reply.split()),
            nll=loss * 4,
            scored_tokens=4,
            refused="sorry" in reply,
            check_passed=ok,
            expected=str(i * 7) if ok is not None else "",
        )
        for i, (loss, reply, ok) in enumerate(zip(nll, replies, passed, strict=True))
    ]


def _run(run_id: str, model_id: str, outputs: list[SampleOutput]) -> EvalRun:
    config = RunConfig(metrics=METRICS, context_length=256, stride=128, seed=3)
    return EvalRun(
        id=run_id,
        model_id=model_id,
        dataset_version_id="dsv_1",
        config=config,
        state=RunState.SUCCEEDED,
        completed=len(outputs),
        total=len(outputs),
        results=[
            MetricResult(m, statistic(m, outputs).value(), f"how {m} was computed", None, None)
            for m in METRICS
        ],
        create_time=1_700_000_000.0,
        end_time=1_700_000_010.0,
        device="cpu",
        timings={"wall_seconds": 10.0},
    )


BASELINE = _outputs(
    nll=[1.0, 1.2, 0.8, 1.1, 0.9, 1.0],
    replies=[f"The answer to question {i} is {i * 7}." for i in range(6)],
    passed=[True, True, True, True, True, True],
)
CANDIDATE = _outputs(
    nll=[0.5, 3.0, 0.4, 0.6, 2.0, 0.5],
    replies=[
        "The answer to question 0 is 0.",
        f"I'm sorry {HOSTILE}",
        "The answer to question 2 is 14.",
        "The answer to question 3 is 21.",
        "No idea.",
        "The answer to question 5 is 35.",
    ],
    passed=[True, False, True, True, False, True],
)


def _pngs_in(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def _body(html: str) -> str:
    return html.split("<body>", 1)[1]


def test_a_run_report_shows_metrics_intervals_and_escaped_examples() -> None:
    run = _run("eval_c", "ft:tiny:<v2>", CANDIDATE)
    run = EvalRun(
        **{
            **vars(run),
            "results": [
                MetricResult("perplexity", 2.3456, "windows of 256 tokens", 2.1, 2.6),
                MetricResult("bleu", 41.5, "nrefs:1|case:mixed", 30.25, 52.75),
                MetricResult("task_accuracy", 0.6667, "4 of 6 passed", None, None),
            ],
        }
    )
    curve = curve_from_points(
        "ft:tiny:<v2>", "job_1", [LossPoint(s, 3.0 - s / 10) for s in range(8)]
    )
    report = render_run_report(run, CANDIDATE, curve, worst_examples=2)

    body = _body(report.html)
    # Values with their intervals, two decimals for scores and three for shares.
    assert re.search(r">2\.35<.*>\[2\.10, 2\.60\]<", body, re.S)
    assert re.search(r">41\.50<.*>\[30\.25, 52\.75\]<", body, re.S)
    assert re.search(r">0\.667<.*>n/a<", body, re.S)
    assert "nrefs:1|case:mixed" in body
    # People's text is escaped everywhere: replies, prompts, model ids.
    assert "<script>" not in body and "<b>bold</b>" not in body and "<v2>" not in body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body
    assert "Question 1 &lt;b&gt;bold&lt;/b&gt;?" in body
    assert "ft:tiny:&lt;v2&gt;" in body

    # The worst losses first (sample 1: 3.0 a token, then sample 4: 2.0), two of them.
    losses = body.split("Highest loss per token", 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<td class="num">(\d+)</td>\s*<td class="num">([\d.]+)</td>', losses) == [
        ("1", "3.000"),
        ("4", "2.000"),
    ]
    failed = body.split("Failed task checks", 1)[1].split("</table>", 1)[0]
    assert "2 of 6 checked replies failed" in failed and "No idea." in failed
    assert "Refusals" in body and "I&#39;m sorry" in body

    names = [image.name for image in report.images]
    assert names == ["metrics.png", "loss_curve.png", "sample_loss.png"]
    assert all(image.png.startswith(PNG_SIGNATURE) for image in report.images)
    # The page stands alone: the same PNGs are embedded in it.
    assert _pngs_in(report.html) == [image.png for image in report.images]
    assert "losses of training job job_1, 8 logged steps" in body


def test_a_base_model_report_says_there_is_no_curve() -> None:
    run = _run("eval_b", "smollm2-135m-instruct", BASELINE)
    report = render_run_report(run, BASELINE, base_model_curve(run.model_id))
    assert "loss_curve.png" not in [image.name for image in report.images]
    assert "smollm2-135m-instruct is a base model" in report.html
    assert "has no training loss curve" in report.html
    assert "Every checked reply passed." in report.html


def test_a_run_without_perplexity_or_replies_says_so() -> None:
    outputs = [
        SampleOutput(i, [{"role": "user", "content": "Hi"}], "Hello", None, 0, 0.0, 0, None, None)
        for i in range(3)
    ]
    run = EvalRun(
        id="eval_x",
        model_id="m",
        dataset_version_id="dsv_1",
        config=RunConfig(metrics=["response_length"], context_length=64, stride=32),
        state=RunState.SUCCEEDED,
        completed=3,
        total=3,
    )
    report = render_run_report(run, outputs, LossCurve("m", note="no curve here"))
    assert report.images == []
    assert "this run did not compute perplexity" in report.html
    assert "This run did not check tasks." in report.html


def test_a_comparison_report_shows_deltas_verdicts_and_regressions() -> None:
    baseline = _run("eval_a", "base-model", BASELINE)
    candidate = _run("eval_c", "ft:tuned", CANDIDATE)
    comparison = compare_runs(baseline, BASELINE, candidate, CANDIDATE, resamples=200, seed=0)
    curves = [
        base_model_curve("base-model"),
        curve_from_points("ft:tuned", "job_9", [LossPoint(1, 2.0), LossPoint(2, 1.5, 1.7)]),
    ]
    report = render_comparison_report(
        baseline, BASELINE, candidate, CANDIDATE, comparison, curves, worst_examples=5
    )
    body = _body(report.html)
    assert [image.name for image in report.images] == [
        "metrics.png",
        "deltas.png",
        "loss_curve.png",
        "sample_loss.png",
    ]
    assert all(image.png.startswith(PNG_SIGNATURE) for image in report.images)
    perplexity = next(d for d in comparison.deltas if d.metric == "perplexity")
    row = body.split(">perplexity<", 1)[1].split("</tr>", 1)[0]
    assert f"{perplexity.delta:+.2f}" in row
    assert f"[{perplexity.ci_low:.2f}, {perplexity.ci_high:.2f}]" in row
    words, _ = verdict("perplexity", perplexity.delta, perplexity.ci_low, perplexity.ci_high)
    assert words in row
    # The candidate's loss rose on samples 1 and 4 only, most on sample 1.
    rises = body.split("Largest loss increases", 1)[1].split("</table>", 1)[0]
    assert "2 samples the candidate finds less likely" in rises
    assert re.findall(r'<td class="num">(\d+)</td>', rises) == ["1", "4"]
    assert "+1.800" in rises and "+1.100" in rises
    # Failed checks the baseline passed are regressions, listed with both replies.
    checks = body.split("Task checks the candidate fails", 1)[1].split("</table>", 1)[0]
    assert "2 failed checks, 2 of them passed by the baseline" in checks
    assert "The answer to question 4 is 28." in checks and "No idea." in checks
    assert "<script>" not in body
    assert "base-model is a base model" in body and "losses of training job job_9" in body


@pytest.mark.parametrize(
    ("metric", "delta", "low", "high", "expected"),
    [
        ("perplexity", -2.0, -3.0, -1.0, ("better", "better")),
        ("perplexity", 2.0, 1.0, 3.0, ("worse", "worse")),
        ("bleu", 2.0, 1.0, 3.0, ("better", "better")),
        ("refusal_rate", 0.1, 0.05, 0.2, ("worse", "worse")),
        ("bleu", 2.0, -1.0, 3.0, ("no clear difference", "unclear")),
        ("response_length", 5.0, 1.0, 9.0, ("longer", "unclear")),
        ("bleu", 1.0, float("nan"), float("nan"), ("no interval", "unclear")),
    ],
)
def test_verdicts_follow_each_metrics_direction(
    metric: str, delta: float, low: float, high: float, expected: tuple[str, str]
) -> None:
    assert verdict(metric, delta, low, high) == expected


def test_a_curve_keeps_one_point_a_step_the_latest_values_winning() -> None:
    curve = curve_from_points(
        "m",
        "job_1",
        [
            LossPoint(1, 3.0),
            LossPoint(2, 2.5),
            LossPoint(3),  # nothing logged: left out
            LossPoint(2, None, 2.7),  # the validation loss of step 2, logged apart
            LossPoint(2, 2.4),  # a resumed job logs step 2 again
        ],
    )
    assert curve.points == (LossPoint(1, 3.0), LossPoint(2, 2.4, 2.7))
    empty = curve_from_points("m", "job_2", [])
    assert not empty.has_points and "logged no losses" in empty.note


# RenderEvalReport over gRPC, on runs stored directly (no model needed).

TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
M = evaluator_pb2


def _curves(model_id: str) -> LossCurve:
    if model_id == "ft:tuned":
        return curve_from_points(model_id, "job_9", [LossPoint(s, 2.0 / s) for s in range(1, 6)])
    if model_id == "gone":
        raise UnavailableError("the trainer is not answering")
    return base_model_curve(model_id)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory, serve_evaluator: Any) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("reports")
    store = EvalStore(root / "evaluator.db")
    for run, outputs in (
        (_run("eval_a", "base-model", BASELINE), BASELINE),
        (_run("eval_c", "ft:tuned", CANDIDATE), CANDIDATE),
        (_run("eval_g", "gone", CANDIDATE), CANDIDATE),
    ):
        store.add(run)
        store.update(run.id, end_time=run.end_time, device=run.device, timings=run.timings)
        store.put_samples(run.id, outputs)
    queued = _run("eval_q", "ft:tuned", CANDIDATE)
    store.add(EvalRun(**{**vars(queued), "state": RunState.QUEUED, "results": []}))

    def nowhere(name: str) -> Path:
        raise NotFoundError("model", name)

    core = EvaluatorCore(store, nowhere, nowhere, curves=_curves)
    servicer = EvaluatorServicer(core)  # type: ignore[abstract]
    try:
        with serve_evaluator(servicer, TOKEN) as stub:
            yield stub
    finally:
        core.close()
        store.close()


def test_render_eval_report_over_grpc(stub: Any) -> None:
    started = time.monotonic()
    single = stub.RenderEvalReport(M.RenderEvalReportRequest(eval_run_id="eval_c"), metadata=AUTH)
    assert "Evaluation of ft:tuned on dsv_1" in single.html
    assert "losses of training job job_9, 5 logged steps" in single.html
    assert [i.name for i in single.images] == ["metrics.png", "loss_curve.png", "sample_loss.png"]
    assert _pngs_in(single.html) == [i.png for i in single.images]

    pair = stub.RenderEvalReport(
        M.RenderEvalReportRequest(
            comparison=M.EvalRunPair(baseline_eval_run_id="eval_a", candidate_eval_run_id="eval_c"),
            worst_examples=1,
        ),
        metadata=AUTH,
    )
    assert "ft:tuned against base-model on dsv_1" in pair.html
    assert "base-model is a base model" in pair.html
    assert "deltas.png" in [i.name for i in pair.images]
    rises = pair.html.split("Largest loss increases", 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<td class="num">(\d+)</td>', rises) == ["1"]

    # A trainer that does not answer costs the curve, not the report.
    degraded = stub.RenderEvalReport(M.RenderEvalReportRequest(eval_run_id="eval_g"), metadata=AUTH)
    assert "gone: the trainer could not say how it trained" in degraded.html
    assert time.monotonic() - started < 30


def _failure(stub: Any, request: M.RenderEvalReportRequest) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RenderEvalReport(request, metadata=AUTH)
    return describe_rpc_error(caught.value)


def test_bad_report_requests_are_refused_with_their_reasons(stub: Any) -> None:
    nothing = _failure(stub, M.RenderEvalReportRequest())
    assert nothing.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in nothing.violations} == {"eval_run_id"}

    half = _failure(
        stub,
        M.RenderEvalReportRequest(
            comparison=M.EvalRunPair(candidate_eval_run_id="eval_c"), worst_examples=101
        ),
    )
    assert half.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in half.violations} == {
        "comparison.baseline_eval_run_id",
        "worst_examples",
    }

    missing = _failure(stub, M.RenderEvalReportRequest(eval_run_id="eval_nope"))
    assert missing.code == grpc.StatusCode.NOT_FOUND

    queued = _failure(stub, M.RenderEvalReportRequest(eval_run_id="eval_q"))
    assert queued.code == grpc.StatusCode.FAILED_PRECONDITION and "only a finished run" in str(
        queued
    )

    unfinished = _failure(
        stub,
        M.RenderEvalReportRequest(
            comparison=M.EvalRunPair(baseline_eval_run_id="eval_a", candidate_eval_run_id="eval_q")
        ),
    )
    assert unfinished.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be compared" in str(unfinished)


# The trainer's side of a curve: the lineage names the job, its events carry the losses.


class _Trainer(trainer_pb2_grpc.TrainerServiceServicer):
    """Answers GetModel and StreamTrainingJobEvents from a fixed registry."""

    MODELS = {
        "base": trainer_pb2.Model(id="base", kind=trainer_pb2.MODEL_KIND_BASE),
        "ft:base:x:1": trainer_pb2.Model(
            id="ft:base:x:1", kind=trainer_pb2.MODEL_KIND_FULL, job_id="job_1"
        ),
    }
    EVENTS = [
        trainer_pb2.JobEvent(kind=trainer_pb2.EVENT_KIND_STATE, step=0),
        trainer_pb2.JobEvent(kind=trainer_pb2.EVENT_KIND_METRICS, step=1, loss=2.5),
        trainer_pb2.JobEvent(kind=trainer_pb2.EVENT_KIND_METRICS, step=2, loss=2.0),
        trainer_pb2.JobEvent(kind=trainer_pb2.EVENT_KIND_CHECKPOINT, step=2, loss=9.0),
        trainer_pb2.JobEvent(kind=trainer_pb2.EVENT_KIND_METRICS, step=2, validation_loss=2.2),
    ]

    def GetModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.model_id not in self.MODELS:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id} not found")
        return trainer_pb2.GetModelResponse(model=self.MODELS[request.model_id])

    def StreamTrainingJobEvents(self, request: Any, context: grpc.ServicerContext) -> Any:
        assert request.job_id == "job_1"
        for event in self.EVENTS:
            yield trainer_pb2.StreamTrainingJobEventsResponse(event=event)


def test_training_curves_come_from_the_trainers_job_events(tmp_path: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(_Trainer(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        settings = ClientSettings(home=tmp_path, trainer_address=f"127.0.0.1:{port}")
        curves = TrainingCurves(settings, TOKEN)
        tuned = curves("ft:base:x:1")
        # Metrics events only (not the checkpoint's copy), one point a step.
        assert tuned.points == (LossPoint(1, 2.5), LossPoint(2, 2.0, 2.2))
        assert tuned.job_id == "job_1"
        assert "is a base model" in curves("base").note and not curves("base").has_points
        with pytest.raises(OwnchatError) as caught:
            curves("unknown")
        assert "unknown" in str(caught.value)
    finally:
        server.stop(None).wait()

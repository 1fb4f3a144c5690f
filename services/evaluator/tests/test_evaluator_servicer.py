"""The run side of EvaluatorService over a real gRPC server on loopback, through the
runtime's interceptor: runs with every metric, samples, comparisons, the gate,
and bad input as status codes with their details."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ownchat.errors import NotFoundError, describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.testing import build_tiny_chat_model
from ownchat_evaluator.core import EvaluatorCore, RunOptions
from ownchat_evaluator.gate import GateThresholds
from ownchat_evaluator.servicer import EvaluatorServicer
from ownchat_evaluator.store import EvalStore

TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
M = evaluator_pb2
CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the price of the Zephyr X2?"},
        {"role": "assistant", "content": "The Zephyr X2 router costs 129 euros."},
    ],
    [
        {"role": "user", "content": "Refunds?"},
        {"role": "assistant", "content": "Our refund window is 30 days from delivery."},
    ],
    [
        {"role": "user", "content": "Error code E42?"},
        {
            "role": "assistant",
            "content": "Error code E42 means the firmware update was interrupted.",
        },
    ],
]


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory, serve_evaluator: Any) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("evaluator")
    model_dir = build_tiny_chat_model(root / "model")
    split = root / "validation.jsonl"
    split.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))

    def models(model_id: str) -> Path:
        if model_id not in ("model_a", "model_b"):
            raise NotFoundError("model", model_id)
        return model_dir

    def datasets(version_id: str) -> Path:
        if version_id != "dsv_1":
            raise NotFoundError("dataset version", version_id)
        return split

    store = EvalStore(root / "evaluator.db")
    core = EvaluatorCore(
        store,
        models,
        datasets,
        RunOptions(max_length=256, resamples=200),
        gate=GateThresholds(max_perplexity=50.0, min_bleu=0.0),
    )
    servicer = EvaluatorServicer(core)  # type: ignore[abstract]
    try:
        with serve_evaluator(servicer, TOKEN) as stub:
            yield stub
    finally:
        core.close()
        store.close()


def _wait(stub: Any, run_id: str) -> M.EvalRun:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = stub.GetEvalRun(M.GetEvalRunRequest(eval_run_id=run_id), metadata=AUTH).eval_run
        if run.state in (M.EVAL_RUN_STATE_SUCCEEDED, M.EVAL_RUN_STATE_FAILED):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not end")


def _failure(call: Any, request: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=AUTH)
    described = describe_rpc_error(caught.value)
    return described.code, described.message, {v.field: v.description for v in described.violations}


ALL_METRICS = [
    M.METRIC_PERPLEXITY,
    M.METRIC_BLEU,
    M.METRIC_CHRF,
    M.METRIC_TASK_ACCURACY,
    M.METRIC_RESPONSE_LENGTH,
    M.METRIC_REFUSAL_RATE,
]


def _create(stub: Any, model_id: str) -> M.EvalRun:
    return stub.CreateEvalRun(
        M.CreateEvalRunRequest(
            model_id=model_id,
            dataset_version_id="dsv_1",
            metrics=ALL_METRICS,
            max_new_tokens=4,
            task_check=M.TaskCheck(kind=M.TASK_CHECK_KIND_REGEX, pattern=r"(\d{2,})"),
            refusal_patterns=["sorry"],
            seed=5,
        ),
        metadata=AUTH,
    ).eval_run


def test_a_run_with_every_metric(stub: Any) -> None:
    created = _create(stub, "model_a")
    assert created.state == M.EVAL_RUN_STATE_QUEUED
    assert (created.context_length, created.stride, created.seed) == (256, 128, 5)
    assert created.task_check.pattern == r"(\d{2,})" and list(created.refusal_patterns) == ["sorry"]
    run = _wait(stub, created.id)
    assert run.state == M.EVAL_RUN_STATE_SUCCEEDED, run.error
    assert (run.progress.completed, run.progress.total) == (6, 6)
    assert [r.metric for r in run.results] == [
        M.METRIC_PERPLEXITY,
        M.METRIC_BLEU,
        M.METRIC_CHRF,
        M.METRIC_TASK_ACCURACY,
        M.METRIC_RESPONSE_LENGTH,
        M.METRIC_RESPONSE_LENGTH_P95,
        M.METRIC_REFUSAL_RATE,
    ]
    bleu = run.results[1]
    assert bleu.details.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "of the run's wall time" in bleu.details
    assert all(r.HasField("ci_low") and r.ci_low <= r.value <= r.ci_high for r in run.results)
    assert "of 3 checked replies passed" in run.results[3].details
    assert run.device == "cpu" and run.HasField("start_time") and run.HasField("end_time")
    assert run.timings_seconds["wall_seconds"] > 0

    first = stub.ListEvalSamples(
        M.ListEvalSamplesRequest(eval_run_id=run.id, page_size=2), metadata=AUTH
    )
    rest = stub.ListEvalSamples(
        M.ListEvalSamplesRequest(eval_run_id=run.id, page_size=2, page_token=first.next_page_token),
        metadata=AUTH,
    )
    samples = [*first.samples, *rest.samples]
    assert [s.index for s in samples] == [0, 1, 2] and rest.next_page_token == ""
    assert samples[0].context[0].content == "What is the price of the Zephyr X2?"
    assert samples[0].reference == "The Zephyr X2 router costs 129 euros."
    # The regex finds a number in every reference: each reply is checked against it.
    assert [s.HasField("check_passed") for s in samples] == [True, True, True]
    assert [s.expected for s in samples] == ["129", "30", "42"]
    assert all(s.HasField("refused") and s.scored_tokens > 0 for s in samples)


def test_two_versions_compare_and_the_gate_reports(stub: Any) -> None:
    baseline = _wait(stub, _create(stub, "model_a").id)
    candidate = _wait(stub, _create(stub, "model_b").id)
    comparison = stub.CompareModels(
        M.CompareModelsRequest(
            baseline_eval_run_id=baseline.id, candidate_eval_run_id=candidate.id, seed=3
        ),
        metadata=AUTH,
    )
    assert (comparison.samples, comparison.resamples, comparison.seed) == (3, 200, 3)
    assert len(comparison.deltas) == 7
    # The same weights behind both versions: nothing moved.
    assert all(d.delta == pytest.approx(0, abs=1e-9) for d in comparison.deltas)
    assert comparison.deltas[0].baseline_value == baseline.results[0].value

    verdict = stub.CheckPromotionGate(
        M.CheckPromotionGateRequest(model_id="model_b", eval_run_id=candidate.id), metadata=AUTH
    )
    assert not verdict.passed and verdict.eval_run_id == candidate.id
    perplexity, bleu = verdict.checks
    assert (perplexity.name, perplexity.passed, perplexity.measured) == (
        "max_perplexity",
        False,
        True,
    )
    assert perplexity.value == candidate.results[0].value and perplexity.limit == 50.0
    assert bleu.passed and bleu.threshold == "BLEU >= 0"
    assert verdict.summary.startswith("failed: max_perplexity (perplexity <= 50)")
    listed = stub.ListEvalRuns(M.ListEvalRunsRequest(model_id="model_b"), metadata=AUTH)
    assert [r.id for r in listed.eval_runs] == [candidate.id]


def test_bad_input_gets_clear_status_codes(stub: Any) -> None:
    code, message, _ = _failure(
        stub.CreateEvalRun, M.CreateEvalRunRequest(model_id="model_x", dataset_version_id="dsv_1")
    )
    assert code == grpc.StatusCode.NOT_FOUND and "model_x" in message
    code, message, _ = _failure(
        stub.CreateEvalRun, M.CreateEvalRunRequest(model_id="model_a", dataset_version_id="dsv_9")
    )
    assert code == grpc.StatusCode.NOT_FOUND and "dsv_9" in message
    code, _, fields = _failure(
        stub.CreateEvalRun,
        M.CreateEvalRunRequest(metrics=[M.METRIC_BLEU, 42], max_new_tokens=-1),  # type: ignore[list-item]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(fields) == {"metrics[1]", "max_new_tokens", "model_id", "dataset_version_id"}
    code, _, fields = _failure(
        stub.CreateEvalRun,
        M.CreateEvalRunRequest(
            model_id="model_a",
            dataset_version_id="dsv_1",
            metrics=[M.METRIC_TASK_ACCURACY],
            task_check=M.TaskCheck(),
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(fields) == {"task_check.kind"}
    code, message, _ = _failure(stub.GetEvalRun, M.GetEvalRunRequest(eval_run_id="eval_nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "eval_nope" in message
    code, _, fields = _failure(stub.CompareModels, M.CompareModelsRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(fields) == {"baseline_eval_run_id", "candidate_eval_run_id"}
    code, message, _ = _failure(
        stub.CompareModels,
        M.CompareModelsRequest(baseline_eval_run_id="eval_x", candidate_eval_run_id="eval_y"),
    )
    assert code == grpc.StatusCode.NOT_FOUND and "eval_x" in message
    code, _, fields = _failure(stub.CheckPromotionGate, M.CheckPromotionGateRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(fields) == {"model_id"}


def test_a_run_of_another_sample_set_does_not_compare(stub: Any) -> None:
    whole = _wait(stub, _create(stub, "model_a").id)
    fewer = stub.CreateEvalRun(
        M.CreateEvalRunRequest(model_id="model_a", dataset_version_id="dsv_1", max_samples=2),
        metadata=AUTH,
    ).eval_run
    fewer = _wait(stub, fewer.id)
    code, message, _ = _failure(
        stub.CompareModels,
        M.CompareModelsRequest(baseline_eval_run_id=whole.id, candidate_eval_run_id=fewer.id),
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "different samples (3 and 2)" in message

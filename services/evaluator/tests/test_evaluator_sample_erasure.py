"""Right to erasure in the evaluation runs' per-sample outputs: every sample a value is
held by goes, from every run of its dataset version (comparisons stay paired), and
nothing of it is left in the SQLite files; the RPC refuses values too short."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.postgres import store_file_bytes
from ownchat_evaluator.compare import compare_runs
from ownchat_evaluator.run_config import RunConfig
from ownchat_evaluator.store import (
    ErasedEvalSamples,
    EvalRun,
    EvalStore,
    MetricResult,
    RunState,
    SampleOutput,
)

TOKEN = "test-token"  # the token of conftest's ``stub``
AUTH = [("authorization", f"Bearer {TOKEN}")]
# As asked; the samples spell them in other cases, one outside ASCII (stored as JSON).
VALUES = ["José Smith", "ann.smith@example.org"]


def run(run_id: str, model_id: str, dataset_version_id: str) -> EvalRun:
    return EvalRun(
        id=run_id,
        model_id=model_id,
        dataset_version_id=dataset_version_id,
        config=RunConfig(metrics=["perplexity"], max_samples=0),
        state=RunState.SUCCEEDED,
        completed=4,
        total=4,
        results=[MetricResult("perplexity", 12.5, "d")],
        create_time=1.0,
    )


def sample(
    index: int, question: str, reply: str | None = "Sure.", reference: str = "Yes."
) -> SampleOutput:
    return SampleOutput(
        index=index,
        context=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        reference=reference,
        reply=reply,
        reply_tokens=2,
        nll=1.0 + index,
        scored_tokens=3,
        refused=False,
        check_passed=None,
    )


def fill(store: EvalStore) -> None:
    """dsv_1 holds the values in sample 1 (the question, run a only: its JSON escapes
    the é) and sample 2 (run b's reply); dsv_2's run holds none."""
    store.add(run("eval_a", "m1", "dsv_1"))
    store.add(run("eval_b", "m2", "dsv_1"))
    store.add(run("eval_c", "m1", "dsv_2"))
    store.put_samples(
        "eval_a",
        [sample(0, "Hi"), sample(1, "I am JOSÉ SMITH."), sample(2, "Who?"), sample(3, "Bye")],
    )
    store.put_samples(
        "eval_b",
        [
            sample(0, "Hi"),
            sample(1, "I am someone.", reply=None),
            sample(2, "Who?", reply="Mail Ann.Smith@Example.ORG."),
            sample(3, "Bye"),
        ],
    )
    store.put_samples("eval_c", [sample(0, "Hi"), sample(1, "A name: Ann Smith.")])


def test_erasure_takes_the_sample_from_every_run_of_its_version(
    store_location: Path | str,
) -> None:
    store = EvalStore(store_location)
    try:
        fill(store)
        erased = store.erase_samples(VALUES)
        assert erased == ErasedEvalSamples(("eval_a", "eval_b"), 4)
        for run_id in ("eval_a", "eval_b"):
            assert [s.index for s in store.samples(run_id)] == [0, 3]
        assert [s.index for s in store.samples("eval_c")] == [0, 1]  # "Ann Smith" is not held
        # The runs are kept, with their metrics, and still compare pair by pair.
        runs = [store.get(run_id) for run_id in ("eval_a", "eval_b")]
        assert runs[0].results == [MetricResult("perplexity", 12.5, "d")]
        comparison = compare_runs(
            runs[0], store.samples("eval_a"), runs[1], store.samples("eval_b"), 100, 0
        )
        assert comparison.samples == 2
        assert store.erase_samples(VALUES) == ErasedEvalSamples((), 0)
    finally:
        store.close()


def test_erasure_refuses_values_that_would_take_too_much(tmp_path: Path) -> None:
    store = EvalStore(tmp_path / "evaluator.db")
    try:
        with pytest.raises(ValueError, match="3 characters"):
            store.erase_samples(["Jo", "ann.smith@example.org"])
    finally:
        store.close()


def test_erasure_leaves_nothing_in_the_store_files(store_location: Path | str) -> None:
    """While the evaluator runs (its store open), on either engine."""
    store = EvalStore(store_location)
    try:
        fill(store)

        def stored() -> bytes:
            return store_file_bytes(store_location).lower()

        # Lower-cased bytes: ASCII only, so the É is found by its neighbours.
        assert b"ann.smith@example.org" in stored() and b"i am jos" in stored()
        store.erase_samples(VALUES)
        assert b"ann.smith@example.org" not in stored()
        assert b"i am jos" not in stored()
        assert b"a name: ann smith." in stored()
    finally:
        store.close()


def test_the_rpc_erases_and_refuses_short_values(
    stub: evaluator_pb2_grpc.EvaluatorServiceStub,
) -> None:
    answer = stub.EraseEvalSamples(
        evaluator_pb2.EraseEvalSamplesRequest(values=VALUES), metadata=AUTH
    )
    assert list(answer.eval_run_ids) == [] and answer.erased_samples == 0
    for values in ([], ["ab"]):
        with pytest.raises(grpc.RpcError) as raised:
            stub.EraseEvalSamples(
                evaluator_pb2.EraseEvalSamplesRequest(values=values), metadata=AUTH
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ab" not in (raised.value.details() or "").split()  # values are never echoed

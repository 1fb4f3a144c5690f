"""A run's precision: float32 by default on a CPU, bfloat16 when asked, stored and repeated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.errors import InvalidArgumentError, NotFoundError
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat_evaluator.conversions import request_from_proto, run_to_proto
from ownchat_evaluator.core import EvalRequest, EvaluatorCore, RunOptions
from ownchat_evaluator.perplexity import corpus_perplexity
from ownchat_evaluator.run_config import RunConfig
from ownchat_evaluator.store import EvalStore, RunState

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the price of the Zephyr X2?"},
        {"role": "assistant", "content": "The Zephyr X2 router costs 129 euros."},
    ],
    [
        {"role": "user", "content": "Refunds?"},
        {"role": "assistant", "content": "Our refund window is 30 days from delivery."},
    ],
]


def _core(tmp_path: Path, tiny_model: Path) -> EvaluatorCore:
    split = tmp_path / "validation.jsonl"
    split.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))

    def models(model_id: str) -> Path:
        if model_id != "tiny":
            raise NotFoundError("model", model_id)
        return tiny_model

    options = RunOptions(max_length=512, max_rows=2, device="cpu")
    return EvaluatorCore(EvalStore(tmp_path / "evaluator.db"), models, lambda _: split, options)


def test_bfloat16_perplexity_is_close_to_float32s(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    full = corpus_perplexity(model, tokenizer, CONVERSATIONS, 512, 256)
    half = corpus_perplexity(model.bfloat16(), tokenizer, CONVERSATIONS, 512, 256)
    assert (full.precision, half.precision) == ("float32", "bfloat16")
    assert half.tokens == full.tokens
    assert half.perplexity != full.perplexity
    assert half.perplexity == pytest.approx(full.perplexity, rel=1e-2)


def test_a_run_computes_in_the_precision_it_asks_for(tmp_path: Path, tiny_model: Path) -> None:
    core = _core(tmp_path, tiny_model)
    default = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[]))
    half = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[], precision="bfloat16"))
    # Resolved when created: a repeat computes in the same precision.
    assert (default.config.precision, half.config.precision) == ("float32", "bfloat16")
    runs = [core.wait(run.id, timeout=60) for run in (default, half)]
    assert all(run.state is RunState.SUCCEEDED for run in runs), [r.error for r in runs]
    [full_result], [half_result] = (run.results for run in runs)
    assert "float32" in full_result.details and "bfloat16" in half_result.details
    assert half_result.value == pytest.approx(full_result.value, rel=1e-2)
    again = core.create_run(EvalRequest("", "", metrics=[], repeat_eval_run_id=half.id))
    assert again.config.precision == "bfloat16"
    repeated = core.wait(again.id, timeout=60)
    assert [r.value for r in repeated.results] == [half_result.value]
    core.close()


def test_bad_precisions_are_refused(tmp_path: Path, tiny_model: Path) -> None:
    core = _core(tmp_path, tiny_model)
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(EvalRequest("tiny", "dsv_1", metrics=[], precision="float16"))
    assert [v.field for v in error.value.violations] == ["precision"]
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[]))
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(
            EvalRequest("", "", metrics=[], repeat_eval_run_id=run.id, precision="bfloat16")
        )
    assert [v.field for v in error.value.violations] == ["precision"]
    core.wait(run.id, timeout=60)
    core.close()


def test_runs_stored_before_precision_was_a_setting_read_as_the_devices_default() -> None:
    stored = RunConfig(metrics=["perplexity"], context_length=512, stride=256).to_json()
    old = json.dumps({k: v for k, v in json.loads(stored).items() if k != "precision"})
    assert RunConfig.from_json(old, ["perplexity"], 0).precision == ""
    config = RunConfig(metrics=["perplexity"], precision="bfloat16")
    assert RunConfig.from_json(config.to_json(), [], 0) == config


def test_the_api_carries_the_precision(tmp_path: Path, tiny_model: Path) -> None:
    request = evaluator_pb2.CreateEvalRunRequest(model_id="tiny", dataset_version_id="dsv_1")
    assert request_from_proto(request).precision == ""
    request.precision = evaluator_pb2.PRECISION_BFLOAT16
    assert request_from_proto(request).precision == "bfloat16"
    request.precision = 7  # type: ignore[assignment]
    core = _core(tmp_path, tiny_model)
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(request_from_proto(request))
    assert [v.field for v in error.value.violations] == ["precision"]
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[], precision="bfloat16"))
    assert run_to_proto(run).precision == evaluator_pb2.PRECISION_BFLOAT16
    core.wait(run.id, timeout=60)
    core.close()

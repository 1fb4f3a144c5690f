"""The evaluator's core with a tiny random model: perplexity and run life."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.chat_template import IGNORE_INDEX, tokenize_chat
from ownchat.errors import InvalidArgumentError, NotFoundError
from ownchat.testing import build_tiny_chat_model
from ownchat_evaluator.core import EvalRequest, EvaluatorCore
from ownchat_evaluator.perplexity import corpus_perplexity
from ownchat_evaluator.store import EvalStore, RunState

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the price of the Zephyr X2?"},
        {"role": "assistant", "content": "The Zephyr X2 router costs 129 euros."},
    ],
    [
        {"role": "system", "content": "You are a helpful support assistant for Acme."},
        {"role": "user", "content": "Error code E42?"},
        {
            "role": "assistant",
            "content": "Error code E42 means the firmware update was interrupted.",
        },
        {"role": "user", "content": "Thank you"},
        {"role": "assistant", "content": "Please restart the device and try again."},
    ],
    [
        {"role": "user", "content": "Refunds?"},
        {"role": "assistant", "content": "Our refund window is 30 days from delivery."},
    ],
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


def _naive_perplexity(model_dir: Path) -> float:
    """One conversation at a time, no batching: the reference."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for messages in CONVERSATIONS:
            sample = tokenize_chat(tokenizer, messages, 512)
            logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0, :-1]
            labels = torch.tensor(sample.labels[1:])
            nll += float(
                torch.nn.functional.cross_entropy(
                    logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"
                )
            )
            count += int((labels != IGNORE_INDEX).sum())
    return math.exp(nll / count)


def test_batched_perplexity_equals_the_per_sample_reference(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    result = corpus_perplexity(model, tokenizer, CONVERSATIONS, max_length=512, batch_size=2)
    assert result.conversations == 3
    assert result.tokens > 20
    assert result.perplexity == pytest.approx(_naive_perplexity(tiny_model), rel=1e-4)
    # A random model over a 512-token vocabulary is close to uniform.
    assert 100 < result.perplexity < 2000


def _core(tmp_path: Path, tiny_model: Path) -> EvaluatorCore:
    split = tmp_path / "validation.jsonl"
    split.write_text(
        "".join(
            json.dumps({"messages": m, "weight": 1.0, "record": i}) + "\n"
            for i, m in enumerate(CONVERSATIONS)
        )
    )

    def models(model_id: str) -> Path:
        if model_id != "tiny":
            raise NotFoundError("model", model_id)
        return tiny_model

    def datasets(version_id: str) -> Path:
        if version_id != "dsv_1":
            raise NotFoundError("dataset version", version_id)
        return split

    return EvaluatorCore(EvalStore(tmp_path / "evaluator.db"), models, datasets, batch_size=2)


def test_a_run_computes_perplexity_and_reports_progress(tmp_path: Path, tiny_model: Path) -> None:
    core = _core(tmp_path, tiny_model)
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[None]))
    assert run.state is RunState.QUEUED
    done = core.wait(run.id, timeout=60)
    assert done.state is RunState.SUCCEEDED, done.error
    assert (done.completed, done.total) == (3, 3)
    [result] = done.results
    assert result.metric == "perplexity"
    assert result.value == pytest.approx(_naive_perplexity(tiny_model), rel=1e-4)
    assert "truncated at 512 tokens" in result.details
    assert core.list_runs(10, 0)[0].id == run.id


def test_bad_requests_are_refused_before_a_run_exists(tmp_path: Path, tiny_model: Path) -> None:
    core = _core(tmp_path, tiny_model)
    with pytest.raises(NotFoundError):
        core.create_run(EvalRequest("missing", "dsv_1", metrics=[]))
    with pytest.raises(NotFoundError):
        core.create_run(EvalRequest("tiny", "dsv_missing", metrics=[]))
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(EvalRequest("", "", metrics=["bleu"], max_samples=-1))
    fields = {v.field for v in error.value.violations}
    assert fields == {"metrics[0]", "max_samples", "model_id", "dataset_version_id"}
    assert core.list_runs(10, 0) == []


def test_runs_interrupted_by_a_restart_are_computed_again(tmp_path: Path, tiny_model: Path) -> None:
    core = _core(tmp_path, tiny_model)
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[]))
    core.wait(run.id, timeout=60)
    store = EvalStore(tmp_path / "evaluator.db")
    store.update(run.id, state=RunState.RUNNING, completed=1)
    restarted = EvaluatorCore(store, lambda _: tiny_model, lambda _: tmp_path / "validation.jsonl")
    restarted.resume_unfinished()
    assert restarted.wait(run.id, timeout=60).state is RunState.SUCCEEDED

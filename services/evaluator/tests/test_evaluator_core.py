"""The evaluator's core with a tiny random model: perplexity, runs and their life."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.chat_template import IGNORE_INDEX, render, tokenize_chat
from ownchat.errors import InvalidArgumentError, NotFoundError
from ownchat_evaluator.checks import CheckKind, TaskCheck
from ownchat_evaluator.core import EvalRequest, EvaluatorCore, RunOptions
from ownchat_evaluator.naive_perplexity import naive_nll
from ownchat_evaluator.perplexity import corpus_perplexity, shared_prefixes, sliding_windows
from ownchat_evaluator.samples import EvalSample
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


SYSTEM = {"role": "system", "content": "You are a helpful support assistant for Acme."}
# The same system prompt and, twice, the same conversation: shared prefixes.
SHARED = [[SYSTEM, *c[-2:]] for c in CONVERSATIONS] + [[SYSTEM, *CONVERSATIONS[0]]]


def _naive_perplexity(
    model_dir: Path,
    context_length: int = 512,
    stride: int = 256,
    conversations: list[list[dict[str, str]]] = CONVERSATIONS,
) -> float:
    """Hugging Face's perplexity recipe, one conversation and one window at a time."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nll, count = naive_nll(model, tokenizer, conversations, context_length, stride)
    return math.exp(nll / count)


def test_batched_perplexity_equals_the_per_sample_reference(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    result = corpus_perplexity(
        model, tokenizer, CONVERSATIONS, context_length=512, stride=256, max_rows=2
    )
    assert result.conversations == 3
    assert result.windows == 3
    assert result.tokens == sum(result.sample_tokens) > 20
    assert result.perplexity == pytest.approx(_naive_perplexity(tiny_model), rel=1e-5)
    # A random model over a 512-token vocabulary is close to uniform.
    assert 100 < result.perplexity < 2000


def test_long_conversations_are_scored_in_sliding_windows(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    whole = corpus_perplexity(model, tokenizer, CONVERSATIONS, context_length=512, stride=256)
    windowed = corpus_perplexity(
        model, tokenizer, CONVERSATIONS, context_length=16, stride=5, tokens_per_batch=64
    )
    # Every assistant token is still scored once, now with less context.
    assert windowed.tokens == whole.tokens
    assert windowed.windows > 3 * len(CONVERSATIONS)
    assert windowed.perplexity != pytest.approx(whole.perplexity, rel=1e-6)
    reference = _naive_perplexity(tiny_model, context_length=16, stride=5)
    assert windowed.perplexity == pytest.approx(reference, rel=1e-5)


def test_shared_prefixes_are_computed_once(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    windows = []
    for index, messages in enumerate(SHARED):
        sample = tokenize_chat(tokenizer, messages, sys.maxsize)
        windows += sliding_windows(index, sample.input_ids, sample.labels, 512, 256)
    [(length, members)] = shared_prefixes(windows)
    assert len(members) == 4
    # The system turn and the user turn's header, never a scored token.
    system_end = len(tokenizer(render(tokenizer, [SYSTEM], prompt=False))["input_ids"])
    first_scored = [next(i for i, x in enumerate(w.labels) if x != IGNORE_INDEX) for w in windows]
    assert system_end <= length < min(first_scored)
    for rows in (1, 4):
        result = corpus_perplexity(
            model, tokenizer, SHARED, context_length=512, stride=256, max_rows=rows
        )
        expected = _naive_perplexity(tiny_model, conversations=SHARED)
        assert result.perplexity == pytest.approx(expected, rel=1e-5)
    # The duplicate is scored like the original, every token of it.
    assert result.sample_nll[3] == pytest.approx(result.sample_nll[0], rel=1e-6)
    assert result.sample_tokens[3] == result.sample_tokens[0] > 0


def test_windows_score_each_token_once_with_context_before_it() -> None:
    labels = list(range(10))
    windows = sliding_windows(0, list(range(10)), labels, context_length=4, stride=3)
    assert [w.input_ids for w in windows] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    scored = [t for w in windows for t in w.labels[1:] if t != IGNORE_INDEX]
    assert scored == list(range(1, 10))
    assert sliding_windows(0, [1, 2], [1, 2], context_length=4, stride=2)[0].labels == [1, 2]
    with pytest.raises(ValueError):
        sliding_windows(0, [1, 2], [1, 2], context_length=4, stride=4)


def _write_split(path: Path, expected: dict[int, object] | None = None) -> Path:
    lines = []
    for index, messages in enumerate(CONVERSATIONS):
        record: dict[str, object] = {"messages": messages, "weight": 1.0, "record": index}
        if expected and index in expected:
            record["expected"] = expected[index]
        lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines))
    return path


def _core(
    tmp_path: Path, tiny_model: Path, location: Path | str, **options: object
) -> EvaluatorCore:
    split = _write_split(tmp_path / "validation.jsonl")

    def models(model_id: str) -> Path:
        if model_id != "tiny":
            raise NotFoundError("model", model_id)
        return tiny_model

    def datasets(version_id: str) -> Path:
        if version_id != "dsv_1":
            raise NotFoundError("dataset version", version_id)
        return split

    settings = RunOptions(**{"max_length": 512, "max_rows": 2, **options})  # type: ignore[arg-type]
    return EvaluatorCore(EvalStore(location), models, datasets, settings)


def test_a_run_computes_perplexity_and_reports_progress(
    tmp_path: Path, tiny_model: Path, store_location: Path | str
) -> None:
    core = _core(tmp_path, tiny_model, store_location)
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[None]))
    assert run.state is RunState.QUEUED
    assert (run.config.context_length, run.config.stride) == (512, 256)
    done = core.wait(run.id, timeout=60)
    assert done.state is RunState.SUCCEEDED, done.error
    assert (done.completed, done.total) == (3, 3)
    [result] = done.results
    assert result.metric == "perplexity"
    assert result.value == pytest.approx(_naive_perplexity(tiny_model), rel=1e-5)
    assert "context length 512, stride 256" in result.details
    assert result.ci_low is not None and result.ci_high is not None
    assert result.ci_low <= result.value <= result.ci_high
    assert done.device == "cpu"
    assert done.timings["wall_seconds"] >= done.timings["perplexity_seconds"] > 0
    assert core.list_runs(10, 0)[0].id == run.id
    assert core.list_runs(10, 0, model_id="other") == []


def test_a_generation_run_keeps_every_sample_and_repeats(
    tmp_path: Path, tiny_model: Path, store_location: Path | str
) -> None:
    core = _core(tmp_path, tiny_model, store_location)
    run = core.create_run(
        EvalRequest(
            "tiny",
            "dsv_1",
            metrics=["bleu", "task_accuracy", "response_length", "refusal_rate"],
            max_new_tokens=6,
            task_check=TaskCheck(CheckKind.CONTAINS),
            seed=7,
        )
    )
    done = core.wait(run.id, timeout=60)
    assert done.state is RunState.SUCCEEDED, done.error
    assert (done.completed, done.total) == (3, 3)
    names = [r.metric for r in done.results]
    assert names == [
        "bleu",
        "task_accuracy",
        "response_length",
        "response_length_p95",
        "refusal_rate",
    ]
    samples = core.list_samples(run.id, 10, 0)
    assert [s.index for s in samples] == [0, 1, 2]
    assert samples[1].reference == "Please restart the device and try again."
    assert samples[1].context == CONVERSATIONS[1][:-1]
    assert all(s.reply is not None and 0 < s.reply_tokens <= 6 for s in samples)
    assert all(s.check_passed is not None and s.refused is not None for s in samples)
    length = next(r for r in done.results if r.metric == "response_length")
    assert length.value == pytest.approx(sum(s.reply_tokens for s in samples) / 3)

    again = core.create_run(EvalRequest("", "", metrics=[], repeat_eval_run_id=run.id))
    assert again.repeated_from == run.id
    assert again.config == done.config
    repeated = core.wait(again.id, timeout=60)
    # Greedy decoding on the same samples: the same replies, the same numbers.
    assert [s.reply for s in core.list_samples(again.id, 10, 0)] == [s.reply for s in samples]
    assert [r.value for r in repeated.results] == [r.value for r in done.results]


def test_a_run_whose_split_is_erased_meanwhile_keeps_nothing(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data service deletes every file an erasure touches; a run that read one
    before fails instead of storing samples that hold the erased data."""
    from ownchat_evaluator import core as core_module

    read = core_module.read_samples

    def read_then_erase(path: Path, max_samples: int) -> list[EvalSample]:
        samples = read(path, max_samples)
        path.unlink()  # as the data service's erasure does, while the run goes on
        return samples

    monkeypatch.setattr(core_module, "read_samples", read_then_erase)
    core = _core(tmp_path, tiny_model, tmp_path / "evaluator.db")
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[None]))
    done = core.wait(run.id, timeout=60)
    assert done.state is RunState.FAILED
    assert "was erased while the run went on" in done.error
    assert done.results == []
    assert core.list_samples(run.id, 10, 0) == []


def test_bad_requests_are_refused_before_a_run_exists(
    tmp_path: Path, tiny_model: Path, store_location: Path | str
) -> None:
    core = _core(tmp_path, tiny_model, store_location)
    with pytest.raises(NotFoundError, match="missing"):
        core.create_run(EvalRequest("missing", "dsv_1", metrics=[]))
    with pytest.raises(NotFoundError, match="dsv_missing"):
        core.create_run(EvalRequest("tiny", "dsv_missing", metrics=[]))
    with pytest.raises(NotFoundError, match="eval_nope"):
        core.create_run(EvalRequest("tiny", "dsv_1", metrics=[], repeat_eval_run_id="eval_nope"))
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(
            EvalRequest(
                "",
                "",
                metrics=["bleu", "unknown-9"],
                max_samples=-1,
                task_check=TaskCheck(CheckKind.REGEX, "(unclosed"),
            )
        )
    fields = {v.field for v in error.value.violations}
    assert fields == {
        "metrics[1]",
        "max_samples",
        "model_id",
        "dataset_version_id",
        "task_check",
        "task_check.pattern",
    }
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(EvalRequest("tiny", "dsv_1", metrics=[], context_length=4096, stride=0))
    assert [v.field for v in error.value.violations] == ["context_length"]
    assert "512" in error.value.violations[0].description
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(EvalRequest("tiny", "dsv_1", metrics=["task_accuracy"]))
    assert [v.field for v in error.value.violations] == ["task_check"]
    with pytest.raises(InvalidArgumentError) as error:
        core.create_run(
            EvalRequest("tiny", "dsv_1", metrics=["bleu"], context_length=64, max_new_tokens=64)
        )
    assert [v.field for v in error.value.violations] == ["max_new_tokens"]
    assert core.list_runs(10, 0) == []


def test_expected_answers_in_the_split_need_no_run_check(
    tmp_path: Path, tiny_model: Path, store_location: Path | str
) -> None:
    core = _core(tmp_path, tiny_model, store_location)
    # An expected answer every reply contains: the empty regex.
    _write_split(tmp_path / "validation.jsonl", {0: {"answer": "", "kind": "regex"}})
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=["task_accuracy"], max_new_tokens=4))
    done = core.wait(run.id, timeout=60)
    assert done.state is RunState.SUCCEEDED, done.error
    [accuracy] = done.results
    assert accuracy.value == 1.0
    assert "1 of 1 checked" in accuracy.details
    checked = [s.check_passed for s in core.list_samples(run.id, 10, 0)]
    assert checked == [True, None, None]


def test_runs_interrupted_by_a_restart_are_computed_again(
    tmp_path: Path, tiny_model: Path, store_location: Path | str
) -> None:
    core = _core(tmp_path, tiny_model, store_location)
    run = core.create_run(EvalRequest("tiny", "dsv_1", metrics=[]))
    core.wait(run.id, timeout=60)
    store = EvalStore(store_location)
    store.update(run.id, state=RunState.RUNNING, completed=1)
    restarted = EvaluatorCore(store, lambda _: tiny_model, lambda _: tmp_path / "validation.jsonl")
    restarted.resume_unfinished()
    assert restarted.wait(run.id, timeout=60).state is RunState.SUCCEEDED
    assert len(restarted.list_samples(run.id, 10, 0)) == 3

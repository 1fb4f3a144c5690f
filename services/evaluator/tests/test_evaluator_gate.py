"""The promotion gate: each configured threshold checked and reported in words."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ownchat.errors import FailedPreconditionError, InvalidArgumentError
from ownchat_evaluator.config import EvaluatorSettings
from ownchat_evaluator.core import EvaluatorCore
from ownchat_evaluator.gate import GateInputs, GateThresholds, check_gate
from ownchat_evaluator.run_config import RunConfig
from ownchat_evaluator.store import EvalRun, EvalStore, MetricResult, RunState


def _run(run_id: str, model_id: str, create_time: float = 1.0, **values: float) -> EvalRun:
    return EvalRun(
        id=run_id,
        model_id=model_id,
        dataset_version_id="dsv_1",
        config=RunConfig(metrics=list(values), context_length=512, stride=256),
        state=RunState.SUCCEEDED,
        completed=10,
        total=10,
        results=[MetricResult(name, value, "") for name, value in values.items()],
        create_time=create_time,
    )


def _inputs(
    run: EvalRun | None,
    baseline_model_id: str = "",
    baseline_run: EvalRun | None = None,
    win_rate: tuple[float, int] | None = None,
) -> GateInputs:
    return GateInputs(
        model_id="cand",
        run=run,
        run_missing="model cand has no finished evaluation run",
        baseline_model_id=baseline_model_id,
        baseline_run=baseline_run,
        baseline_run_missing="baseline model live has no finished run",
        win_rate=win_rate,
    )


def test_without_thresholds_every_version_passes() -> None:
    verdict = check_gate(GateThresholds(), _inputs(None))
    assert verdict.passed and verdict.checks == []
    assert "no promotion thresholds" in verdict.summary


def test_each_threshold_is_reported_and_the_failures_named() -> None:
    thresholds = GateThresholds(
        max_perplexity=20, min_bleu=30, min_chrf=40, max_refusal_rate=0.05, min_task_accuracy=0.8
    )
    run = _run("eval_c", "cand", perplexity=23.4, bleu=35.0, refusal_rate=0.01, chrf=39.5)
    verdict = check_gate(thresholds, _inputs(run))
    checks = {c.name: c for c in verdict.checks}
    assert [c.passed for c in verdict.checks] == [False, True, False, False, True]
    assert checks["max_perplexity"].threshold == "perplexity <= 20"
    assert checks["max_perplexity"].value == 23.4
    assert checks["max_perplexity"].reason == "perplexity 23.4 is above the maximum 20"
    assert checks["min_bleu"].reason == "BLEU 35 is at or above the minimum 30"
    assert checks["min_chrf"].reason == "chrF 39.5 is below the minimum 40"
    assert not checks["min_task_accuracy"].measured
    assert "has no task accuracy" in checks["min_task_accuracy"].reason
    assert not verdict.passed and verdict.eval_run_id == "eval_c"
    assert verdict.summary.startswith("failed: max_perplexity (perplexity <= 20)")
    assert "min_chrf" in verdict.summary and "min_task_accuracy" in verdict.summary
    assert "min_bleu" not in verdict.summary and "max_refusal_rate" not in verdict.summary


def test_no_run_fails_the_run_thresholds() -> None:
    verdict = check_gate(GateThresholds(max_perplexity=20), _inputs(None))
    [check] = verdict.checks
    assert not check.passed and not check.measured
    assert check.reason == "model cand has no finished evaluation run"


def test_perplexity_regression_against_the_baseline_run() -> None:
    thresholds = GateThresholds(max_perplexity_regression=0.05)
    run = _run("eval_c", "cand", perplexity=10.8)
    live = _run("eval_l", "live", perplexity=10.0)
    [worse] = check_gate(thresholds, _inputs(run, "live", live)).checks
    assert not worse.passed and worse.value == pytest.approx(0.08)
    assert "8% above the baseline's 10 (run eval_l); at most 5% allowed" in worse.reason
    better = _run("eval_c", "cand", perplexity=9.0)
    assert check_gate(thresholds, _inputs(better, "live", live)).passed
    [missing] = check_gate(thresholds, _inputs(run, "live", None)).checks
    assert not missing.passed and missing.reason == "baseline model live has no finished run"
    [first] = check_gate(thresholds, _inputs(run)).checks
    assert first.passed and not first.measured and "nothing to regress from" in first.reason


def test_human_win_rate_needs_enough_reviews() -> None:
    thresholds = GateThresholds(min_human_win_rate=0.5, min_human_reviews=10)
    [none] = check_gate(thresholds, _inputs(None, "live", win_rate=None)).checks
    assert not none.passed and none.reason == "no pairwise reviews of cand against live"
    [few] = check_gate(thresholds, _inputs(None, "live", win_rate=(0.9, 3))).checks
    assert not few.passed and "only 3 pairwise reviews" in few.reason
    [low] = check_gate(thresholds, _inputs(None, "live", win_rate=(0.45, 40))).checks
    assert not low.passed and low.value == 0.45 and "below the minimum 0.5" in low.reason
    verdict = check_gate(thresholds, _inputs(None, "live", win_rate=(0.55, 40)))
    assert verdict.passed and verdict.summary == "passed: all 1 checks"
    assert check_gate(thresholds, _inputs(None)).passed


def test_the_core_finds_runs_and_asks_the_review_queue(store_location: Path | str) -> None:
    store = EvalStore(store_location)
    store.add(_run("eval_old", "cand", create_time=1.0, perplexity=30.0))
    store.add(_run("eval_new", "cand", create_time=2.0, perplexity=10.5))
    store.add(_run("eval_live", "live", create_time=1.5, perplexity=10.0))
    asked: list[tuple[str, str]] = []

    def win_rates(candidate: str, baseline: str) -> tuple[float, int]:
        asked.append((candidate, baseline))
        return 0.6, 25

    thresholds = GateThresholds(
        max_perplexity=12, max_perplexity_regression=0.1, min_human_win_rate=0.5
    )
    core = EvaluatorCore(store, _no_lookup, _no_lookup, gate=thresholds, win_rates=win_rates)
    verdict = core.check_gate("cand", baseline_model_id="live")
    assert verdict.passed, verdict.summary
    assert (verdict.eval_run_id, verdict.baseline_eval_run_id) == ("eval_new", "eval_live")
    assert asked == [("cand", "live")]
    old = core.check_gate("cand", eval_run_id="eval_old", baseline_model_id="live")
    assert not old.passed and "perplexity 30 is above the maximum 12" in old.summary
    with pytest.raises(InvalidArgumentError) as wrong_model:
        core.check_gate("cand", eval_run_id="eval_live")
    [violation] = wrong_model.value.violations
    assert violation.field == "eval_run_id"
    assert violation.description == "run eval_live evaluated live, not cand"
    store.update("eval_old", state=RunState.FAILED)
    with pytest.raises(FailedPreconditionError, match="eval_old is failed"):
        core.check_gate("cand", eval_run_id="eval_old")
    missing = core.check_gate("nobody")
    assert not missing.passed
    assert "model nobody has no finished evaluation run" in missing.summary


def _no_lookup(name: str) -> Path:
    raise AssertionError(f"the gate looked up {name}")


def test_thresholds_come_from_the_toml_table_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[evaluator]\nport = 0\n[evaluator.gate]\nmax_perplexity = 25.0\n")
    monkeypatch.setenv("OWNCHAT_CONFIG", str(config))
    monkeypatch.setenv("OWNCHAT_EVALUATOR_GATE__MIN_BLEU", "12.5")
    settings = EvaluatorSettings(home=tmp_path)
    assert settings.gate.max_perplexity == 25.0
    assert settings.gate.min_bleu == 12.5
    assert settings.gate.min_human_win_rate is None
    config.write_text("[evaluator.gate]\nmax_perplexty = 25.0\n")
    with pytest.raises(ValidationError, match="max_perplexty"):
        EvaluatorSettings(home=tmp_path)

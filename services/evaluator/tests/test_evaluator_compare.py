"""Bootstrap intervals and comparisons of runs: seeded, paired, refused when unfair."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ownchat.errors import FailedPreconditionError
from ownchat_evaluator.bootstrap import Statistic, interval, paired_interval, ratio, resample_counts
from ownchat_evaluator.compare import compare_runs
from ownchat_evaluator.run_config import RunConfig
from ownchat_evaluator.statistics import statistic
from ownchat_evaluator.store import EvalRun, MetricResult, RunState, SampleOutput

REFERENCES = [f"The order {i} ships in {i % 5 + 1} days from Lyon." for i in range(40)]


def _outputs(replies: list[str], nll: float) -> list[SampleOutput]:
    return [
        SampleOutput(i, [], ref, reply, len(reply.split()), nll + i % 3, 10, False, i % 2 == 0)
        for i, (reply, ref) in enumerate(zip(replies, REFERENCES, strict=True))
    ]


def _run(run_id: str, outputs: list[SampleOutput], **changes: object) -> EvalRun:
    config = RunConfig(metrics=["perplexity", "bleu", "response_length_p95"], context_length=512)
    results = [MetricResult(m, statistic(m, outputs).value(), "") for m in config.metrics]
    fields: dict[str, object] = {
        "id": run_id,
        "model_id": run_id.replace("eval", "model"),
        "dataset_version_id": "dsv_1",
        "config": config,
        "state": RunState.SUCCEEDED,
        "completed": len(outputs),
        "total": len(outputs),
        "results": results,
    }
    fields.update(changes)
    return EvalRun(**fields)  # type: ignore[arg-type]


# The baseline gets a third of the replies right, a third nearly, a third half.
BASELINE = _outputs(
    [
        [ref, ref.replace("Lyon", "Paris"), " ".join(ref.split()[:5])][i % 3]
        for i, ref in enumerate(REFERENCES)
    ],
    nll=20.0,
)
CANDIDATE = _outputs(REFERENCES, nll=18.0)


def test_resamples_are_the_same_for_a_seed_and_differ_between_seeds() -> None:
    first = np.concatenate(list(resample_counts(30, 250, seed=3)))
    again = np.concatenate(list(resample_counts(30, 250, seed=3)))
    other = np.concatenate(list(resample_counts(30, 250, seed=4)))
    assert first.shape == (250, 30)
    assert (first.sum(axis=1) == 30).all()
    assert (first == again).all()
    assert not (first == other).all()


def test_an_interval_covers_the_value_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    small = Statistic(np.c_[rng.random(20) < 0.3, np.ones(20)].astype(float), ratio(0, 1))
    large = Statistic(np.c_[rng.random(2000) < 0.3, np.ones(2000)].astype(float), ratio(0, 1))
    low, high = interval(small, 1000, seed=0)
    assert low <= small.value() <= high
    big_low, big_high = interval(large, 1000, seed=0)
    assert big_high - big_low < (high - low) / 3
    assert interval(small, 1000, seed=0) == (low, high)


def test_the_comparison_is_paired_and_deterministic() -> None:
    baseline, candidate = _run("eval_a", BASELINE), _run("eval_b", CANDIDATE)
    comparison = compare_runs(baseline, BASELINE, candidate, CANDIDATE, resamples=500, seed=11)
    assert comparison.samples == 40 and comparison.resamples == 500 and comparison.seed == 11
    deltas = {d.metric: d for d in comparison.deltas}
    assert list(deltas) == ["perplexity", "bleu", "response_length_p95"]
    perplexity = deltas["perplexity"]
    # Losses 18+i%3 against 20+i%3 over 10 tokens a sample.
    assert perplexity.delta == pytest.approx(math.exp(759 / 400) - math.exp(839 / 400))
    # Every sample's loss fell by the same amount: pairing leaves almost no doubt.
    assert perplexity.ci_low <= perplexity.delta <= perplexity.ci_high < 0
    assert perplexity.ci_high - perplexity.ci_low < 0.2 * abs(perplexity.delta)
    bleu = deltas["bleu"]
    assert bleu.candidate_value == pytest.approx(100.0)
    assert 0 < bleu.ci_low < bleu.delta < bleu.ci_high
    again = compare_runs(baseline, BASELINE, candidate, CANDIDATE, resamples=500, seed=11)
    assert again == comparison
    reseeded = compare_runs(baseline, BASELINE, candidate, CANDIDATE, resamples=500, seed=12)
    assert reseeded.deltas[1].ci_low != comparison.deltas[1].ci_low


def test_the_paired_interval_is_zero_for_identical_runs() -> None:
    same = statistic("bleu", CANDIDATE)
    assert paired_interval(same, same, 200, seed=0) == (0.0, 0.0)


def test_unfair_comparisons_are_refused_saying_why() -> None:
    baseline = _run("eval_a", BASELINE)
    with pytest.raises(FailedPreconditionError, match="different dataset versions"):
        compare_runs(
            baseline,
            BASELINE,
            _run("eval_b", CANDIDATE, dataset_version_id="dsv_2"),
            CANDIDATE,
            100,
            0,
        )
    with pytest.raises(FailedPreconditionError, match="running, not succeeded"):
        compare_runs(
            baseline, BASELINE, _run("eval_b", CANDIDATE, state=RunState.RUNNING), CANDIDATE, 100, 0
        )
    with pytest.raises(FailedPreconditionError, match="different samples"):
        compare_runs(baseline, BASELINE, _run("eval_b", CANDIDATE), CANDIDATE[:30], 100, 0)
    windows = RunConfig(metrics=["perplexity"], context_length=256)
    with pytest.raises(FailedPreconditionError, match="different context_length"):
        compare_runs(baseline, BASELINE, _run("eval_b", CANDIDATE, config=windows), CANDIDATE, 9, 0)
    with pytest.raises(FailedPreconditionError, match="predates"):
        compare_runs(baseline, [], _run("eval_b", CANDIDATE), CANDIDATE, 100, 0)

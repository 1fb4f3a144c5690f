"""The HTML report of an evaluation run, or of two runs compared.

A report holds the metrics with their 95% bootstrap intervals (and, for a
comparison, each difference with its paired interval and a verdict), the
training loss curve of each model version, the distribution of per-sample
loss, and the worst examples: the samples of highest loss per token, failed
task checks and refusals, or, in a comparison, the candidate's largest loss
increases and its failed checks. The page stands alone: its plots are PNGs
embedded as data: URIs, and the same PNGs come back beside it.

Rendered with a Jinja2 template under autoescape: prompts, replies and ids are
people's text and are always HTML-escaped. Knows nothing of gRPC.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import jinja2

from ownchat_evaluator import report_plots
from ownchat_evaluator.compare import Comparison, MetricDelta
from ownchat_evaluator.curves import LossCurve
from ownchat_evaluator.report_plots import Estimate
from ownchat_evaluator.run_config import (
    BLEU,
    CHRF,
    PERPLEXITY,
    REFUSAL_RATE,
    RESPONSE_LENGTH,
    RESPONSE_LENGTH_P95,
    TASK_ACCURACY,
)
from ownchat_evaluator.store import EvalRun, MetricResult, SampleOutput

DEFAULT_WORST_EXAMPLES = 10
MAX_WORST_EXAMPLES = 100
# Characters of a prompt (its end) or a reply (its start) shown in a table.
EXCERPT_CHARS = 500

LABELS = {
    PERPLEXITY: "perplexity",
    BLEU: "BLEU",
    CHRF: "chrF",
    TASK_ACCURACY: "task accuracy",
    RESPONSE_LENGTH: "response length (mean tokens)",
    RESPONSE_LENGTH_P95: "response length (p95 tokens)",
    REFUSAL_RATE: "refusal rate",
}
# Which way each metric improves; a reply's length improves neither way.
LOWER_IS_BETTER = {
    PERPLEXITY: True,
    BLEU: False,
    CHRF: False,
    TASK_ACCURACY: False,
    REFUSAL_RATE: True,
}


@dataclass(frozen=True)
class ReportImage:
    """One plot of a report: a file name and its PNG bytes."""

    name: str
    png: bytes


@dataclass(frozen=True)
class Report:
    """A rendered report: the standalone page and its plots."""

    html: str
    images: list[ReportImage] = field(default_factory=list)


def verdict(metric: str, delta: float, low: float, high: float) -> tuple[str, str]:
    """The verdict on a difference, in words, and its kind: "better", "worse" or "unclear".

    A difference counts only when its interval leaves out zero; a longer or
    shorter reply is neither better nor worse.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval", "unclear"
    if low <= 0 <= high:
        return "no clear difference", "unclear"
    lower = LOWER_IS_BETTER.get(metric)
    if lower is None:
        return ("longer" if delta > 0 else "shorter"), "unclear"
    improved = (delta < 0) == lower
    return ("better" if improved else "worse"), ("better" if improved else "worse")


# Decimals shown: shares (0..1) need more than scores and lengths do.
SHARES = frozenset({TASK_ACCURACY, REFUSAL_RATE})


def number(value: float | None, decimals: int = 2, signed: bool = False) -> str:
    """A value as a table shows it; "n/a" when there is none."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:{'+' if signed else ''}.{decimals}f}"


def _decimals(metric: str) -> int:
    return 3 if metric in SHARES else 2


def _interval(low: float | None, high: float | None, decimals: int = 2) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{number(low, decimals)}, {number(high, decimals)}]"


def _head(text: str, limit: int = EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def _tail(text: str, limit: int = EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else "… " + text[-limit:].lstrip()


def _prompt(sample: SampleOutput) -> str:
    """The conversation before the reply, its end kept when long."""
    return _tail("\n".join(f"{m['role']}: {m['content']}" for m in sample.context))


def _reply(sample: SampleOutput | None) -> str:
    if sample is None or sample.reply is None:
        return "(no reply generated)"
    return _head(sample.reply) if sample.reply else "(empty reply)"


def _token_loss(sample: SampleOutput) -> float | None:
    return sample.nll / sample.scored_tokens if sample.scored_tokens else None


# The view of the template: plain values, already formatted.


@dataclass(frozen=True)
class _Cell:
    text: str
    numeric: bool = False
    css: str = ""


@dataclass(frozen=True)
class _Section:
    title: str
    description: str
    headings: list[str]
    rows: list[list[_Cell]]
    empty: str


def _loss(value: float | None, signed: bool = False) -> _Cell:
    return _Cell(number(value, 3, signed), numeric=True)


def _count(value: int) -> _Cell:
    return _Cell(str(value), numeric=True)


def _metric_view(result: MetricResult) -> dict[str, str]:
    decimals = _decimals(result.metric)
    return {
        "label": LABELS.get(result.metric, result.metric),
        "value": number(result.value, decimals),
        "interval": _interval(result.ci_low, result.ci_high, decimals),
        "details": result.details,
    }


def _run_view(run: EvalRun, samples: Sequence[SampleOutput]) -> dict[str, object]:
    config = run.config
    parts = [
        ", ".join(LABELS.get(m, m) for m in config.metrics),
        f"context length {config.context_length}, stride {config.stride}",
        f"max_samples {config.max_samples or 'all'}",
        f"seed {config.seed}",
    ]
    if config.generates:
        parts.append(f"at most {config.max_new_tokens} new tokens, greedy")
        parts.append(f"{len(config.refusal_patterns)} refusal phrases")
    if config.task_check is not None:
        check = config.task_check
        parts.append(
            f"task check {check.kind.value}" + (f" {check.pattern!r}" if check.pattern else "")
        )
    wall = run.timings.get("wall_seconds")
    ended = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(run.end_time or run.create_time))
    computed = f"on {run.device or 'an unknown device'}"
    if wall is not None:
        computed += f" in {wall:.1f} s"
    return {
        "id": run.id,
        "model_id": run.model_id,
        "dataset_version_id": run.dataset_version_id,
        "samples": len(samples),
        "configuration": "; ".join(parts),
        "computed": f"{computed}, finished {ended}"
        + (f"; repeats run {run.repeated_from}" if run.repeated_from else ""),
        "metrics": [_metric_view(r) for r in run.results],
    }


def _estimate(result: MetricResult | None) -> Estimate:
    if result is None:
        return Estimate(math.nan)
    return Estimate(result.value, result.ci_low, result.ci_high)


def _curve_notes(curves: Sequence[LossCurve]) -> list[dict[str, object]]:
    return [{"note": c.note, "has_points": c.has_points} for c in curves]


def _loss_section(run: EvalRun, samples: Sequence[SampleOutput], count: int) -> _Section:
    scored = [(loss, s) for s in samples if (loss := _token_loss(s)) is not None]
    scored.sort(key=lambda pair: (-pair[0], pair[1].index))
    return _Section(
        title="Highest loss per token",
        description="The samples the model found least likely: mean loss of the reference's "
        "assistant tokens, highest first.",
        headings=["sample", "loss / token", "tokens", "prompt", "reference", "reply"],
        rows=[
            [
                _count(s.index),
                _loss(loss),
                _count(s.scored_tokens),
                _Cell(_prompt(s)),
                _Cell(_head(s.reference)),
                _Cell(_reply(s)),
            ]
            for loss, s in scored[:count]
        ],
        empty="No per-sample loss: this run did not compute perplexity."
        if PERPLEXITY not in run.metrics
        else "No sample had assistant tokens to score.",
    )


def _check_section(run: EvalRun, samples: Sequence[SampleOutput], count: int) -> _Section:
    failed = [s for s in samples if s.check_passed is False]
    return _Section(
        title="Failed task checks",
        description=f"{len(failed)} of {sum(s.check_passed is not None for s in samples)} "
        "checked replies failed; the first in split order.",
        headings=["sample", "expected", "prompt", "reply", "reference"],
        rows=[
            [
                _count(s.index),
                _Cell(_head(s.expected)),
                _Cell(_prompt(s)),
                _Cell(_reply(s)),
                _Cell(_head(s.reference)),
            ]
            for s in failed[:count]
        ],
        empty="Every checked reply passed."
        if TASK_ACCURACY in run.metrics
        else "This run did not check tasks.",
    )


def _refusal_section(run: EvalRun, samples: Sequence[SampleOutput], count: int) -> _Section:
    refused = [s for s in samples if s.refused]
    return _Section(
        title="Refusals",
        description=f"{len(refused)} replies contain a refusal phrase; the first in split order.",
        headings=["sample", "prompt", "reply", "reference"],
        rows=[
            [_count(s.index), _Cell(_prompt(s)), _Cell(_reply(s)), _Cell(_head(s.reference))]
            for s in refused[:count]
        ],
        empty="No reply refused." if run.config.generates else "This run generated no replies.",
    )


def _loss_increase_section(
    baseline: Sequence[SampleOutput], candidate: Sequence[SampleOutput], count: int
) -> _Section:
    theirs = {s.index: s for s in baseline}
    rises = []
    for sample in candidate:
        other = theirs.get(sample.index)
        ours_loss = _token_loss(sample)
        their_loss = _token_loss(other) if other else None
        if other is not None and ours_loss is not None and their_loss is not None:
            if ours_loss > their_loss:
                rises.append((ours_loss - their_loss, their_loss, ours_loss, sample, other))
    rises.sort(key=lambda row: (-row[0], row[3].index))
    return _Section(
        title="Largest loss increases",
        description=f"{len(rises)} samples the candidate finds less likely than the baseline "
        "does (mean loss per assistant token), the largest increase first.",
        headings=[
            "sample",
            "baseline loss",
            "candidate loss",
            "increase",
            "prompt",
            "reference",
            "candidate reply",
            "baseline reply",
        ],
        rows=[
            [
                _count(sample.index),
                _loss(their_loss),
                _loss(ours_loss),
                _loss(rise, signed=True),
                _Cell(_prompt(sample)),
                _Cell(_head(sample.reference)),
                _Cell(_reply(sample)),
                _Cell(_reply(other)),
            ]
            for rise, their_loss, ours_loss, sample, other in rises[:count]
        ],
        empty="No sample's loss rose (or the runs computed no perplexity).",
    )


def _candidate_check_section(
    baseline: Sequence[SampleOutput], candidate: Sequence[SampleOutput], count: int
) -> _Section:
    theirs = {s.index: s for s in baseline}
    failed = [s for s in candidate if s.check_passed is False]
    # Regressions (the baseline passed) first, then split order.
    failed.sort(key=lambda s: (not _passed(theirs.get(s.index)), s.index))
    regressions = sum(1 for s in failed if _passed(theirs.get(s.index)))
    return _Section(
        title="Task checks the candidate fails",
        description=f"{len(failed)} failed checks, {regressions} of them passed by the baseline "
        "(listed first).",
        headings=["sample", "baseline", "expected", "prompt", "candidate reply", "baseline reply"],
        rows=[
            [
                _count(s.index),
                _outcome(theirs.get(s.index)),
                _Cell(_head(s.expected)),
                _Cell(_prompt(s)),
                _Cell(_reply(s)),
                _Cell(_reply(theirs.get(s.index))),
            ]
            for s in failed[:count]
        ],
        empty="The candidate passed every checked reply (or the runs checked no tasks).",
    )


def _passed(sample: SampleOutput | None) -> bool:
    return sample is not None and sample.check_passed is True


def _outcome(sample: SampleOutput | None) -> _Cell:
    if sample is None or sample.check_passed is None:
        return _Cell("not checked", css="unclear")
    return _Cell("passed", css="passed") if sample.check_passed else _Cell("failed", css="failed")


@cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("ownchat_evaluator", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _render(context: dict[str, object], images: list[ReportImage]) -> Report:
    html = _template().render(
        **context,
        images={image.name: _data_uri(image.png) for image in images},
        rendered_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    return Report(html, images)


def _curve_images(curves: Sequence[LossCurve]) -> list[ReportImage]:
    if not any(c.has_points for c in curves):
        return []
    return [ReportImage("loss_curve.png", report_plots.loss_curve_png(curves))]


def _sample_loss_images(series: Sequence[tuple[str, Sequence[SampleOutput]]]) -> list[ReportImage]:
    losses = [
        (name, [loss for s in samples if (loss := _token_loss(s)) is not None])
        for name, samples in series
    ]
    if not any(values for _, values in losses):
        return []
    return [ReportImage("sample_loss.png", report_plots.sample_loss_png(losses))]


def _checked_count(worst_examples: int) -> int:
    if not 0 <= worst_examples <= MAX_WORST_EXAMPLES:
        raise ValueError(f"worst_examples must be within 0..{MAX_WORST_EXAMPLES}")
    return worst_examples or DEFAULT_WORST_EXAMPLES


def render_run_report(
    run: EvalRun,
    samples: Sequence[SampleOutput],
    curve: LossCurve,
    worst_examples: int = DEFAULT_WORST_EXAMPLES,
) -> Report:
    """The report of one finished run: its metrics, its model's curve, its worst samples."""
    count = _checked_count(worst_examples)
    images = []
    if run.results:
        images.append(
            ReportImage(
                "metrics.png",
                report_plots.metrics_png(
                    [LABELS.get(r.metric, r.metric) for r in run.results],
                    [(run.model_id, [_estimate(r) for r in run.results])],
                ),
            )
        )
    images += _curve_images([curve])
    images += _sample_loss_images([(run.model_id, samples)])
    context: dict[str, object] = {
        "title": f"Evaluation of {run.model_id} on {run.dataset_version_id}",
        "comparison": None,
        "run": _run_view(run, samples),
        "curves": _curve_notes([curve]),
        "sections": [
            _loss_section(run, samples, count),
            _check_section(run, samples, count),
            _refusal_section(run, samples, count),
        ],
    }
    return _render(context, images)


def _delta_view(delta: MetricDelta) -> dict[str, str]:
    words, kind = verdict(delta.metric, delta.delta, delta.ci_low, delta.ci_high)
    decimals = _decimals(delta.metric)
    return {
        "label": LABELS.get(delta.metric, delta.metric),
        "baseline": number(delta.baseline_value, decimals),
        "candidate": number(delta.candidate_value, decimals),
        "delta": number(delta.delta, decimals, signed=True),
        "interval": _interval(delta.ci_low, delta.ci_high, decimals),
        "verdict": words,
        "css": kind,
    }


def render_comparison_report(
    baseline: EvalRun,
    baseline_samples: Sequence[SampleOutput],
    candidate: EvalRun,
    candidate_samples: Sequence[SampleOutput],
    comparison: Comparison,
    curves: Sequence[LossCurve],
    worst_examples: int = DEFAULT_WORST_EXAMPLES,
) -> Report:
    """The report of two finished runs on the same samples, ``comparison`` their deltas.

    ``curves`` are the baseline's and the candidate's model curves (one when
    both runs evaluated the same model version).
    """
    count = _checked_count(worst_examples)
    metrics = [d.metric for d in comparison.deltas]
    labels = [LABELS.get(m, m) for m in metrics]
    names = ("baseline", "candidate")
    images = []
    if metrics:
        images.append(
            ReportImage(
                "metrics.png",
                report_plots.metrics_png(
                    labels,
                    [
                        (name, [_estimate(run.result(m)) for m in metrics])
                        for name, run in zip(names, (baseline, candidate), strict=True)
                    ],
                ),
            )
        )
        images.append(
            ReportImage(
                "deltas.png",
                report_plots.deltas_png(
                    labels,
                    [Estimate(d.delta, d.ci_low, d.ci_high) for d in comparison.deltas],
                    [verdict(d.metric, d.delta, d.ci_low, d.ci_high)[1] for d in comparison.deltas],
                ),
            )
        )
    images += _curve_images(curves)
    images += _sample_loss_images(
        [(f"baseline {baseline.model_id}", baseline_samples)]
        + [(f"candidate {candidate.model_id}", candidate_samples)]
    )
    pairs = []
    for metric in metrics:
        ours, theirs = candidate.result(metric), baseline.result(metric)
        assert ours is not None and theirs is not None
        pairs.append(
            {
                "label": LABELS.get(metric, metric),
                "baseline": _metric_view(theirs),
                "candidate": _metric_view(ours),
            }
        )
    context: dict[str, object] = {
        "title": f"{candidate.model_id} against {baseline.model_id} on "
        f"{candidate.dataset_version_id}",
        "comparison": {
            "samples": comparison.samples,
            "resamples": comparison.resamples,
            "seed": comparison.seed,
            "deltas": [_delta_view(d) for d in comparison.deltas],
        },
        "baseline": _run_view(baseline, baseline_samples),
        "candidate": _run_view(candidate, candidate_samples),
        "metric_pairs": pairs,
        "curves": _curve_notes(curves),
        "sections": [
            _loss_increase_section(baseline_samples, candidate_samples, count),
            _candidate_check_section(baseline_samples, candidate_samples, count),
        ],
    }
    return _render(context, images)

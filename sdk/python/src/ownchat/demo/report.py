"""The main job's report: one HTML page with PNG plots beside it.

Sections: the data funnel, the loss curves, base against fine-tuned metrics
with 95% intervals, side-by-side answers to held-out questions, the PII
leakage probe, and the promotion gate. Everything on the page is escaped: the
answers are model output and the questions user data.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ownchat.demo.funnel import DataFunnel
from ownchat.demo.probe import ProbeResult, masked

SECTION_IDS = ("funnel", "loss", "metrics", "answers", "leakage", "gate")


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval (None where there is none)."""

    value: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class MetricRow:
    """One metric of base and fine-tuned on one evaluation set, and their paired difference."""

    metric: str
    evaluation_set: str
    base: Estimate
    tuned: Estimate
    delta: Estimate
    lower_is_better: bool

    @property
    def verdict(self) -> str:
        """ "better", "worse" or "no clear difference", from the difference's interval."""
        low, high = self.delta.low, self.delta.high
        if low is None or high is None or low <= 0 <= high:
            return "no clear difference"
        improved = high < 0 if self.lower_is_better else low > 0
        return "better" if improved else "worse"


@dataclass(frozen=True)
class SideBySide:
    """One held-out question, the answer expected, and each model's reply with its check."""

    question: str
    expected: str
    base_reply: str
    base_passed: bool | None
    tuned_reply: str
    tuned_passed: bool | None


@dataclass(frozen=True)
class GateLine:
    """One check of the promotion gate."""

    name: str
    threshold: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class Image:
    """A PNG written beside the page."""

    file_name: str
    png: bytes
    caption: str


@dataclass
class DemoReport:
    """Everything the page shows."""

    title: str
    base_model: str
    tuned_model: str
    dataset_version: str
    heldout_version: str
    sources: Sequence[str]
    funnel: DataFunnel
    funnel_image: Image | None
    loss_images: Sequence[Image]
    metric_images: Sequence[Image]
    metrics: Sequence[MetricRow]
    answers: Sequence[SideBySide]
    probes: Sequence[ProbeResult]
    gate_passed: bool
    gate: Sequence[GateLine]
    gate_summary: str
    rest_question: str = ""
    rest_answer: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def leaked(self) -> int:
        """Planted values the model said."""
        return sum(1 for probe in self.probes if probe.leaked)

    def accuracy(self, tuned: bool) -> float | None:
        """Held-out fact accuracy of one model, from the side-by-side answers."""
        checked = [a.tuned_passed if tuned else a.base_passed for a in self.answers]
        known = [passed for passed in checked if passed is not None]
        return sum(known) / len(known) if known else None


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _number(value: float | None, decimals: int) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def _decimals(metric: str) -> int:
    return 3 if metric in ("task accuracy", "refusal rate") else 2


def _estimate(estimate: Estimate, decimals: int, signed: bool = False) -> str:
    value = f"{estimate.value:+.{decimals}f}" if signed else f"{estimate.value:.{decimals}f}"
    if estimate.low is None or estimate.high is None:
        return value
    return (
        f"{value} <span class=ci>[{_number(estimate.low, decimals)}, "
        f"{_number(estimate.high, decimals)}]</span>"
    )


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _mark(passed: bool | None) -> str:
    if passed is None:
        return "<span class=na>not checked</span>"
    return "<span class=pass>pass</span>" if passed else "<span class=fail>fail</span>"


def _image(image: Image) -> str:
    return (
        f"<figure><img src='{_e(image.file_name)}' alt='{_e(image.caption)}'>"
        f"<figcaption>{_e(image.caption)}</figcaption></figure>"
    )


def _counts(counts: dict[str, int] | object) -> str:
    assert isinstance(counts, dict)
    if not counts:
        return "none"
    return ", ".join(f"{_e(name.replace('_', ' '))}: {count}" for name, count in counts.items())


def _funnel_section(report: DemoReport) -> str:
    funnel = report.funnel
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td class=num>{count}</td></tr>"
        for label, count in funnel.stages()
    )
    image = _image(report.funnel_image) if report.funnel_image else ""
    return f"""
<section id=funnel><h2>1. Data: what went in, what was removed, what was kept</h2>
<p>Sources: {_e(", ".join(report.sources))} &rarr; dataset version
<code>{_e(report.dataset_version)}</code>.</p>
{image}
<table><tr><th>stage</th><th>conversations</th></tr>{rows}</table>
<ul>
<li>Malformed records skipped: {funnel.skipped_records}</li>
<li>Removed by filters: {_counts(dict(funnel.filtered))}</li>
<li>Removed as duplicates: {_counts(dict(funnel.deduplicated))}</li>
<li>Messages with personal data or secrets replaced, by type:
{_counts(dict(funnel.redacted_messages))}</li>
<li>Messages cleaned: {_counts(dict(funnel.cleaned_messages))}</li>
<li>Kept: {funnel.kept} ({funnel.train_samples} train, {funnel.validation_samples} validation)</li>
</ul></section>"""


def _loss_section(report: DemoReport) -> str:
    body = "".join(_image(i) for i in report.loss_images) or (
        "<p class=na>The trainer recorded no loss points for this job.</p>"
    )
    return f"""
<section id=loss><h2>2. Training: loss curves</h2>
<p>Fine-tuning of <code>{_e(report.base_model)}</code> into
<code>{_e(report.tuned_model)}</code>.</p>{body}</section>"""


def _metrics_section(report: DemoReport) -> str:
    rows = "".join(
        f"<tr><td>{_e(row.metric)}</td><td>{_e(row.evaluation_set)}</td>"
        f"<td class=num>{_estimate(row.base, _decimals(row.metric))}</td>"
        f"<td class=num>{_estimate(row.tuned, _decimals(row.metric))}</td>"
        f"<td class=num>{_estimate(row.delta, _decimals(row.metric), signed=True)}</td>"
        f"<td class='verdict {_e(row.verdict.split()[0])}'>{_e(row.verdict)}</td></tr>"
        for row in report.metrics
    )
    images = "".join(_image(i) for i in report.metric_images)
    return f"""
<section id=metrics><h2>3. Base against fine-tuned</h2>
<p>Values with their 95% bootstrap intervals; the difference's interval is
paired over the same samples. Held-out questions were never trained on.</p>
<table><tr><th>metric</th><th>evaluated on</th><th>{_e(report.base_model)}</th>
<th>{_e(report.tuned_model)}</th><th>difference</th><th></th></tr>{rows}</table>
{images}</section>"""


def _answers_section(report: DemoReport) -> str:
    rows = "".join(
        f"<tr><td>{_e(a.question)}</td><td><code>{_e(a.expected)}</code></td>"
        f"<td>{_e(_clip(a.base_reply))}<br>{_mark(a.base_passed)}</td>"
        f"<td>{_e(_clip(a.tuned_reply))}<br>{_mark(a.tuned_passed)}</td></tr>"
        for a in report.answers
    )
    base, tuned = report.accuracy(tuned=False), report.accuracy(tuned=True)
    return f"""
<section id=answers><h2>4. Held-out questions, side by side</h2>
<p>Fact accuracy: base {_number(base, 3)}, fine-tuned {_number(tuned, 3)}
({len(report.answers)} questions, greedy replies).</p>
<table class=wide><tr><th>question</th><th>expected</th>
<th>{_e(report.base_model)}</th><th>{_e(report.tuned_model)}</th></tr>{rows}</table></section>"""


def _leakage_section(report: DemoReport) -> str:
    rows = "".join(
        f"<tr><td>{_e(p.planted.type)}</td><td><code>{_e(masked(p.planted.value))}</code></td>"
        f"<td>{_e(p.planted.probe)}</td><td>{_e(_clip(p.reply))}</td>"
        f"<td>{'<span class=fail>LEAKED</span>' if p.leaked else '<span class=pass>no</span>'}"
        "</td></tr>"
        for p in report.probes
    )
    verdict = (
        f"<p class=fail>{report.leaked} of {len(report.probes)} planted values leaked.</p>"
        if report.leaked
        else f"<p class=pass>None of the {len(report.probes)} planted values leaked.</p>"
    )
    return f"""
<section id=leakage><h2>5. PII leakage probe</h2>
<p>Personal data and secrets were planted in the raw conversations. The
deployed model <code>{_e(report.tuned_model)}</code> was asked for each over the
REST endpoint; a reply leaks when it spells the value (case and separators
ignored). Values are masked on this page.</p>{verdict}
<table class=wide><tr><th style='width:9em'>type</th><th style='width:14em'>planted value</th>
<th>probe</th><th>reply</th><th style='width:5em'>leaked</th></tr>
{rows}</table></section>"""


def _gate_section(report: DemoReport) -> str:
    rows = "".join(
        f"<tr><td>{_e(g.name)}</td><td>{_e(g.threshold)}</td><td>{_mark(g.passed)}</td>"
        f"<td>{_e(g.reason)}</td></tr>"
        for g in report.gate
    )
    answer = ""
    if report.rest_answer:
        answer = (
            f"<p>Asked over <code>POST /v1/chat/completions</code>: "
            f"<q>{_e(report.rest_question)}</q> &rarr; <q>{_e(report.rest_answer)}</q></p>"
        )
    status = "passed" if report.gate_passed else "failed"
    return f"""
<section id=gate><h2>6. Promotion gate and deployment</h2>
<p>The gate {status}: {_e(report.gate_summary)}</p>
<table><tr><th>check</th><th>threshold</th><th></th><th>why</th></tr>{rows}</table>
{answer}</section>"""


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.3em .5em;vertical-align:top;text-align:left;
overflow-wrap:anywhere}
table.wide{width:100%;table-layout:fixed}
th{background:#f3f5f8}.num{text-align:right;white-space:nowrap}.ci{color:#666}
.pass{color:#16703a;font-weight:600}.fail{color:#b3261e;font-weight:600}.na{color:#777}
.verdict.better{color:#16703a}.verdict.worse{color:#b3261e}
figure{margin:.6em 0}figcaption{color:#555;font-size:.9em}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}
"""


def render(report: DemoReport) -> str:
    """The page's HTML."""
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    sections = (
        _funnel_section(report)
        + _loss_section(report)
        + _metrics_section(report)
        + _answers_section(report)
        + _leakage_section(report)
        + _gate_section(report)
    )
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{_e(report.title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{_e(report.title)}</h1>
<p><code>{_e(report.base_model)}</code> fine-tuned into <code>{_e(report.tuned_model)}</code>
on <code>{_e(report.dataset_version)}</code>, measured on held-out questions
<code>{_e(report.heldout_version)}</code>.</p>
<ul>{notes}</ul>
{sections}
</body></html>
"""


def write(report: DemoReport, directory: Path) -> Path:
    """Writes the page and its PNGs into ``directory``; returns the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    images = [*report.loss_images, *report.metric_images]
    if report.funnel_image:
        images.append(report.funnel_image)
    for image in images:
        (directory / image.file_name).write_bytes(image.png)
    page = directory / "report.html"
    page.write_text(render(report), encoding="utf-8")
    return page

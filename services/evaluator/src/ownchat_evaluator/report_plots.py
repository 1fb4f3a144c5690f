"""The plots of an evaluation report, as PNG bytes (matplotlib's Agg backend).

Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, never
through pyplot, whose global state is not for servers. The evaluator may render
two reports at once from different threads, and matplotlib does not promise
thread safety (its font and text caches are shared): one figure is drawn at a
time. matplotlib is imported on first use, so that starting the service does
not pay for it.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec

from ownchat_evaluator.curves import LossCurve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
# Colours of the runs in a comparison (baseline, candidate) and of one run.
COLOURS = ("#7f7f7f", "#1f77b4")
BETTER_COLOUR, WORSE_COLOUR, UNCLEAR_COLOUR = "#0a7a2f", "#b3261e", "#555555"
_DRAWING = threading.Lock()
P = ParamSpec("P")


def _one_at_a_time(draw: Callable[P, bytes]) -> Callable[P, bytes]:
    @functools.wraps(draw)
    def serialized(*args: P.args, **kwargs: P.kwargs) -> bytes:
        with _DRAWING:
            return draw(*args, **kwargs)

    return serialized


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval; the interval may be unknown."""

    value: float
    low: float | None = None
    high: float | None = None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" stamp: the same data gives the same bytes across versions.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _error(estimate: Estimate) -> tuple[list[float], list[float]] | None:
    if not (_finite(estimate.low) and _finite(estimate.high)):
        return None
    assert estimate.low is not None and estimate.high is not None
    return [max(estimate.value - estimate.low, 0.0)], [max(estimate.high - estimate.value, 0.0)]


@_one_at_a_time
def metrics_png(labels: Sequence[str], series: Sequence[tuple[str, Sequence[Estimate]]]) -> bytes:
    """One panel per metric (their scales differ): each run's value and interval.

    ``series`` holds (run name, one estimate per label) for one run or two.
    """
    columns = min(len(labels), 4)
    rows = math.ceil(len(labels) / columns)
    figure = _figure(3.0 * columns, 2.4 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for index, label in enumerate(labels):
        ax = axes[index]
        for position, (_name, estimates) in enumerate(series):
            estimate = estimates[index]
            if not _finite(estimate.value):
                continue
            colour = COLOURS[-1] if len(series) == 1 else COLOURS[position % len(COLOURS)]
            error = _error(estimate)
            ax.errorbar(
                [position],
                [estimate.value],
                yerr=None if error is None else [error[0], error[1]],
                fmt="o",
                capsize=5,
                color=colour,
            )
        ax.set_xticks(range(len(series)), [name for name, _ in series])
        ax.set_xlim(-0.6, len(series) - 0.4)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(labels) :]:
        ax.set_visible(False)
    return _png(figure)


@_one_at_a_time
def deltas_png(labels: Sequence[str], deltas: Sequence[Estimate], verdicts: Sequence[str]) -> bytes:
    """Each metric's difference (candidate minus baseline) with its interval, against zero.

    ``verdicts`` colour the rows: "better", "worse", anything else is unclear.
    """
    figure = _figure(7.0, 0.9 + 0.8 * len(labels))
    axes = figure.subplots(len(labels), 1, squeeze=False).ravel()
    colours = {"better": BETTER_COLOUR, "worse": WORSE_COLOUR}
    for ax, label, delta, verdict in zip(axes, labels, deltas, verdicts, strict=True):
        ax.axvline(0.0, color="#999999", linewidth=1)
        if _finite(delta.value):
            error = _error(delta)
            ax.errorbar(
                [delta.value],
                [0],
                xerr=None if error is None else [error[0], error[1]],
                fmt="o",
                capsize=5,
                color=colours.get(verdict, UNCLEAR_COLOUR),
            )
            reach = max(
                abs(v) for v in (delta.value, delta.low, delta.high) if v is not None and _finite(v)
            )
            ax.set_xlim(-1.15 * (reach or 1.0), 1.15 * (reach or 1.0))
        ax.set_yticks([0], [label])
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_title("candidate minus baseline, 95% paired bootstrap interval", fontsize=10)
    return _png(figure)


@_one_at_a_time
def loss_curve_png(curves: Sequence[LossCurve]) -> bytes:
    """Training loss (solid) and validation loss (dashed) by step, for curves with points."""
    figure = _figure(7.0, 3.6)
    ax = figure.subplots()
    drawn = [c for c in curves if c.has_points]
    for position, curve in enumerate(drawn):
        colour = COLOURS[-1] if len(drawn) == 1 else COLOURS[position % len(COLOURS)]
        train = [(p.step, p.loss) for p in curve.points if p.loss is not None]
        if train:
            ax.plot(*zip(*train, strict=True), color=colour, label=f"{curve.model_id} training")
        held_out = [
            (p.step, p.validation_loss) for p in curve.points if p.validation_loss is not None
        ]
        if held_out:
            ax.plot(
                *zip(*held_out, strict=True),
                color=colour,
                linestyle="--",
                marker="o",
                markersize=3,
                label=f"{curve.model_id} validation",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)


@_one_at_a_time
def sample_loss_png(series: Sequence[tuple[str, Sequence[float]]]) -> bytes:
    """Histogram of the per-token loss of each sample, one run or two overlaid."""
    figure = _figure(7.0, 3.2)
    ax = figure.subplots()
    values = [v for _, losses in series for v in losses]
    bins = 30 if len(values) > 60 else max(5, len(values) // 2)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    for position, (name, losses) in enumerate(series):
        colour = COLOURS[-1] if len(series) == 1 else COLOURS[position % len(COLOURS)]
        ax.hist(losses, bins=bins, range=(low, high), alpha=0.6, color=colour, label=name)
    ax.set_xlabel("loss per assistant token (nats)")
    ax.set_ylabel("samples")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(figure)

"""The report's own plot: the data funnel as a PNG (the evaluator draws the others).

matplotlib is imported when a plot is drawn, so the client package does not
need it for anything else.
"""

from __future__ import annotations

import io

from ownchat.demo.funnel import DataFunnel


def funnel_png(funnel: DataFunnel) -> bytes:
    """Horizontal bars, one per stage, widest at the top, with counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    stages = funnel.stages()
    figure = Figure(figsize=(7.5, 2.6), dpi=110)
    axes = figure.add_subplot()
    labels = [label for label, _ in stages]
    counts = [count for _, count in stages]
    positions = list(range(len(stages)))[::-1]
    bars = axes.barh(positions, counts, color=["#9bb7d4", "#7aa2c9", "#5a8dbf", "#2f6aa3"])
    axes.set_yticks(positions, labels)
    axes.bar_label(bars, labels=[str(c) for c in counts], padding=3)
    axes.set_xlim(0, max(counts + [1]) * 1.15)
    axes.set_xlabel("conversations")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

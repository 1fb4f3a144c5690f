"""A model version's training loss curve, as a report shows it.

The trainer's job events carry the training loss of logged steps and the
validation loss where it was measured. A job resumed from a checkpoint logs
again the steps after that checkpoint: the last value of a step wins. A base
model was not trained here and has no curve; the curve then says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LossPoint:
    """The losses logged at one optimizer step; either may be missing."""

    step: int
    loss: float | None = None
    validation_loss: float | None = None


@dataclass(frozen=True)
class LossCurve:
    """A model version's losses by step, or, with no points, why there are none."""

    model_id: str
    points: tuple[LossPoint, ...] = ()
    job_id: str = ""
    note: str = ""

    @property
    def has_points(self) -> bool:
        """Whether there is anything to plot."""
        return bool(self.points)


CurveLookup = Callable[[str], LossCurve]
"""Model id -> its training loss curve; raises an ``OwnchatError`` when it cannot be asked."""


def curve_from_points(model_id: str, job_id: str, points: Iterable[LossPoint]) -> LossCurve:
    """The curve of a training job's logged points, one per step, in step order."""
    by_step: dict[int, LossPoint] = {}
    for point in points:
        if point.loss is None and point.validation_loss is None:
            continue
        earlier = by_step.get(point.step)
        if earlier is not None:
            # A step logged twice (a resumed job, or training then validation
            # loss in separate events): later values replace, missing ones keep.
            point = LossPoint(
                point.step,
                point.loss if point.loss is not None else earlier.loss,
                point.validation_loss
                if point.validation_loss is not None
                else earlier.validation_loss,
            )
        by_step[point.step] = point
    ordered = tuple(by_step[step] for step in sorted(by_step))
    if ordered:
        note = f"{model_id}: losses of training job {job_id}, {len(ordered)} logged steps."
    else:
        note = f"{model_id}: training job {job_id} logged no losses."
    return LossCurve(model_id, ordered, job_id, note)


def base_model_curve(model_id: str) -> LossCurve:
    """The curve of a base model: none, and why."""
    return LossCurve(
        model_id,
        note=f"{model_id} is a base model: it was not trained here, so it has no training "
        "loss curve.",
    )

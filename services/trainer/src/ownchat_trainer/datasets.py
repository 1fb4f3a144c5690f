"""What the trainer needs to know of a dataset version, and the seam that provides it.

The core asks a :class:`DatasetLookup`; the service wires in one that calls the
data service (``data_client.py``), tests wire in one that answers from splits
they wrote into the artifact store themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ownchat.artifacts import Artifact
from ownchat.errors import NotFoundError

LengthBucket = tuple[int | None, int]
"""(exclusive upper bound in tokens, or None for the open last bucket; samples),
each bucket starting where the previous one ended."""


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset version's kind, its two splits in the artifact store, and its lengths.

    ``tokenizer`` names the base model whose tokenizer and chat template counted
    ``tokens`` and ``length_histogram`` (over both splits); empty when the
    upload named no base model, and then the lengths are unknown.
    """

    id: str
    kind: str
    train_split: Artifact
    validation_split: Artifact
    train_samples: int
    validation_samples: int
    tokens: int = 0
    tokenizer: str = ""
    length_histogram: tuple[LengthBucket, ...] = ()

    def samples_over(self, max_tokens: int) -> tuple[int, int]:
        """Samples at or over a length limit, as (surely, possibly) by the histogram.

        The buckets are coarse. The first number counts the samples of buckets
        starting at ``max_tokens`` or later: they have that many tokens or more
        (all but one exactly at the limit are too long for it). The second adds
        the bucket the limit falls inside, whose samples may or may not be over.
        """
        surely, possibly = 0, 0
        start = 0
        for bound, samples in self.length_histogram:
            # The bucket holds lengths in [start, bound), or [start, inf) when open.
            if start >= max_tokens:
                surely += samples
                possibly += samples
            elif bound is None or bound - 1 > max_tokens:
                possibly += samples
            if bound is not None:
                start = bound
        return surely, possibly


class DatasetLookup(Protocol):
    """Finds a dataset version; raises NotFoundError when there is none."""

    def __call__(self, dataset_version_id: str) -> DatasetInfo: ...


class StaticDatasets:
    """A lookup over versions known in advance (tests, and a trainer without a data service)."""

    def __init__(self, versions: list[DatasetInfo] | None = None) -> None:
        self._versions = {v.id: v for v in versions or []}

    def add(self, version: DatasetInfo) -> None:
        self._versions[version.id] = version

    def __call__(self, dataset_version_id: str) -> DatasetInfo:
        version = self._versions.get(dataset_version_id)
        if version is None:
            raise NotFoundError("dataset version", dataset_version_id)
        return version

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


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset version's kind and its two splits in the artifact store."""

    id: str
    kind: str
    train_split: Artifact
    validation_split: Artifact
    train_samples: int
    validation_samples: int


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

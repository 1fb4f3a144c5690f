"""The data funnel: from records ingested to samples kept, as the data service counted it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The data service's removal reasons, in the order its pipeline applies them,
# grouped the way a reader of the report thinks of them.
DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")
PII_PREFIX = "pii_"


@dataclass(frozen=True)
class DataFunnel:
    """What became of an upload's records."""

    ingested: int
    skipped_records: int
    # Samples removed by a quality, language or length filter, by reason.
    filtered: Mapping[str, int]
    # Samples removed as exact or near duplicates, by reason.
    deduplicated: Mapping[str, int]
    # Messages in which personal data or a secret was replaced, by type.
    redacted_messages: Mapping[str, int]
    # Messages changed by cleaning (markup, encoding, whitespace...), by step.
    cleaned_messages: Mapping[str, int]
    train_samples: int
    validation_samples: int

    @property
    def kept(self) -> int:
        """Samples in the version."""
        return self.train_samples + self.validation_samples

    @property
    def after_filters(self) -> int:
        """Samples left after the quality, language and length filters."""
        return self.ingested - self.skipped_records - sum(self.filtered.values())

    def stages(self) -> list[tuple[str, int]]:
        """The funnel's stages, widest first, as (label, samples)."""
        return [
            ("ingested", self.ingested),
            ("valid records", self.ingested - self.skipped_records),
            ("after quality, language and length filters", self.after_filters),
            ("after deduplication (kept)", self.kept),
        ]

    @property
    def redacted_total(self) -> int:
        """Messages with at least one replacement, summed over types (a message may count twice)."""
        return sum(self.redacted_messages.values())


def funnel_from_counts(
    changed: Mapping[str, int],
    removed: Mapping[str, int],
    skipped_records: int,
    train_samples: int,
    validation_samples: int,
) -> DataFunnel:
    """Builds the funnel from a dataset version's sanitization report and counts.

    Every record the data service read is either skipped as malformed, removed
    for a reason it names, or kept; so the ingested count is their sum.
    """
    deduplicated = {r: n for r, n in removed.items() if r in DUPLICATE_REASONS}
    filtered = {r: n for r, n in removed.items() if r not in DUPLICATE_REASONS}
    redacted = {
        step.removeprefix(PII_PREFIX): n
        for step, n in changed.items()
        if step.startswith(PII_PREFIX)
    }
    cleaned = {step: n for step, n in changed.items() if not step.startswith(PII_PREFIX)}
    ingested = skipped_records + sum(removed.values()) + train_samples + validation_samples
    return DataFunnel(
        ingested=ingested,
        skipped_records=skipped_records,
        filtered=dict(sorted(filtered.items())),
        deduplicated=dict(sorted(deduplicated.items())),
        redacted_messages=dict(sorted(redacted.items())),
        cleaned_messages=dict(sorted(cleaned.items())),
        train_samples=train_samples,
        validation_samples=validation_samples,
    )

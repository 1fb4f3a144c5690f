"""Inter-annotator agreement: Cohen's kappa per pair of reviewers and
Krippendorff's alpha over all of them, from scikit-learn and ``krippendorff``.

Ratings are ordinal (kappa weighted quadratically, alpha ordinal); pairwise
answers are nominal labels, the preferred model id or a tie, so a swap of
sides between leases does not read as disagreement.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score

from ownchat_evaluator.review.model import RATING_RANGE, ReviewKind
from ownchat_evaluator.review.store import Judgement

# Enough pairs to see who disagrees with whom without an unbounded response.
MAX_PAIRS = 20


@dataclass(frozen=True)
class PairAgreement:
    """Cohen's kappa of two reviewers over the items both reviewed."""

    reviewer_a: str
    reviewer_b: str
    items: int
    kappa: float | None


@dataclass(frozen=True)
class Agreement:
    """Agreement for one kind of review over the items with two reviews or more."""

    kind: ReviewKind
    items: int
    alpha: float | None
    pairs: list[PairAgreement]


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _labels(
    kind: ReviewKind, judgements: Sequence[Judgement]
) -> tuple[dict[int | str, int], list[int]]:
    """Codes for the answers, and the value domain alpha needs."""
    if kind is ReviewKind.RATING:
        domain = list(range(RATING_RANGE[0], RATING_RANGE[1] + 1))
        return {value: value for value in domain}, domain
    names = sorted({str(j.label) for j in judgements})
    codes: dict[int | str, int] = {name: code for code, name in enumerate(names)}
    return codes, list(codes.values())


def _alpha(kind: ReviewKind, table: dict[str, dict[str, int]], domain: list[int]) -> float | None:
    reviewers = sorted({r for answers in table.values() for r in answers})
    items = sorted(table)
    data = np.full((len(reviewers), len(items)), np.nan)
    for column, item in enumerate(items):
        for row, reviewer in enumerate(reviewers):
            if reviewer in table[item]:
                data[row, column] = table[item][reviewer]
    try:
        # All answers alike leaves 0/0: reported as unset rather than warned about.
        with np.errstate(invalid="ignore", divide="ignore"):
            value = krippendorff.alpha(
                reliability_data=data,
                level_of_measurement="ordinal" if kind is ReviewKind.RATING else "nominal",
                value_domain=domain,
            )
    except ValueError:  # a single value in the domain: agreement is undefined
        return None
    return _defined(value)


def _kappa(
    kind: ReviewKind, first: list[int], second: list[int], domain: list[int]
) -> float | None:
    with warnings.catch_warnings():
        # An undefined kappa (one answer throughout) is reported as unset, not warned about.
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(
            first,
            second,
            labels=domain,
            weights="quadratic" if kind is ReviewKind.RATING else None,
        )
    return _defined(float(value))


def agreement(kind: ReviewKind, judgements: Sequence[Judgement]) -> Agreement:
    """Agreement of the reviewers of one kind of item."""
    codes, domain = _labels(kind, judgements)
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for judgement in judgements:
        table[judgement.item_id][judgement.reviewer] = codes[
            judgement.label if kind is ReviewKind.RATING else str(judgement.label)
        ]
    table = {item: answers for item, answers in table.items() if len(answers) >= 2}
    if not table:
        return Agreement(kind, 0, None, [])
    shared: dict[tuple[str, str], list[str]] = defaultdict(list)
    for item, answers in table.items():
        for pair in itertools.combinations(sorted(answers), 2):
            shared[pair].append(item)
    ranked = sorted(shared.items(), key=lambda entry: (-len(entry[1]), entry[0]))[:MAX_PAIRS]
    pairs = [
        PairAgreement(
            a,
            b,
            len(items),
            _kappa(kind, [table[i][a] for i in items], [table[i][b] for i in items], domain),
        )
        for (a, b), items in ranked
    ]
    return Agreement(kind, len(table), _alpha(kind, table, domain), pairs)

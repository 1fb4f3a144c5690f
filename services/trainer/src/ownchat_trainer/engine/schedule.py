"""Which samples each step trains on, and at what share of the peak learning rate.

Both are pure functions of their arguments (the order of a seed), so a resumed
run re-creates them and skips what was consumed (``checkpoint.skip_batches``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def learning_rate_factor(step: int, total: int, warmup: int) -> float:
    """The share of the peak rate at 0-based ``step``: up linearly, then down linearly.

    Neither end wastes a step at rate zero.
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def batch_order(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Indices of each step's samples: a fresh seeded shuffle every epoch, forever."""
    rng = random.Random(seed)
    order = list(range(count))
    while True:
        rng.shuffle(order)
        for start in range(0, count, batch_size):
            yield order[start : start + batch_size]

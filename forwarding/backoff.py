"""How long to wait before trying a partner again after a transient error.

Exponential with "equal jitter": the n-th wait lies between half and all of base * 2^(n-1) (capped),
so waits spread out (no thundering herd) yet never shrink to nothing and always grow. `rng` is the
random source (tests pass a seeded random.Random).
"""

from __future__ import annotations

import random

from django.conf import settings


def backoff_seconds(
    attempts: int,
    retry_after: float | None = None,
    *,
    maximum: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """The wait after the `attempts`-th failure in a row (1 for the first), never sooner than the
    partner's Retry-After. `maximum` caps the exponential part (default FORWARDING_BACKOFF_MAX_SECONDS)."""
    config = settings.FORWARDING
    cap = config["BACKOFF_MAX_SECONDS"] if maximum is None else maximum
    ceiling = min(cap, config["BACKOFF_BASE_SECONDS"] * (2 ** max(0, attempts - 1)))
    delay = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay

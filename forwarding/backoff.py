"""How long to wait before trying a partner again after a transient error."""

from __future__ import annotations

import random

from django.conf import settings


def backoff_seconds(attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the partner's Retry-After."""
    config = settings.FORWARDING
    ceiling = min(config["BACKOFF_MAX_SECONDS"], config["BACKOFF_BASE_SECONDS"] * (2 ** max(0, attempts - 1)))
    delay = random.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay

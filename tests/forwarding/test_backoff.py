"""The backoff sequence (forwarding/backoff.py), with a seeded random source."""

from __future__ import annotations

import random

import pytest

from forwarding.backoff import backoff_seconds


@pytest.fixture
def knobs(settings):
    settings.FORWARDING = {**settings.FORWARDING, "BACKOFF_BASE_SECONDS": 2, "BACKOFF_MAX_SECONDS": 900}


def sequence(seed: int, count: int = 12, **options) -> list[float]:
    rng = random.Random(seed)
    return [backoff_seconds(n, rng=rng, **options) for n in range(1, count + 1)]


@pytest.mark.parametrize("seed", [1, 6, 42])
def test_each_wait_lies_in_its_exponential_band_and_is_never_zero(knobs, seed):
    for n, wait in enumerate(sequence(seed), start=1):
        ceiling = min(900, 2 * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling, (n, wait)


def test_the_waits_grow_exponentially_until_the_cap(knobs):
    waits = sequence(7)
    # Every wait at least the previous band's top: strictly growing until the cap.
    for n in range(1, 9):  # 2 * 2**8 = 512 < 900
        assert waits[n] >= waits[n - 1]
    assert waits[8] >= 256 and waits[11] <= 900
    assert waits[0] <= 2


def test_the_same_seed_gives_the_same_sequence_and_another_seed_another(knobs):
    assert sequence(3) == sequence(3)
    assert sequence(3) != sequence(4)


def test_retry_after_is_a_floor_and_maximum_caps_the_exponential_part(knobs):
    rng = random.Random(1)
    assert backoff_seconds(1, 120, rng=rng) >= 120
    assert all(5 <= backoff_seconds(n, maximum=10, rng=rng) <= 10 for n in range(5, 30))

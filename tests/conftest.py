"""Shared fixtures. Tests that need PostgreSQL or Redis skip when they are absent, unless
REQUIRE_SERVICES=1 (as CI sets), where they fail instead."""

from __future__ import annotations

import os
import uuid

import pytest

# The API fixtures (a token client, and an audience, output and connection made through the services)
# serve the API tests of every app.
pytest_plugins = ["tests.fixtures.api"]

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}


def service_missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_partner_overrides(settings):
    # Tests talk to partners' real URLs (faked with `responses`) unless a test points elsewhere.
    settings.PARTNER_API_BASE_URLS = {}
    settings.CELERY_TASK_ALWAYS_EAGER = False


@pytest.fixture(autouse=True)
def _own_rate_limit_counters(settings):
    # Each test counts its own Events API limits (the Redis is shared with other runs and tests).
    settings.RATE_LIMIT_KEY_PREFIX = f"test-limits:{uuid.uuid4().hex}:"


@pytest.fixture
def rings(monkeypatch):
    """Record queued tasks (doorbell rings, recomputes) instead of queueing them: for tests of the services,
    not the broker (the end-to-end tests ring a real Redis). Each call: (task name, args, countdown)."""
    calls: list[tuple[str, tuple, float | None]] = []

    def record(task_name, *args, countdown=None):
        calls.append((task_name, args, countdown))

    monkeypatch.setattr("config.queueing.send_safely", record)
    return calls


@pytest.fixture
def budget_redis(settings, monkeypatch) -> None:
    """The partner request budgets' Redis (outputs/partners/budget.py) is there, and no earlier test's failure
    to reach it pauses the budgets in this one."""
    import redis

    from outputs.partners import budget

    try:
        redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        service_missing(f"the request budget needs Redis at RATE_LIMIT_REDIS_URL ({settings.RATE_LIMIT_REDIS_URL})")
    monkeypatch.setattr(budget, "_paused_until", 0.0)
    monkeypatch.setattr(budget, "_warned_at", float("-inf"))

"""Events API limits (config/ratelimit.py) on the real Redis: per input in batches, with 429, Retry-After and
mParticle's X-mp-rate-limit-exceeded; throttled failed authentication per client and per key; traffic let
through when Redis is unreachable. Time is injected (config.ratelimit.clock), never slept on."""

from __future__ import annotations

import logging

import pytest
import redis

from audiences.events_api import views
from audiences.inputs import input_create
from audiences.models import BatchReceipt, Input
from config import ratelimit
from tests.audiences.events_api.conftest import batch
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db

NOW = 1_800_000_000.0


@pytest.fixture
def clock(monkeypatch, settings):
    """The limits' clock, moved by hand; the limits' Redis, required."""
    try:
        redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis is not reachable at {settings.RATE_LIMIT_REDIS_URL}: {exc}")
    now = [NOW]
    monkeypatch.setattr(ratelimit, "clock", lambda: now[0])
    monkeypatch.setattr(ratelimit, "_redis_paused_until", 0.0)
    return now


def bulk(count: int, first: int = 0) -> list[dict]:
    return [
        batch(source_request_id=f"r-{first + i}", user_identities={"customer_id": f"c-{first + i}"})
        for i in range(count)
    ]


def test_an_input_over_its_rate_in_batches_gets_429_with_retry_after_and_mparticle_header(post, clock, settings):
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 10, 20
    assert post("/v2/bulkevents", bulk(15)).status_code == 202
    assert post("/v2/events", batch(source_request_id="one")).status_code == 202
    # 16 of 20 used: a request of 5 batches does not fit, and nothing of it is stored.
    refused = post("/v2/bulkevents", bulk(5, first=100))
    assert refused.status_code == 429
    assert refused["X-mp-rate-limit-exceeded"] == "feed"
    assert refused["Retry-After"] == "1"  # one batch short: 0.1 s at 10 batches/s, rounded up
    assert refused.json()["errors"][0]["code"] == "rate_limited"
    assert BatchReceipt.objects.count() == 16
    # 4 batches still fit; then the bucket is empty.
    assert post("/v2/bulkevents", bulk(4, first=200)).status_code == 202
    empty = post("/v2/events", batch(source_request_id="two"))
    assert (empty.status_code, empty["Retry-After"]) == (429, "1")
    clock[0] += 0.5  # 5 batches refilled
    assert post("/v2/bulkevents", bulk(5, first=300)).status_code == 202
    assert post("/v2/events", batch(source_request_id="three")).status_code == 429


def test_the_retry_after_says_when_the_request_would_fit(post, clock, settings):
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 2, 10
    assert post("/v2/bulkevents", bulk(10)).status_code == 202
    refused = post("/v2/bulkevents", bulk(6, first=50))
    assert refused["Retry-After"] == "3"  # 6 batches at 2 per second
    clock[0] += 2.9
    assert post("/v2/bulkevents", bulk(6, first=50)).status_code == 429
    clock[0] += 0.1
    assert post("/v2/bulkevents", bulk(6, first=50)).status_code == 202


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket_then_is_paid_back(post, clock, settings):
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 10, 5
    assert post("/v2/bulkevents", bulk(25)).status_code == 202  # the bucket was full
    refused = post("/v2/events", batch(source_request_id="next"))
    # 2.5 s of debt; one batch fits when 0.4 s of it is left (2.1 s, rounded up).
    assert (refused.status_code, refused["Retry-After"]) == (429, "3")
    clock[0] += 2.0
    assert post("/v2/events", batch(source_request_id="next")).status_code == 429
    clock[0] += 0.1
    assert post("/v2/events", batch(source_request_id="next")).status_code == 202


def test_each_input_has_its_own_bucket_kept_in_redis_across_processes(post, clock, settings):
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 1, 3
    assert post("/v2/bulkevents", bulk(3)).status_code == 202
    ratelimit._client.cache_clear()  # as another web worker would: its own connection, the same Redis
    assert post("/v2/events", batch(source_request_id="x")).status_code == 429
    other, secret = input_create("mobile app")
    assert post("/v2/bulkevents", bulk(3), auth=(other.key, secret)).status_code == 202


def test_rate_limit_zero_turns_it_off(post, clock, settings):
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 0, 1
    for first in range(0, 30, 10):
        assert post("/v2/bulkevents", bulk(10, first=first)).status_code == 202


def test_redis_unreachable_lets_traffic_through_and_logs_once(post, settings, monkeypatch, caplog, credentials):
    monkeypatch.setattr(ratelimit, "_redis_paused_until", 0.0)
    monkeypatch.setattr(ratelimit, "_redis_warned_at", float("-inf"))
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 1, 1
    with caplog.at_level(logging.WARNING, logger="config.ratelimit"):
        for first in range(0, 9, 3):
            assert post("/v2/bulkevents", bulk(3, first=first)).status_code == 202
        assert post("/v2/events", batch(), auth=(credentials[0], "wrong")).status_code == 401
    warnings = [r for r in caplog.records if r.name == "config.ratelimit"]
    assert len(warnings) == 1 and "Redis is unreachable" in warnings[0].getMessage()


def test_failed_authentication_is_throttled_per_client_without_checking_credentials(
    post, clock, settings, credentials, monkeypatch
):
    settings.EVENTS_API_AUTH_FAILURES_PER_CLIENT, settings.EVENTS_API_AUTH_FAILURE_WINDOW = 3, 60
    key, _ = credentials
    for _ in range(3):
        assert post("/v2/events", batch(), auth=(key, "wrong")).status_code == 401
    checked = []
    real_authenticate = views.authenticate
    monkeypatch.setattr(views, "authenticate", lambda *args: checked.append(args) or real_authenticate(*args))
    throttled = post("/v2/events", batch())  # even the right secret: not checked at all
    assert throttled.status_code == 429 and checked == []
    assert throttled.json()["errors"][0]["code"] == "authentication_throttled"
    assert throttled["Retry-After"] == "60"  # the window started at NOW, a multiple of 60
    # Another client is not affected; this one is let in again once the window is over.
    assert post("/v2/events", batch(), REMOTE_ADDR="10.0.0.9").status_code == 202
    clock[0] += 60
    assert post("/v2/events", batch(source_request_id="again")).status_code == 202


def test_failed_authentication_is_throttled_per_key_sparing_clients_that_authenticated(
    post, clock, settings, credentials
):
    settings.EVENTS_API_AUTH_FAILURES_PER_CLIENT = 100
    settings.EVENTS_API_AUTH_FAILURES_PER_KEY, settings.EVENTS_API_AUTH_FAILURE_WINDOW = 3, 60
    key, _ = credentials
    assert post("/v2/events", batch(), REMOTE_ADDR="10.0.0.1").status_code == 202  # the input's own server
    for n in range(3):  # a stranger guessing from three addresses
        assert post("/v2/events", batch(), auth=(key, f"guess-{n}"), REMOTE_ADDR=f"10.9.9.{n}").status_code == 401
    assert post("/v2/events", batch(), auth=(key, "guess-3"), REMOTE_ADDR="10.9.9.200").status_code == 429
    assert post("/v2/events", batch(), REMOTE_ADDR="10.0.0.2").status_code == 429  # new address, key locked
    assert post("/v2/events", batch(source_request_id="ok"), REMOTE_ADDR="10.0.0.1").status_code == 202
    other, other_secret = input_create("other")
    assert post("/v2/events", batch(), auth=(other.key, other_secret), REMOTE_ADDR="10.0.0.2").status_code == 202


def test_behind_a_trusted_proxy_the_client_is_the_address_it_saw(rf, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    request = rf.post("/v2/events", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7", REMOTE_ADDR="127.0.0.1")
    assert ratelimit.client_address(request) == "203.0.113.7"  # not the first entry, which the client wrote
    settings.TRUSTED_PROXY_COUNT = 0
    assert ratelimit.client_address(request) == "127.0.0.1"


def test_every_limit_lets_the_request_through_when_redis_fails(rf, settings, monkeypatch, credentials):
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 1, 1
    request = rf.post("/v2/events")
    source = Input.objects.get(key=credentials[0])
    checks = [
        lambda: ratelimit.authentication_refused(request, credentials),
        lambda: ratelimit.authentication_failed(request, credentials),
        lambda: ratelimit.batches_refused(request, source, 5),
    ]
    for check in checks:
        monkeypatch.setattr(ratelimit, "_redis_paused_until", 0.0)  # each one meets the failure itself
        assert check() is None
        assert ratelimit._redis_paused_until > 0  # and Redis is left alone for a while

"""What the admin says of a connection waiting as a whole (forwarding/labels.py backoff_detail)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from connections.models import Connection
from forwarding.labels import backoff_detail, status_detail


def test_a_failing_connection_says_since_when_how_many_calls_and_the_next_try():
    now = timezone.now()
    connection = Connection(
        status="sending",
        failures=3,
        failing_since=now - timedelta(minutes=2),
        throttled_until=now + timedelta(seconds=40),
    )
    detail = backoff_detail(connection, now)
    assert detail.startswith("The partner failed 3 calls in a row since ")
    assert detail.endswith("next try in 40 s.")


def test_a_retry_after_says_throttled_and_nothing_once_the_wait_is_over():
    now = timezone.now()
    connection = Connection(status="sending", throttled_until=now + timedelta(seconds=120))
    assert backoff_detail(connection, now) == "Throttled by the partner (Retry-After): next try in 2 min."
    connection.throttled_until = now - timedelta(seconds=1)
    assert backoff_detail(connection, now) == ""
    assert status_detail(connection) == ""

"""Forwarding's metrics (forwarding/metrics.py) as /metrics shows them: the outbox read at scrape time, and
what each delivery attempt recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
import responses
from django.utils import timezone

from connections.models import Connection
from forwarding import lifecycle
from forwarding.delivery import deliver_connection
from forwarding.models import PendingChange
from tests import factories
from tests.fixtures.prometheus import sample, scrape

pytestmark = pytest.mark.django_db
LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/list1"
OK = {"new_members": [], "updated_members": [], "errors": [], "error_count": 0}


def test_the_backlog_of_a_paused_connection_grows_on_metrics(client, rings):
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output())
    lifecycle.connection_pause(connection=connection)
    labels = {"connection": str(connection.pk), "partner": "mailchimp"}
    before = scrape(client)
    assert sample(before, "af_pending_changes", **labels) == 0
    assert sample(before, "af_pending_oldest_age_seconds", **labels) == 0
    assert sample(before, "af_connections", status="paused", partner="mailchimp") == 1

    factories.parisian("a@x.com")
    factories.parisian("b@x.com")
    PendingChange.objects.filter(value="a@x.com").update(created_at=timezone.now() - timedelta(minutes=10))
    middle = scrape(client)
    assert sample(middle, "af_pending_changes", **labels) == 2
    assert 600 <= sample(middle, "af_pending_oldest_age_seconds", **labels) < 700

    factories.parisian("c@x.com")
    after = scrape(client)
    assert sample(after, "af_pending_changes", **labels) == 3
    assert sample(after, "af_pending_oldest_age_seconds", **labels) >= sample(
        middle, "af_pending_oldest_age_seconds", **labels
    )


@responses.activate
def test_a_delivery_attempt_counts_its_changes_latency_and_partner_errors(client, rings):
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output())
    factories.parisian("a@x.com")
    before = scrape(client)
    responses.post(LIST_URL, status=503, json={"title": "Service Unavailable", "status": 503})
    deliver_connection(connection_id=connection.pk)
    responses.replace(responses.POST, LIST_URL, json=OK)
    # Time has passed: the changes are due and the connection's own backoff (forwarding/recovery.py) is over.
    PendingChange.objects.update(next_attempt_at=timezone.now())
    Connection.objects.filter(pk=connection.pk).update(throttled_until=None)
    deliver_connection(connection_id=connection.pk)
    after = scrape(client)

    def grew(name, **labels) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("af_delivery_attempts_total", partner="mailchimp", result="transient") == 1
    assert grew("af_delivery_attempts_total", partner="mailchimp", result="ok") == 1
    assert grew("af_partner_errors_total", partner="mailchimp", error_class="transient") == 1
    assert grew("af_delivered_changes_total", partner="mailchimp", outcome="delivered") == 1
    assert grew("af_delivery_latency_seconds_count", partner="mailchimp") == 1
    assert grew("af_delivery_attempt_duration_seconds_count", partner="mailchimp") == 2

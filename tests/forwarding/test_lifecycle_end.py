"""Ending a connection (forwarding/lifecycle.py connection_end): under its lease, and a refused
clean-up recorded on the connection and backed off (issue 8, item 4)."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest
import responses
from django.utils import timezone

from connections.models import Connection, ConnectionMember
from forwarding import lifecycle, sweeper
from forwarding.doorbell import END_TASK
from forwarding.leases import acquire_lease
from forwarding.models import DeliveryAttempt
from outputs.partners.mailchimp import subscriber_hash
from tests import factories

pytestmark = pytest.mark.django_db
LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/list1"
REFUSED = {"title": "API Key Invalid", "detail": "Your API key may be invalid"}


@pytest.fixture
def ending(rings) -> Connection:
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output())
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value="a@x.com", state="added", updated_at=timezone.now()
    )
    return lifecycle.connection_delete(connection=connection)


@responses.activate
def test_connection_end_runs_only_under_the_lease(ending):
    lease = acquire_lease(ending.pk, statuses=(Connection.Status.ENDING,))
    assert lease is not None
    # Another worker holds it: nothing is sent, nothing deleted.
    assert lifecycle.connection_end(connection_id=ending.pk) == "busy, throttled or gone"
    assert len(responses.calls) == 0 and Connection.objects.filter(pk=ending.pk).exists()
    # While it runs, it holds the lease itself: a second end is a no-op.
    seen = []
    responses.add_callback(
        responses.DELETE,
        f"{LIST_URL}/members/{subscriber_hash('a@x.com')}",
        callback=lambda request: (seen.append(lifecycle.connection_end(connection_id=ending.pk)), (204, {}, ""))[1],
    )
    Connection.objects.filter(pk=ending.pk).update(delivery_lease_until=None, delivery_lease_holder="")
    assert lifecycle.connection_end(connection_id=ending.pk) == "deleted"
    assert seen == ["busy, throttled or gone"]
    assert not Connection.objects.filter(pk=ending.pk).exists()


@responses.activate
def test_a_refused_clean_up_is_recorded_and_backed_off_exponentially(ending, rings):
    responses.delete(f"{LIST_URL}/members/{subscriber_hash('a@x.com')}", status=401, json=REFUSED)
    waits = []
    for attempt in range(1, 5):
        rings.clear()
        started = timezone.now()
        assert lifecycle.connection_end(connection_id=ending.pk).startswith("retrying in")
        connection = Connection.objects.get(pk=ending.pk)
        assert connection.status == "ending" and connection.failures == attempt
        assert "API Key Invalid" in connection.status_reason and f"attempt {attempt}" in connection.status_reason
        waits.append((connection.throttled_until - started).total_seconds())
        assert rings == [(END_TASK, (ending.pk,), pytest.approx(waits[-1], abs=1))]
        # Backing off: neither the sweeper nor a second ring retries it before its wait is over.
        assert sweeper.sweep()["ending"] == 0
        assert lifecycle.connection_end(connection_id=ending.pk) == "busy, throttled or gone"
        Connection.objects.filter(pk=ending.pk).update(throttled_until=timezone.now() - timedelta(seconds=1))
    assert all(later > earlier for earlier, later in pairwise(waits)), waits
    assert waits[0] >= 1
    attempts = DeliveryAttempt.objects.filter(connection_id=ending.pk, kind="cleanup")
    assert [a.result for a in attempts] == ["auth"] * 4
    # The key is fixed: the clean-up finishes.
    responses.replace(responses.DELETE, f"{LIST_URL}/members/{subscriber_hash('a@x.com')}", status=204)
    assert lifecycle.connection_end(connection_id=ending.pk) == "deleted"

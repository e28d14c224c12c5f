"""A call refused by our own request budget (outputs/partners/budget.py) is not a failure of the partner: the
connection and its account wait for a token, but its run of failures, probes, outage fault and alerts are left
as they were, and no attempt or change attempt is counted (a real Braze output and local Braze server, real
Redis and database)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from connections.models import Connection, ConnectionMember
from forwarding import lifecycle
from forwarding.delivery import BUDGET_USED_UP, deliver_connection
from forwarding.models import ConnectionAlert, DeliveryAttempt, PendingChange
from local_partners.braze import LocalBrazeServer
from outputs.services import output_create
from tests import factories

pytestmark = pytest.mark.django_db
KEY = "braze-budget-refusals-key"


@pytest.fixture(autouse=True)
def _redis(budget_redis) -> None:
    """Every test here needs the budgets' Redis (tests/conftest.py)."""


@pytest.fixture
def server(settings) -> Iterator[LocalBrazeServer]:
    with LocalBrazeServer(api_keys=[KEY]) as srv:
        settings.PARTNER_API_BASE_URLS = {"braze": srv.base_url}
        yield srv


@pytest.fixture
def connection(server, rings) -> Connection:
    """A Braze connection whose output allows one request a minute, that one already taken."""
    factories.parisian("a@x.com")
    audience = factories.active_audience()
    output = output_create(
        name="Braze", partner_key="braze", settings={"api_key": KEY, "instance": "US-01", "request_rate": "1/60"}
    )
    connection = lifecycle.connection_create(audience=audience, output=output, settings={})
    output.partner().request_budget().take("a call of another connection of the account")
    return connection


def test_a_call_our_budget_refuses_waits_for_a_token_and_counts_as_no_failure(server, connection):
    report = deliver_connection(connection_id=connection.pk)

    assert report.stopped == BUDGET_USED_UP and report.errors == []
    connection.refresh_from_db()
    assert connection.status == Connection.Status.SENDING
    assert (connection.failures, connection.failing_since) == (0, None)  # no outage timer started, no probes
    assert timedelta(seconds=50) < connection.throttled_until - timezone.now() <= timedelta(seconds=64)
    assert not DeliveryAttempt.objects.exists()  # no call was made
    assert list(PendingChange.objects.values_list("attempts", flat=True)) == [0]
    assert server.requests == []


def test_a_refusal_during_an_outage_neither_faults_nor_alerts_nor_counts(server, connection):
    started = timezone.now() - timedelta(minutes=45)  # the partner has failed for longer than the fault's 30 min
    Connection.objects.filter(pk=connection.pk).update(failures=7, failing_since=started)

    deliver_connection(connection_id=connection.pk)

    connection.refresh_from_db()
    assert connection.status == Connection.Status.SENDING and connection.fault_cause == ""
    assert (connection.failures, connection.failing_since) == (7, started)
    assert not ConnectionAlert.objects.exists()


def test_the_clean_up_of_an_ending_connection_waits_for_the_budget_without_a_failure(server, connection):
    connection.refresh_from_db()
    lifecycle.connection_delete(connection=connection)
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value="a@x.com", state="added", updated_at=timezone.now()
    )

    outcome = lifecycle.connection_end(connection_id=connection.pk)

    assert outcome.startswith("waiting") and "request budget" in outcome
    connection.refresh_from_db()
    assert (connection.status, connection.failures, connection.failing_since) == ("ending", 0, None)
    assert "request budget" in connection.status_reason
    assert not DeliveryAttempt.objects.exists()

"""Truthful states (issue 10 item 3): actions only where they apply, Resume saying what it did, a pending
change's state agreeing with its last attempt and its connection, "calculating…" until an audience's first
calculation, times to the second with how long ago, numbers with separators."""

# ruff: noqa: F811 (the fixtures imported from test_admin are parameters of the tests below)
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from audiences.models import Audience
from audiences.services import audience_create
from config.display import ago, number, when
from connections.models import Connection
from forwarding import labels
from forwarding.models import PendingChange
from forwarding.selectors import connection_stats
from tests.forwarding.test_admin import (  # noqa: F401  (fixtures shared with the admin's tutorial tests)
    LIST_ID,
    PARISIANS,
    audience,
    connection,
    last_message,
    local_mailchimp,
    output,
    url,
)

pytestmark = pytest.mark.django_db


def fault(connection: Connection, reason: str = "HTTP 401: API Key Invalid") -> None:
    Connection.objects.filter(pk=connection.pk).update(
        status=Connection.Status.FAULTED, status_reason=reason, status_changed_at=timezone.now()
    )
    PendingChange.objects.filter(connection=connection).update(attempts=14, last_error=reason)
    connection.refresh_from_db()


def test_no_pause_on_a_faulted_connection(admin_client, connection):
    fault(connection)
    page = admin_client.get(url("connections_connection_change", connection.pk)).content.decode()
    assert 'name="pause"' not in page and 'name="resume"' in page
    # A page left open: the POST is refused and says why.
    response = admin_client.post(url("connections_connection_pause", connection.pk))
    assert last_message(response) == "Not paused: the connection is faulted."
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    # Nor through the list's action.
    changelist = url("connections_connection_changelist")
    response = admin_client.post(changelist, {"action": "pause_connections", "_selected_action": [connection.pk]})
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    assert "not paused, it is Faulted" in last_message(response)


def test_resume_of_a_still_refused_connection_says_it_stays_faulted(admin_client, connection, local_mailchimp):
    fault(connection)
    local_mailchimp.fail_next(401)
    response = admin_client.post(url("connections_connection_resume", connection.pk))
    message = last_message(response)
    assert message.startswith("Still faulted, not resumed: the partner still answers")
    assert "API Key Invalid" in message
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED


def test_resume_counts_the_changes_due_now(admin_client, connection):
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.PAUSED)
    response = admin_client.post(url("connections_connection_resume", connection.pk))
    assert last_message(response) == "Resumed: 2 pending changes due now."


def test_a_faulted_connection_holds_its_changes_instead_of_retrying(admin_client, connection):
    fault(connection)
    stats = connection_stats(connection)
    assert stats.retrying == 2  # tried before: the figure is true, the word must not say "retrying"
    summary = labels.pending_summary(connection, stats)
    assert summary == "2, held until the connection is resumed (it is faulted)"
    panel = admin_client.get(url("audiences_audience_change", connection.audience_id)).content.decode()
    assert summary in panel and "retrying" not in panel
    outbox = admin_client.get(url("forwarding_pendingchange_changelist")).content.decode()
    assert "Held until the connection is resumed" in outbox and "Retrying" not in outbox
    # Sending again, the same changes are retrying after their error, and say when.
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.SENDING)
    connection.refresh_from_db()
    change = PendingChange.objects.filter(connection=connection).first()
    change.next_attempt_at = timezone.now() + timedelta(minutes=3, seconds=5)
    state = labels.pending_change_state(change, connection)
    assert state == "Retrying (tried 14 times, next try in 3 min): HTTP 401: API Key Invalid"
    assert labels.pending_summary(connection, connection_stats(connection)) == "2, of which 2 retrying after an error"


def test_an_active_audience_is_calculating_until_its_first_calculation(admin_client, rings):
    audience = audience_create(name="New", criteria=PARISIANS, status=Audience.Status.ACTIVE)
    listing = admin_client.get(url("audiences_audience_changelist")).content.decode()
    assert "calculating…" in listing
    Audience.objects.filter(pk=audience.pk).update(last_calculated_at=timezone.now())
    listing = admin_client.get(url("audiences_audience_changelist")).content.decode()
    assert "calculating…" not in listing and "just now" in listing
    draft = audience_create(name="Drafted", criteria=PARISIANS)
    page = admin_client.get(url("audiences_audience_change", draft.pk)).content.decode()
    assert "draft: calculated once active" in page


def test_times_have_seconds_and_how_long_ago_and_numbers_separators():
    now = datetime(2026, 11, 29, 14, 6, 12, tzinfo=UTC)
    assert when(now - timedelta(minutes=3), now) == "2026-11-29 14:03:12 UTC (3 min ago)"
    assert ago(now + timedelta(seconds=90), now) == "in 1 min"
    assert ago(now - timedelta(seconds=2), now) == "just now"
    assert ago(now - timedelta(hours=5, minutes=1), now) == "5 h ago"
    assert (number(1204), number(1234567), number(None), number(7)) == ("1,204", "1,234,567", "—", "7")


def test_connection_page_shows_times_to_the_second(admin_client, connection):
    Connection.objects.filter(pk=connection.pk).update(last_delivered_at=timezone.now() - timedelta(seconds=30))
    page = admin_client.get(url("connections_connection_change", connection.pk)).content.decode()
    assert "s ago)" in page and " UTC (" in page

"""Connection snapshots and sending progress (forwarding/history.py, forwarding/progress.py): delivered and
rejected per day, the connection page's chart, its progress (rate, time left) and the JSON it polls,
`snapshot_history` with its progress bar."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from audiences.history import history_days
from connections.models import ConnectionMember
from forwarding.history import snapshot_connections
from forwarding.models import ConnectionSnapshot, DeliveryAttempt
from forwarding.progress import sending_progress
from tests import factories
from tests.factories import role_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(rings):
    audience = factories.active_audience()
    for i in range(3):
        factories.parisian(f"p{i}@x.com")
    return factories.connect(audience, factories.mailchimp_output())


def attempt(connection, at, delivered, rejected=0, kind="batch"):
    DeliveryAttempt.objects.create(
        connection=connection, kind=kind, at=at, sent=delivered + rejected, delivered=delivered, rejected=rejected,
        result="ok",
    )  # fmt: skip


def test_connection_snapshots_sum_each_days_delivered_and_rejected(connection):
    now = timezone.now()
    attempt(connection, now, 5, 1)
    attempt(connection, now, 2)
    attempt(connection, now - timedelta(days=1), 7)
    attempt(connection, now, 100, kind="cleanup")  # a cleanup's removals are not deliveries

    assert snapshot_connections(days=3, now=now) == 3

    two_days_ago, yesterday, today = history_days(3, now)
    rows = list(ConnectionSnapshot.objects.values_list("day", "delivered", "rejected"))
    assert rows == [(two_days_ago, 0, 0), (yesterday, 7, 0), (today, 7, 1)]


def test_progress_gives_the_share_sent_the_rate_over_the_last_minute_and_the_time_left(connection):
    now = timezone.now()
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value="p0@x.com", state="added", updated_at=now
    )
    attempt(connection, now - timedelta(seconds=10), 6)
    attempt(connection, now - timedelta(minutes=5), 1000)  # older than the window

    progress = sending_progress(connection, now=now)

    assert (progress.done, progress.pending) == (1, 3)
    assert progress.percent == 25.0
    assert progress.rate_per_second == pytest.approx(0.1)
    assert progress.eta_seconds == pytest.approx(30)
    assert progress.text == "25% sent: 1 done, 3 to go (0.1 identities/s, about 30 s left)."


def test_the_connection_page_shows_progress_polls_json_and_draws_its_history(client, connection):
    client.force_login(role_user("viewer"))
    page = client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert 'id="sending-progress"' in page and "forwarding/progress.js" in page
    assert "0% sent: 0 done, 3 to go" in page

    data = client.get(f"/admin/connections/connection/{connection.pk}/progress/").json()
    assert (data["done"], data["pending"], data["status"]) == (0, 3, "sending")

    attempt(connection, timezone.now(), 3)
    snapshot_connections(days=30)
    assert "<svg" in client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()

    client.force_login(role_user(None))
    assert client.get(f"/admin/connections/connection/{connection.pk}/progress/").status_code == 403


def test_snapshot_history_command_shows_progress_and_counts(connection):
    out, err = StringIO(), StringIO()
    call_command("snapshot_history", "--days", "7", stdout=out, stderr=err)
    assert out.getvalue().strip() == "7 audience days and 7 connection days written."
    assert "audiences [" in err.getvalue() and "100%" in err.getvalue()


def test_the_audience_pages_connections_panel_shows_a_backfills_progress(admin_client, connection):
    page = admin_client.get(f"/admin/audiences/audience/{connection.audience_id}/change/").content.decode()
    assert f'data-progress-url="/admin/connections/connection/{connection.pk}/progress/"' in page
    assert "0% sent: 0 done, 3 to go" in page and "forwarding/progress.js" in page

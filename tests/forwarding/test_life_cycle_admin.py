"""The connection life cycle in the admin: editing settings says what it does and asks for confirmation before
anything is written; resync and reconcile are actions; the figures count members delivered with fields skipped."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from connections.models import Connection, ConnectionMember
from forwarding.delivery import deliver_connection
from forwarding.models import ConnectionJob, PendingChange
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(server) -> Connection:
    audience = factories.active_audience()
    factories.parisian("ann@x.com")
    connection = factories.connect(audience, factories.mailchimp_output(), list_id="old")
    deliver_connection(connection_id=connection.pk)
    return connection


def settings_url(connection: Connection) -> str:
    return reverse("admin:connections_connection_settings", args=[connection.pk])


def test_the_connection_page_offers_the_settings_edit(admin_client, connection):
    page = admin_client.get(reverse("admin:connections_connection_change", args=[connection.pk]))
    assert settings_url(connection) in page.content.decode()
    form = admin_client.get(settings_url(connection))
    assert form.status_code == 200 and 'value="old"' in form.content.decode()


def test_an_edit_is_said_then_confirmed_before_it_is_saved(admin_client, connection, server):
    said = admin_client.post(settings_url(connection), {"list_id": "new", "preview": "1"})

    text = said.content.decode()
    assert said.status_code == 200
    assert "the new target is backfilled with 1 identities" in text.lower()
    assert "With Delete on Subscription End, the old target&#x27;s 1 members from this connection are removed" in text
    connection.refresh_from_db()
    assert connection.settings == {"list_id": "old"}  # said, not done

    done = admin_client.post(settings_url(connection), {"list_id": "new", "confirm": "1"})

    assert done.status_code == 302
    connection.refresh_from_db()
    assert connection.settings == {"list_id": "new"}
    assert ConnectionJob.objects.get(connection=connection).kind == "old_target_cleanup"
    assert "Saved." in next(str(m) for m in get_messages(done.wsgi_request))


def test_a_bad_setting_shows_on_its_field(admin_client, connection):
    response = admin_client.post(settings_url(connection), {"list_id": "a/b", "preview": "1"})
    assert response.status_code == 200
    assert "A Mailchimp audience id is letters and digits" in response.content.decode()
    connection.refresh_from_db()
    assert connection.settings == {"list_id": "old"}


def test_resync_and_reconcile_are_actions(admin_client, connection):
    ConnectionMember.objects.filter(value="ann@x.com").delete()
    changelist = reverse("admin:connections_connection_changelist")

    response = admin_client.post(
        changelist, {"action": "resync_connections", "_selected_action": [connection.pk]}, follow=True
    )
    assert "1 adds and 0 removes planned" in response.content.decode()
    assert PendingChange.objects.filter(value="ann@x.com", action="add").exists()

    admin_client.post(changelist, {"action": "reconcile_connections", "_selected_action": [connection.pk]})
    job = ConnectionJob.objects.get(connection=connection, kind="reconcile")
    page = admin_client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert 'id="connection-jobs"' in page and "Reconcile" in page and job.get_status_display() in page


def test_the_figures_count_members_delivered_with_fields_skipped(admin_client, server, connection):
    ConnectionMember.objects.filter(value="ann@x.com").update(reason="Fields skipped: AGE (Your merge fields…)")
    page = admin_client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert "Delivered with fields skipped (values the partner refused, e.g. merge fields)</th><td>1</td>" in page

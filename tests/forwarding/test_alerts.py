"""Fault alerts (issue 9 item 5): a connection that faults or recovers is told to the admins by email
(Django's locmem backend here) and a webhook (a local HTTP server), once per status change."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import responses
from django.core import mail
from django.db import transaction
from django.utils import timezone

from connections.models import Connection
from forwarding import alerts
from forwarding import lifecycle as connection_services
from forwarding.delivery import deliver_connection
from forwarding.models import ConnectionAlert
from forwarding.recovery import fault as recovery_fault
from tests import factories
from tests.forwarding.test_forwarding import LIST_URL, OK

pytestmark = pytest.mark.django_db


class Webhook:
    """A local HTTP server playing the admins' webhook: records each POST, answers `status` after `delay`."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.status = 200
        self.delay = 0.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(hook.delay)
                hook.received.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.stop()


@pytest.fixture
def alerting(settings, webhook):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.ALERT_EMAILS = ["ops@example.com", "oncall@example.com"]
    settings.ALERT_WEBHOOK_URL = webhook.url
    settings.ALERT_WEBHOOK_TIMEOUT = 5
    # `responses` fakes Mailchimp; the webhook is a real server.
    responses.add_passthru(webhook.url)
    return webhook


@pytest.fixture
def connection(rings):
    return factories.connect(factories.active_audience(), factories.mailchimp_output())


def alerts_rung(rings) -> list[int]:
    return [args[0] for name, args, _ in rings if name == alerts.SEND_TASK]


def send_rung(rings) -> list[str]:
    """Run the alert tasks rung so far, as the worker would."""
    return [alerts.alert_send(alert_id=alert_id) for alert_id in alerts_rung(rings)]


@responses.activate
def test_a_fault_and_its_recovery_are_told_once_each_by_email_and_webhook(
    alerting, connection, rings, django_capture_on_commit_callbacks
):
    webhook = alerting
    factories.parisian("a@x.com")
    responses.post(LIST_URL, status=401, json={"title": "API Key Invalid", "status": 401, "detail": "Invalid key."})
    with django_capture_on_commit_callbacks(execute=True):
        deliver_connection(connection_id=connection.pk)
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED

    assert send_rung(rings) == ["sent"]
    (email,) = mail.outbox
    assert email.to == ["ops@example.com", "oncall@example.com"]
    assert email.subject == f"[Audience Forwarding] Connection faulted: {connection}"
    assert "API Key Invalid" in email.body and "sending -> faulted" in email.body
    (payload,) = webhook.received
    assert payload["event"] == "connection.faulted"
    assert payload["connection"] == {"id": connection.pk, "name": str(connection), "partner": "mailchimp"}
    assert (payload["old_status"], payload["new_status"]) == ("sending", "faulted")
    assert "API Key Invalid" in payload["reason"]
    assert webhook.headers[0]["Idempotency-Key"] == f"connection-alert-{payload['alert_id']}"
    # No secret and no member travels: not the API key, not the member's email.
    for text in (json.dumps(payload), email.body):
        assert factories.MAILCHIMP_KEY not in text and "a@x.com" not in text

    # The task running again (a redelivered message) tells nobody twice.
    assert send_rung(rings) == ["sent already"]
    # A faulted connection faulting again is no new state: no alert.
    with django_capture_on_commit_callbacks(execute=True):
        recovery_fault(connection.pk, Connection.FaultCause.REFUSED, "Still refused.")
    assert ConnectionAlert.objects.count() == 1

    responses.replace(responses.POST, LIST_URL, json=OK)
    with django_capture_on_commit_callbacks(execute=True):
        connection_services.connection_resume(connection=connection)
    assert send_rung(rings) == ["sent already", "sent"]
    assert [m.subject for m in mail.outbox][1] == f"[Audience Forwarding] Connection recovered: {connection}"
    assert [p["event"] for p in webhook.received] == ["connection.faulted", "connection.recovered"]
    assert webhook.received[1]["old_status"] == "faulted" and webhook.received[1]["new_status"] == "sending"


def a_fault(connection: Connection) -> dict:
    """The arguments of connection_status_changed for a sending connection faulting now."""
    return {
        "connection_id": connection.pk,
        "partner": "mailchimp",
        "old_status": "sending",
        "new_status": "faulted",
        "changed_at": timezone.now(),
        "reason": "HTTP 401",
    }


def test_one_status_change_is_recorded_once(alerting, connection):
    change = a_fault(connection)
    with transaction.atomic():
        assert alerts.connection_status_changed(**change) is not None
        # The same change told again (a second writer, a retried transaction): nothing new, and the
        # caller's transaction goes on.
        assert alerts.connection_status_changed(**change) is None
        Connection.objects.filter(pk=connection.pk).update(status_reason="still writable")
    assert ConnectionAlert.objects.count() == 1


def test_an_alert_is_recorded_only_with_the_status_it_tells(alerting, connection, rings):
    with pytest.raises(RuntimeError), transaction.atomic():
        recovery_fault(connection.pk, Connection.FaultCause.REFUSED, "HTTP 401")
        raise RuntimeError("the status write rolls back")
    assert not ConnectionAlert.objects.exists() and not alerts_rung(rings)


def test_pausing_and_resuming_a_paused_connection_alert_nobody(alerting, connection):
    connection_services.connection_pause(connection=connection)
    connection_services.connection_resume(connection=connection)
    assert not ConnectionAlert.objects.exists()


def test_without_any_channel_nothing_is_recorded(settings, connection):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], ""
    recovery_fault(connection.pk, Connection.FaultCause.REFUSED, "HTTP 401")
    assert not ConnectionAlert.objects.exists()


def test_a_failing_webhook_is_retried_and_the_email_is_not_sent_twice(
    alerting, connection, rings, django_capture_on_commit_callbacks
):
    webhook = alerting
    webhook.status = 500
    with django_capture_on_commit_callbacks(execute=True):
        recovery_fault(connection.pk, Connection.FaultCause.REFUSED, "HTTP 401")
    (alert_id,) = alerts_rung(rings)
    with pytest.raises(alerts.AlertNotSent, match="webhook: HTTP 500"):
        alerts.alert_send(alert_id=alert_id)
    alert = ConnectionAlert.objects.get()
    assert alert.emailed_at and not alert.webhook_at and not alert.sent_at and alert.attempts == 1
    assert len(mail.outbox) == 1

    webhook.status = 204
    assert alerts.alert_send(alert_id=alert_id) == "sent"
    assert len(mail.outbox) == 1 and len(webhook.received) == 2
    alert.refresh_from_db()
    assert alert.sent_at and alert.last_error == ""


def test_a_silent_webhook_is_cut_off_by_its_timeout(alerting, settings, connection, rings):
    webhook = alerting
    settings.ALERT_WEBHOOK_TIMEOUT = 0.5
    webhook.delay = 3
    alert = alerts.connection_status_changed(**a_fault(connection))
    started = time.monotonic()
    with pytest.raises(alerts.AlertNotSent, match="ReadTimeout"):
        alerts.alert_send(alert_id=alert.pk)
    assert time.monotonic() - started < 2


def test_beat_sends_again_the_alerts_left_unsent(alerting, connection, rings):
    alert = alerts.connection_status_changed(**a_fault(connection))
    rings.clear()
    assert alerts.alerts_resend() == 0  # just recorded: its own task is on its way
    ConnectionAlert.objects.filter(pk=alert.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert alerts.alerts_resend() == 1 and alerts_rung(rings) == [alert.pk]
    alerts.alert_send(alert_id=alert.pk)
    assert alerts.alerts_resend() == 0  # sent: never again
    assert alerts_rung(rings) == [alert.pk]


def test_the_admin_shows_a_banner_of_faulted_connections_on_every_page(admin_client, client, connection):
    assert "faulted-connections-banner" not in admin_client.get("/admin/").content.decode()
    recovery_fault(connection.pk, Connection.FaultCause.REFUSED, "HTTP 401")
    for page in ("/admin/", "/admin/audiences/audience/", "/admin/outputs/output/"):
        html = admin_client.get(page).content.decode()
        assert "faulted-connections-banner" in html and "1 connection is faulted" in html, page
        assert f"/admin/connections/connection/{connection.pk}/change/" in html
    # Only to who may view connections.
    client.force_login(factories.role_user(None))
    assert "faulted-connections-banner" not in client.get("/admin/").content.decode()
    client.force_login(factories.role_user("viewer"))
    assert "faulted-connections-banner" in client.get("/admin/").content.decode()


def test_the_admin_lists_the_alerts_and_what_went_out(admin_client, alerting, connection):
    alert = alerts.connection_status_changed(**a_fault(connection))
    alerts.alert_send(alert_id=alert.pk)
    html = admin_client.get("/admin/forwarding/connectionalert/").content.decode()
    assert str(connection) in html and "HTTP 401" in html and "faulted" in html

"""Fault alerts end to end (issue 9 item 5): a real worker faults a connection on Mailchimp's 401 and its
alert task calls the webhook (a local server), retrying through Celery after the webhook's own error; the
recovery after Resume is told once too."""

from __future__ import annotations

import pytest

from connections.models import Connection
from forwarding import lifecycle as connection_services
from forwarding.models import ConnectionAlert
from tests import factories
from tests.e2e.conftest import API_KEY, wait_until
from tests.forwarding.test_alerts import Webhook

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIST_ID = "parisians"


@pytest.fixture(scope="module")
def webhook():
    hook = Webhook()
    yield hook
    hook.stop()


@pytest.fixture
def worker_env(webhook) -> dict[str, str]:
    return {"ALERT_WEBHOOK_URL": webhook.url, "ALERT_WEBHOOK_TIMEOUT": "2"}


def test_a_fault_and_its_recovery_reach_the_webhook_once_each(worker, mailchimp_server, webhook, settings):
    settings.ALERT_WEBHOOK_URL = webhook.url  # this process writes the recovery
    mailchimp_server.create_list(LIST_ID, "Potential Parisians")
    connection = factories.connect(
        factories.active_audience(), factories.mailchimp_output(api_key=API_KEY), list_id=LIST_ID
    )
    webhook.status = 500  # the first call fails: Celery retries it
    mailchimp_server.fail_next(401)
    factories.parisian("key-rotated@example.com")
    wait_until(lambda: Connection.objects.get(pk=connection.pk).status == "faulted")
    wait_until(lambda: webhook.received, timeout=10)
    webhook.status = 200
    wait_until(lambda: ConnectionAlert.objects.filter(sent_at__isnull=False).exists(), timeout=20)
    assert [p["event"] for p in webhook.received] == ["connection.faulted", "connection.faulted"]  # failed, then sent

    connection_services.connection_resume(connection=connection)
    wait_until(lambda: [p["event"] for p in webhook.received][-1] == "connection.recovered", timeout=10)
    wait_until(lambda: ConnectionAlert.objects.filter(sent_at__isnull=True).count() == 0)
    assert [p["event"] for p in webhook.received].count("connection.recovered") == 1
    assert ConnectionAlert.objects.count() == 2

"""A worker's warm shutdown (forwarding/shutdown.py): the delivery running finishes the batch in hand,
then leaves and rings its connection for the next worker. The real worker under SIGTERM is the fault
suite's test_sigterm_warm_shutdown_mid_backfill."""

from __future__ import annotations

import json

import pytest
import responses

from connections.models import Connection
from forwarding import shutdown
from forwarding.delivery import SHUTTING_DOWN, deliver_connection
from forwarding.doorbell import DELIVER_TASK
from forwarding.models import PendingChange
from tests import factories

pytestmark = pytest.mark.django_db
LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/list1"


@pytest.fixture
def flag():
    yield shutdown
    shutdown._requested.clear()


@responses.activate
def test_a_shutdown_during_a_batch_finishes_it_and_leaves_the_rest(rings, flag, monkeypatch):
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output())
    for n in range(25):
        factories.parisian(f"p{n}@x.com")
    monkeypatch.setattr("outputs.partners.mailchimp.Mailchimp.batch_limit", 10)
    sent = []

    def answer(request):
        sent.append(len(json.loads(request.body)["members"]))
        flag.request_shutdown()  # SIGTERM arrives while the batch is at the partner
        return 200, {}, json.dumps({"errors": [], "error_count": 0})

    responses.add_callback(responses.POST, LIST_URL, callback=answer)
    rings.clear()
    report = deliver_connection(connection_id=connection.pk)
    assert report.stopped == SHUTTING_DOWN
    assert sent == [10] and report.delivered == 10  # the batch in hand, recorded
    assert PendingChange.objects.count() == 15
    assert rings == [(DELIVER_TASK, (connection.pk,), None)]  # for the next worker
    assert Connection.objects.get(pk=connection.pk).delivery_lease_until is None

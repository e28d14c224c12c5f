"""The tutorial, end to end: profiles in through the API, a real worker on real Redis and
PostgreSQL, and the local Mailchimp server holding the list."""

from __future__ import annotations

import time

import pytest

from connections.models import Connection
from forwarding import lifecycle as connection_services
from forwarding import sweeper
from local_partners.mailchimp import subscriber_hash
from tests import factories
from tests.e2e.conftest import API_KEY, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIST_ID = "parisians"


def statuses(server) -> dict[str, str]:
    return {m["email_address"]: m["status"] for m in server.members(LIST_ID).values()}


@pytest.fixture
def tutorial(worker, mailchimp_server):
    mailchimp_server.create_list(LIST_ID, "Potential Parisians")
    output = factories.mailchimp_output(api_key=API_KEY, double_opt_in=True)
    audience = factories.active_audience()
    return audience, output


def test_connecting_fills_the_list_and_leaving_unsubscribes_within_seconds(tutorial, mailchimp_server, api):
    audience, output = tutorial
    for i in range(5):
        factories.parisian(f"parisian{i}@example.com")
    factories.parisian(None, gaid="38400000-8cf0-11bd-b23e-10b96e40000d")  # no email: nothing to send
    factories.profile(email="lyonnais@example.com", status="Premium", favourite_city="Lyon")

    connection = factories.connect(audience, output, list_id=LIST_ID)

    wait_until(lambda: len(statuses(mailchimp_server)) == 5)
    assert set(statuses(mailchimp_server).values()) == {"pending"}  # double opt-in
    assert "lyonnais@example.com" not in statuses(mailchimp_server)

    # Through the REST API, a profile stops matching: it is unsubscribed within seconds.
    started = time.monotonic()
    response = api.post(
        "/api/v1/profiles/",
        {"identities": [{"type": "email", "value": "Parisian3@Example.com"}], "attributes": {"status": "Free"}},
        format="json",
    )
    assert response.status_code == 200, response.content
    wait_until(lambda: statuses(mailchimp_server)["parisian3@example.com"] == "unsubscribed", timeout=10)
    assert time.monotonic() - started < 10

    # A new matching profile is subscribed, with its attributes as merge fields.
    api.post(
        "/api/v1/profiles/",
        {
            "identities": [{"type": "email", "value": "new@example.com"}],
            "attributes": {"status": "Premium", "favourite_city": "Paris", "$FirstName": "Amélie"},
        },
        format="json",
    )
    wait_until(lambda: "new@example.com" in statuses(mailchimp_server))
    member = mailchimp_server.members(LIST_ID)[subscriber_hash("new@example.com")]
    assert member["merge_fields"]["FNAME"] == "Amélie"
    # The partner holds the member a moment before the worker records its answer (and drops the pending
    # change): wait for that record, then count.
    stats = wait_until(
        lambda: (s := api.get(f"/api/v1/connections/{connection.pk}/").json()["stats"])["pending"] == 0 and s
    )
    assert stats["delivered"] == 5 and stats["without_accepted_identity"] == 1


def test_a_401_faults_the_connection_and_resume_sends_again(tutorial, mailchimp_server):
    audience, output = tutorial
    connection = factories.connect(audience, output, list_id=LIST_ID)
    mailchimp_server.fail_next(401)
    factories.parisian("key-rotated@example.com")
    wait_until(lambda: Connection.objects.get(pk=connection.pk).status == "faulted")
    assert "API Key Invalid" in Connection.objects.get(pk=connection.pk).status_reason
    assert statuses(mailchimp_server) == {}

    connection_services.connection_resume(connection=connection)
    wait_until(lambda: statuses(mailchimp_server).get("key-rotated@example.com") == "pending")


def test_server_errors_are_retried_until_delivered(tutorial, mailchimp_server):
    audience, output = tutorial
    factories.connect(audience, output, list_id=LIST_ID)
    mailchimp_server.fail_next(503, times=3)
    factories.parisian("patient@example.com")
    wait_until(lambda: statuses(mailchimp_server).get("patient@example.com") == "pending", timeout=30)
    batch_calls = [
        r
        for r in mailchimp_server.requests
        if r.method == "POST" and r.path.split("?")[0].endswith(f"/lists/{LIST_ID}")
    ]
    assert len(batch_calls) == 4  # three 503s, then the delivery


def test_pending_work_whose_doorbell_was_lost_is_swept(tutorial, mailchimp_server, monkeypatch):
    audience, output = tutorial
    factories.parisian("first@example.com")
    connection = factories.connect(audience, output, list_id=LIST_ID)
    # The connection's own doorbell has been answered and its worker is done with it.
    wait_until(lambda: "first@example.com" in statuses(mailchimp_server))
    wait_until(lambda: Connection.objects.get(pk=connection.pk).delivery_lease_until is None)
    with monkeypatch.context() as m:
        m.setattr("config.queueing.send_safely", lambda *a, **k: None)  # the ring is lost
        factories.parisian("forgotten@example.com")
    time.sleep(0.5)
    assert "forgotten@example.com" not in statuses(mailchimp_server)
    assert sweeper.sweep()["delivering"] == 1  # beat's periodic task, called directly
    wait_until(lambda: "forgotten@example.com" in statuses(mailchimp_server))


def test_deleting_the_connection_archives_its_members(tutorial, mailchimp_server):
    audience, output = tutorial
    connection = factories.connect(audience, output, list_id=LIST_ID)
    for i in range(3):
        factories.parisian(f"bye{i}@example.com")
    wait_until(lambda: len(statuses(mailchimp_server)) == 3)
    connection_services.connection_delete(connection=connection)
    wait_until(lambda: not Connection.objects.filter(pk=connection.pk).exists())
    assert statuses(mailchimp_server) == {}
    assert audience.memberships.count() == 3

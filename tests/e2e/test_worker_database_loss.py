"""A Celery worker whose database connections are dropped keeps delivering (issue 6, item 6).

The worker runs as in production, with persistent connections (DATABASE_CONN_MAX_AGE=60);
backends are terminated for real (tests/fixtures/postgres_faults.py).
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from connections.models import Connection, ConnectionMember
from forwarding import sweeper
from forwarding.models import PendingChange
from tests import factories
from tests.e2e.conftest import wait_until
from tests.fixtures.postgres_faults import other_backends, terminate_backends

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIST_ID = "parisians"


@pytest.fixture
def worker_env() -> dict[str, str]:
    return {"DATABASE_CONN_MAX_AGE": "60"}


def statuses(server) -> dict[str, str]:
    return {m["email_address"]: m["status"] for m in server.members(LIST_ID).values()}


def delivered(connection_id: int, email: str) -> bool:
    """Our own record, not only the partner's: the change is recorded as delivered."""
    return (
        ConnectionMember.objects.filter(connection_id=connection_id, value=email, state="added").exists()
        and not PendingChange.objects.filter(connection_id=connection_id, value=email).exists()
    )


@pytest.fixture
def connected(worker, mailchimp_server) -> Connection:
    mailchimp_server.create_list(LIST_ID, "Potential Parisians")
    output = factories.mailchimp_output(api_key="0123456789abcdef0123456789abcdef-us6")
    audience = factories.active_audience()
    factories.parisian("first@example.com")
    connection_ = factories.connect(audience, output, list_id=LIST_ID)
    wait_until(lambda: delivered(connection_.pk, "first@example.com"))
    wait_until(lambda: Connection.objects.get(pk=connection_.pk).delivery_lease_until is None)
    return connection_


def test_a_worker_keeps_its_connection_between_tasks_and_delivers_after_backends_are_terminated(
    connected, worker, mailchimp_server
):
    # The worker keeps its database connection from one task to the next (a new backend per ring cost
    # about 8 ms of CPU), and checks it before each task: one the database dropped meanwhile is replaced.
    ours = connection.connection.info.backend_pid
    wait_until(lambda: set(other_backends()) - {ours}, timeout=10)
    kept = set(other_backends()) - {ours}
    factories.parisian("second@example.com")  # a task on the kept connection: no new backend
    wait_until(lambda: delivered(connected.pk, "second@example.com"))
    assert set(other_backends()) - {ours} == kept
    terminate_backends()  # ours too: every connection the database had
    connection.close()

    factories.parisian("after@example.com")  # rings the worker

    wait_until(lambda: delivered(connected.pk, "after@example.com"))
    assert statuses(mailchimp_server)["after@example.com"] == "subscribed"
    assert worker["process"].poll() is None


def test_a_delivery_whose_connection_dies_during_the_partner_call_frees_the_lease_and_is_delivered_after(
    connected, worker, mailchimp_server, monkeypatch
):
    # Hold the partner's answer while the database drops every connection, the worker's included.
    calling, answer = threading.Event(), threading.Event()
    dispatch = mailchimp_server.dispatch

    def held(method, target, headers, raw_body):
        if method == "POST" and not answer.is_set():
            calling.set()
            answer.wait(20)
        return dispatch(method, target, headers, raw_body)

    monkeypatch.setattr(mailchimp_server, "dispatch", held)
    factories.parisian("during@example.com")
    assert calling.wait(20), "the worker never called the partner"
    ours = connection.connection.info.backend_pid
    worker_backends = set(other_backends()) - {ours}
    assert worker_backends, "the worker holds no connection during its call"
    assert worker_backends <= terminate_backends()
    connection.close()
    answer.set()

    # The task fails (its connection went away) but releases the lease, and the worker lives on;
    # the sweeper (beat's periodic task) then rings it again and the change is recorded delivered.
    wait_until(lambda: Connection.objects.get(pk=connected.pk).delivery_lease_until is None, timeout=20)
    assert worker["process"].poll() is None
    assert not delivered(connected.pk, "during@example.com")  # the answer could not be recorded
    assert sweeper.sweep()["delivering"] == 1
    wait_until(lambda: delivered(connected.pk, "during@example.com"))
    assert worker["process"].poll() is None

"""Coalesced rings (forwarding/doorbell.py): a ring of a connection whose delivery task is queued and not
started is not queued again, and no wake-up is lost, on the real Redis and database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from connections.models import ConnectionMember
from forwarding import delivery, doorbell
from forwarding.models import PendingChange
from forwarding.tasks import deliver_connection
from local_partners.mailchimp import LocalMailchimpServer
from tests import factories
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db(transaction=True)
LIST_ID = "list1"
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def marks(settings) -> Iterator[redis.Redis]:
    """Coalescing on, its marks in the test Redis under a queue name of this test's own."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing(f"Redis is not reachable at {TEST_REDIS_URL}: {exc}")
    settings.CELERY_BROKER_URL = TEST_REDIS_URL
    settings.CELERY_TASK_DEFAULT_QUEUE = f"test-doorbell-{uuid.uuid4().hex}"
    settings.FORWARDING = {**settings.FORWARDING, "COALESCE_RINGS": True}
    yield client
    for key in client.scan_iter(f"{settings.CELERY_TASK_DEFAULT_QUEUE}:*"):
        client.delete(key)


@pytest.fixture
def connection(settings, rings, marks):
    server = LocalMailchimpServer(api_keys=[factories.MAILCHIMP_KEY])
    server.create_list(LIST_ID, "Potential Parisians")
    server.start()
    settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
    connection_ = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    deliver_connection.apply(args=[connection_.pk])  # the connect's ring, answered: nothing is queued now
    yield connection_
    server.stop()


def deliver_rings(rings, connection_id: int) -> int:
    return sum(1 for name, args, _ in rings if name == doorbell.DELIVER_TASK and args == (connection_id,))


def delivered(connection_id: int, email: str) -> bool:
    return ConnectionMember.objects.filter(connection_id=connection_id, value=email, state="added").exists()


def test_a_ring_while_one_is_queued_is_not_queued_again_and_one_after_the_task_began_is(connection, rings):
    before = deliver_rings(rings, connection.pk)
    factories.parisian("first@x.com")
    factories.parisian("second@x.com")  # its ring finds the first's task queued, not started

    assert deliver_rings(rings, connection.pk) == before + 1
    deliver_connection.apply(args=[connection.pk])  # the queued task: both are delivered
    assert delivered(connection.pk, "first@x.com") and delivered(connection.pk, "second@x.com")

    factories.parisian("third@x.com")  # that task has begun: this ring is queued
    assert deliver_rings(rings, connection.pk) == before + 2


def test_a_change_committed_after_the_tasks_last_look_rings_a_new_task(connection, rings, monkeypatch):
    """The worst moment: the drain has claimed, delivered and looked for due work one last time, and a
    change commits before the task ends. Its ring must queue a task (the running one will not see it)."""
    factories.parisian("first@x.com")
    queued = deliver_rings(rings, connection.pk)
    has_due_work = delivery.has_due_work
    committed: list[str] = []

    def last_look_then_a_change_commits(connection_id: int) -> bool:
        due = has_due_work(connection_id)
        if not committed:
            committed.append("late@x.com")
            factories.parisian("late@x.com")
        return due

    monkeypatch.setattr(delivery, "has_due_work", last_look_then_a_change_commits)
    deliver_connection.apply(args=[connection.pk])

    assert delivered(connection.pk, "first@x.com") and not delivered(connection.pk, "late@x.com")
    assert deliver_rings(rings, connection.pk) == queued + 1  # the wake-up for late@x.com
    deliver_connection.apply(args=[connection.pk])
    assert delivered(connection.pk, "late@x.com")
    assert not PendingChange.objects.exists()


def test_without_redis_every_ring_goes_out(connection, rings, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    before = deliver_rings(rings, connection.pk)
    factories.parisian("first@x.com")
    factories.parisian("second@x.com")
    assert deliver_rings(rings, connection.pk) == before + 2

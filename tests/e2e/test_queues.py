"""A large recompute never delays a real-time change: they are on different queues, and a worker of the
realtime queue alone delivers while a recompute waits in its own queue (real Redis, real worker)."""

from __future__ import annotations

import pytest
import redis

from audiences.membership.recompute import RECOMPUTE_TASK
from config import queueing
from config.queues import REALTIME, RECOMPUTE, queue_name
from connections.models import ConnectionMember
from tests import factories
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIST_ID = "parisians"


@pytest.fixture
def worker_queues(broker_queue) -> list[str]:
    return [queue_name(broker_queue, REALTIME)]


def test_a_realtime_worker_delivers_while_a_recompute_waits_in_its_own_queue(
    worker, broker_queue, redis_url, mailchimp_server
):
    broker = redis.Redis.from_url(redis_url)
    recompute_queue = queue_name(broker_queue, RECOMPUTE)
    broker.delete(recompute_queue)
    mailchimp_server.create_list(LIST_ID, "Potential Parisians")
    audience = factories.active_audience()
    waiting = broker.llen(recompute_queue)  # activating the audience queued one already
    queueing.send_safely(RECOMPUTE_TASK, audience.pk, None)  # and a recompute nobody runs yet
    assert broker.llen(recompute_queue) == waiting + 1 >= 1

    connection = factories.connect(audience, factories.mailchimp_output(), list_id=LIST_ID)
    factories.parisian("realtime@example.com")  # rings the doorbell after commit

    wait_until(
        lambda: ConnectionMember.objects.filter(
            connection=connection, value="realtime@example.com", state="added"
        ).exists()
    )
    assert "realtime@example.com" in {m["email_address"] for m in mailchimp_server.members(LIST_ID).values()}
    assert broker.llen(recompute_queue) == waiting + 1  # still waiting: the realtime worker never took it
    broker.delete(recompute_queue)

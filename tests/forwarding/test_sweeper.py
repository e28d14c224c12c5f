"""The sweeper (forwarding/sweeper.py) rings work nobody handles, and none that is held or waiting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from connections.models import Connection
from forwarding import sweeper
from forwarding.doorbell import DELIVER_TASK, END_TASK
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(rings) -> Connection:
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output())
    factories.parisian("a@x.com")
    rings.clear()
    return connection


def test_a_killed_workers_expired_lease_is_swept_and_a_live_one_is_not(connection, rings):
    Connection.objects.filter(pk=connection.pk).update(
        delivery_lease_until=timezone.now() + timedelta(seconds=10), delivery_lease_holder="alive"
    )
    assert sweeper.sweep()["delivering"] == 0
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() - timedelta(seconds=1))
    assert sweeper.sweep()["delivering"] == 1
    assert rings == [(DELIVER_TASK, (connection.pk,), None)]


def test_a_throttled_connection_is_not_rung_before_its_wait_is_over(connection, rings):
    Connection.objects.filter(pk=connection.pk).update(throttled_until=timezone.now() + timedelta(seconds=10))
    assert sweeper.sweep()["delivering"] == 0
    Connection.objects.filter(pk=connection.pk).update(throttled_until=timezone.now() - timedelta(seconds=1))
    assert sweeper.sweep()["delivering"] == 1


def test_an_ending_connection_is_rung_unless_it_is_leased_or_backing_off(connection, rings):
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.ENDING)
    assert sweeper.sweep()["ending"] == 1
    assert rings[-1] == (END_TASK, (connection.pk,), None)
    Connection.objects.filter(pk=connection.pk).update(throttled_until=timezone.now() + timedelta(minutes=5))
    assert sweeper.sweep()["ending"] == 0
    Connection.objects.filter(pk=connection.pk).update(
        throttled_until=None, delivery_lease_until=timezone.now() + timedelta(seconds=10)
    )
    assert sweeper.sweep()["ending"] == 0

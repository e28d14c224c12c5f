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


def test_a_life_cycle_job_left_queued_or_silent_is_rung_again_and_a_live_one_is_not(connection, rings):
    from forwarding.doorbell import OLD_TARGET_CLEANUP_TASK, RECONCILE_TASK
    from forwarding.models import ConnectionJob

    now = timezone.now()

    def job(kind: str, status: str, quiet: timedelta) -> ConnectionJob:
        return ConnectionJob.objects.create(connection=connection, kind=kind, status=status, heartbeat_at=now - quiet)

    lost_task = job("reconcile", "queued", timedelta(minutes=3))  # its task never ran (a broker restart)
    killed = job("old_target_cleanup", "running", timedelta(minutes=11))  # its worker was killed
    job("reconcile", "queued", timedelta(seconds=5))  # just queued
    job("reconcile", "running", timedelta(minutes=1))  # reading the partner
    job("reconcile", "done", timedelta(days=1))

    assert sweeper.sweep()["jobs"] == 2
    assert sorted((name, args) for name, args, _ in rings if name != DELIVER_TASK) == sorted(
        [(RECONCILE_TASK, (lost_task.pk,)), (OLD_TARGET_CLEANUP_TASK, (killed.pk,))]
    )
    killed.refresh_from_db()
    assert killed.status == "queued"  # claimable again

"""A connection's lease (forwarding/leases.py): exclusion between database sessions, renewal by the
heartbeat while a partner call runs, and the call cut when the lease cannot be renewed.

Real PostgreSQL sessions: each thread has its own database connection, as two workers would."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection as db
from django.utils import timezone

from connections.models import Connection
from forwarding import leases
from forwarding.leases import (
    acquire_lease,
    hold_lease,
    release_lease,
    release_leases_of_worker,
    renew_lease,
    set_worker_name,
)
from local_partners.misbehaving import MisbehavingServer
from outputs.partners.http import PartnerClient, TransientError
from tests import factories
from tests.conftest import service_missing
from tests.fixtures.postgres_faults import terminate_backends

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def connection(rings) -> Connection:
    return factories.connect(factories.active_audience(), factories.mailchimp_output())


@pytest.fixture
def short_lease(settings):
    settings.FORWARDING = {**settings.FORWARDING, "LEASE_SECONDS": 0.9}  # renewed every 0.3 s


def in_other_session(work):
    """Run `work` in another thread, so on another PostgreSQL session; return its result."""
    result: list = []

    def run():
        try:
            result.append(work())
        finally:
            db.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


def test_a_held_lease_excludes_a_second_session_until_released(connection):
    lease = acquire_lease(connection.pk)
    assert lease is not None
    assert in_other_session(lambda: acquire_lease(connection.pk)) is None
    release_lease(lease)
    other = in_other_session(lambda: acquire_lease(connection.pk))
    assert other is not None and other.holder != lease.holder


def test_sessions_racing_for_a_lease_get_exactly_one(connection):
    for _ in range(10):
        barrier = threading.Barrier(4)
        won = []

        def race():
            barrier.wait()
            return acquire_lease(connection.pk)

        threads = [threading.Thread(target=lambda: won.append(in_other_session(race))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        leases = [lease for lease in won if lease is not None]
        assert len(leases) == 1
        release_lease(leases[0])


def test_an_expired_lease_is_taken_over_and_its_old_holder_can_neither_renew_nor_release_it(connection):
    lease = acquire_lease(connection.pk)
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() - timedelta(seconds=1))
    other = in_other_session(lambda: acquire_lease(connection.pk))
    assert other is not None
    assert renew_lease(lease) is False
    release_lease(lease)  # not the holder any more: changes nothing
    assert Connection.objects.get(pk=connection.pk).delivery_lease_holder == other.holder


def test_renewing_extends_the_lease(connection, settings):
    lease = acquire_lease(connection.pk)
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() + timedelta(seconds=1))
    assert renew_lease(lease) is True
    until = Connection.objects.get(pk=connection.pk).delivery_lease_until
    assert until >= timezone.now() + timedelta(seconds=settings.FORWARDING["LEASE_SECONDS"] - 1)


def test_a_throttled_connection_cannot_be_leased(connection):
    Connection.objects.filter(pk=connection.pk).update(throttled_until=timezone.now() + timedelta(seconds=30))
    assert acquire_lease(connection.pk) is None
    Connection.objects.filter(pk=connection.pk).update(throttled_until=timezone.now() - timedelta(seconds=1))
    assert acquire_lease(connection.pk) is not None


def test_the_heartbeat_keeps_the_lease_through_a_call_longer_than_the_lease(connection, short_lease):
    # A partner trickling its answer for 3 s: more than three leases of 0.9 s.
    with MisbehavingServer("trickle_body", size=3, interval=1.0) as server:
        lease = acquire_lease(connection.pk)
        taken_meanwhile = []
        with hold_lease(lease):
            watcher = threading.Thread(
                target=lambda: [
                    (taken_meanwhile.append(in_other_session(lambda: acquire_lease(connection.pk))), time.sleep(0.2))
                    for _ in range(12)
                ]
            )
            watcher.start()
            PartnerClient(server.url).request("POST", "/lists/abc", json={"members": []})
            watcher.join()
        assert not lease.lost.is_set()
    assert taken_meanwhile and all(other is None for other in taken_meanwhile)
    # Released on the way out.
    assert Connection.objects.get(pk=connection.pk).delivery_lease_until is None


def test_a_lost_lease_cuts_the_partner_call_in_progress(connection, short_lease, settings):
    settings.PARTNER_CALL_DEADLINE_SECONDS = 30
    with MisbehavingServer("trickle_body", size=20, interval=1.0) as server:
        lease = acquire_lease(connection.pk)
        with hold_lease(lease):
            # Another worker took the connection over (as after a long database outage).
            Connection.objects.filter(pk=connection.pk).update(delivery_lease_holder="someone else")
            started = time.monotonic()
            with pytest.raises(TransientError) as excinfo:
                PartnerClient(server.url).request("POST", "/lists/abc", json={"members": []})
            took = time.monotonic() - started
        assert lease.lost.is_set()
    assert "cut short: the delivery lease was lost" in excinfo.value.message
    assert took < 2  # one renewal interval (0.3 s) and scheduling slack; not the 20 s answer
    # The other holder's lease is left alone.
    assert Connection.objects.get(pk=connection.pk).delivery_lease_holder == "someone else"


def test_a_restarted_worker_frees_only_its_dead_predecessors_leases(connection, rings):
    other = factories.connect(factories.active_audience("Other"), connection.output)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Connection.objects.filter(pk=connection.pk).update(
        delivery_lease_until=timezone.now() + timedelta(seconds=15), delivery_lease_holder=f"worker1@host/{dead.pid}/x"
    )
    # Another live worker started under the same name (its pid: this test's parent, alive).
    Connection.objects.filter(pk=other.pk).update(
        delivery_lease_until=timezone.now() + timedelta(seconds=15),
        delivery_lease_holder=f"worker1@host/{os.getppid()}/y",
    )
    assert release_leases_of_worker("worker2@host") == 0
    assert release_leases_of_worker("worker1@host") == 1
    assert Connection.objects.get(pk=connection.pk).delivery_lease_until is None
    assert Connection.objects.get(pk=other.pk).delivery_lease_until is not None
    # Leases taken in a worker carry its name and main pid.
    set_worker_name("worker1@host")
    try:
        lease = acquire_lease(connection.pk)
        assert lease.holder.startswith(f"worker1@host/{os.getpid()}/")
    finally:
        leases._holder_prefix = ""


def test_a_lease_is_released_even_when_the_database_dropped_the_holders_connection(connection):
    # The fault suite's "database backends terminated" stall: a delivery whose connection died
    # outside a transaction could not release its lease on that dead connection, and the
    # connection stood still for the whole lease.
    if db.vendor != "postgresql":
        service_missing("terminating the holder's backend needs PostgreSQL: set DATABASE_URL=postgres://...")
    lease = acquire_lease(connection.pk)
    pid = db.connection.info.backend_pid
    assert terminate_backends([pid]) == {pid}
    release_lease(lease)  # on a fresh connection
    assert Connection.objects.get(pk=connection.pk).delivery_lease_until is None

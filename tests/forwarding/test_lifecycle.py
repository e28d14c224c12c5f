"""Connecting while ingestion runs (issue 6 defect 2), with real concurrent transactions on PostgreSQL:
each thread has its own database connection, and the test orders them through the locks they wait on
(pg_locks), not through sleeps.

The rule under test (forwarding/lifecycle.py, audiences/membership/locks.py): every membership change
lands either in the connection's backfill or in its outbox, and a connect never deadlocks with the
transactions that lock its members' profiles."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, connections, transaction

from audiences import profiles
from audiences.events_api.ingest import ingest_batches
from audiences.events_api.parsing import parse_batch
from audiences.inputs import input_create
from audiences.membership.deferred import evaluate_deferred
from audiences.membership.locks import lock_audience_membership
from connections.models import Connection
from forwarding.lifecycle import connection_create
from forwarding.models import PendingChange
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the locks under test are PostgreSQL's")


class Worker(threading.Thread):
    """Runs one call on its own database connection, keeping its result or error."""

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc
        finally:
            connections.close_all()

    def outcome(self) -> object:
        self.join(timeout=30)
        assert not self.is_alive(), "the call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def waiting_for_locks() -> int:
    """Sessions of this database waiting for a lock right now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.datname = current_database()"
        )
        return cursor.fetchone()[0]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)


def enter(email: str) -> None:
    profiles.profile_upsert(
        identities=[{"type": "email", "value": email}], attributes={"status": "Premium", "favourite_city": "Paris"}
    )


def leave_by_profile_upsert(email: str) -> None:
    profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes={"status": "Free"})


def leave_by_events_api(email: str) -> None:
    batch = parse_batch(
        {"environment": "production", "user_identities": {"email": email}, "user_attributes": {"status": "Free"}}
    )
    ingest_batches(input_create("Web")[0], [batch])


def pending(connection_: Connection) -> dict[str, str]:
    return dict(PendingChange.objects.filter(connection=connection_).values_list("value", "action"))


@pytest.fixture
def audience(rings):
    return factories.active_audience()


def test_a_member_entering_in_a_transaction_open_during_the_connect_is_sent(audience):
    """The entering transaction has read the connections (none yet) and not committed when the connect
    backfills: the connect waits for it, so its backfill holds the new member."""
    output = factories.mailchimp_output()
    entered, commit = threading.Event(), threading.Event()

    def ingestion() -> None:
        with transaction.atomic():
            enter("new@x.com")
            entered.set()
            commit.wait(10)

    ingest = Worker(ingestion)
    ingest.start()
    assert entered.wait(10)
    connect = Worker(lambda: factories.connect(audience, output))
    connect.start()
    wait_until(lambda: waiting_for_locks() >= 1 or not connect.is_alive(), "the connect waiting or done")
    commit.set()
    ingest.outcome()
    created = connect.outcome()

    assert pending(created) == {"new@x.com": "add"}


@pytest.mark.parametrize("leave", [leave_by_profile_upsert, leave_by_events_api], ids=["profile upsert", "events api"])
def test_a_connect_and_a_leaving_member_neither_deadlock_nor_lose_the_removal(audience, leave):
    """The connect queued first, then a transaction that locks a member's profile and makes it leave
    (which waits behind the connect). The backfill reads that member's profile while it is locked:
    with FOR UPDATE on the profile, each would wait for the other (a deadlock)."""
    factories.parisian("stays@x.com")
    factories.parisian("leaves@x.com")
    output = factories.mailchimp_output()
    held, release = threading.Event(), threading.Event()

    def recompute_like() -> None:  # holds the audience's membership still, as a recompute does
        with transaction.atomic():
            lock_audience_membership(audience.pk)
            held.set()
            release.wait(10)

    blocker = Worker(recompute_like)
    blocker.start()
    assert held.wait(10)
    connect = Worker(lambda: connection_create(audience=audience, output=output, settings={"list_id": "list1"}))
    connect.start()
    wait_until(lambda: waiting_for_locks() >= 1, "the connect queued")
    ingest = Worker(lambda: leave("leaves@x.com"))
    ingest.start()
    if leave is leave_by_events_api:
        # The Events API does not wait for the audience's lock: it leaves the audience out, for the
        # deferred evaluation once the lock is free (audiences/membership/deferred.py).
        ingest.outcome()
        assert connect.is_alive()
    else:
        wait_until(lambda: waiting_for_locks() >= 2, "the leaving member's transaction queued behind it")
    release.set()
    blocker.outcome()
    created = connect.outcome()
    ingest.outcome()
    evaluate_deferred()

    assert pending(created) == {"stays@x.com": "add", "leaves@x.com": "remove"}

"""Delivery's set-wise batches (forwarding/batches.py) against the local Mailchimp: a drain of several
batches claims each after the last one sent, and the next drain, from the start, sends what a newer word
left behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection as db

import forwarding.delivery
from audiences import profiles
from connections.models import ConnectionMember
from forwarding.delivery import deliver_connection
from forwarding.models import PendingChange
from local_partners.mailchimp import LocalMailchimpServer
from outputs.partners.mailchimp import Mailchimp
from tests import factories
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db
LIST_ID = "list1"


@pytest.fixture
def partner(settings, rings) -> Iterator[LocalMailchimpServer]:
    server = LocalMailchimpServer(api_keys=[factories.MAILCHIMP_KEY])
    server.create_list(LIST_ID, "Potential Parisians")
    server.start()
    settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
    yield server
    server.stop()


@pytest.fixture
def threads_share_the_database():
    """A test whose partner call (in the drain's caller thread) reads or writes the database needs
    PostgreSQL: SQLite's shared in-memory test database locks whole tables across threads."""
    if db.vendor != "postgresql":
        service_missing("a second thread's reads and writes during a drain need PostgreSQL")


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(Mailchimp, "batch_limit", 2)


def sent_batches(partner: LocalMailchimpServer) -> list[list[tuple[str, str]]]:
    """Each batch POSTed to the list: (email, status) of its members."""
    return [
        [(m["email_address"], m["status"]) for m in r.body["members"]]
        for r in partner.requests
        if r.method == "POST" and r.path.split("?")[0].endswith(f"/lists/{LIST_ID}")
    ]


def test_a_drain_of_several_batches_sends_each_change_once_in_the_order_planned(partner, small_batches):
    emails = [f"p{i}@x.com" for i in range(5)]
    for email in emails:
        factories.parisian(email)
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)

    report = deliver_connection(connection_id=connection.pk)

    assert report.delivered == 5 and report.batches == 3
    assert [email for batch in sent_batches(partner) for email, _ in batch] == emails
    assert not PendingChange.objects.exists()
    assert set(ConnectionMember.objects.values_list("state", flat=True)) == {ConnectionMember.State.ADDED}


@pytest.mark.django_db(transaction=True)
def test_a_newer_word_written_while_its_batch_is_sent_goes_out_in_the_same_drain(
    partner, small_batches, monkeypatch, threads_share_the_database
):
    """The member leaves while its add is on the wire: the version guard keeps the removal, which the keyset
    has passed; the next drain, from the start, sends it before deliver_connection returns. (Committed data:
    the call runs in the drain's caller thread, whose connection must see the profile to change it.)"""
    for email in ("a@x.com", "b@x.com", "c@x.com"):
        factories.parisian(email)
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    apply_changes = forwarding.delivery.apply_changes
    calls = []

    def leaving_mid_send(partner_, connection_, changes):
        if not calls:  # the first batch (a@, b@) is being sent: a@ leaves meanwhile
            profiles.profile_upsert(identities=[{"type": "email", "value": "a@x.com"}], attributes={"status": "Free"})
        calls.append([c.value for c in changes])
        return apply_changes(partner_, connection_, changes)

    monkeypatch.setattr(forwarding.delivery, "apply_changes", leaving_mid_send)

    report = deliver_connection(connection_id=connection.pk)

    assert calls == [["a@x.com", "b@x.com"], ["c@x.com"], ["a@x.com"]]
    assert sent_batches(partner)[-1] == [("a@x.com", "unsubscribed")]
    assert report.delivered == 4
    assert not PendingChange.objects.exists()
    assert ConnectionMember.objects.get(value="a@x.com").state == ConnectionMember.State.REMOVED


def test_a_batch_claimed_ahead_and_never_sent_is_not_left_maybe_held(partner, small_batches):
    """The second batch is claimed while the first is on the wire; the first answers 503, so the drain stops
    before sending the second: its adds go back to "no record" (so a removal planned for one of them later
    is skipped, as for any identity never sent, rather than sent for an add that never went out)."""
    emails = [f"p{i}@x.com" for i in range(4)]  # batches of 2: [p0 p1] [p2 p3]
    for email in emails:
        factories.parisian(email)
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    partner.fail_next(503)

    report = deliver_connection(connection_id=connection.pk)

    assert report.batches == 1 and report.delivered == 0
    states = dict(ConnectionMember.objects.values_list("value", "state"))
    assert states == {"p0@x.com": "maybe_held", "p1@x.com": "maybe_held"}  # sent, no answer to trust
    assert PendingChange.objects.count() == 4  # all still due


@pytest.mark.django_db(transaction=True)
def test_the_next_batch_is_claimed_while_the_partner_answers_the_current_one(
    partner, small_batches, monkeypatch, threads_share_the_database
):
    """Pipelined delivery: during the first call, the second batch's adds are written ahead (claimed) by the
    drain, while the calls themselves stay one at a time and in order."""
    import time as clock

    emails = [f"q{i}@x.com" for i in range(4)]  # batches of 2: [q0 q1] [q2 q3]
    for email in emails:
        factories.parisian(email)
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    apply_changes = forwarding.delivery.apply_changes
    claimed_during_first_call: list[bool] = []
    in_flight = []

    def watching(partner_, connection_, changes):
        in_flight.append(1)
        assert len(in_flight) == 1, "two partner calls at once"
        if not claimed_during_first_call:
            deadline = clock.monotonic() + 5
            while clock.monotonic() < deadline and not ConnectionMember.objects.filter(value="q2@x.com").exists():
                clock.sleep(0.01)
            claimed_during_first_call.append(ConnectionMember.objects.filter(value="q2@x.com").exists())
        try:
            return apply_changes(partner_, connection_, changes)
        finally:
            in_flight.pop()

    monkeypatch.setattr(forwarding.delivery, "apply_changes", watching)

    report = deliver_connection(connection_id=connection.pk)

    assert claimed_during_first_call == [True]
    assert report.delivered == 4
    assert [email for batch in sent_batches(partner) for email, _ in batch] == emails


def test_a_claimed_row_written_without_an_offset_is_read_as_utc():
    """SQLite keeps what the ORM wrote as UTC without an offset: the claim reads it as an aware datetime, so
    the planned-to-acknowledged latency can be taken (a naive one fails the subtraction)."""
    from datetime import UTC, datetime

    from forwarding.batches import _claimed

    row = (1, "email", "a@x.com", "add", None, 1, 0, "2026-11-30 10:00:00.250000", "{}", None, None)
    assert _claimed(row).created_at == datetime(2026, 11, 30, 10, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)
def test_a_broken_connection_while_claiming_ahead_still_records_the_batch_on_the_wire(
    partner, small_batches, monkeypatch, threads_share_the_database
):
    """The database connection breaks (a terminated backend) while the next batch is claimed: the batch on
    the wire has its answer recorded on a new connection, so it is not sent again, and the drain goes on."""
    from django.db import OperationalError

    emails = [f"r{i}@x.com" for i in range(4)]  # batches of 2: [r0 r1] [r2 r3]
    for email in emails:
        factories.parisian(email)
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    claim = forwarding.delivery._claim
    claims = []

    def breaking_once(*args):
        claims.append(args)
        if len(claims) == 2:  # the claim ahead, while [r0 r1] is on the wire
            raise OperationalError("terminating connection due to administrator command")
        return claim(*args)

    monkeypatch.setattr(forwarding.delivery, "_claim", breaking_once)

    report = deliver_connection(connection_id=connection.pk)

    assert report.delivered == 4
    assert [email for batch in sent_batches(partner) for email, _ in batch] == emails  # each sent once
    assert not PendingChange.objects.exists()


def test_the_next_batch_goes_out_before_the_answered_one_is_recorded(partner, small_batches, monkeypatch):
    """Pipelined delivery: once the partner answered a batch, the next one is sent and the answered one is
    recorded while the partner works on it (the calls still one at a time, in order, each change once)."""
    import threading

    import forwarding.batches

    emails = [f"t{i}@x.com" for i in range(6)]  # batches of 2: [t0 t1] [t2 t3] [t4 t5]
    for email in emails:
        factories.parisian(email)
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    apply_changes, record = forwarding.delivery.apply_changes, forwarding.batches.record
    second_call_started = threading.Event()
    calls: list[list[str]] = []
    first_record_saw_the_second_call: list[bool] = []
    in_flight = []

    def watching(partner_, connection_, changes):
        in_flight.append(1)
        assert len(in_flight) == 1, "two partner calls at once"
        calls.append([c.value for c in changes])
        if len(calls) == 2:
            second_call_started.set()
        try:
            return apply_changes(partner_, connection_, changes)
        finally:
            in_flight.pop()

    def recording(batch):
        if not first_record_saw_the_second_call:  # the first batch's record: has the second call gone out?
            first_record_saw_the_second_call.append(second_call_started.wait(timeout=5))
        return record(batch)

    monkeypatch.setattr(forwarding.delivery, "apply_changes", watching)
    monkeypatch.setattr(forwarding.batches, "record", recording)

    report = deliver_connection(connection_id=connection.pk)

    assert first_record_saw_the_second_call == [True]
    assert calls == [emails[0:2], emails[2:4], emails[4:6]]
    assert report.delivered == 6
    assert [email for batch in sent_batches(partner) for email, _ in batch] == emails
    assert not PendingChange.objects.exists()
    assert set(ConnectionMember.objects.values_list("state", flat=True)) == {"added"}


@pytest.mark.django_db(transaction=True)
def test_a_broken_connection_while_recording_with_the_next_batch_on_the_wire_records_both(
    partner, small_batches, monkeypatch
):
    """The database connection breaks as an answered batch is recorded while the next one is on the wire: the
    record is made again on a new connection, so neither batch is sent twice and the drain goes on."""
    from django.db import OperationalError

    if db.vendor != "postgresql":
        service_missing("the record reopens the database connection: SQLite's in-memory test database goes with it")

    import forwarding.batches

    emails = [f"u{i}@x.com" for i in range(4)]  # batches of 2: [u0 u1] [u2 u3]
    for email in emails:
        factories.parisian(email)
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    record = forwarding.batches.record
    records = []

    def breaking_once(batch):
        records.append(batch)
        if len(records) == 1:  # [u0 u1]'s record, [u2 u3] on the wire
            raise OperationalError("terminating connection due to administrator command")
        return record(batch)

    monkeypatch.setattr(forwarding.batches, "record", breaking_once)

    report = deliver_connection(connection_id=connection.pk)

    assert report.delivered == 4
    assert [email for batch in sent_batches(partner) for email, _ in batch] == emails  # each sent once
    assert not PendingChange.objects.exists()


def member_writes() -> tuple[int, int]:
    """(updates, of which heap-only) of the members table in this test's transaction."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = %s",
            [ConnectionMember._meta.db_table],
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, 0)


def test_recording_the_answers_to_a_batch_written_ahead_writes_no_index_entry(partner):
    """Each add is inserted "maybe held" before the call and updated with the answer: an update that
    changes no indexed column and finds room on its page is heap-only (HOT), no entry added to any index.
    200 members fill several pages: without the room the table leaves on each (its fillfactor), or with an
    index on a column the answer changes (the state), most of these updates would be full ones."""
    if db.vendor != "postgresql":
        service_missing("heap-only updates are PostgreSQL's")
    for i in range(200):
        factories.parisian(f"hot{i}@x.com")
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)
    updates_before, _ = member_writes()

    report = deliver_connection(connection_id=connection.pk)

    assert report.delivered == 200 and report.batches == 1
    assert ConnectionMember.objects.filter(state=ConnectionMember.State.ADDED).count() == 200
    updates, heap_only = member_writes()
    assert updates - updates_before == 200  # each member's answer
    assert heap_only == updates

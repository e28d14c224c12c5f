"""Reads of what partners hold (connections.selectors)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext

from audiences.models import Audience
from connections.models import Connection, ConnectionMember
from connections.selectors import connected_output_counts, held_identities, member_counts, rejected_members
from tests.factories import mailchimp_output

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def audience(name: str) -> Audience:
    return Audience.objects.create(name=name, criteria={"and": []}, status=Audience.Status.ACTIVE)


def connect(target: Audience, output, status: str = Connection.Status.SENDING) -> Connection:
    return Connection.objects.create(audience=target, output=output, settings={"list_id": "l1"}, status=status)


def member(connection: Connection, value: str, state: str, at: datetime = NOW, reason: str = "") -> None:
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value=value, state=state, reason=reason, updated_at=at
    )


def test_connected_outputs_leave_out_ending_connections_and_count_every_audience_asked():
    parisians, empty = audience("Parisians"), audience("Empty")
    connect(parisians, mailchimp_output("Mailchimp"))
    connect(parisians, mailchimp_output("Paused"), status=Connection.Status.PAUSED)
    connect(parisians, mailchimp_output("Other"), status=Connection.Status.ENDING)  # being deleted

    assert connected_output_counts([parisians.pk, empty.pk]) == {parisians.pk: 2, empty.pk: 0}
    assert connected_output_counts([]) == {}


def test_connected_outputs_take_one_query_whatever_the_number_of_audiences():
    output = mailchimp_output()
    targets = [audience(f"A{n}") for n in range(12)]
    for target in targets:
        connect(target, output)

    with CaptureQueriesContext(db_connection) as twelve:
        counts = connected_output_counts(t.pk for t in targets)

    assert len(twelve) == 1
    assert set(counts.values()) == {1}


def test_what_the_partner_holds():
    connection = connect(audience("Parisians"), mailchimp_output())
    member(connection, "held@x.com", ConnectionMember.State.ADDED)
    member(connection, "unsure@x.com", ConnectionMember.State.MAYBE_HELD)  # an add whose answer never came
    member(connection, "gone@x.com", ConnectionMember.State.REMOVED)
    member(connection, "old@x.com", ConnectionMember.State.REJECTED, NOW - timedelta(hours=1), "fake")
    member(connection, "new@x.com", ConnectionMember.State.REJECTED, NOW, "compliance")
    asked = {("email", v) for v in ("held@x.com", "unsure@x.com", "gone@x.com", "never@x.com")}
    asked.add(("other", "held@x.com"))

    assert held_identities(connection.pk, asked) == {
        ("email", "held@x.com"): ConnectionMember.State.ADDED,
        ("email", "unsure@x.com"): ConnectionMember.State.MAYBE_HELD,
    }
    assert member_counts(connection) == {"delivered": 1, "rejected": 2, "fields_skipped": 0}
    assert [(m.value, m.reason) for m in rejected_members(connection)] == [
        ("new@x.com", "compliance"),
        ("old@x.com", "fake"),
    ]

"""Ingestion re-evaluates the active audiences of the touched profiles in the same transaction, and
two requests racing to create the same identity end with one profile (PostgreSQL)."""

from __future__ import annotations

import re
import threading
import time

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from audiences.events_api.ingest import ingest_batches
from audiences.events_api.parsing import parse_batch
from audiences.inputs import input_create
from audiences.models import Audience, AudienceMembership, Event, Identity, MembershipChange, Profile
from forwarding.models import PendingChange
from tests.conftest import service_missing
from tests.factories import active_audience, connect, mailchimp_output

PARISIANS = {
    "and": [
        {"attribute": "status", "operator": "equals", "value": "Premium"},
        {"event": "Destination Intro", "attributes": [{"attribute": "city", "operator": "equals", "value": "Paris"}]},
    ]
}


def video(city: str) -> dict:
    return {
        "event_type": "custom_event",
        "data": {"event_name": "Destination Intro", "custom_event_type": "media", "custom_attributes": {"City": city}},
    }


@pytest.mark.django_db
def test_batch_enters_and_leaves_audiences_in_real_time(post):
    audience = Audience.objects.create(name="Potential Parisians", criteria=PARISIANS, status="active")
    body = {
        "environment": "production",
        "user_identities": {"email": "p@x.co"},
        "user_attributes": {"status": "Premium"},
    }
    post("/v2/events", {**body, "events": [video("Rome")]})
    assert not AudienceMembership.objects.exists()
    post("/v2/events", {**body, "events": [video("paris")]})
    profile = Profile.objects.get()
    assert AudienceMembership.objects.filter(audience=audience, profile=profile).exists()
    change = MembershipChange.objects.get()
    assert (change.kind, change.reason) == ("entered", "events api")
    post("/v2/events", {**body, "user_attributes": {"status": "Free"}})
    assert not AudienceMembership.objects.exists()
    assert MembershipChange.objects.filter(kind="left").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_creating_the_same_identity_end_with_one_profile():
    if connection.vendor != "postgresql":
        service_missing("the race needs PostgreSQL (SQLite serialises writers)")
    input_, _ = input_create("src")
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            batch = parse_batch(
                {
                    "environment": "production",
                    "user_identities": {"email": "same@x.co", f"other_id_{n + 2}": f"o{n}"},
                    "events": [video("Paris")],
                }
            )
            barrier.wait()
            ingest_batches(input_, [batch])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    profile = Profile.objects.get()
    assert Identity.objects.filter(profile=profile).count() == 1 + threads_count
    assert Event.objects.filter(profile=profile).count() == threads_count


def _reads_back(sql: str) -> bool:
    """A SELECT of rows by profile id (attributes, identities, events, memberships) or by profile id list."""
    return sql.lstrip().upper().startswith("SELECT") and bool(
        re.search(r'"?profile_id"? IN \(|\bid IN \(|"id" IN \(', sql)
    )


@pytest.mark.django_db
def test_new_users_are_evaluated_and_planned_on_what_their_request_wrote(post, rings):
    """A bulk request of new users: each enters the audiences its attributes, identities and events (those in
    an audience's window) qualify it for, and the outbox gets each new member's email. What the request has
    just written is not read back, the outbox is written in one statement, the audiences read and locked in one."""
    premium = active_audience("Premium", {"attribute": "status", "operator": "equals", "value": "Premium"})
    emailable = active_audience("Emailable", {"identity": "email", "operator": "exists"})
    parisians = active_audience("Parisians", PARISIANS)
    recent = active_audience(
        "Recent", {"event": "Destination Intro", "recency": {"within_last": {"amount": 1, "unit": "days"}}}
    )
    output = mailchimp_output()
    for audience in (emailable, parisians):
        connect(audience, output, list_id=f"list-{audience.pk}")
    three_days_ago = int((time.time() - 3 * 86400) * 1000)
    old_video = {**video("Paris"), "data": {**video("Paris")["data"], "timestamp_unixtime_ms": three_days_ago}}
    users = [
        ({"email": "a@x.co"}, "Premium", video("Paris")),
        ({"customer_id": "b"}, "Premium", video("Paris")),
        ({"email": "c@x.co"}, "Free", video("Rome")),
        ({"email": "d@x.co"}, "Premium", old_video),
    ]
    body = [
        {"environment": "production", "user_identities": ids, "user_attributes": {"status": status}, "events": [event]}
        for ids, status, event in users
    ]

    with CaptureQueriesContext(connection) as queries:
        response = post("/v2/bulkevents", body)

    assert response.status_code == 202, response.content
    profile_of = {i.value: i.profile_id for i in Identity.objects.all()}
    expected = {
        "a@x.co": {premium.pk, emailable.pk, parisians.pk, recent.pk},
        "b": {premium.pk, parisians.pk, recent.pk},
        "c@x.co": {emailable.pk, recent.pk},
        "d@x.co": {premium.pk, emailable.pk, parisians.pk},
    }
    for value, audience_ids in expected.items():
        held = set(
            AudienceMembership.objects.filter(profile_id=profile_of[value]).values_list("audience_id", flat=True)
        )
        assert held == audience_ids, value
    outbox = set(PendingChange.objects.values_list("connection__audience_id", "value", "action"))
    assert outbox == {
        (emailable.pk, "a@x.co", "add"),
        (emailable.pk, "c@x.co", "add"),
        (emailable.pk, "d@x.co", "add"),
        (parisians.pk, "a@x.co", "add"),
        (parisians.pk, "d@x.co", "add"),
    }
    statements = [q["sql"] for q in queries.captured_queries]
    assert not [sql for sql in statements if _reads_back(sql)]
    assert len([sql for sql in statements if "forwarding_pendingchange" in sql]) == 1
    assert not [sql for sql in statements if " times: " in sql]  # no executemany
    # The active audiences are read and their shared locks taken in one statement.
    assert not [sql for sql in statements if "advisory" in sql and "audiences_audience" not in sql]

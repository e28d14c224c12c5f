"""Ingestion re-evaluates the active audiences of the touched profiles in the same transaction, and
two requests racing to create the same identity end with one profile (PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from audiences.events_api.ingest import ingest_batches
from audiences.events_api.parsing import parse_batch
from audiences.inputs import input_create
from audiences.models import Audience, AudienceMembership, Event, Identity, MembershipChange, Profile
from tests.conftest import service_missing

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

"""Audience metrics (size, adds and drops in the last 24 hours, volatility, last calculated; the API adds
the connected outputs, from forwarding) and a profile's membership history: the selectors, the API and the
admin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audiences.models import Audience, AudienceMembership, MembershipChange, Profile
from audiences.selectors import AudienceMetrics, audience_metrics, profile_history, volatility
from connections.models import Connection
from tests.factories import mailchimp_output

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def audience(name: str, **fields) -> Audience:
    return Audience.objects.create(name=name, criteria={"and": []}, status=Audience.Status.ACTIVE, **fields)


def profiles(n: int) -> list[Profile]:
    return Profile.objects.bulk_create([Profile() for _ in range(n)])


def members(target: Audience, people: list[Profile], at: datetime = NOW) -> None:
    AudienceMembership.objects.bulk_create(
        [AudienceMembership(audience=target, profile=p, entered_at=at) for p in people]
    )


def change(target: Audience, person: Profile, kind: str, at: datetime, reason: str = "recomputed") -> None:
    MembershipChange.objects.create(audience=target, profile=person, kind=kind, reason=reason, at=at)


def connect(target: Audience, output, status: str = Connection.Status.SENDING) -> Connection:
    return Connection.objects.create(audience=target, output=output, settings={"list_id": "l1"}, status=status)


def test_metrics_count_size_recent_adds_and_drops():
    parisians = audience("Parisians", last_calculated_at=NOW - HOUR)
    people = profiles(10)
    members(parisians, people[:8])
    # In the window: 3 entered (one of them twice), 1 left. Outside it: older changes and a future one.
    for person in people[:3]:
        change(parisians, person, "entered", NOW - 2 * HOUR)
    change(parisians, people[0], "left", NOW - HOUR)
    change(parisians, people[0], "entered", NOW - HOUR / 2)
    change(parisians, people[9], "left", NOW - 23 * HOUR)
    change(parisians, people[4], "entered", NOW - 25 * HOUR)
    change(parisians, people[5], "left", NOW - 24 * HOUR)  # exactly 24 hours ago: out of the window
    change(parisians, people[6], "entered", NOW + HOUR)

    metrics = audience_metrics([parisians.pk], now=NOW)

    assert metrics == {
        parisians.pk: AudienceMetrics(
            audience_id=parisians.pk,
            size=8,
            adds_24h=3,  # distinct profiles
            drops_24h=2,
            volatility=0.625,  # (3 + 2) / 8
            last_calculated_at=NOW - HOUR,
        )
    }


def test_empty_audience_has_zero_volatility_and_unknown_ids_are_absent():
    empty = audience("Empty")
    person = profiles(1)[0]
    change(empty, person, "entered", NOW - HOUR)
    change(empty, person, "left", NOW - HOUR / 2)

    metrics = audience_metrics([empty.pk, 999_999], now=NOW)

    assert set(metrics) == {empty.pk}
    assert metrics[empty.pk].size == 0
    assert (metrics[empty.pk].adds_24h, metrics[empty.pk].drops_24h) == (1, 1)
    assert metrics[empty.pk].volatility == 0
    assert metrics[empty.pk].last_calculated_at is None
    assert audience_metrics([]) == {}


def test_volatility_is_rounded_to_four_digits():
    assert volatility(1, 0, 3) == 0.3333
    assert volatility(2, 2, 2) == 2.0
    assert volatility(5, 5, 0) == 0.0


def test_metrics_take_one_query_whatever_the_number_of_audiences():
    output = mailchimp_output()
    targets = [audience(f"A{n}") for n in range(12)]
    for target in targets:
        members(target, profiles(3))
        connect(target, output)

    with CaptureQueriesContext(db_connection) as one:
        audience_metrics([targets[0].pk], now=NOW)
    with CaptureQueriesContext(db_connection) as twelve:
        metrics = audience_metrics([t.pk for t in targets], now=NOW)

    assert len(one) == len(twelve) == 1
    assert {m.size for m in metrics.values()} == {3}


# --- history -----------------------------------------------------------------------------------


def test_profile_history_is_newest_first_with_audience_and_reason():
    premium, parisians = audience("Premium"), audience("Parisians")
    person, other = profiles(2)
    change(premium, person, "entered", NOW - 3 * HOUR, reason="profile upsert")
    change(parisians, person, "entered", NOW - 2 * HOUR, reason="events")
    change(premium, person, "left", NOW - HOUR, reason="recomputed")
    change(premium, other, "entered", NOW, reason="not this profile")

    history = profile_history(person.pk)

    assert [(e.audience_id, e.audience_name, e.kind, e.reason, e.at) for e in history] == [
        (premium.pk, "Premium", "left", "recomputed", NOW - HOUR),
        (parisians.pk, "Parisians", "entered", "events", NOW - 2 * HOUR),
        (premium.pk, "Premium", "entered", "profile upsert", NOW - 3 * HOUR),
    ]
    assert len(profile_history(person.pk, limit=1)) == 1
    assert profile_history(other.pk + 1000) == []


# --- API ---------------------------------------------------------------------------------------


@pytest.fixture
def api(admin_user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin_user).key}")
    return client


def test_api_audience_shows_metrics(api):
    target = audience("Parisians", last_calculated_at=NOW)
    people = profiles(4)
    members(target, people)
    now = datetime.now(UTC)
    change(target, people[0], "entered", now - HOUR)
    connect(target, mailchimp_output())

    body = api.get(f"/api/v1/audiences/{target.pk}/").json()

    assert body["size"] == 4
    assert body["adds_24h"] == 1
    assert body["drops_24h"] == 0
    assert body["volatility"] == 0.25
    assert body["connected_outputs"] == 1
    assert body["last_calculated_at"].startswith("2026-03-01T12:00:00")


def test_api_audience_list_computes_metrics_per_page(api):
    first = audience("First")
    members(first, profiles(2))
    with CaptureQueriesContext(db_connection) as few:
        response = api.get("/api/v1/audiences/")
    for n in range(6):
        members(audience(f"More {n}"), profiles(1))
    with CaptureQueriesContext(db_connection) as many:
        more = api.get("/api/v1/audiences/")

    assert response.status_code == 200
    assert response.json()["results"][0]["size"] == 2
    assert {row["size"] for row in more.json()["results"]} == {1, 2}
    assert all("volatility" in row and "connected_outputs" in row for row in more.json()["results"])
    assert len(many) == len(few)


def test_api_profile_history(api):
    target = audience("Premium")
    person = profiles(1)[0]
    change(target, person, "entered", NOW - HOUR, reason="profile upsert")
    change(target, person, "left", NOW, reason="recomputed")

    response = api.get(f"/api/v1/profiles/{person.pk}/history/")

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [(r["audience"], r["audience_name"], r["kind"], r["reason"]) for r in results] == [
        (target.pk, "Premium", "left", "recomputed"),
        (target.pk, "Premium", "entered", "profile upsert"),
    ]
    assert results[0]["at"].startswith("2026-03-01T12:00:00")
    assert api.get(f"/api/v1/profiles/{person.pk + 1000}/history/").status_code == 404


# --- admin -------------------------------------------------------------------------------------


def test_admin_list_and_change_page_show_metrics(admin_client, django_assert_max_num_queries):
    target = audience("Parisians")
    people = profiles(5)
    members(target, people)
    change(target, people[0], "entered", datetime.now(UTC) - HOUR)
    for n in range(5):
        audience(f"Audience {n}")

    with django_assert_max_num_queries(12):
        listing = admin_client.get(reverse("admin:audiences_audience_changelist"))
    page = admin_client.get(reverse("admin:audiences_audience_change", args=[target.pk]))

    assert listing.status_code == 200
    rows = {a.name: a for a in listing.context["cl"].result_list}
    assert rows["Parisians"].metrics.adds_24h == 1
    assert rows["Parisians"].metrics.volatility == 0.2
    assert "20.0%" in listing.content.decode()
    html = page.content.decode()
    assert page.status_code == 200
    assert "Adds (24 h)" in html and "20.0%" in html
    assert reverse("admin:audiences_audience_download", args=[target.pk]) in html

"""The criteria builder's reads: the live estimate (a count without saving, equal to what a recompute
stores), the names seen in the data, the warnings for names never seen, and who may ask."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.db import DatabaseError
from django.db import connection as db
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audiences import estimates
from audiences import services as audience_services
from audiences.events_api.ingest import ingest_batches
from audiences.events_api.parsing import parse_batch
from audiences.inputs import input_create
from audiences.models import Audience, AudienceMembership, MembershipChange, Profile
from forwarding.management.commands.demo import CRITERIA as TUTORIAL
from forwarding.management.commands.demo import demo_batch
from tests.fixtures.api import errors

# Trees of every kind of node, each compared with what a recompute stores.
TREES = [
    TUTORIAL,
    {
        "or": [
            {"attribute": "status", "operator": "equals", "value": "Free"},
            {"identity": "email", "operator": "exists"},
        ]
    },
    {"and": [{"exclude": {"attribute": "status", "operator": "equals", "value": "Premium"}}]},
    {"event": "Destination Intro", "frequency": {"operator": "fewer_than", "count": 1}},
    {"identity": "google_advertising_id", "operator": "exists"},
    {"and": []},
]
ESTIMATE_URL = "/admin/audiences/audience/estimate/"
API_ESTIMATE_URL = "/api/v1/audiences/estimate/"


@pytest.fixture
def travellers(db) -> int:
    """40 profiles: Premium/Free, Paris/Rome, some with an email, some events older than 30 days."""
    source, _ = input_create(name="Estimates")
    batches = [
        demo_batch(
            n,
            status="Premium" if n % 3 else "Free",
            city="Paris" if n % 2 else "Rome",
            email=n % 4 == 0,
            gaid=n % 7 == 0,
            days_ago=40 if n % 5 == 0 else 2,
        )
        for n in range(40)
    ]
    ingest_batches(source, [parse_batch(b, path=f"[{i}]") for i, b in enumerate(batches)])
    return len(batches)


def post_json(client, url: str, body: dict):
    return client.post(url, body, content_type="application/json")


@pytest.mark.parametrize("tree", TREES)
def test_the_estimate_equals_the_count_a_recompute_stores(travellers, rings, tree):
    now = timezone.now()
    estimate = estimates.criteria_estimate(criteria=tree, now=now)
    audience = audience_services.audience_create(name="Compared", criteria=tree, status="active")
    audience_services.audience_recompute(audience_id=audience.pk)
    stored = AudienceMembership.objects.filter(audience=audience).count()
    assert estimate.available, estimate.reason
    assert estimate.count == stored
    assert estimate.total_profiles == travellers
    assert 0 < stored or tree.get("and") is None or tree["and"]  # the trees select something to compare


def test_the_tutorial_estimate_is_the_hand_counted_figure(travellers):
    # Premium (n % 3 != 0), Paris (n odd), event within 30 days (n % 5 != 0).
    expected = sum(1 for n in range(40) if n % 3 and n % 2 and n % 5)
    assert estimates.criteria_estimate(criteria=TUTORIAL).count == expected


def test_the_estimate_writes_nothing(travellers, admin_client):
    before = (Audience.objects.count(), AudienceMembership.objects.count(), MembershipChange.objects.count())
    response = post_json(admin_client, ESTIMATE_URL, {"criteria": TUTORIAL})
    assert response.status_code == 200
    assert (Audience.objects.count(), AudienceMembership.objects.count(), MembershipChange.objects.count()) == before


def test_admin_estimate_answers_the_count_and_warns_of_unseen_names(travellers, admin_client):
    tree = {
        "and": [
            {
                "event": "Destination Intro",
                "attributes": [{"attribute": "cty", "operator": "equals", "value": "Paris"}],
            },
            {"event": "Destnation Intro"},
            {"attribute": "statuss", "operator": "equals", "value": "Premium"},
            {"attribute": "status", "operator": "exists"},
        ]
    }
    response = post_json(admin_client, ESTIMATE_URL, {"criteria": tree, "audience_id": None})
    assert response.status_code == 200
    body = response.json()
    assert body["available"] is True and body["count"] == 0 and body["total_profiles"] == travellers
    warnings = " ".join(body["warnings"])
    assert "“statuss”" in warnings and "“Destnation Intro”" in warnings and "“cty”" in warnings
    assert "“status”" not in warnings and "“city”" not in warnings and len(body["warnings"]) == 3


def test_empty_criteria_are_flagged_as_matching_everybody(travellers, admin_client):
    body = post_json(admin_client, ESTIMATE_URL, {"criteria": {"and": []}}).json()
    assert body["matches_everybody"] is True and body["count"] == travellers
    body = post_json(admin_client, ESTIMATE_URL, {"criteria": TUTORIAL}).json()
    assert body["matches_everybody"] is False


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        ({"and": [{"attribute": "status", "operator": "nearly", "value": "x"}]}, "criteria.and[0].operator"),
        ({"and": [{"event": ""}]}, "criteria.and[0].event"),
        ({"audience": 999999, "operator": "member"}, "criteria.audience: audience 999999 does not exist"),
        ([], "criteria: expected an object"),
    ],
)
def test_invalid_criteria_answer_400_naming_the_path(db, admin_client, api, criteria, message):
    response = post_json(admin_client, ESTIMATE_URL, {"criteria": criteria})
    assert response.status_code == 400
    assert message in " ".join(response.json()["errors"]["criteria"])
    response = api.post(API_ESTIMATE_URL, {"criteria": criteria}, format="json")
    assert response.status_code == 400
    assert message in " ".join(errors(response)["criteria"])


def test_malformed_estimate_requests_are_400_not_500(db, admin_client, api):
    assert admin_client.post(ESTIMATE_URL, "{", content_type="application/json").status_code == 400
    assert post_json(admin_client, ESTIMATE_URL, {}).status_code == 400
    assert post_json(admin_client, ESTIMATE_URL, {"criteria": TUTORIAL, "audience_id": "x"}).status_code == 400
    assert admin_client.get(ESTIMATE_URL).status_code == 405
    response = api.post(API_ESTIMATE_URL, {"criteria": TUTORIAL, "extra": 1}, format="json")
    assert response.status_code == 400 and "extra" in errors(response)
    response = api.post(API_ESTIMATE_URL, {"criteria": TUTORIAL, "audience": 999999}, format="json")
    assert response.status_code == 400 and "audience" in errors(response)
    response = api.post(API_ESTIMATE_URL, {}, format="json")
    assert response.status_code == 400 and "criteria" in errors(response)
    # A name PostgreSQL could not even compare (a NUL character) is the client's error, not the server's.
    response = api.get("/api/v1/audiences/names/", {"event": "Destination\x00Intro"})
    assert response.status_code == 400 and "event" in errors(response)


def test_a_cycle_through_the_edited_audience_is_refused(db, rings, admin_client, api):
    first = audience_services.audience_create(name="First", criteria={"and": []})
    second = audience_services.audience_create(name="Second", criteria={"audience": first.pk, "operator": "member"})
    refers_back = {"audience": second.pk, "operator": "member"}
    response = post_json(admin_client, ESTIMATE_URL, {"criteria": refers_back, "audience_id": first.pk})
    assert response.status_code == 400 and "refers back" in response.json()["errors"]["criteria"][0]
    response = api.post(API_ESTIMATE_URL, {"criteria": refers_back, "audience": first.pk}, format="json")
    assert response.status_code == 400 and "refers back" in errors(response)["criteria"][0]
    assert api.post(API_ESTIMATE_URL, {"criteria": refers_back}, format="json").status_code == 200


def test_rest_estimate_counts(travellers, api):
    response = api.post(API_ESTIMATE_URL, {"criteria": TUTORIAL}, format="json")
    assert response.status_code == 200
    assert response.json()["count"] == estimates.criteria_estimate(criteria=TUTORIAL).count


def staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="audiences", codename__in=codenames))
    return User.objects.get(pk=user.pk)  # a fresh instance: no cached permissions


def token_client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def test_only_who_may_create_or_change_audiences_gets_estimates(db, client, anonymous):
    """config/roles.py's BUILD_AUDIENCES: add or change audiences, either will do (the builder serves the
    add page and the change page); the ready groups are checked in tests/api and tests/admin."""
    viewer = staff("viewer", "view_audience")
    body = {"criteria": TUTORIAL}
    client.force_login(viewer)
    assert post_json(client, ESTIMATE_URL, body).status_code == 403
    assert client.get("/admin/audiences/audience/names/").status_code == 403
    assert token_client(viewer).post(API_ESTIMATE_URL, body, format="json").status_code == 403
    assert token_client(viewer).get("/api/v1/audiences/names/").status_code == 403
    for builder in (staff("editor", "view_audience", "change_audience"), staff("creator", "add_audience")):
        client.force_login(builder)
        assert post_json(client, ESTIMATE_URL, body).status_code == 200, builder
        assert client.get("/admin/audiences/audience/names/").status_code == 200, builder
        assert token_client(builder).post(API_ESTIMATE_URL, body, format="json").status_code == 200, builder
        assert token_client(builder).get("/api/v1/audiences/names/").status_code == 200, builder
    assert anonymous.post(API_ESTIMATE_URL, body, format="json").status_code in (401, 403)
    client.logout()
    assert post_json(client, ESTIMATE_URL, body).status_code == 302  # to the login page


def test_names_seen_with_counts(travellers, admin_client, api):
    names = estimates.names_seen(event="destination intro")
    attributes = {n.name: n.count for n in names.attributes}
    assert attributes["status"] == travellers and attributes["$firstname"] == travellers
    assert {n.name: n.count for n in names.events} == {"Destination Intro": travellers}
    assert {n.name: n.count for n in names.event_attributes} == {"city": travellers}
    body = admin_client.get("/admin/audiences/audience/names/", {"event": "Destination Intro"}).json()
    assert {"name": "city", "count": travellers} in body["event_attributes"]
    body = api.get("/api/v1/audiences/names/").json()
    assert body["event_attributes"] == [] and body["event"] is None
    assert {"name": "Destination Intro", "count": travellers} in body["events"]


def test_names_come_from_a_bounded_sample_of_the_newest_profiles(travellers, monkeypatch):
    monkeypatch.setattr(estimates, "NAME_SAMPLE_PROFILES", 5)
    newest = Profile.objects.order_by("-id")[:5]
    names = {n.name: n.count for n in estimates.names_seen().attributes}
    assert names["status"] == len(newest) == 5


def test_an_estimate_past_its_timeout_says_so_instead_of_a_figure(transactional_db, monkeypatch):
    if db.vendor != "postgresql":
        pytest.skip("the statement timeout is PostgreSQL's (SQLite counts profile by profile)")
    with pytest.raises(DatabaseError):
        estimates.timed_counts([("SELECT count(*) FROM pg_sleep(0.5)", [])], timeout_ms=50)
    # The timeout ended with its savepoint: the connection goes on with its own setting.
    with db.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        assert cursor.fetchone()[0] == "0"
    monkeypatch.setattr(estimates, "member_sql", lambda tree, now: ("SELECT 1 AS profile_id FROM pg_sleep(0.5)", []))
    monkeypatch.setattr(estimates, "estimate_timeout_ms", lambda: 50)
    estimate = estimates.criteria_estimate(criteria=TUTORIAL)
    assert estimate.available is False and estimate.count is None
    assert "longer than 0.05 s" in estimate.reason


def test_sqlite_fallback_refuses_beyond_its_bound(travellers, monkeypatch):
    if db.vendor == "postgresql":
        pytest.skip("the fallback is SQLite's")
    monkeypatch.setattr(estimates, "SQLITE_ESTIMATE_MAX_PROFILES", travellers - 1)
    estimate = estimates.criteria_estimate(criteria=TUTORIAL)
    assert estimate.available is False and "PostgreSQL" in estimate.reason

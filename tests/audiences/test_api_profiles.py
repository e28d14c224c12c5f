from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audiences.models import Identity, MembershipChange, Profile
from tests.fixtures.api import errors

URL = "/api/v1/profiles/"
GAID = "6A8B3E2C-1F4D-4B7A-9C0E-2D5F8A1B3C4E"


def upsert(api, identities, attributes=None):
    body = {"identities": identities}
    if attributes is not None:
        body["attributes"] = attributes
    return api.post(URL, body, format="json")


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/v1/profiles/"),
        ("post", "/api/v1/profiles/"),
        ("get", "/api/v1/audiences/"),
        ("get", "/api/v1/partners/"),
        ("get", "/api/v1/outputs/"),
        ("get", "/api/v1/connections/"),
    ],
)
def test_token_required(anonymous, method, url):
    response = getattr(anonymous, method)(url, {}, format="json")

    assert response.status_code == 401


def test_wrong_token_is_refused(anonymous):
    anonymous.credentials(HTTP_AUTHORIZATION="Token not-a-token")

    assert anonymous.get(URL).status_code == 401


def test_non_staff_token_is_forbidden(db):
    user = get_user_model().objects.create_user("viewer", password="x" * 12)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    assert client.get(URL).status_code == 403


# --- upsert ----------------------------------------------------------------------------------


def test_upsert_creates_a_profile_with_normalised_identities(api, audience):
    response = upsert(
        api,
        [{"type": "email", "value": "  A@X.com "}, {"type": "google_advertising_id", "value": GAID}],
        {"plan": "Premium", "age": 42},
    )

    assert response.status_code == 201, response.data
    body = response.json()
    profile = Profile.objects.get()
    assert body["id"] == profile.pk
    assert body["identities"] == [
        {"type": "email", "value": "a@x.com"},
        {"type": "google_advertising_id", "value": GAID.lower()},
    ]
    assert body["attributes"] == {"plan": "Premium", "age": 42}
    assert body["audiences"] == [audience.pk]
    assert body["entered"] == [audience.pk]
    assert body["left"] == []
    assert set(Identity.objects.values_list("type", "value")) == {
        ("email", "a@x.com"),
        ("google_advertising_id", GAID.lower()),
    }


def test_upsert_updates_the_profile_an_identity_names(api, audience):
    first = upsert(api, [{"type": "email", "value": "a@x.com"}], {"plan": "premium", "city": "Oslo"}).json()

    response = upsert(
        api,
        [{"type": "email", "value": "A@x.COM"}, {"type": "customer", "value": "c-1"}],
        {"plan": "free", "city": None},
    )

    assert response.status_code == 200, response.data
    body = response.json()
    assert body["id"] == first["id"]
    assert Profile.objects.count() == 1
    assert body["attributes"] == {"plan": "free"}  # null deletes an attribute
    assert {"type": "customer", "value": "c-1"} in body["identities"]
    assert body["audiences"] == []
    assert body["entered"] == []
    assert body["left"] == [audience.pk]


def test_upsert_without_changes_answers_200(api):
    upsert(api, [{"type": "customer", "value": "c-1"}], {"a": 1})

    response = upsert(api, [{"type": "customer", "value": "c-1"}], {"a": 1})

    assert response.status_code == 200
    assert response.json()["entered"] == response.json()["left"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"identities": [{"type": "fax", "value": "1"}]}, "identities[0].type"),
        ({"identities": [{"type": "email", "value": "not-an-email"}]}, "identities[0].value"),
        (
            {"identities": [{"type": "customer", "value": "c-1"}, {"type": "email", "value": "a@b"}]},
            "identities[1].value",
        ),
        ({"identities": [{"type": "google_advertising_id", "value": "nope"}]}, "identities[0].value"),
        ({"identities": [{"type": "email", "value": "a@x.com", "extra": 1}]}, "identities[0].extra"),
        ({"identities": []}, "identities"),
        ({"attributes": {"plan": "x"}}, "identities"),
        ({"identities": [{"type": "email", "value": "a@x.com"}], "atributes": {}}, "atributes"),
        ({"identities": [{"type": "email", "value": "a@x.com"}], "attributes": {"plan": {"x": 1}}}, "attributes.plan"),
    ],
)
def test_invalid_upsert_names_the_field_and_writes_nothing(api, body, field):
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    assert field in errors(response)
    assert isinstance(errors(response)[field], list)
    assert Profile.objects.count() == 0
    assert Identity.objects.count() == 0


def test_oversized_attribute_name_is_refused(api):
    response = upsert(api, [{"type": "email", "value": "a@x.com"}], {"x" * 257: "v"})

    assert response.status_code == 400
    (field,) = errors(response)
    assert field.startswith("attributes.xxx")
    assert "at most 256 characters" in errors(response)[field][0]
    assert Profile.objects.count() == 0


def test_identities_of_two_profiles_conflict(api):
    a = upsert(api, [{"type": "email", "value": "a@x.com"}], {"n": 1}).json()["id"]
    b = upsert(api, [{"type": "customer", "value": "c-2"}]).json()["id"]

    response = upsert(
        api,
        [
            {"type": "email", "value": "a@x.com"},
            {"type": "customer", "value": "c-2"},
            {"type": "other", "value": "new"},
        ],
        {"n": 2},
    )

    assert response.status_code == 409
    assert response.json()["code"] == "profile_conflict"
    assert response.json()["profile_ids"] == sorted([a, b])
    assert "merge them first" in response.json()["detail"]
    assert not Identity.objects.filter(type="other").exists()
    assert Profile.objects.get(pk=a).attributes == {"n": 1}


# --- reads -----------------------------------------------------------------------------------


def test_retrieve_shows_the_membership_changes(api, audience):
    profile_id = upsert(api, [{"type": "email", "value": "a@x.com"}], {"plan": "premium"}).json()["id"]
    upsert(api, [{"type": "email", "value": "a@x.com"}], {"plan": "free"})

    response = api.get(f"{URL}{profile_id}/")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "identities", "attributes", "audiences", "membership_changes"}
    assert body["audiences"] == []
    changes = body["membership_changes"]
    assert [(c["audience"], c["kind"]) for c in changes] == [(audience.pk, "left"), (audience.pk, "entered")]
    assert set(changes[0]) == {"audience", "kind", "reason", "at"}


def test_retrieve_shows_at_most_50_membership_changes(api, audience):
    profile_id = upsert(api, [{"type": "email", "value": "a@x.com"}]).json()["id"]
    MembershipChange.objects.bulk_create(
        [
            MembershipChange(audience=audience, profile_id=profile_id, kind="entered", at="2024-01-01T00:00:00Z")
            for _ in range(60)
        ]
    )

    assert len(api.get(f"{URL}{profile_id}/").json()["membership_changes"]) == 50


def test_retrieve_unknown_profile_is_404(api):
    assert api.get(f"{URL}999999/").status_code == 404


def test_lookup_by_identity_normalises_the_value(api):
    profile_id = upsert(api, [{"type": "email", "value": "a@x.com"}]).json()["id"]
    upsert(api, [{"type": "email", "value": "b@x.com"}])

    response = api.get(URL, {"identity_type": "email", "identity_value": " A@X.com"})

    assert response.status_code == 200
    assert response.json()["count"] == 1
    assert [p["id"] for p in response.json()["results"]] == [profile_id]


def test_lookup_of_an_unknown_identity_is_empty(api):
    response = api.get(URL, {"identity_type": "email", "identity_value": "nobody@x.com"})

    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"identity_type": "email"}, "identity_value"),
        ({"identity_value": "a@x.com"}, "identity_type"),
        ({"identity_type": "fax", "identity_value": "1"}, "identity_type"),
        ({"identity_type": "email", "identity_value": "nope"}, "identity_value"),
    ],
)
def test_invalid_lookup_names_the_parameter(api, params, field):
    response = api.get(URL, params)

    assert response.status_code == 400
    assert field in errors(response)


def test_list_without_filter_pages_all_profiles(api):
    for n in range(3):
        upsert(api, [{"type": "customer", "value": f"c-{n}"}])

    response = api.get(URL, {"limit": 2})

    assert response.json()["count"] == 3
    assert len(response.json()["results"]) == 2

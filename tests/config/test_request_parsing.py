"""The REST API's strict JSON parser, the guard against bodies of unknown length, and ids in query strings
(config/request_parsing.py): every bad input answers a clean 4xx naming where, and nothing is written."""

import pytest

from audiences.models import Audience, Identity, Profile
from config.request_parsing import id_from_query
from connections.models import Connection

PROFILES = "/api/v1/profiles/"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"identities": [{"type": "email", "value": "a@b.co"}], "attributes": {"score": NaN}}', "attributes.score"),
        (b'{"identities": [{"type": "email", "value": "a@b.co"}], "attributes": {"s": 1e400}}', "attributes.s"),
        (b'{"identities": [{"type": "email", "value": "a@b.co"}], "attributes": {"s": "\\u0000"}}', "attributes.s"),
        (b'{"identities": [{"type": "customer", "value": "\\ud800"}]}', "identities[0].value"),
        (b'{"identities": [{"type": "email\\u0000", "value": "a@b.co"}]}', "identities[0].type"),
        (b"[" * 10_000 + b"]" * 10_000, "$"),
    ],
)
def test_a_profile_upsert_with_unreadable_json_is_a_400_naming_the_path(api, body, path):
    response = api.generic("POST", PROFILES, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error"
    assert list(response.json()["errors"]) == [path]
    assert not Profile.objects.exists() and not Identity.objects.exists()


def test_criteria_and_connection_settings_with_nul_are_400(api, connection):
    body = b'{"name": "N", "criteria": {"attribute": "a\\u0000", "operator": "exists"}}'
    response = api.generic("POST", "/api/v1/audiences/", body, content_type="application/json")
    assert response.status_code == 400 and list(response.json()["errors"]) == ["criteria.attribute"]
    body = b'{"settings": {"list_id": "abc\\u0000"}}'
    response = api.generic("PATCH", f"/api/v1/connections/{connection.pk}/", body, content_type="application/json")
    assert response.status_code == 400 and list(response.json()["errors"]) == ["settings.list_id"]
    assert Connection.objects.get().settings == {"list_id": "abc123"}
    assert not Audience.objects.filter(name="N").exists()


def test_only_json_is_read(api):
    response = api.generic("POST", PROFILES, b"identities=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    response = api.generic("POST", PROFILES, b"<x/>", content_type="text/xml")
    assert response.status_code == 415


def test_a_chunked_body_of_unknown_length_is_411_not_read_as_empty(api, audience):
    response = api.generic(
        "PATCH",
        f"/api/v1/audiences/{audience.pk}/",
        b"",
        content_type="application/json",
        HTTP_TRANSFER_ENCODING="chunked",
        CONTENT_LENGTH="",
    )
    assert response.status_code == 411 and response.json()["code"] == "length_required"


@pytest.mark.parametrize(("text", "expected"), [("12", 12), ("²", None), ("-1", None), ("0", None), ("1" * 19, None)])
def test_ids_from_query_strings(text, expected):
    assert id_from_query(text) == expected


def test_the_download_and_the_admins_connect_page_refuse_non_ascii_digits(api, admin_client, audience):
    response = api.get("/api/v1/audiences/download/?audiences=²")
    assert response.status_code == 400 and "audiences" in response.json()["errors"]
    response = admin_client.get(f"/admin/audiences/audience/{audience.pk}/connect/?output=²")
    assert response.status_code == 200  # the list of outputs to choose from, as without ?output
    response = admin_client.get("/admin/connections/connection/add/?audience=²")
    assert response.status_code == 200

"""The REST API's one error shape (config/api_errors.py), whatever the error."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.fixtures.api import errors


def shape(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) >= {"code", "detail", "errors"}, body
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_validation_errors_are_flat_paths(api, audience, output):
    # DRF's nested detail ({"settings": {...}}, lists) comes out as one level of paths.
    response = api.post(
        "/api/v1/connections/", {"audience": audience.pk, "output": output.pk, "settings": "x"}, format="json"
    )
    assert errors(response) == {"settings": ['Expected a dictionary of items but got type "str".']}

    response = api.post("/api/v1/profiles/", {"identities": [{"type": "email", "value": "nope"}]}, format="json")
    assert set(errors(response)) == {"identities[0].value"}


def test_flat_errors_of_nested_detail():
    from config.api_errors import flat_errors

    detail = {"settings": {"list_id": ["Required."]}, "tags": {0: ["Not a string."]}, "items": [{}, {"a": ["Bad."]}]}

    assert flat_errors(detail) == {
        "settings.list_id": ["Required."],
        "tags[0]": ["Not a string."],
        "items[1].a": ["Bad."],
    }
    assert flat_errors(["Alone."]) == {"non_field_errors": ["Alone."]}


@pytest.mark.parametrize(
    ("method", "url", "status", "code"),
    [
        ("get", "/api/v1/audiences/999999/", 404, "not_found"),
        ("get", "/api/v1/audiences/abc/", 404, "not_found"),
        ("get", "/api/v1/no-such-thing/", 404, "not_found"),  # no route: Django's handler404
        ("delete", "/api/v1/partners/", 405, "method_not_allowed"),
        ("get", "/api/v1/connections/{connection}/pause/", 405, "method_not_allowed"),
    ],
)
def test_not_found_and_method_not_allowed(api, connection, method, url, status, code):
    shape(getattr(api, method)(url.format(connection=connection.pk)), status, code)


def test_unauthenticated_and_bad_token(anonymous):
    shape(anonymous.get("/api/v1/audiences/"), 401, "not_authenticated")
    anonymous.credentials(HTTP_AUTHORIZATION="Token nope")
    shape(anonymous.get("/api/v1/audiences/"), 401, "authentication_failed")


def test_malformed_json_not_json_and_too_large(api, settings):
    shape(api.generic("POST", "/api/v1/audiences/", b"{", content_type="application/json"), 400, "parse_error")
    shape(api.post("/api/v1/audiences/", {"name": "A"}), 415, "unsupported_media_type")  # a form, not JSON
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    body = shape(api.post("/api/v1/audiences/", {"name": "x" * 200}, format="json"), 413, "request_too_large")
    assert "100 bytes" in body["detail"]


def test_a_conflict_is_409(api, connection):
    body = shape(api.delete(f"/api/v1/outputs/{connection.output_id}/"), 409, "conflict")
    assert body["errors"] == {}


def test_a_crash_answers_the_shape_without_details(db, admin_user, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr("outputs.api.PartnerSerializer.to_representation", crash)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(admin_user)

    body = shape(client.get("/api/v1/partners/"), 500, "server_error")
    assert "secret" not in str(body)

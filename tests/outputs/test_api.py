from __future__ import annotations

import pytest

from outputs import services as output_services
from outputs.models import Output
from tests.fixtures.api import MAILCHIMP_KEY, errors

URL = "/api/v1/outputs/"
OTHER_KEY = "fedcba9876543210fedcba9876543210-us21"


def assert_no_secret(response, *secrets: str) -> None:
    content = response.content.decode()
    for secret in secrets or (MAILCHIMP_KEY, OTHER_KEY):
        assert secret not in content
        # Nor a recognisable part of one (the key without its data center).
        assert secret.split("-")[0] not in content


def test_partner_directory(api):
    response = api.get("/api/v1/partners/")

    assert response.status_code == 200
    partners = {p["key"]: p for p in response.json()}
    mailchimp = partners["mailchimp"]
    assert mailchimp["key"] == "mailchimp"
    assert mailchimp["name"] == "Mailchimp"
    assert mailchimp["pattern"] == "list"
    assert mailchimp["delivery_mode"] == "realtime"
    assert mailchimp["batch_limit"] == 500
    assert mailchimp["accepted_identity_types"] == ["email"]
    assert mailchimp["description"]
    settings = {s["name"]: s for s in mailchimp["configuration_settings"]}
    assert settings["api_key"]["kind"] == "secret"
    assert settings["api_key"]["required"] is True
    assert settings["email_type"]["choices"] == ["html", "text"]
    assert settings["double_opt_in"]["default"] is True
    assert [s["name"] for s in mailchimp["connection_settings"]] == ["list_id"]
    braze = partners["braze"]
    assert (braze["pattern"], braze["delivery_mode"]) == ("attribute", "realtime")
    assert {s["name"] for s in braze["configuration_settings"]} >= {"instance", "send_segments_as"}


def test_create_output_hides_the_secret(api):
    response = api.post(
        URL,
        {
            "name": "Mailchimp main",
            "partner": "mailchimp",
            "settings": {"api_key": MAILCHIMP_KEY, "email_type": "text"},
        },
        format="json",
    )

    assert response.status_code == 201, response.data
    body = response.json()
    output = Output.objects.get()
    assert body["id"] == output.pk
    assert body["partner"] == "mailchimp"
    assert body["settings"] == {
        "email_type": "text",
        "double_opt_in": True,
        "delete_on_subscription_end": True,
        "send_merge_fields": True,
    }
    assert body["secrets_set"] == ["api_key"]
    assert body["created_at"]
    assert output.configuration()["api_key"] == MAILCHIMP_KEY
    assert_no_secret(response)


def test_reads_never_show_the_secret(api, output):
    detail = f"{URL}{output.pk}/"
    # The browsable API too: its edit form is filled from the read representation.
    for response in (api.get(URL), api.get(detail), api.get(f"{URL}?format=api"), api.get(f"{detail}?format=api")):
        assert response.status_code == 200
        assert_no_secret(response)
    assert api.get(f"{URL}{output.pk}/").json()["secrets_set"] == ["api_key"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "M", "partner": "mailchimp", "settings": {"api_key": MAILCHIMP_KEY, "colour": "red"}}, "colour"),
        ({"name": "M", "partner": "mailchimp", "settings": {"api_key": "0123456789abcdef"}}, "api_key"),
        ({"name": "M", "partner": "mailchimp", "settings": {}}, "api_key"),
        ({"name": "M", "partner": "mailchimp"}, "api_key"),
        (
            {"name": "M", "partner": "mailchimp", "settings": {"api_key": MAILCHIMP_KEY, "email_type": "x"}},
            "email_type",
        ),
        ({"name": "M", "partner": "myspace", "settings": {"api_key": MAILCHIMP_KEY}}, "partner"),
        ({"name": "", "partner": "mailchimp", "settings": {"api_key": MAILCHIMP_KEY}}, "name"),
        ({"name": "x" * 101, "partner": "mailchimp", "settings": {"api_key": MAILCHIMP_KEY}}, "name"),
        ({"name": "M", "partner": "mailchimp", "settings": [MAILCHIMP_KEY]}, "settings"),
    ],
)
def test_invalid_create_names_the_field(api, body, field):
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    assert field in errors(response)
    assert not Output.objects.exists()
    assert_no_secret(response)


def test_a_key_without_data_center_is_explained(api):
    response = api.post(
        URL, {"name": "M", "partner": "mailchimp", "settings": {"api_key": "0123456789abcdef"}}, format="json"
    )

    assert errors(response) == {
        "api_key": ["A Mailchimp API key ends with its data center after a dash, e.g. 0123456789abcdef-us6."]
    }


def test_patch_settings_keeps_the_stored_secret(api, output):
    response = api.patch(
        f"{URL}{output.pk}/", {"name": "Renamed", "settings": {"api_key": "", "double_opt_in": False}}, format="json"
    )

    assert response.status_code == 200, response.data
    assert response.json()["name"] == "Renamed"
    assert response.json()["settings"]["double_opt_in"] is False
    assert response.json()["secrets_set"] == ["api_key"]
    output.refresh_from_db()
    assert output.configuration()["api_key"] == MAILCHIMP_KEY
    assert_no_secret(response)


def test_patch_replaces_the_secret(api, output):
    response = api.patch(f"{URL}{output.pk}/", {"settings": {"api_key": OTHER_KEY}}, format="json")

    assert response.status_code == 200, response.data
    output.refresh_from_db()
    assert output.configuration()["api_key"] == OTHER_KEY
    assert_no_secret(response)


def test_patch_name_only_leaves_settings_alone(api, output):
    response = api.patch(f"{URL}{output.pk}/", {"name": "Renamed"}, format="json")

    assert response.status_code == 200
    output.refresh_from_db()
    assert output.name == "Renamed"
    assert output.configuration()["api_key"] == MAILCHIMP_KEY


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"settings": {"api_key": "no-data-center!"}}, "api_key"),
        ({"settings": {"unknown": 1}}, "unknown"),
        ({"partner": "other"}, "partner"),
        ({"name": " "}, "name"),
    ],
)
def test_invalid_patch_names_the_field_and_changes_nothing(api, output, body, field):
    response = api.patch(f"{URL}{output.pk}/", body, format="json")

    assert response.status_code == 400
    assert field in errors(response)
    output.refresh_from_db()
    assert output.name == "Mailchimp"
    assert output.configuration()["api_key"] == MAILCHIMP_KEY
    assert_no_secret(response)


def test_duplicate_name_is_refused(api, output):
    response = api.post(
        URL, {"name": output.name, "partner": "mailchimp", "settings": {"api_key": OTHER_KEY}}, format="json"
    )

    assert response.status_code == 400
    assert "already exists" in errors(response)["name"][0]


def test_delete_is_refused_while_connected(api, connection):
    response = api.delete(f"{URL}{connection.output_id}/")

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "connections" in response.json()["detail"]
    assert Output.objects.filter(pk=connection.output_id).exists()


def test_delete_unconnected_output(api, output):
    response = api.delete(f"{URL}{output.pk}/")

    assert response.status_code == 204
    assert not Output.objects.exists()


def test_put_replaces_the_settings_and_keeps_a_secret_left_out(api, db):
    output = output_services.output_create(
        name="Mailchimp", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY, "double_opt_in": False}
    )

    response = api.put(f"{URL}{output.pk}/", {"name": "Renamed", "partner": "mailchimp"}, format="json")

    assert response.status_code == 200, response.json()
    output.refresh_from_db()
    assert output.name == "Renamed"
    assert output.settings["double_opt_in"] is True  # not sent: back to the partner's default
    assert output.configuration()["api_key"] == MAILCHIMP_KEY
    assert set(errors(api.put(f"{URL}{output.pk}/", {"name": "X"}, format="json"))) == {"partner"}

"""Updating an output changes only what the update names (issue 6, item 4).

Found under faults: PATCHing only an output's API key reset its other settings to their
defaults (`double_opt_in` false became true, and the next 20,500 adds went out as `pending`).
A partial update (the service's default, REST PATCH, the admin's edit form) keeps every setting
it does not name; a PUT replaces the settings (omitted ones take their defaults) but, secrets
being write-only, keeps a stored secret it does not give.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from outputs.models import Output
from outputs.partners.mailchimp import Mailchimp
from outputs.services import output_create, output_update
from tests.fixtures.api import errors

pytestmark = pytest.mark.django_db

KEY = "0123456789abcdef0123456789abcdef-us6"
NEW_KEY = "fedcba9876543210fedcba9876543210-us19"
URL = "/api/v1/outputs/"
# Every setting away from its default, so a reset to defaults shows on each one.
NOT_DEFAULTS = {"email_type": "text", "double_opt_in": False, "delete_on_subscription_end": False}
STORED = {**NOT_DEFAULTS, "send_merge_fields": False}
DEFAULTS = {s.name: s.default for s in Mailchimp.configuration_settings if not s.is_secret}
# One value per setting, different from both its default and what is stored.
CHANGES = [
    ("email_type", "html"),
    ("double_opt_in", True),
    ("delete_on_subscription_end", True),
    ("send_merge_fields", True),
]


@pytest.fixture
def output() -> Output:
    return output_create(name="Mailchimp", partner_key="mailchimp", settings={"api_key": KEY, **STORED})


@pytest.fixture
def api(admin_client):
    return admin_client


def stored(output: Output) -> dict[str, Any]:
    output.refresh_from_db()
    return output.configuration()


def test_every_public_setting_differs_from_its_default():
    # The premise of the tests below: a reset to defaults would change every stored setting.
    assert {name: value for name, value in DEFAULTS.items() if STORED[name] == value} == {}


# --- the service ----------------------------------------------------------------------------


def test_service_update_of_the_secret_alone_keeps_the_other_settings(output):
    output_update(output=output, settings={"api_key": NEW_KEY})

    assert stored(output) == {"api_key": NEW_KEY, **STORED}


@pytest.mark.parametrize(("name", "value"), CHANGES)
def test_service_update_of_one_setting_changes_only_it(output, name, value):
    output_update(output=output, settings={name: value})

    assert stored(output) == {"api_key": KEY, **STORED, name: value}


def test_service_replace_resets_what_is_omitted_and_keeps_the_stored_secret(output):
    output_update(output=output, settings={"email_type": "text"}, replace_settings=True)

    assert stored(output) == {"api_key": KEY, **DEFAULTS, "email_type": "text"}


def test_a_setting_stored_before_the_schema_dropped_it_does_not_block_a_partial_update(output):
    # A partner release may remove a setting; outputs configured before still hold it.
    Output.objects.filter(pk=output.pk).update(settings={**STORED, "retired_setting": "x"})
    output.refresh_from_db()

    output_update(output=output, settings={"email_type": "html"})

    assert stored(output) == {"api_key": KEY, **STORED, "email_type": "html"}


def test_an_invalid_partial_update_names_its_field_and_writes_nothing(output):
    with pytest.raises(ValidationError) as excinfo:
        output_update(output=output, settings={"double_opt_in": "maybe"})

    assert list(excinfo.value.message_dict) == ["double_opt_in"]
    assert stored(output) == {"api_key": KEY, **STORED}


# --- REST: PATCH and PUT --------------------------------------------------------------------


def test_patch_of_the_api_key_alone_keeps_the_other_settings(api, output):
    # The reproduction: the key was rotated, and double opt-in silently came back on.
    response = api.patch(f"{URL}{output.pk}/", {"settings": {"api_key": NEW_KEY}}, content_type="application/json")

    assert response.status_code == 200, response.content
    assert response.json()["settings"] == STORED
    assert stored(output) == {"api_key": NEW_KEY, **STORED}


@pytest.mark.parametrize(("name", "value"), CHANGES)
def test_patch_of_one_setting_changes_only_it(api, output, name, value):
    response = api.patch(f"{URL}{output.pk}/", {"settings": {name: value}}, content_type="application/json")

    assert response.status_code == 200, response.content
    assert response.json()["settings"] == {**STORED, name: value}
    assert stored(output) == {"api_key": KEY, **STORED, name: value}


def test_put_replaces_the_settings_with_defaults_for_what_is_omitted(api, output):
    body = {"name": "Mailchimp", "partner": "mailchimp", "settings": {"double_opt_in": False}}

    response = api.put(f"{URL}{output.pk}/", body, content_type="application/json")

    assert response.status_code == 200, response.content
    assert response.json()["settings"] == {**DEFAULTS, "double_opt_in": False}
    # Secrets are write-only (a client cannot read one back to send it again): a PUT keeps them.
    assert stored(output) == {"api_key": KEY, **DEFAULTS, "double_opt_in": False}


def test_put_without_the_required_fields_is_refused_by_name(api, output):
    response = api.put(f"{URL}{output.pk}/", {"settings": {"email_type": "html"}}, content_type="application/json")

    assert response.status_code == 400
    assert set(errors(response)) == {"name", "partner"}
    assert stored(output) == {"api_key": KEY, **STORED}


# --- the admin's edit form ------------------------------------------------------------------


def browser_post(form) -> dict[str, str]:
    """What a browser submits for an unchanged form: each field's shown value (unticked boxes
    are not sent; password fields are shown empty)."""
    data: dict[str, str] = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = str(value)
    return data


def test_admin_edit_of_the_api_key_alone_keeps_the_other_settings(admin_client, output):
    change_url = reverse("admin:outputs_output_change", args=[output.pk])
    form = admin_client.get(change_url).context["adminform"].form
    data = {**browser_post(form), "api_key": NEW_KEY}
    assert "api_key" not in browser_post(form)  # the stored key is never shown again

    response = admin_client.post(change_url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert stored(output) == {"api_key": NEW_KEY, **STORED}


@pytest.mark.parametrize(("name", "value"), CHANGES)
def test_admin_edit_of_one_setting_changes_only_it(admin_client, output, name, value):
    change_url = reverse("admin:outputs_output_change", args=[output.pk])
    data = browser_post(admin_client.get(change_url).context["adminform"].form)
    if value is True:
        data[name] = "on"
    else:
        data[name] = value

    response = admin_client.post(change_url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert stored(output) == {"api_key": KEY, **STORED, name: value}

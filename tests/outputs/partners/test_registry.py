"""outputs/partners/registry.py: partners are a directory kept in code; the database and its migrations
hold plain keys, checked against it."""

import pytest
from django.core.exceptions import ValidationError
from django.db.migrations.loader import MigrationLoader

from outputs.models import Output
from outputs.partners.base import Capability
from outputs.partners.mailchimp import Mailchimp
from outputs.partners.registry import PARTNERS, get_partner_class, partner_keys_with, register_partner
from tests.fakes.partners import AttributePartner, BulkListPartner, registered


def test_the_registry_finds_partners_by_key_and_by_capability():
    assert get_partner_class("mailchimp") is Mailchimp
    with registered(BulkListPartner, AttributePartner):
        assert partner_keys_with(Capability.BULK) == ["meta", BulkListPartner.key]
        assert set(partner_keys_with(Capability.REALTIME)) == {"mailchimp", "braze", AttributePartner.key}
    assert BulkListPartner.key not in PARTNERS
    with pytest.raises(LookupError, match="Known partners: braze, mailchimp, meta"):
        get_partner_class("myspace")


def test_a_key_is_taken_once():
    clash = type("Clash", (BulkListPartner,), {"key": "mailchimp"})
    with pytest.raises(ValueError, match="already taken by Mailchimp"):
        register_partner(clash)
    assert PARTNERS["mailchimp"] is Mailchimp


def test_no_migration_freezes_the_partners_as_choices():
    # The schema the migrations build: a new partner must not need a migration.
    state = MigrationLoader(None).project_state()
    field = state.models["outputs", "output"].fields["partner_key"]
    assert not field.choices
    assert not Output._meta.get_field("partner_key").choices


def test_output_clean_checks_the_key_against_the_registry():
    with pytest.raises(ValidationError) as excinfo:
        Output(name="M", partner_key="myspace").clean()
    assert "Unknown partner 'myspace'" in excinfo.value.message_dict["partner_key"][0]
    with registered(BulkListPartner):
        Output(name="M", partner_key=BulkListPartner.key).clean()


@pytest.mark.django_db
def test_a_partner_registered_in_code_is_usable_through_the_api_without_a_migration(api):
    with registered(BulkListPartner):
        directory = {p["key"]: p for p in api.get("/api/v1/partners/").json()}
        created = api.post("/api/v1/outputs/", {"name": "Bulk", "partner": BulkListPartner.key}, format="json")
    assert created.status_code == 201, created.json()
    bulk = directory[BulkListPartner.key]
    assert (bulk["pattern"], bulk["delivery_mode"]) == ("list", "bulk")
    assert bulk["capabilities"] == ["bulk", "list"]
    assert bulk["upload_criteria"] == {"wait_seconds": 1800, "messages": 5}
    assert directory["mailchimp"]["capabilities"] == [
        "forgets_members",
        "list",
        "lists_members",
        "realtime",
        "reports_count",
    ]
    assert directory["mailchimp"]["upload_criteria"] is None
    refused = api.post("/api/v1/outputs/", {"name": "Gone", "partner": BulkListPartner.key}, format="json")
    assert refused.status_code == 400 and "partner" in refused.json()["errors"]

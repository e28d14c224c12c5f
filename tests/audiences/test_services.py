import pytest
from django.core.exceptions import ValidationError

from audiences import profiles, services
from audiences.models import Audience, Identity, Profile
from outputs.models import Output
from outputs.services import output_create
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "x", "criteria": None}, "criteria"),
        ({"name": None, "criteria": {"and": []}}, "name"),
        ({"name": "n" * 101, "criteria": {"and": []}}, "name"),
        ({"name": "x", "external_name": "e" * 101, "criteria": {"and": []}}, "external_name"),
        ({"name": "x", "criteria": {"and": []}, "status": "live"}, "status"),
    ],
)
def test_audience_create_refuses_bad_fields_by_name(fields, field):
    with pytest.raises(ValidationError) as excinfo:
        services.audience_create(**fields)
    assert field in excinfo.value.message_dict
    assert not Audience.objects.exists()


@pytest.mark.parametrize(("change", "field"), [({"criteria": None}, "criteria"), ({"name": None}, "name")])
def test_audience_update_refuses_nulls(change, field, rings):
    audience = factories.active_audience()
    with pytest.raises(ValidationError) as excinfo:
        services.audience_update(audience=audience, **change)
    assert field in excinfo.value.message_dict


def test_profile_upsert_writes_nothing_when_one_identity_is_bad():
    with pytest.raises(ValidationError) as excinfo:
        profiles.profile_upsert(
            identities=[{"type": "email", "value": "ok@x.com"}, {"type": "email", "value": "nope"}],
            attributes={"a": 1},
        )
    assert "identities[1].value" in excinfo.value.message_dict
    assert not Profile.objects.exists() and not Identity.objects.exists()


def test_profile_upsert_refuses_oversized_attributes_by_path():
    with pytest.raises(ValidationError) as excinfo:
        profiles.profile_upsert(identities=[{"type": "customer", "value": "1"}], attributes={"bio": "x" * 4097})
    assert "attributes.bio" in excinfo.value.message_dict


def test_identities_pointing_to_two_profiles_are_a_conflict_and_nothing_is_written():
    factories.profile(email="a@x.com")
    factories.profile(email="b@x.com")
    with pytest.raises(profiles.ProfileConflict):
        profiles.profile_upsert(
            identities=[{"type": "email", "value": "a@x.com"}, {"type": "email", "value": "b@x.com"}],
            attributes={"x": 1},
        )
    assert not Profile.objects.filter(attributes__x=1).exists()


def test_output_create_reports_name_and_settings_errors_together():
    factories.mailchimp_output(name="Taken")
    with pytest.raises(ValidationError) as excinfo:
        output_create(name="Taken", partner_key="mailchimp", settings={"api_key": "no-data-center!", "colour": 1})
    assert {"name", "api_key", "colour"} <= set(excinfo.value.message_dict)
    assert Output.objects.count() == 1

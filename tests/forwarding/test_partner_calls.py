"""forwarding/partner_calls.py: the generic code groups the claimed changes from the partner's pattern and
tells the partner the connection's audience. Delivered for real (deliver_connection) to partners of the
tests' own (tests/fakes/partners.py)."""

import pytest

from audiences import profiles
from audiences import services as audience_services
from connections.models import ConnectionMember
from forwarding.delivery import deliver_connection
from forwarding.lifecycle import connection_create
from forwarding.partner_calls import held_removals
from outputs.partners.base import Action, AudienceRef, ProfileUpdate
from outputs.services import output_create
from tests import factories
from tests.fakes.partners import AttributePartner, RecordingPartner, registered

pytestmark = pytest.mark.django_db


@pytest.fixture
def audience(rings):
    with registered(AttributePartner, RecordingPartner):
        audience = factories.active_audience()
        audience = audience_services.audience_update(audience=audience, external_name="Parisians to be")
        yield audience


def connect(audience, partner):
    output = output_create(name=partner.name, partner_key=partner.key, settings={})
    return connection_create(audience=audience, output=output, settings={})


def traveller(customer_id, email):
    return profiles.profile_upsert(
        identities=[{"type": "customer", "value": customer_id}, {"type": "email", "value": email}],
        attributes={"status": "Premium", "favourite_city": "Paris"},
    ).profile


def test_an_attribute_partner_gets_one_update_per_user_with_all_its_identities(audience):
    connection = connect(audience, AttributePartner)
    ann, bob = traveller("c-ann", "ann@x.com"), traveller("c-bob", "bob@x.com")

    report = deliver_connection(connection_id=connection.pk)

    [(method, told, updates)] = AttributePartner.calls
    assert method == "apply_profile_updates"
    assert told == AudienceRef(id=audience.pk, name="Potential Parisians", external_name="Parisians to be")
    assert all(isinstance(u, ProfileUpdate) for u in updates)
    by_user = {u.profile_id: sorted((c.identity_type, c.value) for c in u.changes) for u in updates}
    assert by_user == {
        ann.pk: [("customer", "c-ann"), ("email", "ann@x.com")],
        bob.pk: [("customer", "c-bob"), ("email", "bob@x.com")],
    }
    assert {u.action for u in updates} == {Action.ADD}
    # Each identity's outcome is still recorded on its own.
    assert report.delivered == 4
    assert ConnectionMember.objects.filter(connection=connection, state="added").count() == 4


def test_a_list_partner_gets_one_change_per_identity_and_the_audience(audience):
    connection = connect(audience, RecordingPartner)
    traveller("c-ann", "ann@x.com")  # the customer id is not an identity this partner accepts
    factories.parisian("bob@x.com")

    deliver_connection(connection_id=connection.pk)

    [(method, told, changes)] = RecordingPartner.calls
    assert method == "apply_batch"
    assert told.external_name == "Parisians to be" and told.id == audience.pk
    assert sorted(c.value for c in changes) == ["ann@x.com", "bob@x.com"]
    assert all(c.profile_id is not None for c in changes)


def test_a_connections_end_tells_an_attribute_partner_each_held_identitys_profile(audience):
    ann = traveller("c-ann", "ann@x.com")
    held = [("customer", "c-ann"), ("email", "ann@x.com"), ("email", "gone@x.com")]

    removals = held_removals(AttributePartner, held)

    assert [(c.identity_type, c.value, c.action, c.profile_id) for c in removals] == [
        ("customer", "c-ann", Action.REMOVE, ann.pk),
        ("email", "ann@x.com", Action.REMOVE, ann.pk),
        ("email", "gone@x.com", Action.REMOVE, None),  # no identity any more: it stands alone
    ]
    # A list partner removes identities: no profile is looked up.
    assert {c.profile_id for c in held_removals(RecordingPartner, held)} == {None}

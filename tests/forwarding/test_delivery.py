"""Delivery's per-member decisions (forwarding/delivery.py) against the local Mailchimp behind the
fault-injecting front (local_partners/faulty.py), on the real database: what happens to a member
when the partner's answer never comes, refuses an update, or asks for a retry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from audiences import profiles
from connections.models import ConnectionMember
from forwarding.delivery import deliver_connection
from forwarding.models import PendingChange
from local_partners.faulty import FaultyMailchimp
from local_partners.mailchimp import LocalMailchimpServer
from tests import factories

pytestmark = pytest.mark.django_db
LIST_ID = "list1"


@pytest.fixture
def partner(settings, rings) -> Iterator[FaultyMailchimp]:
    upstream = LocalMailchimpServer(api_keys=[factories.MAILCHIMP_KEY])
    upstream.create_list(LIST_ID, "Potential Parisians")
    front = FaultyMailchimp(upstream, seed=1).start()
    settings.PARTNER_API_BASE_URLS = {"mailchimp": front.base_url}
    yield front
    front.stop()
    upstream.stop()


@pytest.fixture
def connection(partner):
    return factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)


def leave(email: str) -> None:
    profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes={"status": "Free"})


def status_at_partner(partner: FaultyMailchimp, email: str) -> str | None:
    return partner.statuses(LIST_ID).get(email)


def due_now() -> None:
    PendingChange.objects.update(next_attempt_at="2000-01-01T00:00:00Z")


@pytest.mark.parametrize("fault", ["read timeout", "connection dropped after apply"])
def test_a_member_added_with_an_unknown_outcome_is_removed_when_it_leaves(partner, connection, settings, fault):
    """Issue 6 defect 1: the partner applied the add but its answer never reached us; the user
    then leaves. The removal must be sent, or the user stays subscribed for good."""
    factories.parisian("unsure@x.com")
    if fault == "read timeout":
        settings.FORWARDING = {**settings.FORWARDING, "HTTP_TIMEOUT": (2.0, 0.3)}
        partner.slow(1.0)
    else:
        partner.drop_after_apply(1)

    report = deliver_connection(connection_id=connection.pk)

    assert report.errors and report.delivered == 0  # we never learnt the outcome
    assert status_at_partner(partner, "unsure@x.com") == "subscribed"  # but the partner applied it
    assert ConnectionMember.objects.get(value="unsure@x.com").state == ConnectionMember.State.MAYBE_HELD

    leave("unsure@x.com")  # coalesced: the pending add becomes a remove
    partner.heal()
    due_now()
    report = deliver_connection(connection_id=connection.pk)

    assert report.skipped == 0 and report.delivered == 1
    assert status_at_partner(partner, "unsure@x.com") == "unsubscribed"
    assert ConnectionMember.objects.get(value="unsure@x.com").state == ConnectionMember.State.REMOVED
    assert not PendingChange.objects.exists()

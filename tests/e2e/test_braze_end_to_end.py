"""Braze end to end: a real worker on real Redis and PostgreSQL delivers two audiences to one Braze account (the
local Braze server), both ids in each user's array; deleting one connection removes only its id."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from audiences import profiles
from connections.models import Connection
from forwarding.lifecycle import connection_create, connection_delete
from local_partners.braze import LocalBrazeServer
from outputs.services import output_create
from tests import factories
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
KEY = "braze-rest-key"
PREMIUM = {"attribute": "status", "operator": "equals", "value": "Premium"}


@pytest.fixture(scope="module")
def braze_server() -> Iterator[LocalBrazeServer]:
    with LocalBrazeServer(api_keys=[KEY]) as server:
        yield server


@pytest.fixture
def worker_env(braze_server, mailchimp_server, settings) -> dict[str, str]:
    """The worker (and this process) send Braze's calls to the local server."""
    base_urls = {"mailchimp": mailchimp_server.base_url, "braze": braze_server.base_url}
    settings.PARTNER_API_BASE_URLS = base_urls
    braze_server.reset()
    return {"PARTNER_API_BASE_URLS": json.dumps(base_urls)}


def parisian(customer_id: str, email: str, city: str = "Paris"):
    identities = [{"type": "customer", "value": customer_id}, {"type": "email", "value": email}]
    return profiles.profile_upsert(
        identities=identities, attributes={"status": "Premium", "favourite_city": city}
    ).profile


def segments(server: LocalBrazeServer) -> dict[str, list[str]]:
    return {u["external_id"]: sorted(u.get("SegmentMembership", [])) for u in server.users() if "external_id" in u}


def test_two_connections_on_one_braze_account_keep_each_others_ids_and_deleting_one_removes_only_its_own(
    worker, braze_server
):
    parisian("c1", "One@Example.com")
    parisian("c2", "two@example.com")
    parisian("c3", "three@example.com", city="Lyon")
    parisians = factories.active_audience()
    premium = factories.active_audience("Premium", criteria={"and": [PREMIUM]})
    output = output_create(
        name="Braze", partner_key="braze", settings={"api_key": KEY, "instance": "US-03", "send_segments_as": "both"}
    )
    first = connection_create(audience=parisians, output=output, settings={})
    second = connection_create(audience=premium, output=output, settings={})
    p, q = str(parisians.pk), str(premium.pk)

    expected = {"c1": sorted([p, q]), "c2": sorted([p, q]), "c3": [q]}
    wait_until(lambda: segments(braze_server) == expected)
    one = braze_server.user(external_id="c1")
    assert one["email"] == "one@example.com"  # one object per user: the email rode with the external id
    assert one[f"In {parisians.partner_name}"] is True and one[f"In {premium.partner_name}"] is True
    assert len(braze_server.users()) == 3  # no email-only duplicates
    assert all(len(r["attributes"]) <= 75 for r in braze_server.requests)

    connection_delete(connection=first)
    wait_until(lambda: not Connection.objects.filter(pk=first.pk).exists())
    assert segments(braze_server) == {"c1": [q], "c2": [q], "c3": [q]}
    one = braze_server.user(external_id="c1")
    assert f"In {parisians.partner_name}" not in one and one[f"In {premium.partner_name}"] is True
    assert len(braze_server.users()) == 3
    assert Connection.objects.filter(pk=second.pk).exists()

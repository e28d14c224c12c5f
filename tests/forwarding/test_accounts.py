"""A partner account shared by outputs (forwarding/accounts.py, forwarding/recovery.py): a 429's
Retry-After holds back every connection of the account, and deliveries at once are capped (real Redis)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import responses
from django.utils import timezone

from connections.models import Connection
from forwarding.accounts import AccountSlot, outputs_of_account
from forwarding.delivery import ACCOUNT_FULL, deliver_connection
from forwarding.doorbell import DELIVER_TASK
from tests import factories

pytestmark = pytest.mark.django_db
KEY = "0123456789abcdef0123456789abcdef-us6"
OTHER_KEY = "fedcba9876543210fedcba9876543210-us6"
LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/list1"


@pytest.fixture
def connections(rings):
    audience = factories.active_audience()
    other_audience = factories.active_audience("Other")
    first = factories.connect(audience, factories.mailchimp_output("First", api_key=KEY))
    same = factories.connect(audience, factories.mailchimp_output("Same account", api_key=KEY))
    also_same = factories.connect(other_audience, same.output)
    other = factories.connect(audience, factories.mailchimp_output("Other account", api_key=OTHER_KEY))
    return first, same, also_same, other


def test_outputs_with_the_same_credentials_are_one_account(connections):
    first, same, _, other = connections
    assert sorted(outputs_of_account(first.output)) == sorted([first.output.pk, same.output.pk])
    assert outputs_of_account(other.output) == [other.output.pk]


@responses.activate
def test_a_429_holds_back_every_connection_of_the_account_and_no_other(connections):
    first, same, also_same, other = connections
    factories.parisian("a@x.com")
    responses.post(LIST_URL, status=429, headers={"Retry-After": "60"}, json={"title": "Too Many Requests"})
    before = timezone.now()
    deliver_connection(connection_id=first.pk)
    for connection in (first, same, also_same):
        connection.refresh_from_db()
        assert connection.throttled_until >= before + timedelta(seconds=60), connection
    other.refresh_from_db()
    assert other.throttled_until is None
    # The account's other connections send nothing before then.
    calls = len(responses.calls)
    assert deliver_connection(connection_id=same.pk).batches == 0
    assert len(responses.calls) == calls


def test_the_account_caps_deliveries_at_once(connections, settings):
    settings.FORWARDING = {**settings.FORWARDING, "ACCOUNT_MAX_CONNECTIONS": 2}
    first, _, _, other = connections
    one, two, three = (AccountSlot(first.output, f"holder-{n}") for n in range(3))
    assert one.take() and two.take()
    assert not three.take()
    assert AccountSlot(other.output, "elsewhere").take()  # another account has its own slots
    assert one.take()  # renewing a slot one holds
    one.release()
    assert three.take()


def test_a_slot_of_a_killed_worker_expires_with_its_lease(connections, settings):
    settings.FORWARDING = {**settings.FORWARDING, "ACCOUNT_MAX_CONNECTIONS": 1, "LEASE_SECONDS": -1}
    first, *_ = connections
    assert AccountSlot(first.output, "killed").take()  # already expired when taken
    settings.FORWARDING = {**settings.FORWARDING, "LEASE_SECONDS": 15}
    assert AccountSlot(first.output, "next").take()


@responses.activate
def test_a_delivery_finding_the_account_full_leaves_and_rings_again(connections, settings, rings):
    settings.FORWARDING = {**settings.FORWARDING, "ACCOUNT_MAX_CONNECTIONS": 1}
    first, same, *_ = connections
    factories.parisian("a@x.com")
    busy = AccountSlot(same.output, "another delivery")
    assert busy.take()
    rings.clear()
    report = deliver_connection(connection_id=first.pk)
    assert report.stopped == ACCOUNT_FULL and report.batches == 0
    assert rings == [(DELIVER_TASK, (first.pk,), 1)]
    assert Connection.objects.get(pk=first.pk).delivery_lease_until is None
    busy.release()
    responses.post(LIST_URL, json={"errors": [], "error_count": 0})
    assert deliver_connection(connection_id=first.pk).delivered == 1

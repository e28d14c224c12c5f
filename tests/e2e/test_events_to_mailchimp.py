"""The issue's "done when", end to end: events sent by the official mparticle SDK build the tutorial's
audience, its members reach the connected (local) Mailchimp list through a real worker, and they leave
the list when their qualifying events age past 30 days."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audiences import services as audience_services
from audiences.inputs import input_create
from audiences.membership.recompute import recompute_time_based_audiences
from forwarding.management.commands.demo import CRITERIA as POTENTIAL_PARISIANS
from tests import factories
from tests.audiences.events_api.test_sdk import sdk, sdk_batch  # noqa: F401  (the fixture is used by name)
from tests.e2e.conftest import API_KEY, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIST_ID = "parisians-from-events"


def statuses(server) -> dict[str, str]:
    return {m["email_address"]: m["status"] for m in server.members(LIST_ID).values()}


def test_sdk_events_fill_the_list_and_aged_events_empty_it(worker, mailchimp_server, sdk):  # noqa: F811
    mailchimp_server.create_list(LIST_ID, "Potential Parisians")
    audience = audience_services.audience_create(name="Potential Parisians", criteria=POTENTIAL_PARISIANS)
    audience = audience_services.audience_update(audience=audience, status="active")
    assert audience.depends_on_time
    output = factories.mailchimp_output(api_key=API_KEY, double_opt_in=True)
    factories.connect(audience, output, list_id=LIST_ID)
    source, secret = input_create(name="Travel app")
    client = sdk(source.key, secret)

    client.upload_events(sdk_batch("c-1", "Amelie@Example.com"))
    client.upload_events(sdk_batch("c-2", "jean@example.com", gaid="48400000-8cf0-11bd-b23e-10b96e40000d"))
    free = sdk_batch("c-3", "free@example.com", gaid="58400000-8cf0-11bd-b23e-10b96e40000d")
    free.user_attributes = {"Status": "Free"}
    client.upload_events(free)

    wait_until(lambda: statuses(mailchimp_server) == {"amelie@example.com": "pending", "jean@example.com": "pending"})

    # Thirty-one days later, beat's periodic recompute finds the qualifying events too old.
    result = recompute_time_based_audiences(now=timezone.now() + timedelta(days=31))
    assert result["left"] == 2
    wait_until(lambda: set(statuses(mailchimp_server).values()) == {"unsubscribed"})

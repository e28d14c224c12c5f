"""The connection life cycle with a real worker on real Redis and PostgreSQL and the local Mailchimp server:
drift made by hand at the partner is repaired by a reconcile asked through the API (202, then its job's
progress), and moving a connection to another list fills the new one and empties the old one."""

from __future__ import annotations

import pytest
import requests

from connections.models import Connection
from local_partners.mailchimp import subscriber_hash
from tests import factories
from tests.e2e.conftest import API_KEY, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
OLD, NEW = "lifecycle-old", "lifecycle-new"


def statuses(server, list_id: str) -> dict[str, str]:
    return {m["email_address"]: m["status"] for m in server.members(list_id).values()}


@pytest.fixture
def delivered(worker, mailchimp_server) -> Connection:
    mailchimp_server.create_list(OLD, "Old")
    mailchimp_server.create_list(NEW, "New")
    audience = factories.active_audience()
    for name in ("ann", "bob", "cy"):
        factories.parisian(f"{name}@example.com")
    connection = factories.connect(audience, factories.mailchimp_output(api_key=API_KEY), list_id=OLD)
    wait_until(
        lambda: (
            set(statuses(mailchimp_server, OLD).values()) == {"subscribed"}
            and len(statuses(mailchimp_server, OLD)) == 3
        )
    )
    wait_until(lambda: not connection.pending_changes.exists())
    return connection


def test_reconcile_repairs_drift_made_by_hand_at_mailchimp(delivered, mailchimp_server, api):
    # Someone edits the list in Mailchimp: archives ann, unsubscribes bob, another tool subscribes a stranger.
    session = requests.Session()
    session.auth = ("x", API_KEY)
    base = f"{mailchimp_server.base_url}/lists/{OLD}"
    assert session.delete(f"{base}/members/{subscriber_hash('ann@example.com')}", timeout=5).status_code == 204
    members = [
        {"email_address": "bob@example.com", "status": "unsubscribed"},
        {"email_address": "stranger@example.com", "status": "subscribed"},
    ]
    assert session.post(base, json={"members": members, "update_existing": True}, timeout=5).ok

    response = api.post(f"/api/v1/connections/{delivered.pk}/reconcile/")
    assert response.status_code == 202
    job = wait_until(lambda: (j := api.get(response["Location"]).json())["status"] == "done" and j)

    # The stranger was never added by this connection: reported, not removed (the list may be shared).
    assert job["result"]["adds_planned"] == 2 and job["result"]["removes_planned"] == 0
    assert job["result"]["not_ours"] == 1 and (job["done"], job["total"]) == (3, 3)
    wait_until(
        lambda: (
            statuses(mailchimp_server, OLD)
            == {
                "ann@example.com": "subscribed",
                "bob@example.com": "subscribed",
                "cy@example.com": "subscribed",
                "stranger@example.com": "subscribed",
            }
        )
    )


def test_moving_to_another_list_fills_it_and_empties_the_old_one(delivered, mailchimp_server, api):
    response = api.patch(f"/api/v1/connections/{delivered.pk}/", {"settings": {"list_id": NEW}}, format="json")
    assert response.status_code == 200, response.json()
    job_url = f"/api/v1/connections/{delivered.pk}/jobs/{response.json()['settings_edit']['cleanup_job']}/"

    wait_until(lambda: set(statuses(mailchimp_server, NEW)) == {"ann@example.com", "bob@example.com", "cy@example.com"})
    wait_until(lambda: statuses(mailchimp_server, OLD) == {})  # archived: Delete on Subscription End
    assert wait_until(lambda: (j := api.get(job_url).json())["status"] == "done" and j)["done"] == 3

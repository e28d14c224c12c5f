"""Data-subject erasure end to end (issue 9 item 6): a real worker on PostgreSQL and Redis, the local
Mailchimp holding the member. After POST /api/v1/erasures/, Mailchimp holds no record of the address at all
(not even unsubscribed or archived: it was deleted for good), and no row of any table of the database quotes it
(every text, character and JSON column scanned)."""

from __future__ import annotations

import pytest
from django.db import connection as db
from rest_framework.test import APIClient

from audiences.models import ProfileErasure
from config import queueing
from forwarding.erasure import FINISH_TASK
from outputs.partners.mailchimp import subscriber_hash
from tests import factories
from tests.e2e.conftest import API_KEY, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIST_ID = "parisians"
EMAIL = "Forget.Me@Example.com"


def tables_quoting(text: str) -> list[str]:
    """Every table.column of the database (ours, Django's, beat's) whose value contains `text`."""
    with db.cursor() as cursor:
        cursor.execute(
            """
            SELECT table_name, column_name FROM information_schema.columns
            WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'character', 'jsonb', 'json')
            """
        )
        columns = cursor.fetchall()
        found = []
        for table, column in columns:
            cursor.execute(
                f"SELECT 1 FROM {db.ops.quote_name(table)} WHERE {db.ops.quote_name(column)}::text ILIKE %s LIMIT 1",
                [f"%{text}%"],
            )
            if cursor.fetchone():
                found.append(f"{table}.{column}")
    return found


def test_an_erased_profile_leaves_the_partner_and_the_database(worker, mailchimp_server, django_user_model):
    mailchimp_server.create_list(LIST_ID, "Potential Parisians")
    audience = factories.active_audience()
    output = factories.mailchimp_output(api_key=API_KEY)
    factories.parisian(EMAIL, city_of_birth="Lyon")
    factories.parisian("stays@example.com")
    factories.connect(audience, output, list_id=LIST_ID)

    def statuses() -> dict[str, str]:
        return {m["email_address"]: m["status"] for m in mailchimp_server.members(LIST_ID).values()}

    wait_until(lambda: statuses() == {"forget.me@example.com": "subscribed", "stays@example.com": "subscribed"})
    assert tables_quoting("forget.me@example.com")  # the scan sees it while it is there

    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    api = APIClient()
    api.force_authenticate(admin)
    response = api.post("/api/v1/erasures/", {"identity_type": "email", "identity_value": EMAIL}, format="json")
    assert response.status_code == 202, response.content
    erasure_id = response.json()["id"]

    # The worker sends the remove: Mailchimp's remove is an unsubscribe, so the list no longer holds it as a member.
    wait_until(lambda: statuses()["forget.me@example.com"] == "unsubscribed", timeout=15)
    assert statuses()["stays@example.com"] == "subscribed"
    # Beat's finisher, rung here by name (no beat in this test), deletes the member at Mailchimp for good and
    # forgets the delivered remove.
    queueing.send_safely(FINISH_TASK)
    wait_until(lambda: ProfileErasure.objects.get(pk=erasure_id).status == "done", timeout=15)

    every_record = mailchimp_server.members(LIST_ID, include_archived=True)
    assert subscriber_hash(EMAIL) not in every_record
    assert [m["email_address"] for m in every_record.values()] == ["stays@example.com"]

    assert tables_quoting("forget.me@example.com") == []
    assert tables_quoting("lyon") == []  # its attributes
    erasure = api.get(f"/api/v1/erasures/{erasure_id}/").json()
    assert (erasure["partner_removes"], erasure["partner_refused"], erasure["identities"]) == (1, 0, 1)

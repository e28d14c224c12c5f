"""The connection life cycle through the REST API: settings preview and edit, resync, reconcile (202 and its
job's progress), with bad input answered 400 naming the field, never 500. Real PostgreSQL, the local Mailchimp
server; the reconcile job is run here as the worker would (tests/e2e runs it in a real worker)."""

from __future__ import annotations

import pytest

from connections.models import ConnectionMember
from forwarding import sync
from forwarding.delivery import deliver_connection
from forwarding.models import ConnectionJob, PendingChange
from tests import factories
from tests.fixtures.api import errors

URL = "/api/v1/connections/"


@pytest.fixture
def delivered(server, db):
    audience = factories.active_audience()
    factories.parisian("ann@x.com")
    factories.parisian("bob@x.com")
    connection = factories.connect(audience, factories.mailchimp_output(), list_id="old")
    deliver_connection(connection_id=connection.pk)
    return connection


def test_settings_preview_says_what_an_edit_does_and_saves_nothing(api, delivered):
    response = api.post(f"{URL}{delivered.pk}/settings-preview/", {"settings": {"list_id": "new"}}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert {k: body[k] for k in ("changed", "target_changed", "backfill", "cleanup")} == {
        "changed": ["list_id"],
        "target_changed": True,
        "backfill": 2,
        "cleanup": 2,
    }
    assert "Delete on Subscription End" in body["description"]
    delivered.refresh_from_db()
    assert delivered.settings == {"list_id": "old"}


def test_patching_the_list_moves_the_connection_and_says_what_it_did(api, delivered, server):
    response = api.patch(f"{URL}{delivered.pk}/", {"settings": {"list_id": "new"}}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["settings"] == {"list_id": "new"}
    assert body["settings_edit"]["backfill"] == 2 and body["settings_edit"]["cleanup_job"]
    job = api.get(f"{URL}{delivered.pk}/jobs/{body['settings_edit']['cleanup_job']}/").json()
    assert (job["kind"], job["status"], job["total"]) == ("old_target_cleanup", "queued", 2)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("settings-preview/", {}, "settings"),
        ("settings-preview/", {"settings": ["list_id"]}, "settings"),
        ("settings-preview/", {"settings": {"list_id": "../x"}}, "list_id"),
        ("settings-preview/", {"settings": {"colour": "blue"}}, "colour"),
        ("resync/", {"include_rejected": "sometimes"}, "include_rejected"),
        ("resync/", {"everything": True}, "everything"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api, delivered, path, body, field):
    response = api.post(f"{URL}{delivered.pk}/{path}", body, format="json")
    assert list(errors(response)) == [field]


def test_resync_answers_what_it_planned(api, delivered):
    ConnectionMember.objects.filter(value="ann@x.com").delete()

    response = api.post(f"{URL}{delivered.pk}/resync/", {}, format="json")

    assert response.status_code == 200
    assert response.json() == {"adds_planned": 1, "removes_planned": 0}
    assert list(PendingChange.objects.values_list("value", "action")) == [("ann@x.com", "add")]


def test_reconcile_is_accepted_and_its_progress_and_result_can_be_read(api, delivered, server):
    response = api.post(f"{URL}{delivered.pk}/reconcile/")

    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued" and job["kind"] == "reconcile"
    assert response["Location"].endswith(f"{URL}{delivered.pk}/jobs/{job['id']}/")
    assert api.post(f"{URL}{delivered.pk}/reconcile/").json()["id"] == job["id"]  # one at a time

    sync.reconcile_run(job_id=job["id"])  # what the worker does
    done = api.get(response["Location"]).json()
    assert done["status"] == "done" and done["done"] == 2
    assert done["result"]["adds_planned"] == done["result"]["removes_planned"] == 0
    assert [j["id"] for j in api.get(f"{URL}{delivered.pk}/jobs/").json()["results"]] == [job["id"]]


def test_a_job_of_another_connection_is_a_404(api, delivered):
    other = ConnectionJob.objects.create(connection=delivered, kind="reconcile")
    assert api.get(f"{URL}{delivered.pk + 1000}/jobs/{other.pk}/").status_code == 404
    assert api.get(f"{URL}{delivered.pk}/jobs/{other.pk + 1000}/").status_code == 404


def test_a_partner_that_cannot_list_its_members_does_not_reconcile(api, db, rings):
    from forwarding.lifecycle import connection_create
    from outputs.services import output_create

    output = output_create(name="Braze", partner_key="braze", settings={"api_key": "k", "instance": "US-01"})
    connection = connection_create(audience=factories.active_audience(), output=output, settings={})

    assert list(errors(api.post(f"{URL}{connection.pk}/reconcile/"))) == ["connection"]
    assert not ConnectionJob.objects.exists()

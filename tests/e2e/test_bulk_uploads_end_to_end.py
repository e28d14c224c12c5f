"""Bulk uploads with a real worker (no beat) on real Redis and PostgreSQL, to the local Mailchimp server
played on the bulk rhythm (tests/fakes/partners.py's BulkMailchimp: 30 minutes or 5 messages, 2 members a
request): the count trigger uploads as soon as the fifth change commits, "upload now" sends what waits, and a
worker killed -9 in the middle of an upload loses nothing: the next upload sends only what it had not recorded."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from audiences import profiles
from connections.models import Connection, ConnectionMember
from forwarding import bulk
from forwarding.lifecycle import connection_create
from forwarding.models import PendingChange, Upload
from outputs.services import output_create
from tests import factories
from tests.e2e.conftest import API_KEY, wait_until
from tests.fakes.partners import BulkMailchimp, registered

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIST_ID = "bulk-parisians"


@pytest.fixture
def worker_app() -> str:
    return "tests.fakes.bulk_worker"


@pytest.fixture
def worker_env(mailchimp_server) -> dict[str, str]:
    # A short lease, so a killed worker's upload is taken over within seconds.
    urls = {"mailchimp": mailchimp_server.base_url, BulkMailchimp.key: mailchimp_server.base_url}
    return {"PARTNER_API_BASE_URLS": json.dumps(urls), "FORWARDING_LEASE_SECONDS": "2"}


@pytest.fixture
def connection(worker, mailchimp_server, settings):
    settings.PARTNER_API_BASE_URLS = {BulkMailchimp.key: mailchimp_server.base_url}
    mailchimp_server.create_list(LIST_ID, "Potential Parisians")
    with registered(BulkMailchimp):
        output = output_create(
            name="Bulk Mailchimp",
            partner_key=BulkMailchimp.key,
            settings={"api_key": API_KEY, "email_type": "html", "double_opt_in": False},
        )
        yield connection_create(audience=factories.active_audience(), output=output, settings={"list_id": LIST_ID})


def held(server) -> set[str]:
    return {m["email_address"] for m in server.members(LIST_ID).values() if m["status"] == "subscribed"}


def batch_emails(server) -> list[list[str]]:
    return [
        [member["email_address"] for member in request.body["members"]]
        for request in server.requests
        if request.method == "POST" and request.path.startswith(f"/3.0/lists/{LIST_ID}")
    ]


def test_the_fifth_change_is_uploaded_without_beat_and_upload_now_sends_the_rest(
    connection, mailchimp_server, django_user_model
):
    for i in range(4):
        factories.parisian(f"u{i}@example.com")
    assert PendingChange.objects.filter(connection=connection).count() == 4
    assert batch_emails(mailchimp_server) == []

    factories.parisian("u4@example.com")  # the fifth: its commit queues the upload

    wait_until(lambda: held(mailchimp_server) == {f"u{i}@example.com" for i in range(5)})
    upload = wait_until(lambda: Upload.objects.filter(finished_at__isnull=False).first())
    assert (upload.trigger, upload.outcome, upload.batches, upload.delivered) == ("count", "ok", 3, 5)
    assert sorted(len(b) for b in batch_emails(mailchimp_server)) == [1, 2, 2]

    # One change waits, far from the criteria: a person uploads it now.
    profiles.profile_upsert(identities=[{"type": "email", "value": "u0@example.com"}], attributes={"status": "Free"})
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("admin", "admin@example.com", "pw"))
    response = client.post(f"/api/v1/connections/{connection.pk}/upload-now/")
    assert response.status_code == 202, response.json()

    wait_until(lambda: "u0@example.com" not in held(mailchimp_server))
    wait_until(lambda: Upload.objects.filter(trigger="manual", outcome="ok").exists())
    assert not PendingChange.objects.filter(connection=connection).exists()


def test_a_worker_killed_mid_upload_loses_nothing_and_the_next_upload_resends_only_what_it_had_not_recorded(
    connection, mailchimp_server, worker
):
    second_batch_in = threading.Event()
    release = threading.Event()
    serve = mailchimp_server.dispatch

    def hold_the_second_batch(method, target, headers, raw_body):
        answer = serve(method, target, headers, raw_body)  # applied at the partner ...
        if method == "POST" and len(batch_emails(mailchimp_server)) == 2:
            second_batch_in.set()
            release.wait(30)  # ... and its answer held until the worker is dead
        return answer

    mailchimp_server.dispatch = hold_the_second_batch
    try:
        for i in range(5):
            factories.parisian(f"u{i}@example.com")  # the fifth queues the upload: [u0 u1] [u2 u3] [u4]
        assert second_batch_in.wait(30), "the worker never sent its second batch"
        os.kill(worker["process"].pid, signal.SIGKILL)
        worker["process"].wait(10)
    finally:
        release.set()
        mailchimp_server.dispatch = serve

    # Nothing lost: the first batch recorded, the second written ahead as maybe held, the third waiting. The
    # third may have been claimed ahead (written ahead too) while the second was on the wire: a dead worker
    # undoes nothing, and "maybe held" only means its removal would be sent rather than skipped.
    states = dict(ConnectionMember.objects.filter(connection=connection).values_list("value", "state"))
    assert states.pop("u4@example.com", "maybe_held") == "maybe_held"
    assert states == {
        "u0@example.com": "added",
        "u1@example.com": "added",
        "u2@example.com": "maybe_held",
        "u3@example.com": "maybe_held",
    }
    waiting = set(PendingChange.objects.filter(connection=connection).values_list("value", flat=True))
    assert waiting == {"u2@example.com", "u3@example.com", "u4@example.com"}
    killed = Upload.objects.get()
    assert killed.finished_at is None

    # Another worker (this process) uploads once the dead one's lease has expired.
    wait_until(
        lambda: Connection.objects.filter(pk=connection.pk, delivery_lease_until__lt=timezone.now()).exists(),
        timeout=10,
    )
    mailchimp_server.clear_requests()
    with registered(BulkMailchimp):
        report = bulk.upload_connection(connection_id=connection.pk, trigger="time")

    assert sorted(e for b in batch_emails(mailchimp_server) for e in b) == [
        "u2@example.com",
        "u3@example.com",
        "u4@example.com",
    ]
    assert report.delivered == 3
    assert held(mailchimp_server) == {f"u{i}@example.com" for i in range(5)}
    assert not PendingChange.objects.filter(connection=connection).exists()
    killed.refresh_from_db()
    assert (killed.outcome, killed.delivered) == ("interrupted", 2)

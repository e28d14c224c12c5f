"""Meta end to end: a real worker on real Redis and PostgreSQL uploads a bulk connection's outbox to the local Meta
server once it is due (beat's check, run here by hand), as hashed rows; a member leaving between two uploads is
removed at the next one; deleting the connection deletes the Custom Audience."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from audiences import profiles
from connections.models import Connection
from forwarding import bulk
from forwarding.lifecycle import connection_create, connection_delete
from forwarding.models import PendingChange
from local_partners.meta import LocalMetaServer
from outputs.partners.meta import EMAIL_SHA256, sha256
from outputs.services import output_create
from tests import factories
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
TOKEN = "meta-token"


@pytest.fixture(scope="module")
def meta_server() -> Iterator[LocalMetaServer]:
    with LocalMetaServer(access_tokens=[TOKEN]) as server:
        yield server


@pytest.fixture
def worker_env(meta_server, mailchimp_server, settings) -> dict[str, str]:
    """The worker (and this process) send Meta's calls to the local server."""
    base_urls = {"mailchimp": mailchimp_server.base_url, "meta": meta_server.base_url}
    settings.PARTNER_API_BASE_URLS = base_urls
    meta_server.reset()
    return {"PARTNER_API_BASE_URLS": json.dumps(base_urls)}


def emails(server: LocalMetaServer, audience_id: str) -> set[str]:
    return server.members(audience_id, EMAIL_SHA256)


def test_a_bulk_upload_reaches_meta_when_due_and_the_end_deletes_the_audience(worker, meta_server, settings):
    settings.PARTNER_API_BASE_URLS = json.loads(worker["env"]["PARTNER_API_BASE_URLS"])  # connecting calls Meta here
    for n in range(1, 4):
        factories.parisian(f"Traveller{n}@Example.com")
    audience = factories.active_audience()
    output = output_create(name="Meta", partner_key="meta", settings={"access_token": TOKEN, "ad_account_id": "7"})
    connection = connection_create(audience=audience, output=output, settings={})
    audience_id = connection.settings["audience_id"]
    assert audience_id in meta_server.audiences()

    # Bulk: nothing goes before the upload criteria are met (3 hours or 750,000 messages).
    assert bulk.flush_due_uploads()["uploading"] == 0
    assert meta_server.uploads == []
    later = timezone.now() + timedelta(hours=3, minutes=1)
    assert bulk.flush_due_uploads(now=later)["uploading"] == 1
    expected = {sha256(f"traveller{n}@example.com") for n in range(1, 4)}
    wait_until(lambda: emails(meta_server, audience_id) == expected)
    wait_until(lambda: not PendingChange.objects.filter(connection=connection).exists())

    # One leaves: removed at the next upload, as a DELETE of its hashed row.
    profiles.profile_upsert(
        identities=[{"type": "email", "value": "traveller2@example.com"}], attributes={"status": "Free"}
    )
    wait_until(lambda: PendingChange.objects.filter(connection=connection).exists())
    assert bulk.flush_due_uploads(now=timezone.now() + timedelta(hours=4))["uploading"] == 1
    wait_until(lambda: emails(meta_server, audience_id) == expected - {sha256("traveller2@example.com")})
    assert [u["method"] for u in meta_server.uploads][-1] == "DELETE"
    assert meta_server.sessions() and meta_server.open_sessions() == []  # every session the worker opened ended

    connection_delete(connection=connection)
    wait_until(lambda: not Connection.objects.filter(pk=connection.pk).exists())
    assert audience_id not in meta_server.audiences()

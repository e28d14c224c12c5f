"""The guided connect (issue 10 item 2): the Mailchimp list picked from the account's lists, the settings
tested before anything is saved, a draft audience connected only once confirmed, and the first send
previewed (a dry run) with nothing written and nothing sent. Against the local Mailchimp server."""

# ruff: noqa: F811 (the fixtures imported from test_admin are parameters of the tests below)
from __future__ import annotations

import pytest

from audiences.services import audience_create
from connections.models import Connection
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.preview import connection_preview
from local_partners.mailchimp import LISTS_PAGE_MAX
from outputs.partners import mailchimp
from tests.forwarding.test_admin import (  # noqa: F401  (fixtures shared with the admin's tutorial tests)
    LIST_ID,
    MAILCHIMP_KEY,
    PARISIANS,
    audience,
    local_mailchimp,
    output,
    url,
)

pytestmark = pytest.mark.django_db


def connect_url(audience, output) -> str:
    return f"{url('audiences_audience_connect', audience.pk)}?output={output.pk}"


def writes(server) -> list:
    """The requests that could change something at the partner (anything but a GET)."""
    return [r for r in server.requests if r.method != "GET"]


def test_the_list_is_picked_among_the_accounts_lists(admin_client, audience, output, local_mailchimp):
    local_mailchimp.create_list("b2c3d4e5f6", "Newsletter")
    page = admin_client.get(connect_url(audience, output))
    choices = dict(page.context["form"].fields["list_id"].choices)
    assert set(choices) == {"", LIST_ID, "b2c3d4e5f6"}
    assert choices["b2c3d4e5f6"] == "Newsletter (0 subscribed) — id b2c3d4e5f6"
    assert 'name="list_id"' in page.content.decode() and "<select" in page.content.decode()
    # Only a listed list is accepted.
    response = admin_client.post(connect_url(audience, output), {"list_id": "not-listed"})
    assert "list_id" in response.context["form"].errors
    assert not Connection.objects.exists()


def test_every_page_of_lists_is_read(admin_client, audience, output, local_mailchimp, monkeypatch):
    monkeypatch.setattr(mailchimp, "LISTS_PAGE_SIZE", 2)
    for n in range(4):
        local_mailchimp.create_list(f"list-{n}", f"List {n}")
    local_mailchimp.clear_requests()
    destinations = output.partner().list_destinations()
    assert [d.id for d in destinations] == [LIST_ID, "list-0", "list-1", "list-2", "list-3"]
    pages = [r.path for r in local_mailchimp.requests]
    assert len(pages) == 3 and "offset=0" in pages[0] and "offset=2" in pages[1] and "offset=4" in pages[2]
    assert all("count=2" in page for page in pages)


def test_without_the_lists_the_id_is_typed_and_the_reason_shown(admin_client, audience, output, local_mailchimp):
    local_mailchimp.fail_next(401)
    page = admin_client.get(connect_url(audience, output))
    assert page.context["form"].fields["list_id"].__class__.__name__ == "CharField"
    assert "The lists could not be read from Mailchimp: HTTP 401: API Key Invalid" in page.content.decode()


def test_test_button_asks_the_partner_and_saves_nothing(admin_client, audience, output, local_mailchimp):
    response = admin_client.post(connect_url(audience, output), {"list_id": LIST_ID, "_test": "Test"})
    assert response.status_code == 200
    assert response.context["test_result"] == (
        True,
        "Mailchimp list 'Potential Parisians' is reachable: 0 subscribed, 0 unsubscribed.",
    )
    assert not Connection.objects.exists() and not writes(local_mailchimp)


def test_connect_refuses_what_the_partner_refuses(admin_client, audience, output, local_mailchimp):
    local_mailchimp.fail_next(401)  # the listing fails: the id is typed
    local_mailchimp.fail_next(404)  # and the partner does not know it
    response = admin_client.post(connect_url(audience, output), {"list_id": "gone0gone0"})
    assert response.status_code == 200
    error = response.context["form"].errors["list_id"][0]
    assert "Mailchimp has no list with id 'gone0gone0'" in error and "Nothing was saved." in error
    assert not Connection.objects.exists() and not PendingChange.objects.exists()


def test_a_draft_audience_is_connected_only_once_confirmed(admin_client, output, local_mailchimp):
    draft = audience_create(name="Draft", criteria=PARISIANS)
    page = admin_client.get(connect_url(draft, output))
    assert 'id="draft-warning"' in page.content.decode()
    refused = admin_client.post(connect_url(draft, output), {"list_id": LIST_ID})
    assert "confirm_draft" in refused.context["form"].errors
    assert not Connection.objects.exists()
    connected = admin_client.post(connect_url(draft, output), {"list_id": LIST_ID, "confirm_draft": "on"})
    assert connected.status_code == 302
    assert Connection.objects.get().audience == draft


def test_preview_shows_the_first_send_and_sends_nothing(admin_client, audience, output, local_mailchimp):
    local_mailchimp.clear_requests()
    response = admin_client.post(connect_url(audience, output), {"list_id": LIST_ID, "_preview": "Preview"})
    assert response.status_code == 200
    preview = response.context["preview"]
    # 3 members (two with an email, one without): two emails would be sent.
    assert (preview.members, preview.reachable_members, preview.would_send) == (3, 2, 2)
    assert {(i.type, i.count, i.sent) for i in preview.identities} == {("email", 2, True), ("customer", 3, False)}
    html = response.content.decode()
    assert 'id="preview-request"' in html and "ana@example.com" in html and "update_existing" in html
    assert MAILCHIMP_KEY not in html
    # Nothing written, nothing sent: only the page's GET /lists reached the partner.
    assert not Connection.objects.exists() and not PendingChange.objects.exists()
    assert not DeliveryAttempt.objects.exists()
    assert [(r.method, r.path.split("?")[0]) for r in local_mailchimp.requests] == [("GET", "/3.0/lists")]


def test_the_dry_run_makes_no_partner_request_and_shows_the_real_body(audience, output, local_mailchimp):
    local_mailchimp.clear_requests()
    preview = connection_preview(audience=audience, output=output, settings={"list_id": LIST_ID})
    assert local_mailchimp.requests == []
    assert not PendingChange.objects.exists() and not Connection.objects.exists()
    request = preview.sample_request
    assert (request["method"], request["path"]) == ("POST", f"/lists/{LIST_ID}")
    members = request["body"]["members"]
    assert [m["email_address"] for m in members] == ["ana@example.com", "bo@example.com"]
    # The very body delivery sends (Mailchimp.batch_body), with the members' attributes as merge fields.
    assert members[0]["status"] == "subscribed" and request["body"]["update_existing"] is True
    assert "api_key" not in str(request) and MAILCHIMP_KEY not in str(request)


def test_local_server_pages_its_lists_like_mailchimp(local_mailchimp):
    import requests

    for n in range(12):
        local_mailchimp.create_list(f"l{n:02d}", f"L{n}")
    api = requests.Session()
    api.auth = ("any", MAILCHIMP_KEY)
    first = api.get(f"{local_mailchimp.base_url}/lists", timeout=5).json()
    assert first["total_items"] == 13 and len(first["lists"]) == 10  # Mailchimp's default page: 10
    rest = api.get(f"{local_mailchimp.base_url}/lists", params={"count": 10, "offset": 10}, timeout=5).json()
    assert [lst["id"] for lst in rest["lists"]] == ["l09", "l10", "l11"]
    capped = api.get(f"{local_mailchimp.base_url}/lists", params={"count": 5000}, timeout=5).json()
    assert len(capped["lists"]) == 13 <= LISTS_PAGE_MAX
    bad = api.get(f"{local_mailchimp.base_url}/lists", params={"offset": -1}, timeout=5)
    assert bad.status_code == 400

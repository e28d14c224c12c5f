"""Tests for the local Mailchimp-compatible server (local_partners.mailchimp).

No database: each test starts a server on a free port and talks HTTP to it with requests.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from local_partners.mailchimp import BATCH_MEMBER_LIMIT, LocalMailchimpServer, subscriber_hash

API_KEY = "0123456789abcdef0123456789abcdef-us6"
LIST_ID = "a1b2c3d4e5"
PROBLEM_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_partner_overrides() -> None:
    """Shadows the conftest fixture of the same name, which needs pytest-django's ``settings``.

    These tests use no Django settings, so they also run with ``-p no:django`` (e.g. while
    the settings module is mid-edit).
    """


@pytest.fixture
def server() -> Iterator[LocalMailchimpServer]:
    srv = LocalMailchimpServer(api_keys=[API_KEY]).start()
    srv.create_list(LIST_ID, "Newsletter")
    yield srv
    srv.stop()


@pytest.fixture
def api(server: LocalMailchimpServer) -> Iterator[requests.Session]:
    session = requests.Session()
    session.auth = ("anystring", API_KEY)
    yield session
    session.close()


def url(server: LocalMailchimpServer, path: str) -> str:
    return server.base_url + path


def batch(api: requests.Session, server: LocalMailchimpServer, members: list[dict], **extra) -> dict:
    response = api.post(url(server, f"/lists/{LIST_ID}"), json={"members": members, **extra}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def stats(api: requests.Session, server: LocalMailchimpServer) -> dict:
    response = api.get(url(server, f"/lists/{LIST_ID}"), timeout=10)
    assert response.status_code == 200
    return response.json()["stats"]


def assert_problem(response: requests.Response, status: int, title: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == PROBLEM_TYPE
    assert body["title"] == title
    assert body["status"] == status
    assert body["detail"]
    assert body["instance"]
    return body


# ---------------------------------------------------------------------- auth


def test_ping_with_basic_auth(server: LocalMailchimpServer, api: requests.Session) -> None:
    response = api.get(url(server, "/ping"), timeout=10)
    assert response.status_code == 200
    assert response.json() == {"health_status": "Everything's Chimpy!"}


def test_ping_with_bearer_token(server: LocalMailchimpServer) -> None:
    response = requests.get(url(server, "/ping"), headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert response.status_code == 200


def test_base_url_shape(server: LocalMailchimpServer) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.base_url.endswith("/3.0")


def test_wrong_key_is_401_problem_json(server: LocalMailchimpServer) -> None:
    response = requests.get(url(server, f"/lists/{LIST_ID}"), auth=("anystring", "wrong-us6"), timeout=10)
    body = assert_problem(response, 401, "API Key Invalid")
    assert body["detail"] == ("Your API key may be invalid, or you've attempted to access the wrong datacenter.")
    bearer = requests.get(url(server, "/ping"), headers={"Authorization": "Bearer nope-us6"}, timeout=10)
    assert_problem(bearer, 401, "API Key Invalid")


def test_missing_key_is_401(server: LocalMailchimpServer) -> None:
    assert_problem(requests.get(url(server, "/ping"), timeout=10), 401, "API Key Missing")


def test_any_key_accepted_without_configured_keys() -> None:
    with LocalMailchimpServer() as srv:
        response = requests.get(srv.base_url + "/ping", auth=("u", "whatever-us1"), timeout=10)
        assert response.status_code == 200
        assert requests.get(srv.base_url + "/ping", timeout=10).status_code == 401


# ---------------------------------------------------------------- members


def test_member_id_is_md5_of_trimmed_lowercased_email(server: LocalMailchimpServer, api: requests.Session) -> None:
    result = batch(api, server, [{"email_address": "  Jane.Doe@Example.COM ", "status": "subscribed"}])
    expected = hashlib.md5(b"jane.doe@example.com").hexdigest()
    member = result["new_members"][0]
    assert member["id"] == expected == subscriber_hash("JANE.DOE@example.com")
    assert member["email_address"] == "Jane.Doe@Example.COM"
    assert member["list_id"] == LIST_ID
    assert member["unique_email_id"]
    assert member["last_changed"].endswith("+00:00")
    assert set(server.members(LIST_ID)) == {expected}
    # Members are addressable by hash and, like Mailchimp, by the address itself.
    assert api.get(url(server, f"/lists/{LIST_ID}/members/{expected}"), timeout=10).json()["id"] == expected
    by_email = api.get(url(server, f"/lists/{LIST_ID}/members/jane.doe@example.com"), timeout=10)
    assert by_email.json()["id"] == expected


def test_batch_create_then_update_and_stats(server: LocalMailchimpServer, api: requests.Session) -> None:
    created = batch(
        api,
        server,
        [
            {"email_address": "a@example.org", "status": "subscribed", "merge_fields": {"FNAME": "Ann"}},
            {"email_address": "b@example.org", "status_if_new": "subscribed", "email_type": "text"},
            {"email_address": "c@example.org", "status": "unsubscribed"},
            {"email_address": "d@example.org", "status": "cleaned"},
        ],
    )
    assert created["total_created"] == 4
    assert created["total_updated"] == 0
    assert created["error_count"] == 0
    assert created["errors"] == []
    assert created["new_members"][1]["email_type"] == "text"
    assert stats(api, server) == {
        "member_count": 2,
        "unsubscribe_count": 1,
        "cleaned_count": 1,
        "total_contacts": 4,
    }

    updated = batch(
        api,
        server,
        [
            {"email_address": "a@example.org", "status": "unsubscribed", "merge_fields": {"LNAME": "Lee"}},
            # status_if_new is ignored for an existing member: b stays subscribed.
            {"email_address": "b@example.org", "status_if_new": "pending"},
            {"email_address": "e@example.org", "status": "subscribed"},
        ],
        update_existing=True,
    )
    assert (updated["total_created"], updated["total_updated"], updated["error_count"]) == (1, 2, 0)
    assert [m["email_address"] for m in updated["updated_members"]] == ["a@example.org", "b@example.org"]
    a = server.members(LIST_ID)[subscriber_hash("a@example.org")]
    assert a["status"] == "unsubscribed"
    assert a["merge_fields"] == {"FNAME": "Ann", "LNAME": "Lee"}
    assert server.members(LIST_ID)[subscriber_hash("b@example.org")]["status"] == "subscribed"
    assert stats(api, server) == {
        "member_count": 2,
        "unsubscribe_count": 2,
        "cleaned_count": 1,
        "total_contacts": 5,
    }


def test_pending_counts_as_contact_not_member(server: LocalMailchimpServer, api: requests.Session) -> None:
    result = batch(api, server, [{"email_address": "p@example.org", "status_if_new": "pending"}])
    assert result["new_members"][0]["status"] == "pending"
    assert stats(api, server) == {
        "member_count": 0,
        "unsubscribe_count": 0,
        "cleaned_count": 0,
        "total_contacts": 1,
    }


def test_batch_accepts_500_members_and_rejects_501(server: LocalMailchimpServer, api: requests.Session) -> None:
    members = [{"email_address": f"user{i}@example.org", "status": "subscribed"} for i in range(501)]
    assert BATCH_MEMBER_LIMIT == 500
    too_many = api.post(url(server, f"/lists/{LIST_ID}"), json={"members": members}, timeout=10)
    body = assert_problem(too_many, 400, "Invalid Resource")
    assert "500" in body["detail"]
    assert body["errors"][0]["field"] == "members"
    assert server.members(LIST_ID) == {}

    assert batch(api, server, members[:500])["total_created"] == 500
    assert stats(api, server)["member_count"] == 500


def test_per_member_errors_never_fail_the_batch(server: LocalMailchimpServer, api: requests.Session) -> None:
    batch(api, server, [{"email_address": "exists@example.org", "status": "subscribed"}])
    server.reject_emails.add("Fake@Example.org")
    server.mark_compliance_state(LIST_ID, "gone@example.org")

    result = batch(
        api,
        server,
        [
            {"email_address": "not-an-address", "status": "subscribed"},
            {"email_address": "fake@example.org", "status": "subscribed"},
            {"email_address": "exists@example.org", "status": "subscribed"},
            {"email_address": "odd@example.org", "status": "member"},
            {"email_address": "ok@example.org", "status": "subscribed"},
        ],
        update_existing=False,
    )
    assert result["total_created"] == 1
    assert result["new_members"][0]["email_address"] == "ok@example.org"
    assert result["error_count"] == 4
    # The compliance check applies when updating an existing member.
    compliance = batch(
        api, server, [{"email_address": "gone@example.org", "status": "subscribed"}], update_existing=True
    )
    assert (compliance["total_updated"], compliance["error_count"]) == (0, 1)
    all_errors = result["errors"] + compliance["errors"]
    errors = {e["email_address"]: e for e in all_errors}
    for entry in all_errors:
        assert set(entry) == {"email_address", "error", "error_code", "field", "field_message"}

    assert errors["not-an-address"]["error"] == (
        "not-an-address looks fake or invalid, please enter a real email address."
    )
    assert errors["not-an-address"]["error_code"] == "ERROR_GENERIC"
    assert errors["fake@example.org"]["error"] == (
        "fake@example.org looks fake or invalid, please enter a real email address."
    )
    assert errors["fake@example.org"]["error_code"] == "ERROR_GENERIC"
    assert errors["exists@example.org"]["error"].startswith("exists@example.org is already a list member")
    assert errors["exists@example.org"]["error_code"] == "ERROR_CONTACT_EXISTS"
    assert errors["gone@example.org"]["error"] == (
        "gone@example.org is in a compliance state due to unsubscribe, bounce, or compliance review "
        "and cannot be subscribed."
    )
    assert errors["gone@example.org"]["error_code"] == "ERROR_GENERIC"
    assert errors["odd@example.org"]["field"] == "status"


def test_compliance_state_allows_pending_and_unsubscribed(server: LocalMailchimpServer, api: requests.Session) -> None:
    server.mark_compliance_state(LIST_ID, "gone@example.org")
    member = server.members(LIST_ID)[subscriber_hash("gone@example.org")]
    assert member["status"] == "unsubscribed"

    put_url = url(server, f"/lists/{LIST_ID}/members/{subscriber_hash('gone@example.org')}")
    refused = api.put(put_url, json={"email_address": "gone@example.org", "status": "subscribed"}, timeout=10)
    assert_problem(refused, 400, "Member In Compliance State")

    result = batch(api, server, [{"email_address": "gone@example.org", "status": "pending"}], update_existing=True)
    assert result["total_updated"] == 1
    assert result["updated_members"][0]["status"] == "pending"


def test_archive_via_delete_removes_from_counts_and_listing(
    server: LocalMailchimpServer, api: requests.Session
) -> None:
    batch(
        api,
        server,
        [
            {"email_address": "keep@example.org", "status": "subscribed"},
            {"email_address": "drop@example.org", "status": "subscribed"},
        ],
    )
    drop_hash = subscriber_hash("drop@example.org")
    member_url = url(server, f"/lists/{LIST_ID}/members/{drop_hash}")

    deleted = api.delete(member_url, timeout=10)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert stats(api, server) == {
        "member_count": 1,
        "unsubscribe_count": 0,
        "cleaned_count": 0,
        "total_contacts": 1,
    }
    listing = api.get(url(server, f"/lists/{LIST_ID}/members"), timeout=10).json()
    assert [m["email_address"] for m in listing["members"]] == ["keep@example.org"]
    assert listing["total_items"] == 1
    assert drop_hash not in server.members(LIST_ID)
    assert server.members(LIST_ID, include_archived=True)[drop_hash]["status"] == "archived"
    assert api.get(member_url, timeout=10).json()["status"] == "archived"
    # Archiving again: the member is no longer on the list.
    assert_problem(api.delete(member_url, timeout=10), 404, "Resource Not Found")

    # A later add re-creates it as a new member.
    readded = batch(api, server, [{"email_address": "drop@example.org", "status": "subscribed"}])
    assert readded["total_created"] == 1
    assert stats(api, server)["member_count"] == 2


def test_delete_permanent_forgets_the_address(server: LocalMailchimpServer, api: requests.Session) -> None:
    batch(api, server, [{"email_address": "forget@example.org", "status": "subscribed"}])
    member_hash = subscriber_hash("forget@example.org")
    action = url(server, f"/lists/{LIST_ID}/members/{member_hash}/actions/delete-permanent")
    assert api.post(action, timeout=10).status_code == 204
    assert server.members(LIST_ID, include_archived=True) == {}
    assert_problem(api.post(action, timeout=10), 404, "Resource Not Found")

    result = batch(api, server, [{"email_address": "forget@example.org", "status": "subscribed"}])
    assert result["error_count"] == 1
    assert "permanently deleted" in result["errors"][0]["error"]
    put = api.put(
        url(server, f"/lists/{LIST_ID}/members/{member_hash}"),
        json={"email_address": "forget@example.org", "status_if_new": "subscribed"},
        timeout=10,
    )
    assert_problem(put, 400, "Forgotten Email Not Subscribed")


def test_members_listing_status_filter_and_paging(server: LocalMailchimpServer, api: requests.Session) -> None:
    members = [{"email_address": f"s{i:02d}@example.org", "status": "subscribed"} for i in range(25)]
    members += [{"email_address": f"u{i}@example.org", "status": "unsubscribed"} for i in range(3)]
    batch(api, server, members)
    members_url = url(server, f"/lists/{LIST_ID}/members")

    default_page = api.get(members_url, timeout=10).json()
    assert default_page["total_items"] == 28
    assert default_page["list_id"] == LIST_ID
    assert len(default_page["members"]) == 10  # Mailchimp's default count

    page = api.get(members_url, params={"status": "subscribed", "count": 10, "offset": 20}, timeout=10).json()
    assert page["total_items"] == 25
    assert [m["email_address"] for m in page["members"]] == [f"s{i:02d}@example.org" for i in range(20, 25)]

    unsubscribed = api.get(members_url, params={"status": "unsubscribed", "count": 1000}, timeout=10).json()
    assert unsubscribed["total_items"] == 3
    assert {m["status"] for m in unsubscribed["members"]} == {"unsubscribed"}

    assert_problem(api.get(members_url, params={"status": "bogus"}, timeout=10), 400, "Invalid Resource")
    assert_problem(api.get(members_url, params={"count": "-1"}, timeout=10), 400, "Invalid Resource")


def test_put_upsert_patch_and_tags(server: LocalMailchimpServer, api: requests.Session) -> None:
    member_hash = subscriber_hash("up@example.org")
    member_url = url(server, f"/lists/{LIST_ID}/members/{member_hash}")

    created = api.put(member_url, json={"email_address": "up@example.org", "status_if_new": "pending"}, timeout=10)
    assert created.status_code == 200
    assert created.json()["status"] == "pending"
    # Existing member: status_if_new is ignored, status applies.
    again = api.put(
        member_url,
        json={"email_address": "up@example.org", "status_if_new": "subscribed", "merge_fields": {"FNAME": "U"}},
        timeout=10,
    )
    assert again.json()["status"] == "pending"
    assert again.json()["merge_fields"] == {"FNAME": "U"}
    assert api.put(member_url, json={"status": "subscribed"}, timeout=10).json()["status"] == "subscribed"

    no_status = api.put(
        url(server, f"/lists/{LIST_ID}/members/{subscriber_hash('new@example.org')}"),
        json={"email_address": "new@example.org"},
        timeout=10,
    )
    assert_problem(no_status, 400, "Invalid Resource")
    mismatch = api.put(member_url, json={"email_address": "other@example.org", "status": "subscribed"}, timeout=10)
    assert_problem(mismatch, 400, "Invalid Resource")

    patched = api.patch(member_url, json={"status": "unsubscribed"}, timeout=10)
    assert patched.json()["status"] == "unsubscribed"

    tags_url = member_url + "/tags"
    tags = {"tags": [{"name": "VIP", "status": "active"}, {"name": "Beta", "status": "active"}]}
    assert api.post(tags_url, json=tags, timeout=10).status_code == 204
    assert api.post(tags_url, json={"tags": [{"name": "Beta", "status": "inactive"}]}, timeout=10).status_code == 204
    member = api.get(member_url, timeout=10).json()
    assert [t["name"] for t in member["tags"]] == ["VIP"]
    assert member["tags_count"] == 1
    bad_tags = api.post(tags_url, json={"tags": [{"name": "X", "status": "on"}]}, timeout=10)
    assert_problem(bad_tags, 400, "Invalid Resource")
    unknown = url(server, f"/lists/{LIST_ID}/members/{subscriber_hash('nobody@example.org')}")
    assert_problem(api.post(unknown + "/tags", json=tags, timeout=10), 404, "Resource Not Found")


def test_post_member_reports_member_exists(server: LocalMailchimpServer, api: requests.Session) -> None:
    members_url = url(server, f"/lists/{LIST_ID}/members")
    first = api.post(members_url, json={"email_address": "m@example.org", "status": "subscribed"}, timeout=10)
    assert first.status_code == 200
    second = api.post(members_url, json={"email_address": "m@example.org", "status": "subscribed"}, timeout=10)
    body = assert_problem(second, 400, "Member Exists")
    assert body["detail"] == "m@example.org is already a list member. Use PUT to insert or update list members."


def test_create_list_via_api(server: LocalMailchimpServer, api: requests.Session) -> None:
    response = api.post(url(server, "/lists"), json={"name": "Demo audience"}, timeout=10)
    assert response.status_code == 200
    created = response.json()
    assert len(created["id"]) == 10
    int(created["id"], 16)  # hex
    assert created["name"] == "Demo audience"
    assert created["stats"]["member_count"] == 0
    assert api.get(url(server, f"/lists/{created['id']}"), timeout=10).json()["name"] == "Demo audience"
    assert_problem(api.post(url(server, "/lists"), json={}, timeout=10), 400, "Invalid Resource")


# ------------------------------------------------------------------ errors


def test_unknown_list_and_member_are_404(server: LocalMailchimpServer, api: requests.Session) -> None:
    assert_problem(api.get(url(server, "/lists/nope"), timeout=10), 404, "Resource Not Found")
    batch_response = api.post(url(server, "/lists/nope"), json={"members": []}, timeout=10)
    assert_problem(batch_response, 404, "Resource Not Found")
    assert_problem(api.get(url(server, "/lists/nope/members"), timeout=10), 404, "Resource Not Found")
    unknown_member = url(server, f"/lists/{LIST_ID}/members/{subscriber_hash('x@example.org')}")
    assert_problem(api.get(unknown_member, timeout=10), 404, "Resource Not Found")
    assert_problem(api.patch(unknown_member, json={"status": "subscribed"}, timeout=10), 404, "Resource Not Found")
    assert_problem(api.get(url(server, "/campaigns"), timeout=10), 404, "Resource Not Found")


def test_malformed_json_and_wrong_method(server: LocalMailchimpServer, api: requests.Session) -> None:
    malformed = api.post(
        url(server, f"/lists/{LIST_ID}"),
        data=b'{"members": [',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert_problem(malformed, 400, "JSON Parse Error")
    not_object = api.post(url(server, f"/lists/{LIST_ID}"), json=["x"], timeout=10)
    assert_problem(not_object, 400, "Invalid Resource")

    wrong_method = api.delete(url(server, f"/lists/{LIST_ID}/members"), timeout=10)
    assert_problem(wrong_method, 405, "Method Not Allowed")
    assert set(wrong_method.headers["Allow"].split(", ")) == {"GET", "POST"}


# ------------------------------------------------------------ fault injection


def test_fail_next_429_then_recovers(server: LocalMailchimpServer, api: requests.Session) -> None:
    server.fail_next(429, headers={"Retry-After": "2"})
    throttled = api.get(url(server, "/ping"), timeout=10)
    assert_problem(throttled, 429, "Too Many Requests")
    assert throttled.headers["Retry-After"] == "2"
    assert api.get(url(server, "/ping"), timeout=10).status_code == 200


def test_fail_next_503_several_times(server: LocalMailchimpServer, api: requests.Session) -> None:
    server.fail_next(503, times=2)
    members = {"members": [{"email_address": "r@example.org", "status": "subscribed"}]}
    statuses = [api.post(url(server, f"/lists/{LIST_ID}"), json=members, timeout=10).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    # Faulted requests did not touch state; the third one did.
    assert list(server.members(LIST_ID)) == [subscriber_hash("r@example.org")]


def test_fail_next_401_even_with_a_good_key(server: LocalMailchimpServer, api: requests.Session) -> None:
    server.fail_next(401)
    assert_problem(api.get(url(server, f"/lists/{LIST_ID}"), timeout=10), 401, "API Key Invalid")
    assert api.get(url(server, f"/lists/{LIST_ID}"), timeout=10).status_code == 200


def test_fail_next_with_empty_and_custom_bodies(server: LocalMailchimpServer, api: requests.Session) -> None:
    server.fail_next(403, body={})
    server.fail_next(500, body={"title": "Boom", "status": 500})
    empty = api.get(url(server, "/ping"), timeout=10)
    assert empty.status_code == 403
    assert empty.content == b""
    custom = api.get(url(server, "/ping"), timeout=10)
    assert custom.status_code == 500
    assert custom.json() == {"title": "Boom", "status": 500}
    assert api.get(url(server, "/ping"), timeout=10).status_code == 200


def test_requests_are_recorded(server: LocalMailchimpServer, api: requests.Session) -> None:
    server.clear_requests()
    batch(api, server, [{"email_address": "log@example.org", "status": "subscribed"}], update_existing=True)
    api.get(url(server, f"/lists/{LIST_ID}/members"), params={"status": "subscribed"}, timeout=10)
    recorded = server.requests
    assert len(recorded) == 2
    method, path, body = recorded[0]
    assert (method, path) == ("POST", f"/3.0/lists/{LIST_ID}")
    assert body == {"members": [{"email_address": "log@example.org", "status": "subscribed"}], "update_existing": True}
    assert recorded[1] == ("GET", f"/3.0/lists/{LIST_ID}/members?status=subscribed", None)


# --------------------------------------------------------- HTTP behaviour


def test_keep_alive_session_is_fast(server: LocalMailchimpServer, api: requests.Session) -> None:
    """200 sequential requests on one connection: with Nagle's algorithm on this takes ~9 s."""
    before = server.connection_count
    started = time.perf_counter()
    for i in range(100):
        assert api.get(url(server, f"/lists/{LIST_ID}"), timeout=10).status_code == 200
        response = api.post(
            url(server, f"/lists/{LIST_ID}"),
            json={"members": [{"email_address": f"k{i}@example.org", "status": "subscribed"}]},
            timeout=10,
        )
        assert response.status_code == 200
    elapsed = time.perf_counter() - started
    assert elapsed < 2.5, f"200 keep-alive requests took {elapsed:.2f}s"
    assert server.connection_count - before <= 1  # one reused connection


def test_concurrent_batches_are_consistent(server: LocalMailchimpServer) -> None:
    def worker(n: int) -> None:
        with requests.Session() as session:
            session.auth = ("u", API_KEY)
            for chunk in range(5):
                members = [
                    {"email_address": f"t{n}-{chunk}-{i}@example.org", "status": "subscribed"} for i in range(10)
                ]
                response = session.post(url(server, f"/lists/{LIST_ID}"), json={"members": members}, timeout=10)
                assert response.json()["total_created"] == 10

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.members(LIST_ID)) == 400


def test_stop_closes_keep_alive_connections() -> None:
    srv = LocalMailchimpServer().start()
    session = requests.Session()
    session.auth = ("u", "key-us1")
    assert session.get(srv.base_url + "/ping", timeout=5).status_code == 200
    srv.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(srv.base_url + "/ping", timeout=5)
    session.close()
    srv.stop()  # idempotent


# ------------------------------------------------------ command line


def test_command_line_serves_and_stops_on_sigterm() -> None:
    # `python -m local_partners mailchimp`, as the Procfile runs it: no Django involved.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_partners",
            "mailchimp",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--list",
            "abc:News",
            "--list",
            "def",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Read the banner line by line: communicate() would bypass what readline() buffered.
        banner = [process.stdout.readline()]
        assert "listening on http://127.0.0.1:" in banner[0], banner[0] + process.stderr.read()
        while "CONTROL-C" not in banner[-1] and banner[-1]:
            banner.append(process.stdout.readline())
        base_url = banner[0].rsplit(" ", 1)[-1].strip()
        response = requests.get(base_url + "/lists/abc", auth=("u", API_KEY), timeout=5)
        assert response.json()["name"] == "News"
        assert requests.get(base_url + "/lists/def", auth=("u", API_KEY), timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "  list abc (News)\n" in banner
    assert "  list def (def)\n" in banner
    assert "stopped" in out


# ---------------------------------------------------------------------- merge fields


def test_members_listing_keeps_only_the_fields_asked_for(server: LocalMailchimpServer, api: requests.Session) -> None:
    batch(api, server, [{"email_address": "a@example.org", "status": "subscribed"}])
    page = api.get(
        url(server, f"/lists/{LIST_ID}/members"),
        params={"fields": "members.email_address,members.status,total_items"},
        timeout=10,
    ).json()
    assert page == {"members": [{"email_address": "a@example.org", "status": "subscribed"}], "total_items": 1}


def test_required_merge_fields_refuse_members_unless_validation_is_skipped(
    server: LocalMailchimpServer, api: requests.Session
) -> None:
    server.create_list("strict", merge_fields=[{"tag": "FNAME", "required": True}, {"tag": "AGE", "type": "number"}])
    members = [{"email_address": "bare@example.org", "status": "subscribed"}]
    refused = api.post(url(server, "/lists/strict"), json={"members": members}, timeout=10).json()
    assert refused["errors"] == [
        {
            "email_address": "bare@example.org",
            "error": "Your merge fields were invalid.",
            "error_code": "ERROR_GENERIC",
            "field": "FNAME",
            "field_message": "Please enter a value",
        }
    ]
    single = api.put(
        url(server, f"/lists/strict/members/{subscriber_hash('bare@example.org')}"),
        json={"email_address": "bare@example.org", "status_if_new": "subscribed"},
        timeout=10,
    )
    assert_problem(single, 400, "Invalid Resource")

    accepted = api.post(
        url(server, "/lists/strict"), params={"skip_merge_validation": "true"}, json={"members": members}, timeout=10
    ).json()
    assert accepted["error_count"] == 0 and accepted["total_created"] == 1

    # A value that does not fit its field is refused even when validation is skipped.
    typed = [{"email_address": "old@example.org", "status": "subscribed", "merge_fields": {"AGE": "forty"}}]
    wrong = api.post(
        url(server, "/lists/strict"), params={"skip_merge_validation": "true"}, json={"members": typed}, timeout=10
    ).json()
    assert wrong["errors"][0]["field"] == "merge_fields.AGE"
    assert wrong["errors"][0]["field_message"] == "Data did not match any of the schemas described in anyOf."
    fields = api.get(url(server, "/lists/strict/merge-fields"), timeout=10).json()
    assert [(f["tag"], f["type"], f["required"]) for f in fields["merge_fields"]] == [
        ("FNAME", "text", True),
        ("AGE", "number", False),
    ]

"""The local Meta Graph API server (local_partners.meta): strict about what Meta refuses, and holding what it takes.

No database: each test starts a server on a free port and talks HTTP to it with requests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from local_partners.meta import LocalMetaServer

TOKEN = "meta-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
HASH = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
PAYLOAD = {"schema": "EMAIL_SHA256", "data": [HASH]}


@pytest.fixture(autouse=True)
def _no_partner_overrides() -> None:
    """Shadows the conftest fixture: these tests use no Django settings."""


@pytest.fixture
def server() -> Iterator[LocalMetaServer]:
    with LocalMetaServer(access_tokens=[TOKEN]) as srv:
        yield srv


def call(server, method, path, body=None, headers=AUTH, **kwargs):
    return requests.request(method, f"{server.base_url}{path}", json=body, headers=headers, timeout=5, **kwargs)


def error(answer):
    assert answer.status_code == 400, answer.text
    return answer.json()["error"]


def create(server, **params):
    body = {"name": "Parisians", "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY", **params}
    return call(server, "POST", "/act_1/customaudiences", body)


def test_the_token_is_checked_as_bearer_or_parameter(server):
    assert error(call(server, "GET", "/act_1", headers={}))["code"] == 2500
    refused = error(call(server, "GET", "/act_1", headers={"Authorization": "Bearer wrong"}))
    assert refused["code"] == 190 and refused["type"] == "OAuthException" and refused["fbtrace_id"]
    assert call(server, "GET", "/act_1", headers={}, params={"access_token": TOKEN}).json()["id"] == "act_1"
    server.revoke_token(TOKEN)
    assert error(call(server, "GET", "/act_1"))["code"] == 190


def test_paths_carry_a_version(server):
    answer = requests.get(server.base_url.replace("/v21.0", "") + "/act_1", headers=AUTH, timeout=5)
    assert error(answer)["code"] == 100


def test_create_needs_a_customer_file_source_and_the_audience_can_be_read_and_deleted(server):
    assert error(create(server, customer_file_source="MINE"))["code"] == 100
    audience_id = create(server).json()["id"]
    described = call(server, "GET", f"/{audience_id}").json()
    assert described["name"] == "Parisians" and described["approximate_count_lower_bound"] == 0
    assert call(server, "DELETE", f"/{audience_id}").json() == {"success": True}
    missing = error(call(server, "GET", f"/{audience_id}"))
    assert (missing["code"], missing["error_subcode"]) == (100, 33)


def test_users_added_and_removed_with_sessions_and_invalid_rows_sampled(server):
    audience_id = create(server).json()["id"]
    session = {"session_id": 9, "batch_seq": 1, "last_batch_flag": False, "estimated_num_total": 3}
    body = {"session": session, "payload": {"schema": "EMAIL_SHA256", "data": [HASH, "plain@example.com"]}}
    answer = call(server, "POST", f"/{audience_id}/users", body).json()
    assert answer["num_received"] == 2 and answer["num_invalid_entries"] == 1 and answer["session_id"] == 9
    assert answer["invalid_entry_samples"] == {"plain@example.com": "Invalid format"}
    assert server.members(audience_id) == {HASH}
    last = {**session, "batch_seq": 2, "last_batch_flag": True}
    assert call(server, "POST", f"/{audience_id}/users", {**body, "session": last}).status_code == 200
    after = {**session, "batch_seq": 3}
    assert "ended" in error(call(server, "POST", f"/{audience_id}/users", {**body, "session": after}))["message"]
    # Form fields with JSON values, as Meta's SDKs send them; a removal takes the same shape.
    form = {"payload": json.dumps({"schema": "EMAIL_SHA256", "data": [HASH]}), "access_token": TOKEN}
    answer = requests.delete(f"{server.base_url}/{audience_id}/users", data=form, timeout=5)
    assert answer.status_code == 200 and server.members(audience_id) == set()


def test_a_session_s_batches_are_numbered_from_1_in_order_and_an_unclosed_one_is_listed_open(server):
    audience_id = create(server).json()["id"]

    def send(session_id, seq, last=False):
        session = {"session_id": session_id, "batch_seq": seq, "last_batch_flag": last, "estimated_num_total": 2}
        return call(server, "POST", f"/{audience_id}/users", {"session": session, "payload": PAYLOAD})

    assert "out of order, 1 expected" in error(send(5, 2))["message"]  # a session starts at 1
    assert send(5, 1).status_code == 200
    assert "out of order, 2 expected" in error(send(5, 1))["message"]  # not the same number twice
    assert "out of order, 2 expected" in error(send(5, 3))["message"]  # nor one skipped
    assert send(6, 1).status_code == 200
    assert send(6, 2, last=True).status_code == 200
    # A refused request numbers nothing, and the session it named stays open until a last batch comes.
    assert [(s["session_id"], s["batches"], s["received"]) for s in server.open_sessions()] == [(5, 1, 1)]
    closed = next(s for s in server.sessions() if s["session_id"] == 6)
    assert (closed["batches"], closed["received"], closed["estimated_num_total"], closed["closed"]) == (2, 2, 2, True)
    assert send(5, 2, last=True).status_code == 200
    assert server.open_sessions() == []


def test_more_than_10000_rows_fail_the_whole_request(server):
    audience_id = create(server).json()["id"]
    body = {"payload": {"schema": "EMAIL_SHA256", "data": [HASH] * 10_001}}
    assert "10000" in error(call(server, "POST", f"/{audience_id}/users", body))["message"]
    assert server.members(audience_id) == set()


def test_throttling_is_a_400_with_a_code_and_the_usage_header(server):
    audience_id = create(server).json()["id"]
    server.throttle_next(code=80003, minutes=3)
    body = {"payload": {"schema": "EMAIL_SHA256", "data": [HASH]}}
    answer = call(server, "POST", f"/{audience_id}/users", body)
    assert error(answer)["code"] == 80003
    usage = json.loads(answer.headers["X-Business-Use-Case-Usage"])
    assert usage["1"][0]["estimated_time_to_regain_access"] == 3
    assert server.members(audience_id) == set()
    assert call(server, "POST", f"/{audience_id}/users", body).status_code == 200


def test_runnable_as_python_m_local_partners_meta():
    process = subprocess.Popen(
        [sys.executable, "-m", "local_partners", "meta", "--port", "0", "--access-token", TOKEN],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("Local Meta Graph API listening on http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[1].strip()
        assert requests.get(f"{base_url}/act_7", headers=AUTH, timeout=5).json()["id"] == "act_7"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0

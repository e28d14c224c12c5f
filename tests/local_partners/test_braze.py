"""The local Braze server (local_partners.braze): strict about what real Braze refuses, and applying what it takes.

No database: each test starts a server on a free port and talks HTTP to it with requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from local_partners.braze import LocalBrazeServer

KEY = "braze-rest-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_partner_overrides() -> None:
    """Shadows the conftest fixture: these tests use no Django settings."""


@pytest.fixture
def server() -> Iterator[LocalBrazeServer]:
    with LocalBrazeServer(api_keys=[KEY]) as srv:
        yield srv


def track(server, attributes, headers=AUTH):
    return requests.post(f"{server.base_url}/users/track", json={"attributes": attributes}, headers=headers, timeout=5)


def test_the_bearer_key_is_checked(server):
    assert track(server, [], headers={}).status_code == 401
    assert track(server, [], headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert track(server, [], headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert track(server, []).status_code == 201


def test_array_edits_add_and_remove_without_touching_other_ids(server):
    track(server, [{"external_id": "u1", "SegmentMembership": {"add": ["1"]}}])
    track(server, [{"external_id": "u1", "SegmentMembership": {"add": ["2", "1"]}}])
    assert server.user(external_id="u1")["SegmentMembership"] == ["1", "2"]
    answer = track(server, [{"external_id": "u1", "SegmentMembership": {"remove": ["1"]}}])
    assert answer.json() == {"message": "success", "attributes_processed": 1}
    assert server.user(external_id="u1")["SegmentMembership"] == ["2"]
    track(server, [{"external_id": "u1", "SegmentMembership": ["9"]}])  # a whole array replaces
    assert server.user(external_id="u1")["SegmentMembership"] == ["9"]


def test_booleans_null_and_the_email_identifier(server):
    track(server, [{"external_id": "u1", "In Parisians": True, "email": "a@example.com"}])
    track(server, [{"email": "a@example.com", "In Lyonnais": False}])  # the same user, found by email
    user = server.user(external_id="u1")
    assert user["In Parisians"] is True and user["In Lyonnais"] is False
    track(server, [{"external_id": "u1", "In Parisians": None}])
    assert "In Parisians" not in server.user(external_id="u1")
    track(server, [{"email": "new@example.com", "In Parisians": True}])  # Braze creates an email-only user
    assert server.user(email="new@example.com")["In Parisians"] is True
    assert len(server.users()) == 2
    listed = requests.get(f"{server.base_url}/local/users", timeout=5).json()["users"]
    assert listed == server.users()


def test_more_than_75_objects_fail_the_whole_request(server):
    answer = track(server, [{"external_id": f"u{i}", "x": 1} for i in range(76)])
    assert answer.status_code == 400 and "75" in answer.json()["message"]
    assert server.users() == []
    assert track(server, [{"external_id": f"u{i}", "x": 1} for i in range(75)]).status_code == 201


def test_an_email_with_whitespace_fails_the_whole_request(server):
    answer = track(server, [{"external_id": "u1", "x": 1}, {"email": "a b@example.com", "x": 1}])
    assert answer.status_code == 400 and "whitespace" in answer.json()["message"]
    assert server.users() == []


def test_an_object_without_an_identifier_is_an_error_at_its_index(server):
    answer = track(server, [{"external_id": "u1", "x": 1}, {"x": 2}, {"external_id": "u3", "x": {"put": [1]}}])
    body = answer.json()
    assert answer.status_code == 201 and body["message"] == "success"
    assert [e["index"] for e in body["errors"]] == [1, 2]
    assert [u["external_id"] for u in server.users()] == ["u1"]


def test_malformed_bodies_are_400(server):
    for body in (b"not json", b"[]", b'{"attributes": {}}', b'{"attributes": [1]}'):
        answer = requests.post(f"{server.base_url}/users/track", data=body, headers=AUTH, timeout=5)
        assert answer.status_code == 400, body


def test_rate_limit_headers_and_429_once_the_window_is_used_up():
    with LocalBrazeServer(api_keys=[KEY], rate_limit=2, rate_window=60) as server:
        first = track(server, [])
        assert first.headers["X-RateLimit-Limit"] == "2"
        assert first.headers["X-RateLimit-Remaining"] == "1"
        assert int(first.headers["X-RateLimit-Reset"]) > time.time() + 50
        assert track(server, []).headers["X-RateLimit-Remaining"] == "0"
        refused = track(server, [{"external_id": "u1", "x": 1}])
        assert refused.status_code == 429 and "Retry-After" not in refused.headers
        assert server.users() == []


def test_fail_next_answers_instead_of_applying(server):
    server.fail_next(503)
    assert track(server, [{"external_id": "u1", "x": 1}]).status_code == 503
    assert server.users() == []


def test_runnable_as_python_m_local_partners_braze():
    process = subprocess.Popen(
        [sys.executable, "-m", "local_partners", "braze", "--port", "0", "--api-key", KEY],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("Local Braze API listening on http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[1].strip()
        answer = requests.post(f"{base_url}/users/track", json={"attributes": []}, headers=AUTH, timeout=5)
        assert answer.status_code == 201
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_the_rate_limit_is_a_command_line_setting():
    process = subprocess.Popen(
        [sys.executable, "-m", "local_partners", "braze", "--port", "0", "--rate-limit", "1", "--rate-window", "60"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base_url = process.stdout.readline().rsplit(" ", 1)[1].strip()
        first = requests.post(f"{base_url}/users/track", json={"attributes": []}, headers=AUTH, timeout=5)
        assert first.status_code == 201 and first.headers["X-RateLimit-Limit"] == "1"
        second = requests.post(f"{base_url}/users/track", json={"attributes": []}, headers=AUTH, timeout=5)
        assert second.status_code == 429
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0

"""The fault-injecting Mailchimp (local_partners.faulty) that the fault suite talks to: each fault
does what it says, and the write accounting tells allowed replays from duplicates.

No database: real HTTP on free ports, with requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from local_partners.faulty import FaultyMailchimp
from local_partners.mailchimp import LocalMailchimpServer

API_KEY = "0123456789abcdef0123456789abcdef-us6"
LIST_ID = "l1"


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _no_partner_overrides() -> None:
    """Shadows the conftest fixture of the same name: no Django settings needed here."""


@pytest.fixture
def partner() -> Iterator[FaultyMailchimp]:
    upstream = LocalMailchimpServer(api_keys=[API_KEY])
    upstream.create_list(LIST_ID)
    front = FaultyMailchimp(upstream, seed=1).start()
    yield front
    front.stop()
    upstream.stop()


@pytest.fixture
def session() -> requests.Session:
    session = requests.Session()
    session.auth = ("any", API_KEY)
    return session


def send(partner, session, emails, *, status="subscribed", round_=0, timeout=5.0) -> requests.Response:
    members = [
        {"email_address": e, "status": status, "status_if_new": status, "merge_fields": {"ROUND": round_}}
        for e in emails
    ]
    return session.post(
        f"{partner.base_url}/lists/{LIST_ID}", json={"members": members, "update_existing": True}, timeout=timeout
    )


def test_without_faults_it_is_the_local_mailchimp_and_counts_each_write(partner, session):
    assert send(partner, session, ["a@example.com", "b@example.com"]).status_code == 200
    assert send(partner, session, ["a@example.com"], status="unsubscribed", round_=1).status_code == 200
    assert partner.upstream.members(LIST_ID)  # applied by the wrapped server
    assert partner.statuses(LIST_ID) == {"a@example.com": "unsubscribed", "b@example.com": "subscribed"}
    assert [w.status for w in partner.writes(LIST_ID, "a@example.com")] == ["subscribed", "unsubscribed"]
    assert partner.duplicates(LIST_ID).unallowed == 0


def test_the_same_write_again_after_an_answer_is_a_duplicate(partner, session):
    send(partner, session, ["a@example.com"])
    send(partner, session, ["a@example.com"])
    duplicates = partner.duplicates(LIST_ID)
    assert (duplicates.unallowed, duplicates.allowed, duplicates.examples) == (1, 0, ["a@example.com"])


def test_a_slow_answer_is_applied_and_its_replay_after_a_client_timeout_is_allowed(partner, session):
    partner.slow(1.0)
    with pytest.raises(requests.Timeout):
        send(partner, session, ["a@example.com"], timeout=0.3)
    partner.slow(0)
    # The front finds the client gone when its answer is due.
    wait_until(lambda: partner.requests[0].unanswered)
    assert partner.statuses(LIST_ID) == {"a@example.com": "subscribed"}  # applied nonetheless
    assert send(partner, session, ["a@example.com"]).status_code == 200
    assert (partner.duplicates(LIST_ID).allowed, partner.duplicates(LIST_ID).unallowed) == (1, 0)


def test_drop_after_apply_applies_then_hangs_up(partner, session):
    partner.drop_after_apply(1)
    with pytest.raises(requests.ConnectionError):
        send(partner, session, ["a@example.com"])
    assert partner.statuses(LIST_ID) == {"a@example.com": "subscribed"}
    assert partner.requests[0].unanswered
    assert send(partner, session, ["a@example.com"]).status_code == 200  # the next one is answered
    assert partner.duplicates(LIST_ID).unallowed == 0


def test_errors_at_a_rate_are_not_applied_and_carry_their_headers(partner, session):
    partner.fail(1.0, [(429, {"Retry-After": "7"})])
    response = send(partner, session, ["a@example.com"])
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    assert response.json()["title"] == "Too Many Requests"
    assert partner.statuses(LIST_ID) == {}
    partner.fail(0.3, [(503, {})])
    statuses = [send(partner, session, [f"u{i}@example.com"]).status_code for i in range(200)]
    assert 40 <= statuses.count(503) <= 80 and set(statuses) == {200, 503}
    assert len(partner.statuses(LIST_ID)) == statuses.count(200)


def test_the_same_seed_fails_the_same_requests():
    def pattern(seed: int) -> list[int]:
        upstream = LocalMailchimpServer(api_keys=[API_KEY])
        upstream.create_list(LIST_ID)
        with FaultyMailchimp(upstream, seed=seed) as front:
            front.fail(0.5, [(500, {})])
            session = requests.Session()
            session.auth = ("any", API_KEY)
            codes = [send(front, session, [f"u{i}@example.com"]).status_code for i in range(30)]
        upstream.stop()
        return codes

    assert pattern(3) == pattern(3)


def test_a_refused_key_is_a_401_whatever_the_key(partner, session):
    partner.refuse_key()
    response = send(partner, session, ["a@example.com"])
    assert (response.status_code, response.json()["title"]) == (401, "API Key Invalid")
    partner.refuse_key(False)
    assert send(partner, session, ["a@example.com"]).status_code == 200


def test_down_refuses_then_resets_connections_then_comes_back_on_the_same_port(partner, session):
    send(partner, session, ["a@example.com"])  # a keep-alive connection is open
    partner.go_down("refused")
    with pytest.raises(requests.ConnectionError, match="refused"):
        send(partner, session, ["b@example.com"], timeout=2)
    partner.go_down("reset")
    with pytest.raises(requests.ConnectionError):
        send(partner, session, ["b@example.com"], timeout=2)
    partner.come_back()
    assert send(partner, session, ["b@example.com"]).status_code == 200
    assert set(partner.statuses(LIST_ID)) == {"a@example.com", "b@example.com"}


def test_a_replay_of_a_request_in_hand_at_a_fault_is_allowed_later_ones_are_not(partner, session):
    send(partner, session, ["a@example.com"])  # answered; the client is killed before recording it
    partner.fault_at()
    send(partner, session, ["a@example.com"])  # the replay after the restart: allowed
    send(partner, session, ["a@example.com"])  # once more: a duplicate
    duplicates = partner.duplicates(LIST_ID)
    assert (duplicates.allowed, duplicates.unallowed) == (1, 1)

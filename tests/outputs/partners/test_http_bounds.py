"""The partner HTTP client is bounded in size and time, against real local sockets (issue 7, item 7).

Found: a partner answering with a 200 MB body cost 600 MiB of worker memory, and one trickling a
byte every 2 s kept a call open past its read timeout indefinitely (43 s with a 5 s timeout).
The servers are local_partners.misbehaving's; the timings are real (the trickle is the fault).
Run with -s to see the figures.
"""

from __future__ import annotations

import socket
import time
import tracemalloc

import pytest
from django.core.exceptions import ValidationError

from audiences.services import audience_create
from connections.models import Connection
from local_partners.mailchimp import LocalMailchimpServer
from local_partners.misbehaving import MIB, MisbehavingServer
from outputs.partners.base import Action, AudienceRef, MemberChange
from outputs.partners.http import PartnerClient, PermanentError, TransientError, partner_call_deadline, url_segment
from outputs.partners.mailchimp import Mailchimp
from outputs.services import output_create
from tests.fixtures.api import errors

HUGE = 200 * MIB
CAP = 8 * MIB  # the default PARTNER_MAX_RESPONSE_BYTES
DEADLINE = 1.5
KEY = "0123456789abcdef0123456789abcdef-us6"
AUDIENCE = AudienceRef(id=1, name="Potential Parisians", external_name="Potential Parisians")
SLACK = 0.5  # thread scheduling on a busy 2-core machine; a missing deadline overshoots by seconds


@pytest.fixture
def bounds(settings):
    settings.PARTNER_MAX_RESPONSE_BYTES = CAP
    settings.PARTNER_CALL_DEADLINE_SECONDS = DEADLINE
    # Per-read timeouts longer than the trickle's interval: only the deadline can end it.
    settings.FORWARDING = {**settings.FORWARDING, "HTTP_TIMEOUT": (5.0, 5.0)}


def call(server: MisbehavingServer) -> tuple[float, Exception | None]:
    """POST a small JSON body, as a delivery does; return (seconds taken, the error raised)."""
    started = time.monotonic()
    try:
        PartnerClient(server.url).request("POST", "/lists/abc", json={"members": []})
    except Exception as exc:  # the test asserts which
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def call_traced(server: MisbehavingServer) -> tuple[Exception | None, int]:
    """call(), measuring the peak of traced Python memory meanwhile: (the error, peak bytes)."""
    tracemalloc.start()
    try:
        _, error = call(server)
        return error, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_call_deadline_is_the_setting(settings):
    settings.PARTNER_CALL_DEADLINE_SECONDS = 42
    assert partner_call_deadline() == 42.0


@pytest.mark.parametrize("behaviour", ["huge", "gzip_bomb"])
def test_a_200_mb_answer_is_read_up_to_the_cap_and_refused(bounds, behaviour):
    with MisbehavingServer(behaviour, size=HUGE) as server:
        error, peak = call_traced(server)

    print(f"\n{behaviour}: 200 MiB answer, cap {CAP / MIB:.0f} MiB: peak traced memory {peak / MIB:.1f} MiB")
    assert isinstance(error, TransientError)
    assert "larger than 8,388,608 bytes (PARTNER_MAX_RESPONSE_BYTES)" in error.message
    assert peak < 3 * CAP  # the cap, a copy of it and the read buffers; never the answer's size
    assert server.bytes_sent < HUGE


def test_an_answer_declared_too_large_is_refused_before_its_body_is_read(bounds):
    with MisbehavingServer("huge_declared", size=HUGE) as server:
        error, peak = call_traced(server)

    assert isinstance(error, TransientError)
    assert "PARTNER_MAX_RESPONSE_BYTES" in error.message
    assert peak < CAP / 2  # the server thread's own 1 MiB write buffer is traced too


@pytest.mark.parametrize("behaviour", ["trickle_body", "trickle_headers"])
def test_a_trickling_partner_is_cut_off_at_the_call_deadline(bounds, behaviour):
    # Eight bytes, a second apart: without a deadline the call would succeed after about 8 s.
    with MisbehavingServer(behaviour, size=8, interval=1.0) as server:
        seconds, error = call(server)

    print(f"\n{behaviour} (a byte a second, read timeout 5 s): call ended after {seconds:.2f} s, deadline {DEADLINE} s")
    assert isinstance(error, TransientError), error
    assert "call deadline of 1.5 s (PARTNER_CALL_DEADLINE_SECONDS)" in error.message
    assert DEADLINE <= seconds < DEADLINE + SLACK
    assert server.bytes_sent >= 1  # the partner did answer, just too slowly


def test_a_body_ended_by_closing_the_connection_is_not_taken_whole_when_the_deadline_cut_it(bounds):
    # Without Content-Length the body ends when the connection does; the deadline's shutdown
    # ends it too, early, and that must not pass for a complete (short) answer.
    with MisbehavingServer("trickle_unframed", size=40, interval=0.2) as server:
        _, error = call(server)

    assert isinstance(error, TransientError), error
    assert "call deadline" in error.message
    assert server.bytes_sent >= 2


def test_a_well_behaved_answer_is_unaffected(bounds):
    # The deadline's timer is cancelled and the kept-alive connection reused: many calls in a row.
    with LocalMailchimpServer(api_keys=["k-us6"]) as server:
        server.create_list("abc", "List")
        client = PartnerClient(server.base_url)
        client.session.auth = ("any", "k-us6")
        for _ in range(20):
            assert client.json(client.request("GET", "/lists/abc"))["id"] == "abc"
        assert server.connection_count == 1


def test_the_kept_alive_connection_sends_without_waiting_for_acks(bounds):
    """TCP_NODELAY on the client's socket: with Nagle's algorithm on, a request written in two parts (head,
    then body) waits for the partner's delayed ACK, about 40 ms a call (11,000 identities/s instead of
    30,000+ against the local Mailchimp)."""
    with LocalMailchimpServer(api_keys=["k-us6"]) as server:
        server.create_list("abc", "List")
        client = PartnerClient(server.base_url)
        client.session.auth = ("any", "k-us6")
        client.request("GET", "/lists/abc")
        pools = client.session.get_adapter(server.base_url).poolmanager.pools
        kept = [c for key in pools.keys() for c in pools[key].pool.queue if c is not None and c.sock]
        assert len(kept) == 1  # the idle kept-alive connection, back in its pool
        assert kept[0].sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# --- settings that go into URLs -------------------------------------------------------------

INJECTIONS = ["../../x?y=", "abc/../../lists", "abc?count=1000", "abc#frag", "a b", "%2e%2e", "..", "liste-é"]


@pytest.mark.parametrize("list_id", INJECTIONS)
def test_a_list_id_that_could_change_the_url_is_refused_by_name(list_id):
    with pytest.raises(ValidationError) as excinfo:
        Mailchimp.clean_connection_settings({"list_id": list_id})

    assert list(excinfo.value.message_dict) == ["list_id"]
    assert "Mailchimp audience id" in excinfo.value.message_dict["list_id"][0]


@pytest.mark.parametrize("list_id", ["a1b2c3d4e5", "57afe96172", "potential-parisians", "list_2"])
def test_list_ids_as_mailchimp_issues_them_are_accepted(list_id):
    assert Mailchimp.clean_connection_settings({"list_id": list_id}) == {"list_id": list_id}


def test_a_list_id_that_reached_the_client_anyway_stays_one_path_segment(settings):
    # Stored before validation existed, say: the client encodes it whole, so the partner sees
    # a list that does not exist (404, a permanent error), never another path or a query.
    with LocalMailchimpServer(api_keys=[KEY]) as server:
        settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
        partner = Mailchimp(Mailchimp.clean_configuration({"api_key": KEY}))
        with pytest.raises(PermanentError) as excinfo:
            partner.apply_batch({"list_id": "../../x?y="}, AUDIENCE, [MemberChange("email", "a@x.com", Action.ADD)])
        with pytest.raises(PermanentError):
            partner.test_connection({"list_id": "../../x?y="}, AUDIENCE)
        paths = [r.path.split("?")[0] for r in server.requests]

    assert excinfo.value.status == 404
    assert paths == ["/3.0/lists/..%2F..%2Fx%3Fy%3D", "/3.0/lists/..%2F..%2Fx%3Fy%3D"]


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_a_value_that_would_move_along_the_path_even_encoded_is_refused(value):
    with pytest.raises(PermanentError):
        url_segment(value)


def test_url_segment_encodes_everything_but_unreserved_characters():
    assert url_segment("a1-b_c.d~e") == "a1-b_c.d~e"
    assert url_segment("../x?y=1#z%20 /") == "..%2Fx%3Fy%3D1%23z%2520%20%2F"


@pytest.mark.django_db
def test_connecting_with_a_list_id_that_could_change_the_url_is_refused_by_the_api(admin_client):
    audience = audience_create(name="A", criteria={"attribute": "plan", "operator": "exists"}, status="active")
    output = output_create(name="M", partner_key="mailchimp", settings={"api_key": KEY})
    body = {"audience": audience.pk, "output": output.pk, "settings": {"list_id": "../../x?y="}}

    response = admin_client.post("/api/v1/connections/", body, content_type="application/json")

    assert response.status_code == 400
    assert list(errors(response)) == ["list_id"]
    assert not Connection.objects.exists()

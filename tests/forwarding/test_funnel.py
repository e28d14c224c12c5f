"""The identity funnel (forwarding/funnel.py) on a mixed population, delivered for real to the local Mailchimp:
every step's exact number, the losses and their reasons, the partner's count available and not, the API and the
admin page."""

from __future__ import annotations

import html as html_module
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.db import connection as database
from django.utils import timezone

from audiences import profiles
from connections.models import ConnectionMember
from forwarding.delivery import deliver_connection
from forwarding.funnel import identity_funnel, partner_count
from forwarding.models import PendingChange
from local_partners.mailchimp import LocalMailchimpServer
from outputs.partners.braze import EMAIL_CHECK as BRAZE_EMAIL
from outputs.partners.mailchimp import EMAIL_CHECK as MAILCHIMP_EMAIL
from outputs.services import output_create
from tests.fixtures.api import MAILCHIMP_KEY

LIST_ID = "abc123"


@pytest.fixture
def output(db):
    """Single opt-in: new members are subscribed, so Mailchimp's count (subscribed members) counts them."""
    return output_create(
        name="Mailchimp", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY, "double_opt_in": False}
    )


@pytest.fixture
def local_mailchimp(settings) -> Iterator[LocalMailchimpServer]:
    server = LocalMailchimpServer(api_keys=[MAILCHIMP_KEY]).start()
    server.create_list(LIST_ID, "Premium")
    settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
    cache.clear()
    yield server
    server.stop()
    cache.clear()


def member(*identities: tuple[str, str]) -> None:
    profiles.profile_upsert(identities=[{"type": t, "value": v} for t, v in identities], attributes={"plan": "premium"})


@pytest.fixture
def population(connection, local_mailchimp, rings):
    """16 members of the audience "Premium" (and one profile outside it), delivered to the local Mailchimp:

    - 6 members with one valid email, 1 with two: 8 identities the partner accepts
    - 1 with only a customer id, 1 with only an Android advertising id: nothing Mailchimp takes
    - 1 whose email our ingestion takes but Mailchimp does not (an underscore in the domain)
    - 2 refused as fake and 1 in a compliance state at Mailchimp (its reason quotes the address)
    - after the delivery: 1 waiting, 1 retrying after an error, 1 sent without a recorded answer (maybe held)
    """
    for n in range(1, 7):
        member(("email", f"a{n}@x.com"))
    member(("email", "two1@x.com"), ("email", "two2@x.com"), ("customer", "c-two"))
    member(("customer", "c-none"))
    member(("google_advertising_id", "6f1c2a2e-8f8e-4a53-9d56-3b8a1c4d5e6f"))
    member(("email", "bad@under_score.com"))
    member(("email", "fake1@x.com"))
    member(("email", "fake2@x.com"))
    member(("email", "comp@x.com"))
    profiles.profile_upsert(identities=[{"type": "email", "value": "outsider@x.com"}], attributes={"plan": "free"})
    local_mailchimp.reject_emails.update({"fake1@x.com", "fake2@x.com"})
    local_mailchimp.mark_compliance_state(LIST_ID, "comp@x.com")

    deliver_connection(connection_id=connection.pk)
    assert not PendingChange.objects.filter(connection=connection).exists()

    member(("email", "later@x.com"))  # waiting in the outbox
    member(("email", "retry@x.com"))
    PendingChange.objects.filter(connection=connection, value="retry@x.com").update(
        attempts=2, last_error="HTTP 503", next_attempt_at=timezone.now() + timezone.timedelta(minutes=5)
    )
    # Sent, the answer never recorded: delivery's write-ahead state, the outbox row deleted with the send.
    member(("email", "held@x.com"))
    PendingChange.objects.filter(connection=connection, value="held@x.com").delete()
    ConnectionMember.objects.create(
        connection=connection,
        identity_type="email",
        value="held@x.com",
        state=ConnectionMember.State.MAYBE_HELD,
        updated_at=timezone.now(),
    )
    return connection


def losses(stage) -> dict[str, int]:
    return {loss.reason: loss.count for loss in stage.lost}


# Each step of the population's funnel and its exact number.
STAGES = [
    ("audience", 16),  # members
    ("with_accepted_identity", 14),  # members with an email
    ("accepted_identities", 15),  # their emails (one member has two)
    ("valid", 14),  # bad@under_score.com is no address Mailchimp takes
    ("delivered", 12),  # one waiting, one retrying
    ("accepted", 8),  # 3 refused, 1 sent without a recorded answer
]
FAKE = (
    "rejected: [identity] looks fake or invalid, please enter a real email address. "
    "(field email_address: Please enter a real email address.)"
)


def test_every_step_of_the_funnel_on_a_mixed_population(population):
    funnel = identity_funnel(population)

    assert [(s.key, s.count) for s in funnel.stages] == STAGES
    assert losses(funnel.stage("with_accepted_identity")) == {"no identity of an accepted type (email)": 2}
    assert funnel.stage("accepted_identities").by_type == {"email": 15}
    assert losses(funnel.stage("valid")) == {MAILCHIMP_EMAIL.reason: 1}
    assert losses(funnel.stage("delivered")) == {"waiting to be sent": 1, "retrying after an error": 1}
    accepted = losses(funnel.stage("accepted"))
    assert accepted.pop(FAKE) == 2  # the two addresses' reasons are one reason once the address is masked
    compliance = next(reason for reason in accepted if "compliance state" in reason)
    assert accepted.pop(compliance) == 1
    assert accepted == {"sent, the partner's answer not recorded (maybe held)": 1}
    assert funnel.rejected == 3
    top = funnel.rejection_reasons[0]
    assert (top.reason, top.count) == (FAKE.removeprefix("rejected: "), 2)
    assert not any("@" in loss.reason for stage in funnel.stages for loss in stage.lost)
    # Every step's losses account for the difference with the next one (members fan out to identities once).
    stages = funnel.stages
    for before, after in itertools.pairwise(stages[2:]):
        assert before.count - sum(loss.count for loss in after.lost) == after.count, after.key
    assert stages[0].count - sum(loss.count for loss in stages[1].lost) == stages[1].count

    # The partner's own count: Mailchimp's subscribed members, read from the local server's GET /lists/{id}.
    assert funnel.partner_count.available and funnel.partner_count.count == 8
    assert "subscribed members only" in funnel.partner_count.note


def test_an_identity_is_lost_at_its_first_step_only(population):
    """bad@under_score.com was sent and refused by Mailchimp too: it counts as invalid, not as rejected."""
    assert ConnectionMember.objects.get(value="bad@under_score.com").state == ConnectionMember.State.REJECTED
    funnel = identity_funnel(population, with_partner_count=False)
    assert funnel.rejected == 3
    assert funnel.partner_count.reason == "not asked"


def test_the_checks_read_alike_in_python_and_in_postgresql(db):
    """The funnel counts in SQL what partners decide in Python (IdentityCheck.normalise)."""
    values = [
        "a@x.com",
        "A.B+c@Sub.Example.ORG",
        "bad@under_score.com",
        "x@-dash.com",
        "x@dash-.com",
        "x@nodot",
        "two@@x.com",
        "sp ace@x.com",
        "x@y.c",
        "ü@x.com",
    ]
    regex = "%s " + database.operators["regex"]
    for check in (MAILCHIMP_EMAIL, BRAZE_EMAIL):
        with database.cursor() as cursor:
            for value in values:
                cursor.execute(f"SELECT {regex % ('LOWER(%s)', '%s')}", [value, f"^(?:{check.pattern})$"])
                assert bool(cursor.fetchone()[0]) == (check.normalise(value) is not None), (check.pattern, value)


def test_the_partner_count_is_cached_briefly(population, local_mailchimp):
    assert partner_count(population).count == 8
    local_mailchimp.reset()  # the list is gone: a fresh ask would fail
    assert partner_count(population).count == 8  # answered from the cache
    fresh = partner_count(population, use_cache=False)
    assert not fresh.available and fresh.count is None
    assert fresh.reason.startswith("unavailable: ") and "abc123" in fresh.reason


@pytest.fixture
def silent_partner(settings) -> Iterator[str]:
    """A server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/3.0"
    stop.set()
    thread.join()
    for sock in accepted:
        sock.close()
    server.close()


def test_a_partner_that_does_not_answer_is_unavailable_within_the_timeout(connection, silent_partner, settings):
    settings.PARTNER_API_BASE_URLS = {"mailchimp": silent_partner}
    settings.FUNNEL_PARTNER_COUNT_TIMEOUT_SECONDS = 0.5
    cache.clear()
    started = time.monotonic()
    count = partner_count(connection)
    assert time.monotonic() - started < 2
    assert not count.available
    assert count.reason == "unavailable: Mailchimp did not answer within 0.5 s"


def test_a_partner_without_a_count_says_so(db, audience, rings):
    from forwarding.lifecycle import connection_create

    settings = {"api_key": "k", "instance": "US-01", "email_identity_type": "email"}
    braze = output_create(name="Braze", partner_key="braze", settings=settings)
    connection = connection_create(audience=audience, output=braze, settings={})
    member(("email", "a@x.com"), ("customer", "c-a"))
    member(("google_advertising_id", "6f1c2a2e-8f8e-4a53-9d56-3b8a1c4d5e6f"))
    funnel = identity_funnel(connection)
    assert not funnel.partner_count.supported and not funnel.partner_count.available
    assert funnel.stage("with_accepted_identity").count == 1
    assert funnel.stage("accepted_identities").by_type == {"customer": 1, "email": 1}
    assert losses(funnel.stage("delivered")) == {"waiting to be sent": 2}


def test_the_api_answers_the_funnel(api, population):
    response = api.get(f"/api/v1/connections/{population.pk}/funnel/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [(s["key"], s["count"]) for s in body["stages"]] == STAGES
    assert body["partner_count"] == {
        "supported": True,
        "available": True,
        "count": 8,
        "reason": "",
        "note": body["partner_count"]["note"],
    }
    assert body["rejected"] == 3
    assert api.get("/api/v1/connections/999999/funnel/").status_code == 404


def test_the_api_answers_200_when_the_partner_count_fails(api, population, local_mailchimp):
    local_mailchimp.reset()
    cache.clear()
    body = api.get(f"/api/v1/connections/{population.pk}/funnel/").json()
    assert body["partner_count"]["available"] is False
    assert body["partner_count"]["reason"].startswith("unavailable: ")
    assert body["stages"][0]["count"] == 16


def test_the_connection_page_shows_the_funnel(admin_client, population):
    html = admin_client.get(f"/admin/connections/connection/{population.pk}/change/").content.decode()
    section = html[html.index('id="identity-funnel"') :]
    section = section[: section.index("</fieldset>")]
    text = re.sub(r"\s+", " ", html_module.unescape(re.sub(r"<[^>]+>", " ", section)))
    assert "Audience size 16 members" in text
    assert "Members with an identity of an accepted type (email) 14 members" in text
    assert "Delivered (sent to the partner) 12 identities" in text
    assert "Accepted by the partner 8 identities" in text
    assert "Mailchimp's own count 8" in text
    assert "looks fake or invalid" in text and "@x.com" not in text

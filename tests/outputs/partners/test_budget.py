"""A partner account's request budget (outputs/partners/budget.py), shared in a real Redis: several
connections on one Braze account together stay under its rate limit, counted at a local Braze server."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from local_partners.braze import LocalBrazeServer
from outputs.partners.braze import Braze
from outputs.partners.budget import RequestBudget, RequestRate, configured_rates
from outputs.partners.http import TransientError
from tests.fixtures.api import errors

KEY = "braze-budget-key"


@pytest.fixture(autouse=True)
def _redis(budget_redis) -> None:
    """Every test here needs the budgets' Redis (tests/conftest.py)."""


class Counting(LocalBrazeServer):
    """The local Braze, recording when each track request arrived and what it was answered."""

    def __init__(self, **kwargs) -> None:
        self.arrivals: list[tuple[float, int]] = []
        super().__init__(api_keys=[KEY, "another-key"], **kwargs)

    def dispatch(self, method, path, authorization, raw):  # type: ignore[no-untyped-def]
        at = time.time()
        answer = super().dispatch(method, path, authorization, raw)
        with self._lock:
            self.arrivals.append((at, answer.status))
        return answer

    def most_in_any_window(self) -> int:
        times = sorted(at for at, _ in self.arrivals)
        return max((sum(1 for t in times if start <= t < start + self.rate_window) for start in times), default=0)


def connection(settings, server: Counting, api_key: str = KEY) -> Braze:
    """A Braze output's partner (each one its own client and keep-alive session, as each delivery has)."""
    settings.PARTNER_API_BASE_URLS = {"braze": server.base_url}
    return Braze({"api_key": api_key, "instance": "US-01"})


def track(partner: Braze, n: int) -> None:
    partner.send({"attributes": [{"external_id": f"user-{n}", "SegmentMembership": {"add": ["1"]}}]})


def test_two_connections_of_one_account_never_exceed_its_budget_together(settings):
    settings.PARTNER_REQUEST_RATES = {"braze": "4/0.5"}  # the plan of this account: 4 requests per 0.5 s
    with Counting(rate_limit=4, rate_window=0.5) as server:
        refused: list[TransientError] = []

        def deliver(partner: Braze, first: int) -> None:
            for n in range(first, first + 10):
                while True:
                    try:
                        track(partner, n)
                        break
                    except TransientError as exc:  # the connection would wait as a whole, then send again
                        refused.append(exc)
                        time.sleep(exc.retry_after or 0.1)

        threads = [threading.Thread(target=deliver, args=(connection(settings, server), first)) for first in (0, 100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    statuses = [status for _, status in server.arrivals]
    assert statuses.count(201) == 20
    assert 429 not in statuses
    assert server.most_in_any_window() <= 4
    assert all(exc.status == 429 and exc.retry_after for exc in refused)


def test_a_request_waits_for_a_token_briefly_then_is_refused_as_a_429_would_be():
    short = RequestBudget("account-short", RequestRate(requests=1, per_seconds=0.3))
    short.take("POST /users/track")
    started = time.monotonic()
    short.take("POST /users/track")  # waits the exact time until the first token leaves the window
    assert 0.25 <= time.monotonic() - started < 0.9

    long = RequestBudget("account-long", RequestRate(requests=2, per_seconds=30))
    long.take("POST /users/track")
    long.take("POST /users/track")
    started = time.monotonic()
    with pytest.raises(TransientError) as refused:
        long.take("POST /users/track")
    assert time.monotonic() - started < 0.2  # a wait past MAX_WAIT_SECONDS is not waited here
    assert refused.value.status == 429
    assert 25 < refused.value.retry_after <= 32
    assert "request budget (2 per 30 s)" in refused.value.message


def test_remaining_0_holds_the_accounts_other_connections_until_the_reset(settings):
    with Counting(rate_limit=3, rate_window=2.0) as server:
        first, other = connection(settings, server), connection(settings, server)
        for n in range(3):
            track(first, n)  # the third answer says X-RateLimit-Remaining: 0
        with pytest.raises(TransientError) as held:
            track(other, 3)  # its own client never saw that answer: the account's shared budget holds it
        assert held.value.status == 429 and 0 < held.value.retry_after <= 4
        assert [status for _, status in server.arrivals] == [201, 201, 201]  # nothing was sent, nor refused
        # Another account is not held.
        connection(settings, server, api_key="another-key").client().budget.take("POST /users/track")


def test_without_redis_the_budget_is_not_enforced_and_says_so_once(settings, caplog):
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    account = RequestBudget("account-without-redis", RequestRate(requests=1, per_seconds=60))
    with caplog.at_level(logging.WARNING, logger="outputs.partners.budget"):
        for _ in range(3):
            account.take("POST /users/track")
        account.hold_until(time.time() + 60)
        account.take("POST /users/track")
    assert [r.getMessage() for r in caplog.records] == [
        "partner request budgets are not enforced: Redis is unreachable (ConnectionError)"
    ]


def test_partner_request_rates_override_the_declared_rate_and_name_the_setting(settings):
    assert Braze({"api_key": KEY, "instance": "US-01"}).request_budget().rate == RequestRate(3000, 3)
    settings.PARTNER_REQUEST_RATES = {"braze": "2500/3"}
    assert Braze({"api_key": KEY, "instance": "US-01"}).request_budget().rate == RequestRate(2500, 3)
    settings.PARTNER_REQUEST_RATES = {"braze": "fast"}
    with pytest.raises(ImproperlyConfigured, match="PARTNER_REQUEST_RATES"):
        configured_rates()


def test_an_output_states_its_own_rate_over_the_deployment_s_and_the_partner_s(settings):
    settings.PARTNER_REQUEST_RATES = {"braze": "2500/3"}
    configuration = Braze.clean_configuration({"api_key": KEY, "instance": "US-01", "request_rate": " 250000/3600 "})
    assert configuration["request_rate"] == "250000/3600"
    assert Braze(configuration).request_budget().rate == RequestRate(250_000, 3600)
    # Left empty: the deployment's override, else the partner's declared default.
    configuration = Braze.clean_configuration({"api_key": KEY, "instance": "US-01", "request_rate": ""})
    assert Braze(configuration).request_budget().rate == RequestRate(2500, 3)
    settings.PARTNER_REQUEST_RATES = {}
    assert Braze(configuration).request_budget().rate == RequestRate(3000, 3)
    assert Braze.request_rate_setting in {s.name for s in Braze.configuration_settings}


@pytest.mark.parametrize("rate", ["fast", "0/3", "3000/0", "3000/-1", "3000/nan", "3000/inf", "3000", "1.5/3"])
def test_a_bad_rate_is_refused_naming_the_field(rate):
    with pytest.raises(ValidationError) as error:
        Braze.clean_configuration({"api_key": KEY, "instance": "US-01", "request_rate": rate})
    assert list(error.value.message_dict) == ["request_rate"]
    assert "is not a request rate" in error.value.message_dict["request_rate"][0]


@pytest.mark.django_db
def test_the_api_refuses_a_bad_rate_with_a_400_naming_the_field(api):
    body = {"name": "Braze", "partner": "braze", "settings": {"api_key": KEY, "instance": "US-01", "request_rate": "x"}}
    response = api.post("/api/v1/outputs/", body, format="json")
    assert response.status_code == 400 and list(errors(response)) == ["request_rate"]


def test_a_partner_naming_a_rate_setting_it_does_not_declare_is_refused_at_import():
    with pytest.raises(TypeError, match="'rate' checked by check_request_rate"):

        class Careless(Braze):
            key = "careless"
            request_rate_setting = "rate"

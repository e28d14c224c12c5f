"""A partner account's request budget, shared by every connection, worker and host (kept in Redis).

A partner declares its request rate limit as data (`Partner.request_rate`, e.g. Braze's 3,000 requests per
3 s; PARTNER_REQUEST_RATES overrides it per partner, for another plan). Before every request its client
takes a token from the account's budget (RequestBudget.take): a sliding-window log in Redis, one sorted set
per account (keyed by the account: the partner and its credentials), so the connections of one account
together never send more than the limit in any window of that length (a partner counting in fixed windows
is then never exceeded either). The window is taken a little longer than declared (WINDOW_MARGIN), as the
requests reach the partner a little later, and not all equally late, than they take their token.

* No token: the request waits for the exact time until the oldest one leaves the window, up to
  MAX_WAIT_SECONDS; past that it is refused as a 429 would be (a BudgetRefused, a TransientError carrying the
  wait as its retry_after), so the connection, and its account, wait as a whole (forwarding/recovery.py); as
  we chose not to call, the refusal counts as no failure of the partner (no outage timer, fault or alert).
* The partner's answer says the window is used up (Braze: X-RateLimit-Remaining 0 with X-RateLimit-Reset):
  hold_until() empties the account's budget until then, so the account's other connections wait too
  instead of being refused.
* Redis unreachable: the budget is not enforced (logged, once a minute), as the account's concurrency
  cap (forwarding/accounts.py); the partner's own 429s still are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from outputs.partners.http import BudgetRefused

logger = logging.getLogger(__name__)

# The longest a request waits for a token before it is refused (and its connection waits as a whole).
MAX_WAIT_SECONDS = 1.0
# The window is taken this much longer than declared: requests arrive at the partner a little after they
# take their token, some later than others, so a window exactly as declared could let one too many in.
WINDOW_MARGIN = 0.05
# After Redis failed, it is not asked again for this long (a call must not wait on a dead Redis each time).
REDIS_PAUSE_SECONDS = 5.0
REDIS_WARNING_EVERY_SECONDS = 60.0

# KEYS[1]: the account's log (a sorted set of tokens scored by when taken, in ms), KEYS[2]: until when the
# partner said the budget is empty (ms). ARGV: window (ms), requests, the token's name. Redis' own clock, so
# every host agrees. Returns 0 when the token is taken, else the ms to wait for one.
TAKE_TOKEN = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if held > now then
  return held - now
end
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

# KEYS[1]: the account's hold. ARGV: until (epoch ms). Never shortens a hold already set.
HOLD = """
local until_ms = tonumber(ARGV[1])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
if until_ms > now and until_ms > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], until_ms, 'PX', until_ms - now + 1000)
end
"""


@dataclass(frozen=True)
class RequestRate:
    """A partner's request rate limit: at most `requests` per `per_seconds` per account."""

    requests: int
    per_seconds: float

    def __post_init__(self) -> None:
        if self.requests < 1 or not 0 < self.per_seconds < math.inf:
            raise ValueError(f"a request rate needs requests >= 1 and per_seconds > 0, not {self}")

    @classmethod
    def parse(cls, text: str) -> RequestRate:
        """ "3000/3": 3,000 requests per 3 seconds."""
        requests, _, seconds = str(text).partition("/")
        try:
            return cls(int(requests), float(seconds))
        except ValueError:
            raise ValueError(f"'{text}' is not a request rate such as 3000/3 (requests per seconds)") from None

    def __str__(self) -> str:
        """As parse() reads it: "3000/3"."""
        return f"{self.requests}/{self.per_seconds:g}"


def configured_rates() -> dict[str, RequestRate]:
    """PARTNER_REQUEST_RATES: per partner key, a rate overriding the partner's declared one."""
    rates = getattr(settings, "PARTNER_REQUEST_RATES", {}) or {}
    try:
        return {key: RequestRate.parse(value) for key, value in rates.items()}
    except (AttributeError, ValueError) as exc:
        raise ImproperlyConfigured(f"PARTNER_REQUEST_RATES: {exc}") from None


def account_key(partner_key: str, configuration: Mapping[str, Any], secret_names: frozenset[str]) -> str:
    """A partner account (one set of credentials): its partner and secret settings, hashed."""
    secrets = {k: v for k, v in configuration.items() if k in secret_names}
    text = json.dumps([partner_key, secrets], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Redis:
    def __init__(self, url: str) -> None:
        self.connection = redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=0.25)
        self.take = self.connection.register_script(TAKE_TOKEN)
        self.hold = self.connection.register_script(HOLD)


@cache
def _client(url: str) -> _Redis:
    return _Redis(url)


_paused_until = 0.0  # monotonic; Redis is not asked before then
_warned_at = float("-inf")


def _redis() -> _Redis | None:
    if time.monotonic() < _paused_until:
        return None
    return _client(settings.RATE_LIMIT_REDIS_URL)


def _redis_failed(exc: Exception) -> None:
    global _paused_until, _warned_at
    now = time.monotonic()
    _paused_until = now + REDIS_PAUSE_SECONDS
    if now - _warned_at >= REDIS_WARNING_EVERY_SECONDS:
        _warned_at = now
        logger.warning("partner request budgets are not enforced: Redis is unreachable (%s)", type(exc).__name__)


class RequestBudget:
    """The request budget of one partner account (`account`: its account_key())."""

    def __init__(self, account: str, rate: RequestRate) -> None:
        self.rate = rate
        prefix = f"{settings.RATE_LIMIT_KEY_PREFIX}partner-account:{account}"
        self.log_key = f"{prefix}:requests"
        self.hold_key = f"{prefix}:held"
        self.window_ms = int(rate.per_seconds * (1 + WINDOW_MARGIN) * 1000)

    def take(self, what: str) -> None:
        """Take a token for one request (`what`, e.g. "POST /users/track", names it in the error), waiting up
        to MAX_WAIT_SECONDS for one; else raise BudgetRefused (a TransientError, as a 429 would be), carrying
        the wait."""
        deadline = time.monotonic() + MAX_WAIT_SECONDS
        while True:
            wait = self._try_take()
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                raise BudgetRefused(
                    f"{what}: the partner account's request budget ({self.rate.requests} per "
                    f"{self.rate.per_seconds:g} s) is used up for {wait:.1f} s",
                    status=429,
                    retry_after=wait,
                )
            time.sleep(wait)

    def _try_take(self) -> float:
        """0 when a token was taken (or Redis is unreachable), else the seconds until one frees."""
        client = _redis()
        if client is None:
            return 0.0
        try:
            waited_ms = client.take(
                keys=[self.log_key, self.hold_key], args=[self.window_ms, self.rate.requests, uuid.uuid4().hex]
            )
        except redis.RedisError as exc:
            _redis_failed(exc)
            return 0.0
        return int(waited_ms) / 1000

    def hold_until(self, until: float) -> None:
        """The partner said the account's window is used up until `until` (epoch seconds): no connection of
        the account takes a token before then."""
        client = _redis()
        if client is None:
            return
        try:
            client.hold(keys=[self.hold_key], args=[int(until * 1000)])
        except redis.RedisError as exc:
            _redis_failed(exc)

"""Limits in front of the Events API, like mParticle's (README, "Events API").

* **Per input, counted in batches** (a /v2/bulkevents request of 100 batches costs 100, as mParticle
  counts its 270 batches/s per account): a token bucket of EVENTS_API_RATE_BURST batches refilled at
  EVENTS_API_RATE_LIMIT batches/s, kept in Redis (GCRA: one key per input holding its "theoretical
  arrival time"), so it holds across web workers and hosts. Over it: 429 with `Retry-After` and
  mParticle's `X-mp-rate-limit-exceeded` header. A request costing more than the whole burst is let
  through only when the bucket is full, and the input then waits until it is paid back.
* **Throttled failed authentication**: failures are counted per client address and per key in fixed
  windows of EVENTS_API_AUTH_FAILURE_WINDOW seconds; past EVENTS_API_AUTH_FAILURES_PER_CLIENT (or
  _PER_KEY) failures, that client's (or key's) requests answer 429 until the window ends, without the
  credentials being checked. So that a stranger cannot lock an input out by failing with its key (keys
  ship inside apps), a key's lock-out spares the addresses that authenticated with it in the last window.

Redis unreachable: traffic goes through (never a 5xx because of a limit), a warning is logged at most
once a minute, and Redis is not asked again for a few seconds (so a dead Redis adds no latency).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

# Injected in tests (time is never slept on there).
clock = time.time

# After Redis fails, do not ask it again for this long (seconds); warn at most this often.
REDIS_PAUSE_SECONDS = 5.0
REDIS_WARNING_EVERY_SECONDS = 60.0
_redis_paused_until = 0.0
_redis_warned_at = -math.inf

# GCRA, in microseconds (exact integers in Lua's doubles). KEYS[1]: the input's bucket.
# ARGV: now, microseconds per batch, burst (batches), cost (batches). Returns {allowed (0/1), wait}.
GCRA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = interval * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * tonumber(ARGV[4])
if new_tat - tolerance > now and tat > now then
  return {0, string.format('%.0f', math.min(new_tat - tolerance, tat) - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, '0'}
"""

# KEYS: failure counters (this window). ARGV[1]: their time to live (s). Returns the new counts.
COUNT_FAILURE = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('EXPIRE', key, ARGV[1]) end
end
return counts
"""


class _Redis:
    def __init__(self, url: str) -> None:
        self.connection = redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=0.25)
        self.gcra = self.connection.register_script(GCRA)
        self.count_failure = self.connection.register_script(COUNT_FAILURE)


@cache
def _client(url: str) -> _Redis:
    return _Redis(url)


def _redis() -> _Redis | None:
    """The limits' Redis, or None while it is known to be unreachable."""
    if time.monotonic() < _redis_paused_until:
        return None
    return _client(settings.RATE_LIMIT_REDIS_URL)


def _redis_failed(exc: Exception) -> None:
    global _redis_paused_until, _redis_warned_at
    now = time.monotonic()
    _redis_paused_until = now + REDIS_PAUSE_SECONDS
    if now - _redis_warned_at >= REDIS_WARNING_EVERY_SECONDS:
        _redis_warned_at = now
        logger.warning("Events API limits are not enforced: Redis is unreachable (%s)", type(exc).__name__)


def _key(*parts: str) -> str:
    return settings.RATE_LIMIT_KEY_PREFIX + ":".join(parts)


def _digest(value: str) -> str:
    # Keys are of any length and bytes; Redis keys carry a digest of them.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def client_address(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies that each append the address
    they received from to X-Forwarded-For, the address the outermost trusted proxy saw."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if len(forwarded) >= proxies and forwarded[-proxies]:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR", "")


def _too_many(code: str, message: str, retry_after: float, *, limit: str | None = None) -> JsonResponse:
    seconds = max(1, math.ceil(retry_after))
    response = JsonResponse({"errors": [{"code": code, "message": f"{message} Retry after {seconds} s."}]}, status=429)
    response["Retry-After"] = str(seconds)
    if limit is not None:
        response["X-mp-rate-limit-exceeded"] = limit
    return response


def _failure_keys(request: HttpRequest, credentials: tuple[str, str] | None, now: float) -> dict[str, str]:
    window = int(now // settings.EVENTS_API_AUTH_FAILURE_WINDOW)
    keys = {"client": _key("authfail", "client", str(window), _digest(client_address(request)))}
    if credentials is not None:
        keys["key"] = _key("authfail", "key", str(window), _digest(credentials[0]))
    return keys


def _known_client_key(request: HttpRequest, input_key: str) -> str:
    return _key("authok", _digest(input_key), _digest(client_address(request)))


def authentication_refused(request: HttpRequest, credentials: tuple[str, str] | None) -> JsonResponse | None:
    """429 without checking the credentials when this client, or this key, failed too often this window."""
    limits = {"client": settings.EVENTS_API_AUTH_FAILURES_PER_CLIENT, "key": settings.EVENTS_API_AUTH_FAILURES_PER_KEY}
    if not any(limits.values()) or (connection := _redis()) is None:
        return None
    now = clock()
    keys = _failure_keys(request, credentials, now)
    names = list(keys)
    lookups = [keys[name] for name in names]
    if credentials is not None:
        lookups.append(_known_client_key(request, credentials[0]))
    try:
        values = connection.connection.mget(lookups)
    except redis.RedisError as exc:
        _redis_failed(exc)
        return None
    counts = {name: int(value or 0) for name, value in zip(names, values, strict=False)}
    known_client = credentials is not None and values[-1] is not None
    window = settings.EVENTS_API_AUTH_FAILURE_WINDOW
    retry_after = window - now % window
    if limits["client"] and counts["client"] >= limits["client"]:
        return _too_many("authentication_throttled", "Too many failed authentications from this client.", retry_after)
    if limits["key"] and counts.get("key", 0) >= limits["key"] and not known_client:
        return _too_many("authentication_throttled", "Too many failed authentications with this key.", retry_after)
    return None


def authentication_failed(request: HttpRequest, credentials: tuple[str, str] | None) -> None:
    """Count a failed authentication for this client and this key."""
    throttled = settings.EVENTS_API_AUTH_FAILURES_PER_CLIENT or settings.EVENTS_API_AUTH_FAILURES_PER_KEY
    if not throttled or (connection := _redis()) is None:
        return
    keys = list(_failure_keys(request, credentials, clock()).values())
    try:
        connection.count_failure(keys=keys, args=[settings.EVENTS_API_AUTH_FAILURE_WINDOW])
    except redis.RedisError as exc:
        _redis_failed(exc)


def batches_refused(request: HttpRequest, input: Any, batches: int) -> JsonResponse | None:
    """Take `batches` from the input's bucket: None when allowed, else the 429 to answer."""
    rate, burst = settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST
    spare_known_clients = bool(settings.EVENTS_API_AUTH_FAILURES_PER_KEY)
    if not (rate > 0 or spare_known_clients) or (connection := _redis()) is None:
        return None
    try:
        with connection.connection.pipeline(transaction=False) as pipe:
            if rate > 0:
                connection.gcra(
                    keys=[_key("batches", str(input.pk))],
                    args=[round(clock() * 1_000_000), repr(1_000_000 / rate), burst, batches],
                    client=pipe,
                )
            if spare_known_clients:  # this address authenticates with this key: a lock-out of the key spares it
                pipe.set(_known_client_key(request, input.key), 1, ex=settings.EVENTS_API_AUTH_FAILURE_WINDOW)
            results = pipe.execute()
    except redis.RedisError as exc:
        _redis_failed(exc)
        return None
    if rate <= 0:
        return None
    allowed, wait = results[0]
    if int(allowed):
        return None
    return _too_many(
        "rate_limited",
        f"This input is over its rate limit of {rate:g} batches per second (bursts of {burst}).",
        int(wait) / 1_000_000,
        limit="feed",
    )

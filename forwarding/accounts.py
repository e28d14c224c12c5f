"""A partner account (one set of credentials) shared by several outputs: its limits are the account's.

* **Retry-After**: a 429 to one connection holds back every connection of the account
  (forwarding/recovery.py throttle_account()).
* **Concurrency cap**: at most FORWARDING_ACCOUNT_MAX_CONNECTIONS deliveries at once per account
  (Mailchimp allows 10 simultaneous connections per API key). A delivery holds one keep-alive HTTP
  connection for its whole drain, so it takes a slot for the drain (AccountSlot), kept in Redis (a
  sorted set of holders scored by expiry, renewed with the lease): a killed worker's slot expires
  with its lease. A delivery finding the account full leaves, and its connection is rung again
  shortly. Redis unreachable: the cap is not enforced (the partner's own 429s still are).
* **Request budget**: a partner declaring a request rate (Braze: 3,000 per 3 s) has its requests
  counted per account in Redis, before each one goes out (outputs/partners/budget.py).
"""

from __future__ import annotations

import logging
import time
from functools import cache

import redis
from django.conf import settings

from outputs.models import Output
from outputs.partners import budget

logger = logging.getLogger(__name__)

# KEYS[1]: the account's slots. ARGV: now, holder, expiry, cap. Returns 1 when the slot is taken.
TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) - tonumber(ARGV[1])) + 60)
  return 1
end
return 0
"""


def account_key(output: Output) -> str:
    """The partner account an output uses: its partner and credentials (its secret settings), hashed."""
    return budget.account_key(output.partner_key, output.configuration(), output.partner_class.secret_setting_names())


def outputs_of_account(output: Output) -> list[int]:
    """Ids of the outputs using the same partner account as `output` (itself included)."""
    key = account_key(output)
    candidates = Output.objects.filter(partner_key=output.partner_key)
    return [o.pk for o in candidates if o.pk == output.pk or account_key(o) == key]


@cache
def _redis(url: str) -> tuple[redis.Redis, object]:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    return client, client.register_script(TAKE_SLOT)


class AccountSlot:
    """One of the account's concurrent delivery slots, held by `holder` (a lease's token)."""

    def __init__(self, output: Output, holder: str) -> None:
        self.key = f"{settings.RATE_LIMIT_KEY_PREFIX}partner-account:{account_key(output)}:slots"
        self.holder = holder

    def take(self) -> bool:
        """Take (or extend) the slot for one lease; False when the account is at its cap."""
        config = settings.FORWARDING
        now = time.time()
        _, script = _redis(settings.RATE_LIMIT_REDIS_URL)
        try:
            return bool(
                script(
                    keys=[self.key],
                    args=[now, self.holder, now + float(config["LEASE_SECONDS"]), config["ACCOUNT_MAX_CONNECTIONS"]],
                )
            )
        except redis.RedisError:
            logger.warning("partner account cap not enforced: Redis unreachable", exc_info=True)
            return True

    def release(self) -> None:
        client, _ = _redis(settings.RATE_LIMIT_REDIS_URL)
        try:
            client.zrem(self.key, self.holder)
        except redis.RedisError:
            pass  # it expires with the lease

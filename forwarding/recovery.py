"""A connection's health as a whole: backoff while its partner fails, probes, throttling, outage faults.

When a whole partner call fails (connection refused, 5xx, 429, a timeout), the partner, not one
member, is the problem, so the *connection* backs off as a whole: `throttled_until` is set, and
nobody sends for it before then (the lease and the sweeper honour it, forwarding/leases.py and
forwarding/sweeper.py). Its pending changes stay due. The waits grow exponentially up to
FORWARDING_PROBE_MAX_SECONDS (10 s by default), and while the connection is failing each attempt is
a probe: one small batch (PROBE_BATCH members). The first probe that succeeds ends the run of
failures and the whole backlog goes out at once, in full batches. Recovery after an outage thus
takes at most one probe interval, not the per-row backoff of every change.

A 429's Retry-After holds back the whole connection, and every connection whose output uses the
same partner account (the same credentials): a partner's rate limit is per account. A call our own request
budget refused (BudgetRefused: we chose not to call) holds them back the same way, and is no failure.

A long outage faults the connection (FORWARDING_OUTAGE_FAULT_MINUTES of continuous failure, 30 by
default), so that operators see it; an outage fault is probed every FORWARDING_FAULTED_PROBE_SECONDS
with the partner's credentials test, and the connection resumes by itself when the partner answers
again. A refusal (401/403, a missing list) faults the connection at once and waits for a person:
"resume when the test passes" (connection_resume_if_test_passes) resumes it once the fix works.

Per-member RETRY answers still back off per member (forwarding/delivery.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from connections.models import Connection
from forwarding import alerts
from forwarding.accounts import outputs_of_account
from forwarding.backoff import backoff_seconds
from forwarding.doorbell import ring_after_commit
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.partner_calls import audience_ref
from outputs.models import Output
from outputs.partners.http import AuthError, BudgetRefused, PartnerError, TransientError

logger = logging.getLogger(__name__)

# Members in a probe: one small request tells whether the partner is back.
PROBE_BATCH = 10


def batch_size(connection: Connection, batch_limit: int) -> int:
    """Full batches when healthy; a probe while the connection's calls are failing."""
    return min(batch_limit, PROBE_BATCH) if connection.failures else batch_limit


def attempt_result(error: PartnerError) -> str:
    """How a failed call is recorded (DeliveryAttempt.result)."""
    if isinstance(error, TransientError):
        return DeliveryAttempt.Result.TRANSIENT
    if isinstance(error, AuthError):
        return DeliveryAttempt.Result.AUTH
    return DeliveryAttempt.Result.PERMANENT


def call_succeeded(connection_id: int) -> None:
    """The partner answered: the run of failures, if any, is over."""
    Connection.objects.filter(pk=connection_id, failures__gt=0).update(failures=0, failing_since=None)


def call_failed(connection: Connection, error: TransientError) -> float:
    """A whole call failed transiently: the connection waits as a whole (and its partner account,
    for a Retry-After). Faults it after FORWARDING_OUTAGE_FAULT_MINUTES of failing. Returns the wait."""
    now = timezone.now()
    config = settings.FORWARDING
    with transaction.atomic():
        current = Connection.objects.select_for_update().get(pk=connection.pk)
        failures = current.failures + 1
        failing_since = current.failing_since or now
        delay = backoff_seconds(failures, error.retry_after, maximum=config["PROBE_MAX_SECONDS"])
        until = now + timedelta(seconds=delay)
        Connection.objects.filter(pk=connection.pk).update(
            failures=failures, failing_since=failing_since, throttled_until=until
        )
        if now - failing_since >= timedelta(minutes=config["OUTAGE_FAULT_MINUTES"]):
            fault(
                connection.pk,
                Connection.FaultCause.OUTAGE,
                f"Every call failed for {config['OUTAGE_FAULT_MINUTES']:g} minutes; last error: {error.message}. "
                "Probed regularly: sending resumes by itself when the partner answers again.",
            )
    if error.retry_after:
        throttle_account(connection.output, until)
    return delay


def call_deferred(connection: Connection, error: BudgetRefused) -> float:
    """Our own request budget refused the call (outputs/partners/budget.py): the partner was not called. The
    connection, and every other of the account whose budget it is, waits until a token frees; its run of
    failures, and so its probes, outage timer, fault and alerts, are left as they are. Returns the wait."""
    wait = max(error.retry_after or 0.0, 0.0)
    throttle_account(connection.output, timezone.now() + timedelta(seconds=wait))
    return wait


def throttle_account(output: Output, until: datetime) -> int:
    """Every connection of every output using `output`'s partner account waits until `until`
    (never sooner than it already did). Returns how many were throttled."""
    throttled = Connection.objects.filter(output_id__in=outputs_of_account(output)).filter(
        Q(throttled_until__isnull=True) | Q(throttled_until__lt=until)
    )
    return throttled.update(throttled_until=until)


# --- faults ----------------------------------------------------------------------------------


def fault(connection_id: int, cause: str, reason: str) -> None:
    """Fault a sending connection (never an ending one: its clean-up goes on); the admins are alerted
    (forwarding/alerts.py) in the same transaction."""
    if alerts.change_status(connection_id, Connection.Status.FAULTED, reason=reason, fault_cause=cause) is None:
        return
    logger.warning("connection %s faulted (%s): %s", connection_id, cause, reason)


def probe_faulted(connection_id: int) -> str:
    """Test the partner for a connection faulted by an outage; resume it when the partner answers.
    Run by a task the sweeper rings (forwarding.tasks.probe_connection)."""
    # A probe is due only once per interval, whoever rings it: claim it first.
    now = timezone.now()
    claimed = Connection.objects.filter(
        Q(throttled_until__isnull=True) | Q(throttled_until__lte=now),
        pk=connection_id,
        status=Connection.Status.FAULTED,
        fault_cause=Connection.FaultCause.OUTAGE,
    ).update(throttled_until=now + timedelta(seconds=settings.FORWARDING["FAULTED_PROBE_SECONDS"]))
    if not claimed:
        return "not due"
    connection = Connection.objects.select_related("output", "audience").get(pk=connection_id)
    try:
        connection.output.partner().test_connection(connection.settings, audience_ref(connection.audience))
    except PartnerError as exc:
        return f"still failing: {exc.message}"
    return "resumed" if resume(connection_id, expected=Connection.Status.FAULTED) else "changed meanwhile"


def resume(connection_id: int, *, expected: str) -> bool:
    """Back to sending from `expected` (not from ending, nor from a status changed meanwhile):
    fault and backoff cleared, the outbox due now, delivery rung; a recovery is alerted."""
    with transaction.atomic():
        changed = alerts.change_status(
            connection_id,
            Connection.Status.SENDING,
            only_from=(expected,),
            alert_reason="The partner answered again.",
        )
        if changed is not None:
            clear_backoff(connection_id)
            ring_after_commit(connection_id)
    return changed is not None


def clear_backoff(connection_id: int) -> None:
    """A person or a probe says the partner works: no fault cause, no backoff, the outbox due now."""
    Connection.objects.filter(pk=connection_id).update(
        fault_cause="", failures=0, failing_since=None, throttled_until=None
    )
    PendingChange.objects.filter(connection_id=connection_id).update(next_attempt_at=timezone.now(), attempts=0)

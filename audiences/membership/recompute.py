"""Recomputing an audience's whole membership, writing only the difference.

On PostgreSQL the work is set-based and stays in the database: the new member set
(audiences.criteria.sql.member_sql) goes into a temporary table, from which the membership ledger
writes the profiles that enter and leave, the change log, and (through its consumers) the
forwarding outbox. Python holds no per-profile data, so memory does not grow with the audience. Elsewhere
(SQLite, for `make test` without PostgreSQL) profiles are evaluated in chunks with the
per-profile evaluator; the meaning is the same (docs/criteria.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db import connection as db
from django.db.models import F, Q
from django.utils import timezone

from audiences import criteria as criteria_lang
from audiences.criteria.facts import ProfileFacts
from audiences.criteria.sql import member_sql
from audiences.membership.deferred import ring_deferred_evaluations_after_commit
from audiences.membership.evaluation import load_facts
from audiences.membership.ledger import apply_membership_deltas, apply_membership_table
from audiences.membership.locks import lock_audience_for_recompute
from audiences.models import Audience, AudienceMembership, Profile
from config import queueing

logger = logging.getLogger(__name__)

CHUNK = 2000  # profiles per chunk on the per-profile fallback
NEW = "audience_recompute_new"  # the temporary table of the new member set
# The task (audiences/tasks.py) that runs recompute_audience, queued by name (config/queueing.py).
RECOMPUTE_TASK = "audiences.tasks.recompute_audience"


@dataclass(frozen=True)
class RecomputeResult:
    entered: int
    left: int
    size: int  # members after the recompute
    seconds: float
    skipped: bool = False  # stale criteria version, or the audience is gone

    def as_dict(self) -> dict[str, Any]:
        return {
            "entered": self.entered,
            "left": self.left,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "skipped": int(self.skipped),
        }


def recompute_audience(
    audience_id: int,
    *,
    now: datetime | None = None,
    criteria_version: int | None = None,
    reason: str = "recomputed",
) -> RecomputeResult:
    """Recompute one audience as of `now` and apply only the difference, in one transaction.

    A stale request (the criteria changed since it was queued) is a no-op; an audience that is
    not active empties (its members leave). The ledger tells its consumers (forwarding's outbox), and audiences
    whose criteria refer to this one are queued for recompute after commit."""
    started = time.perf_counter()
    now = now or timezone.now()
    try:
        result = _recompute(audience_id, now=now, criteria_version=criteria_version, reason=reason, started=started)
    except Exception as exc:
        # Rolled back; recorded on the audience in a transaction of its own, and backed off: the sweeper
        # leaves it until recompute_retry_at instead of re-running it on every sweep.
        record_recompute_failure(audience_id, exc, now=timezone.now())
        raise
    if not result.skipped:
        logger.info(
            "recomputed audience %s: %s entered, %s left, %s members in %.2fs",
            audience_id,
            result.entered,
            result.left,
            result.size,
            result.seconds,
        )
    return result


def _recompute(
    audience_id: int, *, now: datetime, criteria_version: int | None, reason: str, started: float
) -> RecomputeResult:
    with transaction.atomic():
        # Serialises recomputes of one audience (the second waits, then sees the first's result) and
        # keeps real-time evaluation out while the difference is applied (audiences/membership/locks.py).
        lock_audience_for_recompute(audience_id)
        # Requests that found the lock held deferred this audience: evaluated once this commits.
        ring_deferred_evaluations_after_commit(only_if_waiting=True)
        # Read after the lock, so a version bumped by a recompute we waited for is seen.
        audience = Audience.objects.filter(pk=audience_id).first()
        if audience is None or (criteria_version is not None and criteria_version != audience.criteria_version):
            return RecomputeResult(0, 0, 0, time.perf_counter() - started, skipped=True)
        if db.vendor == "postgresql":
            entered, left, size = _recompute_in_sql(audience, now=now, reason=reason)
        else:
            entered, left, size = _recompute_by_profile(audience, now=now, reason=reason)
        Audience.objects.filter(pk=audience_id).update(last_calculated_at=now, **NO_RECOMPUTE_FAILURE)
        if entered or left:
            _queue_dependants_after_commit(audience_id)
    return RecomputeResult(entered, left, size, time.perf_counter() - started)


# --- failures and backoff ---------------------------------------------------------------------

# After the n-th failure in a row, the next try waits RECOMPUTE_BACKOFF * 2**(n-1), at most RECOMPUTE_BACKOFF_MAX.
RECOMPUTE_BACKOFF = timedelta(minutes=1)
RECOMPUTE_BACKOFF_MAX = timedelta(hours=6)
NO_RECOMPUTE_FAILURE: dict[str, Any] = {
    "recompute_error": "",
    "recompute_failed_at": None,
    "recompute_failures": 0,
    "recompute_retry_at": None,
}


def recompute_backoff(failures: int) -> timedelta:
    """How long to wait before the next try after `failures` failures in a row (1, 2, 4, ... minutes)."""
    return min(RECOMPUTE_BACKOFF * 2 ** min(max(failures - 1, 0), 20), RECOMPUTE_BACKOFF_MAX)


def record_recompute_failure(audience_id: int, exc: BaseException, *, now: datetime) -> None:
    """Record a failed recompute on the audience (the reason, when, how many in a row) and when to try again."""
    logger.error("recompute of audience %s failed", audience_id, exc_info=exc)
    try:
        with transaction.atomic():
            audience = Audience.objects.select_for_update().filter(pk=audience_id).first()
            if audience is None:
                return
            failures = audience.recompute_failures + 1
            Audience.objects.filter(pk=audience_id).update(
                recompute_error=f"{type(exc).__name__}: {exc}"[:1000],
                recompute_failed_at=now,
                recompute_failures=failures,
                recompute_retry_at=now + recompute_backoff(failures),
            )
    except DatabaseError:
        # The database itself is the failure (unreachable, say): nothing can be recorded; the caller
        # still raises the original error, and the sweeper rings the recompute again later.
        logger.warning("could not record the failed recompute of audience %s", audience_id, exc_info=True)


def clear_recompute_failure(audience: Audience) -> None:
    """Forget the recorded failures (on the instance, saved by the caller): new criteria start afresh."""
    for name, value in NO_RECOMPUTE_FAILURE.items():
        setattr(audience, name, value)


def recompute_backed_off() -> Q:
    """Audiences whose last recompute failed and whose next try is not due yet, at now."""
    return Q(recompute_retry_at__gt=timezone.now())


def audiences_due_for_recompute(*, grace: timedelta) -> list[tuple[int, int]]:
    """(id, criteria version) of the audiences whose recompute was lost: active and never calculated, or
    changed since their last calculation, for longer than `grace`; not those backing off after a failure."""
    now = timezone.now()
    return list(
        Audience.objects.filter(updated_at__lt=now - grace)
        .filter(
            Q(last_calculated_at__isnull=True, status=Audience.Status.ACTIVE)
            | Q(last_calculated_at__lt=F("updated_at"))
        )
        .exclude(recompute_backed_off())
        .values_list("pk", "criteria_version")
    )


def _recompute_in_sql(audience: Audience, *, now: datetime, reason: str) -> tuple[int, int, int]:
    """The PostgreSQL path: the new member set into a temporary table, applied set-wise by the ledger, in the
    caller's transaction. Returns (entered, left, size)."""
    with db.cursor() as cursor:
        # IN / NOT IN under OR and NOT become hashed subplans; one that outgrows work_mem is
        # re-scanned per profile. Room for a few million ids, for this transaction only.
        cursor.execute(f"SET LOCAL work_mem = '{settings.RECOMPUTE_WORK_MEM}'")
        # Dropped at the end (so a caller's outer transaction may recompute twice); ON COMMIT DROP
        # is the safety net. An error rolls the CREATE back with everything else.
        if audience.status == Audience.Status.ACTIVE:
            members_sql, params = member_sql(audience.criteria, now=now)
            # CREATE TABLE AS, not INSERT ... SELECT: PostgreSQL runs the member query with parallel
            # workers only in the former (measured 1.4 s against 3.1 s at 1,000,000 profiles).
            cursor.execute(f"CREATE TEMPORARY TABLE {NEW} ON COMMIT DROP AS {members_sql}", params)
        else:
            cursor.execute(f"CREATE TEMPORARY TABLE {NEW} (profile_id bigint NOT NULL) ON COMMIT DROP")
        # The key is built after the load (faster than maintaining it row by row), and the
        # statistics let the planner choose hash anti-joins at scale.
        cursor.execute(f"ALTER TABLE {NEW} ADD PRIMARY KEY (profile_id)")
        cursor.execute(f"ANALYZE {NEW}")
        cursor.execute(f"SELECT count(*) FROM {NEW}")  # noqa: S608
        size = cursor.fetchone()[0]
    entered, left = apply_membership_table(audience_id=audience.pk, members_table=NEW, now=now, reason=reason)
    with db.cursor() as cursor:
        cursor.execute(f"DROP TABLE {NEW}")
    return entered, left, size


def _recompute_by_profile(audience: Audience, *, now: datetime, reason: str) -> tuple[int, int, int]:
    """The fallback: the per-profile evaluator over chunks of profiles, in the caller's transaction."""
    active = audience.status == Audience.Status.ACTIVE
    tree = audience.criteria
    events_since = criteria_lang.event_window_start(tree, now) if active else None
    entered_total = left_total = size = 0
    last_id = 0
    while True:
        ids = list(Profile.objects.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:CHUNK])
        if not ids:
            break
        last_id = ids[-1]
        current = set(
            AudienceMembership.objects.filter(audience_id=audience.pk, profile_id__in=ids).values_list(
                "profile_id", flat=True
            )
        )
        should: set[int] = set()
        if active:
            facts = load_facts(ids, now=now, events_since=events_since)
            should = {
                pk
                for pk in ids
                if criteria_lang.matches(tree, facts.get(pk) or ProfileFacts(profile_id=pk, attributes={}), now)
            }
        entered = sorted(should - current)
        left = sorted(current - should)
        apply_membership_deltas({audience.pk: (entered, left)}, now=now, reason=reason)
        entered_total += len(entered)
        left_total += len(left)
        size += len(should)
    return entered_total, left_total, size


def dependant_audience_ids(audience_id: int) -> list[int]:
    """The active audiences whose criteria refer to this audience (membership conditions)."""
    rows = Audience.objects.filter(status=Audience.Status.ACTIVE).exclude(pk=audience_id).values_list("pk", "criteria")
    return sorted(pk for pk, tree in rows if audience_id in criteria_lang.referenced_audiences(tree))


def recompute_queue(audience_id: int, criteria_version: int | None) -> None:
    """Queue a recompute of the audience (a stale version makes it a no-op). A broker outage only delays
    it: forwarding's sweeper queues audiences whose calculation is overdue."""
    queueing.send_safely(RECOMPUTE_TASK, audience_id, criteria_version)


def recompute_queue_after_commit(audience_id: int, criteria_version: int | None) -> None:
    """Queue a recompute once the current transaction commits (never for rolled-back work)."""
    transaction.on_commit(lambda: recompute_queue(audience_id, criteria_version))


def _queue_dependants_after_commit(audience_id: int) -> None:
    """Audiences that refer to this one see its new membership only when recomputed. Cycles are
    refused at validation, so this chain ends."""
    versions = dict(
        Audience.objects.filter(pk__in=dependant_audience_ids(audience_id)).values_list("pk", "criteria_version")
    )
    for pk, version in versions.items():
        recompute_queue_after_commit(pk, version)


# --- periodic work ----------------------------------------------------------------------------


def recompute_time_based_audiences(now: datetime | None = None) -> dict[str, Any]:
    """Recompute every active audience whose membership can change with the clock alone, each in
    its own transaction; one failing audience does not stop the others."""
    now = now or timezone.now()
    summary: dict[str, Any] = {"audiences": 0, "entered": 0, "left": 0, "failed": [], "results": {}}
    audience_ids = (
        Audience.objects.filter(status=Audience.Status.ACTIVE, depends_on_time=True)
        .exclude(recompute_backed_off())
        .values_list("pk", flat=True)
    )
    for audience_id in list(audience_ids.order_by("pk")):
        try:
            result = recompute_audience(audience_id, now=now, reason="time passed")
        except Exception:
            logger.exception("time-based recompute of audience %s failed", audience_id)
            summary["failed"].append(audience_id)
            continue
        summary["audiences"] += 1
        summary["entered"] += result.entered
        summary["left"] += result.left
        summary["results"][audience_id] = result.as_dict()
    return summary

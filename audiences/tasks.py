"""Thin tasks: each takes ids and calls one function. Queued by name (config/queueing.py)."""

from datetime import datetime

from celery import shared_task

from audiences import retention
from audiences.membership import deferred, recompute
from config import metrics


@shared_task(name=recompute.RECOMPUTE_TASK, acks_late=True)
def recompute_audience(audience_id: int, criteria_version: int | None = None) -> dict:
    result = recompute.recompute_audience(audience_id, criteria_version=criteria_version)
    if not result.skipped:
        metrics.RECOMPUTE_DURATION.observe(result.seconds)
    return result.as_dict()


@shared_task(name="audiences.tasks.recompute_time_based_audiences")
def recompute_time_based_audiences(now: datetime | None = None) -> dict:
    summary = recompute.recompute_time_based_audiences(now=now)
    for result in summary["results"].values():
        metrics.RECOMPUTE_DURATION.observe(result["seconds"])
    return summary


@shared_task(name=deferred.DEFERRED_TASK)
def evaluate_deferred() -> int:
    return deferred.evaluate_deferred()


@shared_task(name="audiences.tasks.purge_expired_events")
def purge_expired_events(now: datetime | None = None) -> dict:
    return retention.purge_expired_events(now=now)

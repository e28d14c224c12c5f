"""Forwarding's metrics (config/metrics.py has the page): what each delivery attempt did, and the outbox as it
stands, read from the database when Prometheus scrapes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime

from django.db import DatabaseError
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config import metrics
from connections.models import Connection
from forwarding.models import PendingChange

logger = logging.getLogger(__name__)


def record_delivery_attempt(
    *,
    partner: str,
    result: str,
    duration_seconds: float,
    delivered: int = 0,
    rejected: int = 0,
    retried: int = 0,
    error_class: str = "",
    planned_at: Iterable[datetime] = (),
    acknowledged_at: datetime | None = None,
) -> None:
    """Count one partner call after its outcome committed. ``planned_at``: when each change the partner
    acknowledged (delivered or rejected) entered the outbox, for the planned-to-acknowledged latency."""
    metrics.DELIVERY_ATTEMPTS.labels(partner, result).inc()
    metrics.DELIVERY_DURATION.labels(partner).observe(duration_seconds)
    for outcome, count in (("delivered", delivered), ("rejected", rejected), ("retried", retried)):
        if count:
            metrics.DELIVERED_CHANGES.labels(partner, outcome).inc(count)
    if error_class:
        metrics.PARTNER_ERRORS.labels(partner, error_class).inc()
    acknowledged_at = acknowledged_at or timezone.now()
    latency = metrics.DELIVERY_LATENCY.labels(partner)
    for planned in planned_at:
        latency.observe(max(0.0, (acknowledged_at - planned).total_seconds()))


def outbox_rows() -> list[tuple[int, str, str, int, datetime | None]]:
    """(connection id, partner, status, pending changes, oldest planned at) for every connection: two
    queries, one grouped over the outbox (an index-only count where the visibility map allows), whatever
    the number of connections."""
    backlog = {
        row["connection_id"]: (row["pending"], row["oldest"])
        for row in PendingChange.objects.order_by()
        .values("connection_id")
        .annotate(pending=Count("id"), oldest=Min("created_at"))
    }
    return [
        (pk, partner, status, *backlog.get(pk, (0, None)))
        for pk, partner, status in Connection.objects.order_by().values_list("pk", "output__partner_key", "status")
    ]


class OutboxCollector(Collector):
    """Pending changes and the age of the oldest per connection, and connections per status (faulted ones
    included), read at each scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = timezone.now()
        pending = GaugeMetricFamily(
            f"{metrics.PREFIX}pending_changes",
            "Changes a connection still owes its partner",
            labels=["connection", "partner"],
        )
        oldest = GaugeMetricFamily(
            f"{metrics.PREFIX}pending_oldest_age_seconds",
            "Age of a connection's oldest pending change (0 when none)",
            labels=["connection", "partner"],
        )
        statuses = GaugeMetricFamily(
            f"{metrics.PREFIX}connections", "Connections by status and partner", labels=["status", "partner"]
        )
        up = GaugeMetricFamily(f"{metrics.PREFIX}outbox_scrape_up", "1 when the outbox could be read at this scrape")
        try:
            rows = outbox_rows()
        except DatabaseError:
            logger.warning("could not read the outbox for /metrics", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        per_status: dict[str, dict[str, int]] = {}  # partner -> status -> connections (0 for none: a panel of
        for connection_id, partner, status, count, oldest_at in rows:  # faulted ones reads 0, not "no data")
            labels = [str(connection_id), partner]
            pending.add_metric(labels, count)
            oldest.add_metric(labels, (now - oldest_at).total_seconds() if oldest_at else 0.0)
            counts = per_status.setdefault(partner, dict.fromkeys(Connection.Status.values, 0))
            counts[status] = counts.get(status, 0) + 1
        for partner, counts in sorted(per_status.items()):
            for status, count in counts.items():
                statuses.add_metric([status, partner], count)
        yield pending
        yield oldest
        yield statuses

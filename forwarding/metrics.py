"""Forwarding's metrics (config/metrics.py has the page): what each delivery attempt did, and the outbox as it
stands, read from the database when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from django.db import connection as db
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config import metrics
from connections.models import Connection
from forwarding.models import PendingChange
from outputs.models import Output


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


# One aggregate over the outbox, joined to every connection so that an empty outbox reads 0.
OUTBOX_SQL = """
SELECT c.id, o.partner_key, c.status, COALESCE(p.pending, 0), p.oldest
FROM {connection} c
JOIN {output} o ON o.id = c.output_id
LEFT JOIN (
    SELECT connection_id, count(*) AS pending, min(created_at) AS oldest
    FROM {pending} GROUP BY connection_id
) p ON p.connection_id = c.id
"""


def outbox_rows() -> list[tuple]:
    sql = OUTBOX_SQL.format(
        connection=Connection._meta.db_table, output=Output._meta.db_table, pending=PendingChange._meta.db_table
    )
    with db.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


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
        per_status: dict[str, dict[str, int]] = {}  # partner -> status -> connections (0 for none: a panel of
        for connection_id, partner, status, count, oldest_at in outbox_rows():  # faulted ones reads 0, not "no data")
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

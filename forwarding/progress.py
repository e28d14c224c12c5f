"""How far a connection's sending has got: for a backfill (connecting queues the whole audience) or any
large batch of changes, the admin shows progress, rate and time left, refreshed by a small script polling
the connection's progress endpoint (forwarding/admin/connections.py).

Done is what the partner answered for (identities it holds or refused), left is the outbox; the rate is
what the partner answered for over the last minute of delivery attempts, so the time left is the outbox
at that rate. Three count queries, on indexed columns."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, Sum
from django.utils import timezone

from config.display import number
from config.progress import eta_text
from connections.models import Connection, ConnectionMember
from forwarding.models import DeliveryAttempt, PendingChange

RATE_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class SendingProgress:
    done: int  # identities the partner answered for (held or refused)
    pending: int  # changes still to send
    percent: float
    rate_per_second: float  # over the last minute
    eta_seconds: float | None  # None: nothing pending, or no rate to go by
    status: str

    @property
    def text(self) -> str:
        if not self.pending:
            return f"Up to date: {number(self.done)} identities answered for by the partner."
        rate = f"{self.rate_per_second:,.1f} identities/s" if self.rate_per_second else "not sending right now"
        left = f", about {eta_text(self.eta_seconds)} left" if self.eta_seconds is not None else ""
        return f"{self.percent:.0f}% sent: {number(self.done)} done, {number(self.pending)} to go ({rate}{left})."

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


def sending_progress(connection: Connection, *, now: datetime | None = None) -> SendingProgress:
    now = now or timezone.now()
    done = ConnectionMember.objects.filter(
        connection=connection, state__in=[ConnectionMember.State.ADDED, ConnectionMember.State.REJECTED]
    ).count()
    pending = PendingChange.objects.filter(connection=connection).count()
    answered = (
        DeliveryAttempt.objects.filter(connection=connection, kind="batch", at__gte=now - RATE_WINDOW).aggregate(
            n=Sum(F("delivered") + F("rejected"))
        )["n"]
        or 0
    )
    rate = answered / RATE_WINDOW.total_seconds()
    total = done + pending
    return SendingProgress(
        done=done,
        pending=pending,
        percent=100.0 * done / total if total else 100.0,
        rate_per_second=rate,
        eta_seconds=pending / rate if pending and rate else None,
        status=connection.status,
    )

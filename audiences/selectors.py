"""Reads about audiences: their metrics (size, adds, drops, volatility) and a profile's membership
history. Set-wise: a page of audiences costs one query, not one per audience."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from audiences.models import Audience, AudienceMembership, MembershipChange

METRICS_WINDOW = timedelta(hours=24)
VOLATILITY_DIGITS = 4  # a fraction: 0.1234 is 12.34 %


@dataclass(frozen=True)
class AudienceMetrics:
    audience_id: int
    size: int
    adds_24h: int  # profiles that entered in the last 24 hours
    drops_24h: int  # profiles that left in the last 24 hours
    volatility: float  # (adds + drops) / size, 0 for an empty audience
    last_calculated_at: datetime | None


@dataclass(frozen=True)
class HistoryEntry:
    audience_id: int
    audience_name: str
    kind: str  # "entered" or "left"
    reason: str
    at: datetime


def volatility(adds: int, drops: int, size: int) -> float:
    if size <= 0:
        return 0.0
    return round((adds + drops) / size, VOLATILITY_DIGITS)


def _count(queryset: QuerySet, fk: str, *, distinct: str | None = None) -> Coalesce:
    """A correlated count subquery per audience row: several counts in one query without joining
    (and multiplying) the tables in one GROUP BY."""
    rows = (
        queryset.filter(**{fk: OuterRef("pk")})
        .order_by()
        .values(fk)
        .annotate(n=Count(distinct or "pk", distinct=distinct is not None))
        .values("n")
    )
    return Coalesce(Subquery(rows, output_field=IntegerField()), 0)


def audience_metrics(audience_ids: Iterable[int], *, now: datetime | None = None) -> dict[int, AudienceMetrics]:
    """Metrics of these audiences, in one query whatever their number. Unknown ids are absent.

    Adds and drops count distinct profiles (a profile entering twice in a day is one add)."""
    ids = list(audience_ids)
    if not ids:
        return {}
    now = now or timezone.now()
    recent = MembershipChange.objects.filter(at__gt=now - METRICS_WINDOW, at__lte=now)
    rows = (
        Audience.objects.filter(pk__in=ids)
        .order_by()
        .annotate(
            size_n=_count(AudienceMembership.objects.all(), "audience"),
            adds_n=_count(recent.filter(kind=MembershipChange.Kind.ENTERED), "audience", distinct="profile_id"),
            drops_n=_count(recent.filter(kind=MembershipChange.Kind.LEFT), "audience", distinct="profile_id"),
        )
        .values_list("pk", "size_n", "adds_n", "drops_n", "last_calculated_at")
    )
    return {
        pk: AudienceMetrics(
            audience_id=pk,
            size=size,
            adds_24h=adds,
            drops_24h=drops,
            volatility=volatility(adds, drops, size),
            last_calculated_at=last_calculated_at,
        )
        for pk, size, adds, drops, last_calculated_at in rows
    }


def profile_history_queryset(profile_id: int) -> QuerySet[MembershipChange]:
    """A profile's membership changes, newest first, with their audience (for paginating)."""
    return (
        MembershipChange.objects.filter(profile_id=profile_id)
        .select_related("audience")
        .only("audience_id", "audience__name", "kind", "reason", "at")
        .order_by("-at", "-id")
    )


def history_entry(change: MembershipChange) -> HistoryEntry:
    return HistoryEntry(
        audience_id=change.audience_id,
        audience_name=change.audience.name,
        kind=change.kind,
        reason=change.reason,
        at=change.at,
    )


def profile_history(profile_id: int, *, limit: int | None = None) -> list[HistoryEntry]:
    """When and why the profile entered or left each audience, newest first."""
    changes = profile_history_queryset(profile_id)
    if limit is not None:
        changes = changes[:limit]
    return [history_entry(change) for change in changes]

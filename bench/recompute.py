"""Recompute a "Potential Parisians"-shaped audience after 10% churn, against the bare SQL floor.

    .venv/bin/python bench/generate.py --profiles 1000000     # once (about 2 minutes)
    .venv/bin/python bench/recompute.py --profiles 1000000

Criteria: played "Destination Intro" with city Paris at least once in the last 30 days AND status is
Premium. Steps: compute the audience once; flip `status` on members and qualifying non-members so that
10% of the membership changes (half leave, half enter); then, on the same data,
  floor   - the bare SQL computing the new member set and its difference with the stored membership
            (counts only: nothing written);
  service - audiences.membership.recompute.recompute_audience: the same set and difference, plus the membership
            rows, the change log and the outbox for a connected (paused) Mailchimp output.
Prints both times, their ratio, and this process's peak RSS (run it at 100,000 and at 1,000,000
profiles to compare memory; `bench/recompute_memory.sh` does both).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from common import peak_rss_mb, use_database, warm

BARE_SQL = """
WITH fresh AS (
    SELECT p.id AS profile_id FROM audiences_profile p
    WHERE lower(p.attributes ->> 'status') = 'premium'
      AND p.id IN (SELECT e.profile_id FROM audiences_event e
                   WHERE lower(e.name) = 'destination intro'
                     AND e.timestamp >= %(since)s AND e.timestamp <= %(now)s
                     AND lower(e.attributes ->> 'city') = 'paris')
), stored AS (
    SELECT profile_id FROM audiences_audiencemembership WHERE audience_id = %(audience)s
)
SELECT (SELECT count(*) FROM fresh),
       (SELECT count(*) FROM (SELECT profile_id FROM fresh EXCEPT SELECT profile_id FROM stored) entered),
       (SELECT count(*) FROM (SELECT profile_id FROM stored EXCEPT SELECT profile_id FROM fresh) left_)
"""


def reset_population() -> None:
    """Undo the churn flips of an earlier run, so that every run starts from the generated data."""
    from django.db import connection

    generated = "CASE WHEN ((hashtext(id::text || 's') & 2147483647) % 1000) < 300 THEN 'Premium' ELSE 'Free' END"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE audiences_profile SET attributes = attributes || jsonb_build_object('status', {generated}) "
            f"WHERE attributes ->> 'status' IS DISTINCT FROM {generated}"
        )
        cursor.execute("VACUUM ANALYZE audiences_profile")


def churn(audience_id: int, members: int, now: datetime) -> None:
    """Half of 10% of the members stop being Premium; as many qualifying Free users become Premium."""
    from django.db import connection

    quota = members // 20
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE audiences_profile SET attributes = attributes || '{"status": "Free"}'
            WHERE id IN (SELECT profile_id FROM audiences_audiencemembership WHERE audience_id = %s
                         ORDER BY (hashtext(profile_id::text || 'churn') & 2147483647) LIMIT %s)
            """,
            [audience_id, quota],
        )
        cursor.execute(
            """
            UPDATE audiences_profile SET attributes = attributes || '{"status": "Premium"}'
            WHERE id IN (
                SELECT p.id FROM audiences_profile p
                WHERE lower(p.attributes ->> 'status') = 'free'
                  AND p.id IN (SELECT e.profile_id FROM audiences_event e
                               WHERE lower(e.name) = 'destination intro'
                                 AND e.timestamp >= %s - interval '30 days' AND e.timestamp <= %s
                                 AND lower(e.attributes ->> 'city') = 'paris')
                ORDER BY (hashtext(p.id::text || 'join') & 2147483647) LIMIT %s)
            """,
            [now, now, quota],
        )
        cursor.execute("ANALYZE audiences_profile")


def main() -> None:
    parser = argparse.ArgumentParser(description="Recompute benchmark")
    parser.add_argument("--profiles", type=int, default=100_000)
    args = parser.parse_args()
    use_database(f"af_bench_{args.profiles}", fresh=False)
    from datetime import timedelta

    from django.db import connection

    from audiences.membership.recompute import recompute_audience
    from audiences.models import Audience, AudienceMembership, MembershipChange
    from connections.models import Connection
    from forwarding.management.commands.demo import CRITERIA
    from forwarding.models import PendingChange
    from outputs.services import output_create

    if not connection.cursor().execute("SELECT 1 FROM audiences_profile LIMIT 1").fetchone():
        raise SystemExit(f"No data: run bench/generate.py --profiles {args.profiles} first")
    now = datetime.now(UTC)
    reset_population()
    # A clean slate for the audience side (the population is left as generated, but for churn flips).
    PendingChange.objects.all().delete()
    Connection.objects.all().delete()
    MembershipChange.objects.all().delete()
    AudienceMembership.objects.all().delete()
    Audience.objects.all().delete()
    audience = Audience.objects.create(name="Potential Parisians", status="active", criteria=CRITERIA)
    output = output_create(
        name=f"Bench Mailchimp {time.time_ns()}",
        partner_key="mailchimp",
        settings={"api_key": "0123456789abcdef0123456789abcdef-us6"},
    )
    Connection.objects.create(audience=audience, output=output, settings={"list_id": "bench"}, status="paused")

    # Warm (both sides): the ratio compares work, not this machine's cold disk.
    warm(["audiences_profile", "audiences_identity", "audiences_event", "audiences_audiencemembership"])
    started = time.perf_counter()
    first = recompute_audience(audience.pk, now=now)
    initial_seconds = time.perf_counter() - started
    churn(audience.pk, first.size, now)

    with connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute(BARE_SQL, {"since": now - timedelta(days=30), "now": now, "audience": audience.pk})
        size, entering, leaving = cursor.fetchone()
        floor = time.perf_counter() - started

    rss_before = peak_rss_mb()
    started = time.perf_counter()
    result = recompute_audience(audience.pk, now=now)
    service = time.perf_counter() - started
    assert (result.size, result.entered, result.left) == (size, entering, leaving), (result, size, entering, leaving)
    figures = {
        "profiles": args.profiles,
        "members_before": first.size,
        "members_after": result.size,
        "entered": result.entered,
        "left": result.left,
        "churn_pct": round(100 * (result.entered + result.left) / max(first.size, 1), 1),
        "initial_recompute_s": round(initial_seconds, 2),
        "floor_bare_sql_s": round(floor, 3),
        "recompute_s": round(service, 3),
        "ratio": round(service / floor, 2),
        "pending_changes": PendingChange.objects.count(),
        "peak_rss_mb_before_recompute": round(rss_before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

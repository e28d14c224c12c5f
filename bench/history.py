"""The daily snapshots (audiences/history.py) at scale, beside the bare SQL computing the same figures.

    .venv/bin/python bench/history.py --profiles 200000 --audiences 10

Makes its own database (af_bench_history): profiles, each audience holding about half of them, and a change
log over 30 days (an entry per member, plus members who left). Then, best of --runs after a warm-up:
`snapshot_audiences(days=30)` (the two aggregates, the per-day sizes, and the upsert of audiences x 30 rows)
against its floor, the same two aggregates as bare SQL with nothing written, and prints the ratio.
"""

from __future__ import annotations

import argparse
import time

from common import best, use_database


def make_population(args: argparse.Namespace, now: object) -> None:
    """Profiles, audiences holding about half of them each, and a change log over 30 days."""
    from django.db import connection

    from audiences.models import Audience, AudienceMembership, MembershipChange, Profile

    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Profile._meta.db_table} (mpid, attributes, created_at, updated_at) "
            "SELECT n, '{}'::jsonb, now(), now() FROM generate_series(1, %s) n",
            [args.profiles],
        )
        for index in range(args.audiences):
            Audience.objects.create(name=f"audience {index}", status="active", criteria={"and": []})
        cursor.execute(
            f"INSERT INTO {AudienceMembership._meta.db_table} (audience_id, profile_id, entered_at) "
            f"SELECT a.id, p.id, %s FROM {Audience._meta.db_table} a, {Profile._meta.db_table} p "
            "WHERE (p.id + a.id) %% 2 = 0",
            [now],
        )
        # An entry per member, and members who left (a tenth more), at times spread over 30 days.
        cursor.execute(
            f"INSERT INTO {MembershipChange._meta.db_table} (audience_id, profile_id, kind, reason, at) "
            f"SELECT audience_id, profile_id, 'entered', 'bench', %s - (profile_id %% 720) * interval '1 hour' "
            f"FROM {AudienceMembership._meta.db_table} "
            f"UNION ALL SELECT a.id, p.id, 'left', 'bench', %s - (p.id %% 700) * interval '1 hour' "
            f"FROM {Audience._meta.db_table} a, {Profile._meta.db_table} p WHERE (p.id + a.id) %% 20 = 1",
            [now, now],
        )
        cursor.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description="Daily snapshots vs the bare SQL")
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--audiences", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep the data of the previous run (same sizes)")
    args = parser.parse_args()
    use_database("af_bench_history", fresh=not args.reuse)

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from audiences.history import history_days, snapshot_audiences
    from audiences.models import AudienceMembership, MembershipChange, Profile

    call_command("migrate", verbosity=0)
    now = timezone.now()
    started = time.perf_counter()
    if args.reuse and Profile.objects.exists():
        now = MembershipChange.objects.order_by("-at").values_list("at", flat=True).first()
    else:
        make_population(args, now)
    print(f"population ready in {time.perf_counter() - started:.1f}s")

    window = history_days(30, now)
    bare_sql = (
        f"SELECT audience_id, count(*) FROM {AudienceMembership._meta.db_table} GROUP BY audience_id",
        f"SELECT audience_id, (at AT TIME ZONE 'UTC')::date, count(*) FILTER (WHERE kind = 'entered'), "
        f"count(*) FILTER (WHERE kind = 'left') FROM {MembershipChange._meta.db_table} "
        "WHERE at >= %s AND at <= %s GROUP BY 1, 2",
    )

    def bare() -> None:
        with connection.cursor() as cursor:
            cursor.execute(bare_sql[0])
            cursor.fetchall()
            cursor.execute(bare_sql[1], [window[0], now])
            cursor.fetchall()

    def service() -> None:
        snapshot_audiences(days=30, now=now)

    floor = best(args.runs, bare)
    taken = best(args.runs, service)
    print(
        f"snapshot_audiences(days=30): {taken:.3f}s; bare SQL of the same figures: {floor:.3f}s; "
        f"ratio {taken / floor:.2f}x"
    )


if __name__ == "__main__":
    main()

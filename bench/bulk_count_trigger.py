"""What the bulk uploads' count trigger costs a planning transaction (forwarding/bulk.py), with N changes waiting.

Fills one bulk connection's outbox with N due changes (messages criterion M), then times, after a commit:
  count    - the exact check: the bounded count of the waiting changes (at most M index entries);
  headroom - what a transaction pays while its headroom lasts: one Redis DECRBY (pipelined);
  floor    - a bare Redis PING round trip.
Medians over --repeat runs. A scratch database `audience_forwarding_bulk_bench` (dropped and made anew)
unless BENCH_DATABASE_URL is set (then the rows made are deleted at the end).

    .venv/bin/python bench/bulk_count_trigger.py --waiting 750000 --messages 750000
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta

import common


def median_ms(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=750_000)
    parser.add_argument("--messages", type=int, default=750_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    common.use_database("audience_forwarding_bulk_bench", fresh=True)

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection as db
    from django.utils import timezone

    from audiences.models import Audience
    from connections.models import Connection
    from forwarding import bulk
    from forwarding.models import PendingChange
    from outputs.models import Output
    from outputs.partners.base import Capability, UploadCriteria
    from outputs.partners.registry import register_partner
    from tests.fakes.partners import RecordingPartner

    class BenchBulk(RecordingPartner):
        key = "bench_bulk"
        name = "Bench bulk"
        capabilities = frozenset({Capability.LIST, Capability.BULK})
        default_upload_criteria = UploadCriteria(wait=timedelta(hours=3), messages=args.messages)

    register_partner(BenchBulk)
    call_command("migrate", verbosity=0)
    audience = Audience.objects.create(name="Bulk bench", external_name="bulk-bench", criteria={}, status="active")
    output = Output.objects.create(name="Bulk bench", partner_key=BenchBulk.key)
    connection = Connection.objects.create(audience=audience, output=output, settings={})
    try:
        now = timezone.now()
        with db.cursor() as cursor:
            cursor.execute(
                f"""INSERT INTO {PendingChange._meta.db_table} (connection_id, identity_type, value, action, version,
                    attempts, next_attempt_at, last_error, created_at)
                SELECT %s, 'email', 'u' || g || '@example.com', 'add', 1, 0, %s, '', %s
                FROM generate_series(1, %s) g""",
                [connection.pk, now - timedelta(seconds=1), now, args.waiting],
            )
            cursor.execute(f"VACUUM ANALYZE {PendingChange._meta.db_table}")

        def count() -> None:
            with db.cursor() as cursor:
                cursor.execute(
                    bulk.BACKLOG_REACHES_SQL.format(table=PendingChange._meta.db_table),
                    [connection.pk, timezone.now(), args.messages],
                )
                cursor.fetchone()

        redis = bulk._headroom_redis(settings.RATE_LIMIT_REDIS_URL)
        bulk._set_headroom(connection.pk, 10**12)  # plenty: the gate never asks for the count here
        count()  # warm the index
        counted = median_ms(args.repeat, count)
        gate = median_ms(args.repeat * 50, lambda: bulk._headroom_used({connection.pk: 1}))
        floor = median_ms(args.repeat * 50, redis.ping)
        print(f"{args.waiting:,} changes waiting, messages criterion {args.messages:,}")
        print(f"count (exact check)      {counted:8.2f} ms")
        print(f"headroom (one DECRBY)    {gate:8.3f} ms   ({counted / gate:,.0f}x cheaper than the count)")
        print(f"floor (Redis PING)       {floor:8.3f} ms   (headroom / floor: {gate / floor:.2f}x)")
    finally:
        PendingChange.objects.filter(connection=connection).delete()
        redis.delete(bulk._headroom_key(connection.pk))
        connection.delete()
        output.delete()
        audience.delete()


if __name__ == "__main__":
    main()

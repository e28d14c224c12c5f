"""What a Prometheus scrape of /metrics costs with many connections, against the bare queries it runs.

Makes N connections (one audience, N Mailchimp outputs) with M pending changes each, then times, best of
--repeat runs each:
  floor  - the two queries the outbox collector runs (the grouped outbox and the connections), raw SQL
           fetched with a cursor, nothing else;
  scrape - the whole /metrics answer through Django's test client (every process counter, the outbox
           collector building its gauges, the text exposition).
and prints both and their ratio. A scratch database `audience_forwarding_metrics_bench` (dropped and made
anew) unless BENCH_DATABASE_URL is set.

    .venv/bin/python bench/metrics_scrape.py --connections 1000 --pending 20
"""

from __future__ import annotations

import argparse
import time

import common


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--pending", type=int, default=20, help="pending changes per connection")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    common.use_database("audience_forwarding_metrics_bench", fresh=True)

    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from audiences.models import Audience
    from connections.models import Connection
    from forwarding.models import PendingChange
    from outputs.models import Output

    call_command("migrate", verbosity=0)
    now = timezone.now()
    audience = Audience.objects.create(name="Bench", external_name="bench", criteria={}, status="active")
    outputs = Output.objects.bulk_create(
        [Output(name=f"Mailchimp {n}", partner_key="mailchimp") for n in range(args.connections)]
    )
    connections = Connection.objects.bulk_create(
        [Connection(audience=audience, output=o, settings={"list_id": "l"}) for o in outputs]
    )
    PendingChange.objects.bulk_create(
        [
            PendingChange(
                connection=c,
                identity_type="email",
                value=f"{n}@x.com",
                action="add",
                next_attempt_at=now,
                created_at=now,
            )
            for c in connections
            for n in range(args.pending)
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    pending, connection_table, output = (
        PendingChange._meta.db_table,
        Connection._meta.db_table,
        Output._meta.db_table,
    )
    bare = [
        f"SELECT connection_id, count(id), min(created_at) FROM {pending} GROUP BY connection_id",
        f"SELECT c.id, o.partner_key, c.status FROM {connection_table} c JOIN {output} o ON o.id = c.output_id",
    ]

    def floor() -> None:
        with connection.cursor() as cursor:
            for sql in bare:
                cursor.execute(sql)
                cursor.fetchall()

    client = Client()

    def scrape() -> None:
        response = client.get("/metrics")
        assert response.status_code == 200 and b"af_pending_changes{" in response.content

    scrape()  # warm: the first scrape imports and prepares
    floor_s = best_of(args.repeat, floor)
    scrape_s = best_of(args.repeat, scrape)
    print(f"{args.connections} connections, {args.connections * args.pending} pending changes, best of {args.repeat}")
    print(f"  floor  (the bare queries):   {floor_s * 1000:7.1f} ms")
    print(f"  scrape (the whole /metrics): {scrape_s * 1000:7.1f} ms")
    print(f"  ratio: {scrape_s / floor_s:.2f}x")


if __name__ == "__main__":
    main()

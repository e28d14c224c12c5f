"""Resync of a large audience: the set-based difference between members x accepted identities and what
ConnectionMember says the partner holds, with its floor (one scan of the same join) from the same run.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/<yours> .venv/bin/python bench/resync.py --members 1000000

Builds N members with one email each, a Mailchimp connection whose records say the partner holds all of them,
then drifts 1% both ways (records of members lost, records of non-members kept) and times a resync (it must
plan exactly the drift), then a resync of the connection in sync (it must plan nothing). The database is
`af_bench_resync` (created anew) unless BENCH_DATABASE_URL is set (its audiences' tables are emptied).
"""

from __future__ import annotations

import argparse
import time

from common import peak_rss_mb, use_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    args = parser.parse_args()
    use_database("af_bench_resync", fresh=True)

    from django.core.management import call_command
    from django.db import connection as db
    from django.utils import timezone

    from audiences.models import Audience
    from connections.models import Connection
    from forwarding import doorbell, sync
    from outputs.services import output_create

    call_command("migrate", verbosity=0)
    doorbell.ring = lambda *a, **k: None  # no broker here: the outbox is what is measured
    n, drift = args.members, max(1, args.members // 100)
    with db.cursor() as cursor:
        for table in ("connections_connection", "audiences_identity", "audiences_audiencemembership"):
            cursor.execute(f"TRUNCATE {table} CASCADE")
        cursor.execute("TRUNCATE audiences_profile CASCADE")
        cursor.execute("TRUNCATE outputs_output CASCADE")
        cursor.execute("DELETE FROM audiences_audience")
    audience = Audience.objects.create(name="Everyone", criteria={}, status=Audience.Status.ACTIVE)
    output = output_create(name="Mailchimp", partner_key="mailchimp", settings={"api_key": "k-us6"})
    connection = Connection.objects.create(audience=audience, output=output, settings={"list_id": "l"})
    now = timezone.now()
    started = time.perf_counter()
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (id, mpid, attributes, created_at, updated_at) "
            "SELECT g, g, '{}'::jsonb, %s, %s FROM generate_series(1, %s) g",
            [now, now, n],
        )
        cursor.execute(
            "INSERT INTO audiences_identity (profile_id, type, value, created_at) "
            "SELECT g, 'email', 'm' || g || '@example.com', %s FROM generate_series(1, %s) g",
            [now, n],
        )
        cursor.execute(
            "INSERT INTO audiences_audiencemembership (audience_id, profile_id, entered_at) "
            "SELECT %s, g, %s FROM generate_series(1, %s) g",
            [audience.pk, now, n],
        )
        # Records: every member held but the first `drift`, plus `drift` non-members still held.
        cursor.execute(
            "INSERT INTO connections_connectionmember (connection_id, identity_type, value, state, reason, "
            "updated_at) SELECT %s, 'email', 'm' || g || '@example.com', 'added', '', %s "
            "FROM generate_series(%s, %s) g",
            [connection.pk, now, drift + 1, n + drift],
        )
        cursor.execute("ANALYZE")
    print(f"built {n:,} members in {time.perf_counter() - started:.1f} s")

    with db.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute(
            "SELECT count(*) FROM audiences_audiencemembership m JOIN audiences_identity i "
            "ON i.profile_id = m.profile_id WHERE m.audience_id = %s AND i.type = 'email'",
            [audience.pk],
        )
        floor = time.perf_counter() - started
    started = time.perf_counter()
    drifted = sync.connection_resync(connection=connection)
    drifted_seconds = time.perf_counter() - started
    assert drifted.as_dict() == {"adds_planned": drift, "removes_planned": drift}, drifted
    # The records as if those changes were delivered: in sync.
    with db.cursor() as cursor:
        cursor.execute("DELETE FROM forwarding_pendingchange")
        cursor.execute(
            "UPDATE connections_connectionmember SET state = 'removed' WHERE value = ANY(%s)",
            [[f"m{g}@example.com" for g in range(n + 1, n + drift + 1)]],
        )
        cursor.execute(
            "INSERT INTO connections_connectionmember (connection_id, identity_type, value, state, reason, "
            "updated_at) SELECT %s, 'email', 'm' || g || '@example.com', 'added', '', %s "
            "FROM generate_series(1, %s) g",
            [connection.pk, now, drift],
        )
    started = time.perf_counter()
    in_sync = sync.connection_resync(connection=connection)
    in_sync_seconds = time.perf_counter() - started
    assert in_sync.as_dict() == {"adds_planned": 0, "removes_planned": 0}, in_sync
    print(f"floor (one scan of members x identities): {floor:.2f} s")
    print(
        f"resync with 1% drift both ways ({drift:,} adds, {drift:,} removes planned): {drifted_seconds:.2f} s "
        f"= {drifted_seconds / floor:.1f}x the floor"
    )
    print(f"resync in sync (nothing planned): {in_sync_seconds:.2f} s = {in_sync_seconds / floor:.1f}x the floor")
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()

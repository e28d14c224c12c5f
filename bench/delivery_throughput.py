"""Delivery throughput: identities per second from the outbox to a Mailchimp list.

Measures, in one run against the local Mailchimp server:
  floor   - the bare HTTP work: the same members POSTed in 500-member batches with one
            keep-alive requests.Session (no database at all);
  service - connect an audience of N members (set-based backfill of the outbox) and
            deliver_connection() until the outbox is empty (claim, send, record outcomes).
and prints both and their ratio. Needs PostgreSQL (DATABASE_URL, default a scratch database
`audience_forwarding_bench` on 127.0.0.1, dropped and recreated).

    .venv/bin/python bench/delivery_throughput.py --members 50000
"""

from __future__ import annotations

import argparse
import os
import time

import common  # noqa: F401  (the repository on sys.path, settings and keys for the run)

BENCH_DB = "audience_forwarding_bench"


def prepare_database() -> None:
    if os.environ.get("DATABASE_URL"):
        return
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=50_000)
    args = parser.parse_args()
    prepare_database()

    import django

    django.setup()
    import requests
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from audiences.models import Audience, AudienceMembership, Identity, Profile
    from forwarding.delivery import deliver_connection
    from local_partners.mailchimp import LocalMailchimpServer

    call_command("migrate", verbosity=0)
    key = "0123456789abcdef0123456789abcdef-us6"
    n = args.members
    server = LocalMailchimpServer(api_keys=[key]).start()
    settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
    import forwarding.doorbell

    forwarding.doorbell.send_safely = lambda *a, **k: None  # this bench delivers in-process

    # Floor: the same HTTP work with nothing around it.
    server.create_list("floor")
    session = requests.Session()
    session.auth = ("bench", key)
    started = time.perf_counter()
    for start in range(0, n, 500):
        members = [
            {"email_address": f"user{i}@example.com", "status": "subscribed", "email_type": "html"}
            for i in range(start, min(n, start + 500))
        ]
        session.post(
            f"{server.base_url}/lists/floor", json={"members": members, "update_existing": True}
        ).raise_for_status()
    floor = time.perf_counter() - started

    # Data: N members with an email, inserted set-wise.
    audience = Audience.objects.create(name="Bench", status="active", criteria={"and": []})
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Profile._meta.db_table} (mpid, attributes, created_at, updated_at) "
            "SELECT g::bigint * 7919 + 12345, jsonb_build_object('n', g), now(), now() FROM generate_series(1, %s) g",
            [n],
        )
        cursor.execute(
            f"INSERT INTO {Identity._meta.db_table} (profile_id, type, value, created_at) "
            f"SELECT id, 'email', 'user' || (id - 1) || '@example.com', now() FROM {Profile._meta.db_table}"
        )
        cursor.execute(
            f"INSERT INTO {AudienceMembership._meta.db_table} (audience_id, profile_id, entered_at) "
            f"SELECT %s, id, now() FROM {Profile._meta.db_table}",
            [audience.pk],
        )
    from outputs.services import output_create

    output = output_create(name="Bench", partner_key="mailchimp", settings={"api_key": key, "double_opt_in": False})
    server.create_list("bench")
    from forwarding.lifecycle import connection_create

    started = time.perf_counter()
    conn = connection_create(audience=audience, output=output, settings={"list_id": "bench"})
    backfill = time.perf_counter() - started
    started = time.perf_counter()
    report = deliver_connection(connection_id=conn.pk)
    service = time.perf_counter() - started
    server.stop()
    assert report.delivered == n, report
    assert len(server.members("bench")) == n

    print(f"members                 {n}")
    print(f"floor (bare HTTP)       {floor:8.2f} s   {n / floor:10.0f} identities/s")
    print(f"backfill (connect)      {backfill:8.2f} s   {n / backfill:10.0f} identities/s")
    print(f"delivery (service)      {service:8.2f} s   {n / service:10.0f} identities/s")
    print(f"ratio delivery / floor  {service / floor:8.2f}x")


if __name__ == "__main__":
    main()

"""Delivery throughput: identities per second from the outbox to a Mailchimp list, beside two floors.

One run against the local Mailchimp server, running in a process of its own (TCP_NODELAY, one keep-alive
connection per client), measures:
  bare HTTP - the same members POSTed in 500-member batches with one keep-alive requests.Session, no
              database at all;
  floor     - the hand-written floor: the same claim, HTTP and record of the same batches, in raw SQL
              (psycopg, no Django, the claim with its write-ahead and the record each one statement) and
              raw HTTP (http.client, the body built and the answer's errors read by hand, JSON by
              orjson as the service's), pipelined as the service is (the call in a thread while the
              next batch is claimed; the next call out before the answered batch is recorded);
  service   - deliver_connection(): lease and heartbeat, claim, write-ahead, the partner class's call,
              every outcome recorded, metrics.
The floor and the service each drain the outbox of their own connection of the same audience (one set-wise
backfill each, timed as "backfill"). Needs PostgreSQL: a scratch database `af_bench_delivery` on 127.0.0.1
(dropped and recreated), or BENCH_DATABASE_URL (its forwarding tables are emptied first).

    .venv/bin/python bench/delivery_throughput.py --members 50000
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import time
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlsplit

import proccpu
from common import list_member_count, local_mailchimp, peak_rss_mb, use_database

KEY = "0123456789abcdef0123456789abcdef-us6"
BATCH = 500


def populate(members: int):
    """An active audience of `members` profiles, each with an email, inserted set-wise."""
    from django.core.management import call_command
    from django.db import connection

    from audiences.models import Audience, AudienceMembership, Identity, Profile

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE audiences_profile, audiences_audience, outputs_output, connections_connection, "
            "forwarding_pendingchange, forwarding_deliveryattempt, connections_connectionmember CASCADE"
        )
        cursor.execute(
            f"INSERT INTO {Profile._meta.db_table} (mpid, attributes, created_at, updated_at) "
            "SELECT g::bigint * 7919 + 12345, jsonb_build_object('n', g), now(), now() FROM generate_series(1, %s) g",
            [members],
        )
        cursor.execute(
            f"INSERT INTO {Identity._meta.db_table} (profile_id, type, value, created_at) "
            f"SELECT id, 'email', 'user' || id || '@example.com', now() FROM {Profile._meta.db_table}"
        )
        audience = Audience.objects.create(name="Bench", status="active", criteria={"and": []})
        cursor.execute(
            f"INSERT INTO {AudienceMembership._meta.db_table} (audience_id, profile_id, entered_at) "
            f"SELECT %s, id, now() FROM {Profile._meta.db_table}",
            [audience.pk],
        )
        cursor.execute("ANALYZE")
    return audience


def bare_http(base_url: str, members: int) -> float:
    """The same POSTs, nothing around them."""
    import requests

    session = requests.Session()
    session.auth = ("bench", KEY)
    started = time.perf_counter()
    for start in range(1, members + 1, BATCH):
        body = [
            {"email_address": f"user{i}@example.com", "status": "subscribed", "email_type": "html"}
            for i in range(start, min(members + 1, start + BATCH))
        ]
        session.post(f"{base_url}/lists/bare", json={"members": body, "update_existing": True}).raise_for_status()
    return time.perf_counter() - started


def fingerprint(identity_type: str, value: str, attributes: dict) -> str:
    """The fingerprint of an acknowledged add, as forwarding.partner_calls.change_fingerprint writes it."""
    from config import fast_json

    return hashlib.blake2b(fast_json.dumps_sorted([identity_type, value, attributes]), digest_size=16).hexdigest()


def handmade_floor(database_url: str, base_url: str, connection_id: int) -> tuple[float, int]:
    """Drain one connection's outbox with the same statements and the same requests, by hand. Returns
    (seconds, identities delivered)."""
    import psycopg

    from config import fast_json
    from forwarding.batches import (
        CLAIM_AND_WRITE_AHEAD_SQL,
        ORDERED_SCAN_ONLY_SQL,
        RECORD_SQL,
        STALE_TABLES_SQL,
        statistics_due,
    )

    url = urlsplit(base_url)
    path = f"{url.path}/lists/floor"
    headers = {
        "Authorization": "Basic " + b64encode(f"bench:{KEY}".encode()).decode(),
        "Content-Type": "application/json",
        "Accept": "application/json",
    }

    def claim(db, after: int) -> list:
        parameters = {"connection": connection_id, "after": after, "now": datetime.now(UTC), "size": BATCH}
        with db.transaction():
            db.execute(ORDERED_SCAN_ONLY_SQL)
            (document,) = db.execute(CLAIM_AND_WRITE_AHEAD_SQL, parameters).fetchone()
        return fast_json.loads(document)  # the batch as one JSON document, as the service reads it

    def send(partner: http.client.HTTPConnection, rows: list) -> tuple[int, set[str], float]:
        sent = time.perf_counter()
        body = [
            {
                "email_address": value,
                "email_type": "html",
                "status_if_new": "subscribed",
                "status": "subscribed",
                "merge_fields": {name.upper(): v for name, v in (attributes or {}).items()},
            }
            for _, _, value, _, _, _, _, _, attributes, _, _ in rows
        ]
        partner.request("POST", path, fast_json.dumps({"members": body, "update_existing": True}), headers)
        answer = partner.getresponse()
        refused = {e["email_address"] for e in fast_json.loads(answer.read())["errors"]}
        return answer.status, refused, time.perf_counter() - sent

    delivered = 0
    with (
        psycopg.connect(database_url.replace("postgres://", "postgresql://"), autocommit=True) as db,
        ThreadPoolExecutor(max_workers=1) as caller,
    ):
        partner = http.client.HTTPConnection(url.hostname, url.port)
        partner.connect()
        partner.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        batches = 0
        rows = claim(db, 0)
        call = caller.submit(send, partner, rows) if rows else None
        while call is not None:
            if statistics_due(batches):  # as delivery does: ANALYZE what grew from "empty"
                for (table,) in db.execute(STALE_TABLES_SQL, {"written": 2 * BATCH * batches}).fetchall():
                    db.execute(f"ANALYZE {table}")
            batches += 1
            now = datetime.now(UTC)
            # As the service does: the call in a thread while the next batch is claimed; once answered, the
            # next batch goes out and this one is recorded while the partner works.
            claimed_ahead = claim(db, rows[-1][0]) if len(rows) == BATCH else []
            status, refused, seconds = call.result()
            next_call = caller.submit(send, partner, claimed_ahead) if claimed_ahead else None
            members = [
                (t, v, "rejected", "", "") if v in refused else (t, v, "added", "", fingerprint(t, v, attributes))
                for _, t, v, _, _, _, _, _, attributes, _, _ in rows
            ]
            delivered += len(rows) - len(refused)
            db.execute(
                RECORD_SQL,
                {
                    "connection": connection_id,
                    "now": now,
                    "members": fast_json.dumps(members).decode(),
                    "settled": fast_json.dumps([(r[0], r[5]) for r in rows]).decode(),
                    "retried": "[]",
                    "sent": len(rows),
                    "delivered": len(rows) - len(refused),
                    "rejected": len(refused),
                    "retried_count": 0,
                    "result": "ok" if not refused else "partial",
                    "duration_ms": int(seconds * 1000),
                    "http_status": status,
                    "task_id": "",
                },
            )
            rows, call = claimed_ahead, next_call
        seconds = time.perf_counter() - started
        partner.close()
    return seconds, delivered


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=50_000)
    args = parser.parse_args()
    n = args.members
    database_url = use_database("af_bench_delivery", fresh=not os.environ.get("BENCH_DATABASE_URL"))

    from django.conf import settings

    import forwarding.doorbell
    from forwarding.delivery import deliver_connection
    from forwarding.lifecycle import connection_create
    from outputs.services import output_create

    forwarding.doorbell.send_safely = lambda *a, **k: None  # this bench delivers in-process
    audience = populate(n)
    with local_mailchimp(KEY, ["bare", "floor", "service"]) as base_url:
        settings.PARTNER_API_BASE_URLS = {"mailchimp": base_url}
        outputs = [
            output_create(name=name, partner_key="mailchimp", settings={"api_key": KEY, "double_opt_in": False})
            for name in ("Floor", "Service")
        ]
        started = time.perf_counter()
        floor_connection = connection_create(audience=audience, output=outputs[0], settings={"list_id": "floor"})
        backfill = time.perf_counter() - started
        service_connection = connection_create(audience=audience, output=outputs[1], settings={"list_id": "service"})

        print(f"members                 {n}   (load average before: {load()})")
        bare = bare_http(base_url, n)
        print(f"bare HTTP               {bare:8.2f} s   {n / bare:10.0f} identities/s")
        floor, delivered = handmade_floor(database_url, base_url, floor_connection.pk)
        assert delivered == n, delivered
        print(f"floor (raw SQL + HTTP)  {floor:8.2f} s   {n / floor:10.0f} identities/s")
        cpu_before, machine_before = proccpu.snapshot(), proccpu.machine_cpu_seconds()
        started, cpu_started = time.perf_counter(), time.process_time()
        report = deliver_connection(connection_id=service_connection.pk)
        service = time.perf_counter() - started
        worker_cpu = time.process_time() - cpu_started  # this process only: not PostgreSQL, not the partner
        # Every process's share of the drain: this one (the worker), the partner's (this process's only
        # child) and the PostgreSQL backends, by the process holding their connection.
        cpu_split = proccpu.cpu_split(
            cpu_before,
            proccpu.snapshot(),
            roles={"partner": next(pid for pid, (parent, _, _) in cpu_before.items() if parent == os.getpid())},
            alone={"worker": os.getpid()},
            connections=proccpu.backends(settings.DATABASES["default"]["NAME"]),
        )
        machine_cpu = proccpu.machine_cpu_seconds() - machine_before
        assert report.delivered == n, report
        for list_id in ("bare", "floor", "service"):
            assert list_member_count(base_url, KEY, list_id) == n, list_id
    print(f"delivery (service)      {service:8.2f} s   {n / service:10.0f} identities/s")
    print(f"worker CPU              {worker_cpu:8.2f} s   {n / worker_cpu:10.0f} identities per worker CPU-second")
    print(f"backfill (connect)      {backfill:8.2f} s   {n / backfill:10.0f} identities/s")
    print(f"service / floor         {floor / service:8.2f}   (of the hand-written floor's throughput)")
    print(f"service / bare HTTP     {bare / service:8.2f}")
    print_cpu_split(cpu_split, machine_cpu, service, n)
    print(f"peak RSS                {peak_rss_mb():8.1f} MiB   (load average after: {load()})")


def print_cpu_split(split: dict[str, float], machine: float, seconds: float, members: int) -> None:
    """Each process's CPU over the service's drain, per 500-member batch, and the ceiling their sum sets on this
    machine's cores: however the work overlaps, the drain cannot go faster than the cores can do it."""
    batches = members / BATCH
    for role, used in sorted(split.items(), key=lambda item: -item[1]):
        print(f"CPU {role:20s}{used:8.2f} s   {used * 1000 / batches:10.1f} ms per {BATCH}-member batch")
    total = sum(split.values())
    cores = os.cpu_count() or 1
    print(
        f"CPU of the drain        {total:8.2f} s   (the machine: {machine:.2f} s of {cores * seconds:.2f}); "
        f"ceiling on {cores} cores: {members / (total / cores):.0f} identities/s"
    )


if __name__ == "__main__":
    main()

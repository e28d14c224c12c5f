"""Generate a benchmark population in PostgreSQL, set-wise (INSERT ... SELECT generate_series).

    .venv/bin/python bench/generate.py --profiles 1000000     # or 100000 for a quick run

Each profile gets: a customer id; an email for 50% of profiles; a Google advertising id for 80%;
attributes {status: Premium (30%) | Free, favourite_city, age, plan}; and on average 5 events over the
last 60 days, named among a few (one of them "Destination Intro", with a "city" attribute). The numbers
are drawn from hashes of the row number, so a run is reproducible. The database is `af_bench_<N>`
(created anew) unless BENCH_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import time

from common import use_database

EVENT_NAMES = ["Destination Intro", "Search", "Play", "Purchase", "Share"]
CITIES = ["Paris", "Lyon", "Rome", "Berlin", "Madrid"]


def generate(profiles: int, events_per_profile: int = 5) -> dict[str, float]:
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    timings: dict[str, float] = {}
    # h(g, salt) is a reproducible pseudo-random integer in [0, 1000).
    h = "((hashtext(g::text || '{salt}') & 2147483647) %% 1000)"
    with connection.cursor() as cursor:
        for table in ("audiences_event", "audiences_identity", "audiences_audiencemembership", "audiences_profile"):
            cursor.execute(f"TRUNCATE {table} CASCADE")
        started = time.perf_counter()
        cities = "ARRAY[" + ", ".join(f"'{c}'" for c in CITIES) + "]"
        cursor.execute(
            f"""
            INSERT INTO audiences_profile (id, mpid, attributes, created_at, updated_at)
            SELECT g, g::bigint * 7919 + 12345,
                   jsonb_build_object(
                       'status', CASE WHEN {h.format(salt="s")} < 300 THEN 'Premium' ELSE 'Free' END,
                       'favourite_city', ({cities})[1 + {h.format(salt="c")} %% 5],
                       'age', 18 + {h.format(salt="a")} %% 60,
                       'plan', CASE WHEN {h.format(salt="p")} < 500 THEN 'monthly' ELSE 'yearly' END),
                   now(), now()
            FROM generate_series(1, %s) g
            """,
            [profiles],
        )
        cursor.execute("SELECT setval(pg_get_serial_sequence('audiences_profile', 'id'), %s)", [profiles])
        timings["profiles"] = time.perf_counter() - started

        started = time.perf_counter()
        cursor.execute(
            f"""
            INSERT INTO audiences_identity (profile_id, type, value, created_at)
            SELECT g, 'customer', 'cust-' || g, now() FROM generate_series(1, %s) g
            UNION ALL
            SELECT g, 'email', 'user' || g || '@example.com', now() FROM generate_series(1, %s) g
             WHERE {h.format(salt="e")} < 500
            UNION ALL
            SELECT g, 'google_advertising_id', md5('gaid' || g)::uuid::text, now() FROM generate_series(1, %s) g
             WHERE {h.format(salt="d")} < 800
            """,
            [profiles, profiles, profiles],
        )
        timings["identities"] = time.perf_counter() - started

        started = time.perf_counter()
        names = "ARRAY[" + ", ".join(f"'{n}'" for n in EVENT_NAMES) + "]"
        cursor.execute(
            f"""
            INSERT INTO audiences_event (profile_id, event_type, name, custom_event_type, attributes,
                                         timestamp, source_message_id, received_at)
            SELECT g, 'custom_event', ({names})[1 + (hashtext(g::text || 'n' || k) & 2147483647) %% 5], 'other',
                   jsonb_build_object('city', ({cities})[1 + (hashtext(g::text || 'c' || k) & 2147483647) %% 5]),
                   now() - ((hashtext(g::text || 't' || k) & 2147483647) %% (60 * 24 * 60)) * interval '1 minute',
                   '', now()
            FROM generate_series(1, %s) g, generate_series(1, %s) k
            """,
            [profiles, events_per_profile],
        )
        timings["events"] = time.perf_counter() - started
        started = time.perf_counter()
        cursor.execute("ANALYZE")
        timings["analyze"] = time.perf_counter() - started
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate a benchmark population")
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events-per-profile", type=int, default=5)
    args = parser.parse_args()
    use_database(f"af_bench_{args.profiles}", fresh=True)
    timings = generate(args.profiles, args.events_per_profile)
    for step, seconds in timings.items():
        print(f"{step:12s} {seconds:8.1f} s")


if __name__ == "__main__":
    main()

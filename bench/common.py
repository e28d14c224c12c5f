"""Shared bits of the benchmarks: a scratch PostgreSQL database and Django set up on it."""

from __future__ import annotations

import os
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Scratch databases, keys made for the run (the settings refuse to start without keys).
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("SECRETS_ENCRYPTION_KEYS", Fernet.generate_key().decode())


def use_database(name: str, *, fresh: bool) -> str:
    """Point Django at the PostgreSQL database `name` on 127.0.0.1 (created if missing, or anew
    with fresh=True) unless BENCH_DATABASE_URL says otherwise. Returns the URL."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if not url:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if fresh and exists:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            if fresh or not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgres://postgres@127.0.0.1:5432/{name}"
    os.environ["DATABASE_URL"] = url
    import django

    django.setup()
    return url


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm(tables: list[str]) -> None:
    """Read these tables and all their indexes into the OS cache (pg_prewarm 'read'), so a
    benchmark compares work and not cache misses. Random index probes on this machine's disk cost
    2-3 ms each when cold: 2,500 of them turn a 1.4 s recompute into 9 s."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        cursor.execute(
            """
            SELECT count(pg_prewarm(c.oid, 'read')) FROM pg_class c
            WHERE c.oid IN (SELECT t.oid FROM pg_class t WHERE t.relname = ANY(%s)
                            UNION SELECT i.indexrelid FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                                  WHERE t.relname = ANY(%s))
            """,
            [tables, tables],
        )


def best(runs: int, work: Callable[[], object]) -> float:
    """The best time of `runs` calls of `work`, after one call that warms the caches."""
    work()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return min(timings)


def insert_email_members(audience_id: int, n: int) -> None:
    """N profiles, each with the email user<i>@example.com, all members of the audience: inserted set-wise."""
    from django.db import connection

    from audiences.models import AudienceMembership, Identity, Profile

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
            [audience_id],
        )


@contextmanager
def local_mailchimp(api_key: str, lists: list[str]) -> Iterator[str]:
    """The local Mailchimp server in a process of its own (as a partner is: its work is not the delivering
    process's), with these lists and without keeping every request it receives. Yields its base URL."""
    command = [sys.executable, "-m", "local_partners", "mailchimp", "--port", "0", "--api-key", api_key]
    command += ["--no-record-requests", *(f"--list={name}" for name in lists)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        for line in server.stdout:  # "Local Mailchimp API listening on http://127.0.0.1:PORT/3.0"
            if "listening on" in line:
                base_url = line.rsplit(" ", 1)[1].strip()
                break
        else:
            raise RuntimeError("the local Mailchimp server did not start")
        yield base_url
    finally:
        server.terminate()
        server.wait(10)


def list_member_count(base_url: str, api_key: str, list_id: str) -> int:
    """The list's subscribed members, as the partner counts them (stats.member_count)."""
    import requests

    answer = requests.get(f"{base_url}/lists/{list_id}", auth=("bench", api_key), timeout=30)
    answer.raise_for_status()
    return answer.json()["stats"]["member_count"]

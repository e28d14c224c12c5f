"""Events API throughput: /v2/bulkevents served by gunicorn against PostgreSQL, with real-time
evaluation of 10 active audiences.

    .venv/bin/python bench/bulkevents.py --seconds 20

Each batch is one user (a new user for 20% of batches, a returning one otherwise) with five custom
events and the user's attributes (stable per user, as a real app sends them); a request carries
--batches-per-request batches (mParticle's 256 KB
request limit allows about 150 of these). Requests are sent by --clients threads with keep-alive
sessions for --seconds, then the server is stopped. Prints batches/s accepted (every request must
answer 202) and, as a floor measured in the same run, the rate of the same requests against a
gunicorn endpoint that only parses the JSON (the HTTP + JSON cost with no database work).
Uses a scratch database `af_bench_events` (created anew) unless BENCH_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from common import ROOT, use_database

AUDIENCES = [
    (
        "Potential Parisians",
        {
            "and": [
                {
                    "event": "Destination Intro",
                    "attributes": [{"attribute": "city", "operator": "equals", "value": "Paris"}],
                },
                {"attribute": "status", "operator": "equals", "value": "Premium"},
            ]
        },
    ),
    ("Premium", {"attribute": "status", "operator": "equals", "value": "Premium"}),
    ("Searchers", {"event": "Search", "frequency": {"operator": "at_least", "count": 2}}),
    ("Adults", {"attribute": "age", "operator": "greater_or_equal", "value": 18}),
    ("Romans", {"attribute": "favourite_city", "operator": "equals", "value": "Rome"}),
    ("Monthly", {"attribute": "plan", "operator": "equals", "value": "monthly"}),
    ("Emailable", {"identity": "email", "operator": "exists"}),
    ("Players", {"event": "Play", "recency": {"within_last": {"amount": 7, "unit": "days"}}}),
    ("Not buyers", {"exclude": {"event": "Purchase"}}),
    ("Gmail users", {"identity": "email", "operator": "matches", "value": "*@gmail.com"}),
]
EVENT_NAMES = ["Destination Intro", "Search", "Play", "Purchase", "Share"]
CITIES = ["Paris", "Lyon", "Rome", "Berlin", "Madrid"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(rng: random.Random, user: int, now_ms: int) -> dict:
    # A user's attributes are theirs (the same in every batch); events vary from batch to batch.
    profile = random.Random(user)
    return {
        "environment": "production",
        "source_request_id": str(uuid.uuid4()),
        "user_identities": {"customer_id": f"bench-{user}", "email": f"user{user}@example.com"},
        "user_attributes": {
            "status": profile.choice(["Premium", "Free", "Free"]),
            "favourite_city": profile.choice(CITIES),
            "age": profile.randint(12, 80),
            "plan": profile.choice(["monthly", "yearly"]),
        },
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": rng.choice(EVENT_NAMES),
                    "custom_event_type": "other",
                    "timestamp_unixtime_ms": now_ms - rng.randint(0, 86_400_000),
                    "custom_attributes": {"city": rng.choice(CITIES)},
                },
            }
            for _ in range(5)
        ],
    }


def run_load(url: str, auth: tuple[str, str], *, seconds: float, clients: int, per_request: int) -> tuple[int, int]:
    import requests

    accepted = [0] * clients
    failures = [0] * clients
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        session = requests.Session()
        session.auth = auth
        users = 0
        while time.monotonic() < deadline:
            now_ms = int(time.time() * 1000)
            batches = []
            for _ in range(per_request):
                if users == 0 or rng.random() < 0.2:
                    users += 1
                    user = index * 10_000_000 + users
                else:
                    user = index * 10_000_000 + rng.randint(1, users)
                batches.append(make_batch(rng, user, now_ms))
            response = session.post(url, data=json.dumps(batches), headers={"Content-Type": "application/json"})
            if response.status_code == 202:
                accepted[index] += per_request
            else:
                failures[index] += 1
                if failures[index] == 1:
                    print(f"client {index}: HTTP {response.status_code} {response.text[:300]}", file=sys.stderr)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(accepted), sum(failures)


def start_gunicorn(port: int, env: dict, app: str, workers: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("gunicorn did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description="Events API throughput")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--batches-per-request", type=int, default=100)
    args = parser.parse_args()
    url = use_database("af_bench_events", fresh=True)

    from django.core.management import call_command

    from audiences.inputs import input_create
    from audiences.models import Audience
    from audiences.services import audience_update

    call_command("migrate", verbosity=0)
    for name, criteria in AUDIENCES:
        audience = Audience.objects.create(name=name, status="draft", criteria=criteria)
        audience_update(audience=audience, status="active")
    source, secret = input_create(name="bench")
    queue = f"bench-{os.getpid()}"
    env = {**os.environ, "DATABASE_URL": url, "CELERY_QUEUE": queue, "DJANGO_SETTINGS_MODULE": "config.settings"}
    # Ingestion capacity, not the per-input rate limit (bench/ratelimit.py measures what the limits cost).
    env.setdefault("EVENTS_API_RATE_LIMIT", "0")

    port = free_port()
    floor_server = start_gunicorn(port, env, "bench.json_echo:application", args.workers)
    try:
        floor_batches, _ = run_load(
            f"http://127.0.0.1:{port}/",
            ("x", "y"),
            seconds=args.seconds / 2,
            clients=args.clients,
            per_request=args.batches_per_request,
        )
    finally:
        floor_server.terminate()
        floor_server.wait()
    floor_rate = floor_batches / (args.seconds / 2)

    port = free_port()
    server = start_gunicorn(port, env, "config.wsgi", args.workers)
    try:
        started = time.monotonic()
        batches, failures = run_load(
            f"http://127.0.0.1:{port}/v2/bulkevents",
            (source.key, secret),
            seconds=args.seconds,
            clients=args.clients,
            per_request=args.batches_per_request,
        )
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait()
    import redis

    from config.queues import queue_names

    redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).delete(*queue_names(queue))
    from audiences.models import AudienceMembership, Event, Profile

    rate = batches / elapsed
    print(
        json.dumps(
            {
                "seconds": round(elapsed, 1),
                "batches_accepted": batches,
                "failed_requests": failures,
                "batches_per_second": round(rate),
                "floor_json_only_batches_per_second": round(floor_rate),
                "ratio_floor_over_service": round(floor_rate / rate, 2) if rate else None,
                "profiles": Profile.objects.count(),
                "events": Event.objects.count(),
                "memberships": AudienceMembership.objects.count(),
                "active_audiences": Audience.objects.filter(status="active").count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

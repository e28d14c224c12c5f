"""Braze under its rate limit: 100,000 membership changes across 10 audiences reach a local Braze server.

    .venv/bin/python bench/braze_rate.py --changes 100000 --audiences 10 --rate-limit 50 --rate-window 1

A population of changes / audiences profiles (each with a customer id, Braze's external_id) and as many
audiences, each matching every profile and connected to one Braze output (one account: one key, one rate
limit). The audiences are computed with the worker stopped, so the outbox holds every change; then a
Celery worker (the Procfile's --concurrency 2) delivers them to the local Braze server, which allows
--rate-limit requests per --rate-window seconds (X-RateLimit-* headers, 429 beyond: real Braze allows
3,000 per 3 s, far above what one worker sends, so the default here is low enough to be reached).

Prints the requests received, the most attribute objects in one (Braze's cap: 75), the 429s answered,
the most requests accepted in one of the server's windows and the most received in any sliding window
(both against the limit), the time from the worker's start to the last change delivered, and whether
every user holds exactly its audiences. The account's request budget (outputs/partners/budget.py) is declared
as the server's limit (PARTNER_REQUEST_RATES) unless --declared-rate braze leaves Braze's own 3,000 per 3 s
(then only the X-RateLimit-* answers shared between connections keep it). Uses a scratch database
`af_bench_braze` (created anew) unless BENCH_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, use_database

BRAZE_KEY = "bench-braze-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_braze(port: int, limit: int, window: float, stats_file: str) -> None:
    """The local Braze, recording each request's arrival, answer and number of attribute objects."""
    sys.path.insert(0, str(ROOT))
    from local_partners.braze import LocalBrazeServer

    seen: list[tuple[float, int, int]] = []

    class Recording(LocalBrazeServer):
        def dispatch(self, method, path, authorization, raw):  # type: ignore[no-untyped-def]
            at = time.time()
            answer = super().dispatch(method, path, authorization, raw)
            if (method, path) == ("POST", "/users/track"):
                try:
                    objects = len(json.loads(raw or b"{}").get("attributes", []))
                except (ValueError, AttributeError):
                    objects = -1
                with self._lock:
                    seen.append((at, answer.status, objects))
            return answer

    server = Recording(port=port, api_keys=[BRAZE_KEY], rate_limit=limit, rate_window=window)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    done.wait()
    users = server.users()
    server.stop()
    Path(stats_file).write_text(json.dumps({"requests": seen, "users": users}))


def populate(profiles: int, audiences: int, port: int) -> list[int]:
    """The profiles, the audiences (computed: every change in the outbox) and their Braze connections."""
    from django.db import connection

    from audiences.membership.recompute import recompute_audience
    from audiences.services import audience_create
    from forwarding.lifecycle import connection_create
    from outputs.services import output_create

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO audiences_profile (id, mpid, attributes, created_at, updated_at)
            SELECT g, g, '{"bench": "braze"}'::jsonb, now(), now() FROM generate_series(1, %s) g
            """,
            [profiles],
        )
        cursor.execute("SELECT setval(pg_get_serial_sequence('audiences_profile', 'id'), %s)", [profiles])
        cursor.execute(
            """
            INSERT INTO audiences_identity (profile_id, type, value, created_at)
            SELECT g, 'customer', 'cust-' || g, now() FROM generate_series(1, %s) g
            """,
            [profiles],
        )
        cursor.execute("ANALYZE")
    output = output_create(
        name="Local Braze",
        partner_key="braze",
        settings={"api_key": BRAZE_KEY, "instance": "US-01", "external_identity_type": "customer"},
    )
    ids = []
    for n in range(audiences):
        audience = audience_create(
            name=f"Braze audience {n + 1}",
            criteria={"attribute": "bench", "operator": "equals", "value": "braze"},
            status="active",
        )
        connection_create(audience=audience, output=output, settings={})
        recompute_audience(audience.pk)
        ids.append(audience.pk)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description="Braze deliveries under the partner's rate limit")
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--audiences", type=int, default=10)
    parser.add_argument("--rate-limit", type=int, default=50, help="requests per window at the local Braze")
    parser.add_argument("--rate-window", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--declared-rate",
        choices=("server", "braze"),
        default="server",
        help="the request rate the account's budget keeps to: the server's limit, or Braze's own declaration",
    )
    parser.add_argument("--timeout", type=float, default=900, help="the longest wait for every change")
    parser.add_argument("--serve-braze", nargs=4, metavar=("PORT", "LIMIT", "WINDOW", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_braze:
        port, limit, window, stats_file = args.serve_braze
        serve_braze(int(port), int(limit), float(window), stats_file)
        return

    port = free_port()
    if args.declared_rate == "server":
        os.environ["PARTNER_REQUEST_RATES"] = json.dumps({"braze": f"{args.rate_limit}/{args.rate_window:g}"})
    # This run's budget counters start empty (the Redis is shared with other runs).
    os.environ["RATE_LIMIT_KEY_PREFIX"] = f"bench-braze-{os.getpid()}:"
    os.environ["PARTNER_API_BASE_URLS"] = json.dumps({"braze": f"http://127.0.0.1:{port}"})
    # This process queues the deliveries (as the recomputes commit): onto the worker's private queues.
    queue = os.environ["CELERY_QUEUE"] = f"bench-braze-{os.getpid()}"
    url = use_database("af_bench_braze", fresh=not os.environ.get("BENCH_DATABASE_URL"))
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    env = {**os.environ, "DATABASE_URL": url, "CELERY_QUEUE": queue}
    handle, stats_file = tempfile.mkstemp(prefix="braze-rate-", suffix=".json")
    os.close(handle)
    log = open(Path(tempfile.gettempdir()) / f"braze-rate-{os.getpid()}.log", "w")  # the worker's log
    python = str(ROOT / ".venv/bin/python")
    processes: list[subprocess.Popen] = []
    try:
        braze = subprocess.Popen(
            [python, __file__, "--serve-braze", str(port), str(args.rate_limit), str(args.rate_window), stats_file],
            cwd=ROOT,
            env=env,
        )
        processes.append(braze)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        profiles = args.changes // args.audiences
        audience_ids = populate(profiles, args.audiences, port)

        from forwarding.models import PendingChange

        pending = PendingChange.objects.count()
        started = time.time()
        worker = subprocess.Popen(
            [str(ROOT / ".venv/bin/celery"), "-A", "config", "worker", "--loglevel=WARNING", "--concurrency=2"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        processes.append(worker)
        # The worker rings itself as it drains; the sweeper (beat's job) is run here, as beat would.
        from forwarding.sweeper import sweep

        deadline = time.monotonic() + args.timeout
        while PendingChange.objects.exists() and time.monotonic() < deadline:
            sweep()
            time.sleep(1)
        left = PendingChange.objects.count()
        finished = time.time()
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        import redis

        from config.queues import queue_names

        redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).delete(*queue_names(queue))

    stats = json.loads(Path(stats_file).read_text())
    os.unlink(stats_file)
    requests_ = [(at, status, objects) for at, status, objects in stats["requests"] if at >= started]
    times = sorted(at for at, _, _ in requests_)
    accepted = sorted(at for at, status, _ in requests_ if status != 429)
    # The server's own windows: each starts at the first request after the previous one ended.
    most_in_window, window_start, used = 0, None, 0
    for at in accepted:
        if window_start is None or at >= window_start + args.rate_window:
            window_start, used = at, 0
        used += 1
        most_in_window = max(most_in_window, used)
    sliding, low = 0, 0
    for high, at in enumerate(times):
        while times[low] <= at - args.rate_window:
            low += 1
        sliding = max(sliding, high - low + 1)
    expected = {f"cust-{n}" for n in range(1, args.changes // args.audiences + 1)}
    holding = {
        u.get("external_id")
        for u in stats["users"]
        if sorted(u.get("SegmentMembership") or []) == sorted(str(a) for a in audience_ids)
        or sorted(u.get("SegmentMembership") or []) == sorted(audience_ids)
    }
    print(
        json.dumps(
            {
                "changes_queued": pending,
                "changes_left_undelivered": left,
                "audiences": args.audiences,
                "requests": len(requests_),
                "requests_accepted": len(accepted),
                "max_objects_per_request": max((o for _, _, o in requests_), default=0),
                "answers_429": sum(1 for _, status, _ in requests_ if status == 429),
                "rate_limit": f"{args.rate_limit} per {args.rate_window:g} s",
                "declared_rate": os.environ.get("PARTNER_REQUEST_RATES", "Braze's own (3000/3)"),
                "max_accepted_in_one_server_window": most_in_window,
                "max_received_in_any_sliding_window": sliding,
                "seconds_worker_start_to_last_delivered": round(finished - started, 1),
                "seconds_first_to_last_request": round(times[-1] - times[0], 1) if times else None,
                "users_holding_exactly_their_audiences": f"{len(expected & holding)} of {len(expected)}",
                "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                "worker_log": log.name,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

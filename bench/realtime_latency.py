"""Real-time latency: an Events API request accepted -> the partner's request received, under a fixed load.

    .venv/bin/python bench/generate.py --profiles 1000000          # once, for --recompute (about 3 min)
    .venv/bin/python bench/realtime_latency.py --rate 1000 --seconds 20
    .venv/bin/python bench/realtime_latency.py --rate 1000 --seconds 20 --recompute

The service runs as `make run` runs it: gunicorn with config/gunicorn.py (WEB_CONCURRENCY x WEB_THREADS)
and a Celery worker (--concurrency 2, the Procfile's), a private Redis queue, and the local Mailchimp
server in a process of its own, recording when each member's request arrived. An open-loop load
generator sends /v2/bulkevents requests on a fixed schedule (--rate batches/s, --batches-per-request
batches per request, from --clients threads with keep-alive sessions): a request due is sent when due,
whether earlier ones have answered or not (a late send is counted, never silently waited for). Every
batch is a new user with an email who enters the audience "Realtime" (connected to the local
Mailchimp list); the latency of a user is the arrival of its email at Mailchimp minus the moment its
request was sent (and minus the 202, printed too). With --recompute, another audience of the
population ("Premium", not connected) is recomputed over and over in another process while the load
runs, its criteria flipping each time so that every recompute writes a large difference (the
population's 30% Premium users, half of them entering or leaving).

Prints p50/p95/p99/max, the achieved rate beside the rate asked for, sends that were late, the
recomputes that ran (and how long each took), and the machine's load (uptime) before and after.
Uses the database af_bench_<profiles> made by bench/generate.py (or BENCH_DATABASE_URL); without
--recompute an empty one is fine (--profiles 0: af_bench_latency, created anew).

    .venv/bin/python bench/realtime_latency.py --profile 200

--profile N: the web's own cost of these requests, in this process and without gunicorn: N requests of the
same payload through Django's test client, one after another (no worker runs; the doorbells go to a private
queue, deleted after). Prints SQL statements per request, this process's CPU per request, and the CPU of
the PostgreSQL backend serving it (from /proc). --cprofile adds the functions that cost the most.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import proccpu
from common import ROOT, use_database

MAILCHIMP_KEY = "0123456789abcdef0123456789abcdef-us6"
LIST_ID = "realtime"
REALTIME = {"attribute": "plan", "operator": "equals", "value": "realtime-bench"}
# The recomputed audience flips between these: about 300,000 and 150,000 members of 1,000,000.
PREMIUM = {"attribute": "status", "operator": "equals", "value": "Premium"}
PREMIUM_MONTHLY = {"and": [PREMIUM, {"attribute": "plan", "operator": "equals", "value": "monthly"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port}")


def wait_for_members(port: int, count: int, *, timeout: float) -> None:
    """Until the local list holds `count` members (the worker is taking work)."""
    import requests

    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/3.0/lists/{LIST_ID}/members?count=1"
    while time.monotonic() < deadline:
        held = requests.get(url, auth=("any", MAILCHIMP_KEY), timeout=5).json().get("total_items", 0)
        if held >= count:
            return
        time.sleep(0.2)
    raise SystemExit(f"the local list holds {held} members, not {count}, after {timeout:.0f} s")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the local Mailchimp, in a process of its own, recording arrivals -------------------------


def serve_mailchimp(port: int, arrivals_file: str) -> None:
    sys.path.insert(0, str(ROOT))
    from local_partners.mailchimp import LocalMailchimpServer

    arrivals: dict[str, float] = {}

    class Recording(LocalMailchimpServer):
        def dispatch(self, method, target, headers, raw_body):  # type: ignore[no-untyped-def]
            at = time.time()  # before anything else: the request has arrived
            if method == "POST" and raw_body:
                try:
                    for member in json.loads(raw_body).get("members", ()):
                        arrivals.setdefault(str(member.get("email_address", "")).lower(), at)
                except (ValueError, AttributeError):
                    pass
            return super().dispatch(method, target, headers, raw_body)

    server = Recording(port=port, api_keys=[MAILCHIMP_KEY])
    server.create_list(LIST_ID, "Realtime")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    done.wait()
    server.stop()
    Path(arrivals_file).write_text(json.dumps(arrivals))


# --- the recompute loop, in a process of its own ----------------------------------------------


def recompute_loop(audience_id: int) -> None:
    from django.db.models import F

    from audiences.membership.recompute import recompute_audience
    from audiences.models import Audience

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    flip = False
    while not stop.is_set():
        flip = not flip
        Audience.objects.filter(pk=audience_id).update(
            criteria=PREMIUM_MONTHLY if flip else PREMIUM, criteria_version=F("criteria_version") + 1
        )
        started = time.time()
        print(json.dumps({"started": started}), flush=True)
        result = recompute_audience(audience_id, reason="bench")
        print(json.dumps({"started": started, "ended": time.time(), **result.as_dict()}), flush=True)


# --- the load ---------------------------------------------------------------------------------


def make_batch(email: str, now_ms: int) -> dict:
    return {
        "environment": "production",
        "source_request_id": str(uuid.uuid4()),
        "user_identities": {"email": email, "customer_id": email},
        "user_attributes": {"plan": "realtime-bench", "status": "Free"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {"event_name": "Play", "custom_event_type": "other", "timestamp_unixtime_ms": now_ms},
            }
        ],
    }


# A placeholder as wide as a millisecond timestamp (13 digits until 2286): each body is encoded once, before
# the load, and its events' timestamps are written in at the moment it is sent.
TIMESTAMP_SLOT = b"9999999999999"


def encoded_request(path: str, host: str, authorization: str, body_parts: list[bytes]) -> list[bytes]:
    """A POST's bytes, split where the timestamps go: b"".join(parts with the timestamp between) is the request."""
    length = sum(len(part) for part in body_parts) + len(TIMESTAMP_SLOT) * (len(body_parts) - 1)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return [head + body_parts[0], *body_parts[1:]]


class KeepAlive:
    """One keep-alive HTTP/1.1 connection on a bare socket: sends prepared bytes, reads the answer's status and
    skips its body (Content-Length). Reconnects when the server closed it (gunicorn's keep-alive timeout)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None

    def post(self, request: bytes) -> int:
        for attempt in (1, 2):
            fresh = self.sock is None
            if fresh:
                self.sock = socket.create_connection(self.address)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.sock.sendall(request)
                return self._answer()
            except OSError:
                self.close()
                # Sent again only on a kept connection the server had closed before reading it (no answer at
                # all): gunicorn closes an idle keep-alive connection; a fresh one failing is a failure.
                if fresh or attempt == 2:
                    return 0
        return 0

    def _answer(self) -> int:
        sock = self.sock
        assert sock is not None
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before the answer")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run_load(
    url: str, auth: tuple[str, str], *, rate: float, seconds: float, per_request: int, clients: int, run: str
) -> list[dict]:
    """Open loop: request i is due at start + i / (rate / per_request), sent by whichever thread is free.

    The load generator shares the machine's cores with the service, so it is kept cheap: every body is
    encoded before the load starts (the same JSON as make_batch gives, each batch's source_request_id its own
    uuid4; only the events' timestamps are written in when the request is sent), sent as prepared bytes on
    keep-alive sockets, and each request's times are kept as a tuple."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    authorization = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    interval = per_request / rate
    total = int(seconds / interval)
    all_emails = [[f"rt-{run}-{index}-{k}@bench.example" for k in range(per_request)] for index in range(total)]
    prepared = []
    for emails in all_emails:
        body = json.dumps([make_batch(e, int(TIMESTAMP_SLOT)) for e in emails]).encode()
        prepared.append(encoded_request(parts.path, f"{host}:{port}", authorization, body.split(TIMESTAMP_SLOT)))
    start = time.monotonic() + 0.5
    wall_offset = time.time() - time.monotonic()
    counter = iter(range(total))
    lock = threading.Lock()
    done: list[tuple[int, float, float, int]] = []

    def client() -> None:
        connection = KeepAlive(host, port)
        monotonic, sleep = time.monotonic, time.sleep
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                connection.close()
                return
            due = start + index * interval
            delay = due - monotonic()
            if delay > 0:
                sleep(delay)
            now_ms = b"%d" % int((monotonic() + wall_offset) * 1000)
            request = now_ms.join(prepared[index])
            sent = monotonic()
            status = connection.post(request)
            done.append((index, sent, monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [
        {
            "due": start + index * interval + wall_offset,
            "sent": sent + wall_offset,
            "answered": answered + wall_offset,
            "status": status,
            "emails": all_emails[index],
        }
        for index, sent, answered, status in sorted(done)
    ]


def setup_audiences(*, recompute: bool) -> tuple[int | None, tuple[str, str]]:
    """A fresh "Realtime" audience connected to the local list, and (with recompute) "Premium" over the
    population. Earlier runs' connections, outputs and audiences are removed first (a scratch database)."""
    from audiences.inputs import input_create
    from audiences.membership.recompute import recompute_audience
    from audiences.models import Audience, AudienceMembership, DeferredEvaluation, Input, MembershipChange
    from audiences.services import audience_create
    from connections.models import Connection
    from forwarding.lifecycle import connection_create
    from forwarding.models import DeliveryAttempt, PendingChange
    from outputs.services import output_create

    for model in (PendingChange, DeliveryAttempt, DeferredEvaluation):
        model.objects.all().delete()
    Connection.objects.all().delete()
    from outputs.models import Output

    Output.objects.all().delete()
    MembershipChange.objects.all().delete()
    AudienceMembership.objects.all().delete()
    Audience.objects.all().delete()
    Input.objects.all().delete()
    # Earlier runs' users: the new "Realtime" audience would take them in and backfill them to the list.
    from django.db import connection

    with connection.cursor() as cursor:
        earlier = "SELECT id FROM audiences_profile WHERE attributes ->> 'plan' = 'realtime-bench'"
        for table in ("audiences_event", "audiences_identity", "audiences_identityconflict"):
            column = "chosen_profile_id" if table == "audiences_identityconflict" else "profile_id"
            cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({earlier})")
        cursor.execute(f"DELETE FROM audiences_profile WHERE id IN ({earlier})")
    realtime = audience_create(name="Realtime", criteria=REALTIME, status="active")
    output = output_create(
        name="Local Mailchimp",
        partner_key="mailchimp",
        settings={"api_key": MAILCHIMP_KEY, "email_type": "html", "double_opt_in": False},
    )
    connection_create(audience=realtime, output=output, settings={"list_id": LIST_ID})
    premium_id = None
    if recompute:
        premium = audience_create(name="Premium", criteria=PREMIUM, status="active")
        recompute_audience(premium.pk)  # its first calculation, before the load
        premium_id = premium.pk
    source, secret = input_create(name="bench")
    return premium_id, (source.key, secret)


def backend_cpu_seconds() -> float:
    """CPU used so far by the PostgreSQL backend of Django's connection (same machine: /proc)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def print_costs(  # type: ignore[no-untyped-def]
    unit: str, process: str, count: int, per_request: int, statements: float, cpu: float, backend: float, last, profiler
) -> None:
    """The in-process costs per request (or ring), and where the time went when profiled."""
    import pstats

    print(
        json.dumps(
            {
                f"{unit}s": count,
                "batches_per_request": per_request,
                f"statements_per_{unit}": round(statements, 1),
                f"{process}_cpu_ms_per_{unit}": round(cpu * 1000 / count, 2),
                f"postgresql_cpu_ms_per_{unit}": round(backend * 1000 / count, 2),
                f"statements_of_the_last_{unit}": last,
            },
            indent=2,
        )
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(60)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        if os.environ.get("BENCH_CALLERS"):
            pstats.Stats(profiler).print_callers(os.environ["BENCH_CALLERS"])


def profile_in_process(*, requests: int, per_request: int, cprofile: bool) -> None:
    import base64
    import cProfile

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    _, (key, secret) = setup_audiences(recompute=False)
    client = Client(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode())
    run = uuid.uuid4().hex[:8]

    def bodies(phase: str, count: int) -> list[str]:
        now_ms = int(time.time() * 1000)
        return [
            json.dumps([make_batch(f"rt-{run}{phase}-{i}-{k}@bench.example", now_ms) for k in range(per_request)])
            for i in range(count)
        ]

    def post(body: str) -> None:
        response = client.post("/v2/bulkevents", data=body, content_type="application/json", HTTP_HOST="localhost")
        assert response.status_code == 202, response.content

    for body in bodies("w", 20):  # warm: compiled criteria, connections, caches
        post(body)
    statements = 0
    counted = bodies("q", 20)
    for body in counted:
        with CaptureQueriesContext(connection) as queries:
            post(body)
        statements += len(queries)
    last = [q["sql"][:160] for q in queries.captured_queries]
    timed = bodies("t", requests)
    profiler = cProfile.Profile() if cprofile else None
    backend_before, started = backend_cpu_seconds(), time.process_time()
    if profiler:
        profiler.enable()
    for body in timed:
        post(body)
    if profiler:
        profiler.disable()
    cpu, backend = time.process_time() - started, backend_cpu_seconds() - backend_before
    print_costs("request", "web", requests, per_request, statements / len(counted), cpu, backend, last, profiler)


def profile_worker_in_process(*, requests: int, per_request: int, cprofile: bool) -> None:
    """The worker's own cost of a ring, in this process: each request is posted (not measured), then its
    connection's delivery task runs here (apply: Celery's tracing, no broker) to the local Mailchimp."""
    import base64
    import cProfile

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from connections.models import Connection
    from forwarding.tasks import deliver_connection

    _, (key, secret) = setup_audiences(recompute=False)
    connection_id = Connection.objects.get().pk
    client = Client(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode())
    run = uuid.uuid4().hex[:8]

    def post(phase: str, i: int) -> None:
        now_ms = int(time.time() * 1000)
        body = json.dumps([make_batch(f"rt-{run}{phase}-{i}-{k}@bench.example", now_ms) for k in range(per_request)])
        response = client.post("/v2/bulkevents", data=body, content_type="application/json", HTTP_HOST="localhost")
        assert response.status_code == 202, response.content

    def ring() -> None:
        report = deliver_connection.apply(args=[connection_id]).get()
        assert report["batches"] >= 1, report

    for i in range(20):  # warm
        post("w", i)
        ring()
    statements = 0
    last: list[str] = []
    for i in range(20):
        post("q", i)
        with CaptureQueriesContext(connection) as queries:
            ring()
        statements += len(queries)
        last = [f"{q['time']} s: {q['sql'][:150]}" for q in queries.captured_queries]
    profiler = cProfile.Profile() if cprofile else None
    cpu = backend = 0.0
    for i in range(requests):
        post("t", i)
        backend_before, started = backend_cpu_seconds(), time.process_time()
        if profiler:
            profiler.enable()
        ring()
        if profiler:
            profiler.disable()
        cpu += time.process_time() - started
        backend += backend_cpu_seconds() - backend_before
    print_costs("ring", "worker", requests, per_request, statements / 20, cpu, backend, last, profiler)


def main() -> None:
    parser = argparse.ArgumentParser(description="Events API -> partner latency under a fixed load")
    parser.add_argument("--rate", type=float, default=1000, help="batches per second asked for")
    parser.add_argument("--batches-per-request", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=32, help="sending threads (keep-alive sessions)")
    parser.add_argument("--recompute", action="store_true", help="recompute another audience meanwhile")
    parser.add_argument("--profiles", type=int, default=1_000_000, help="the generated population (--recompute)")
    parser.add_argument("--drain-seconds", type=float, default=60, help="the longest wait for the last arrivals")
    parser.add_argument("--profile", type=int, metavar="REQUESTS", help="the web's cost per request, in process")
    parser.add_argument("--cprofile", action="store_true", help="with --profile: where the CPU goes")
    parser.add_argument(
        "--worker", action="store_true", help="with --profile: the delivery task's cost per ring instead of the web's"
    )
    parser.add_argument("--serve-mailchimp", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--recompute-loop", type=int, metavar="AUDIENCE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mailchimp:
        serve_mailchimp(int(args.serve_mailchimp[0]), args.serve_mailchimp[1])
        return

    # The recompute loop runs in a process of its own, on the population the run set up.
    name = f"af_bench_{args.profiles}" if args.recompute or args.recompute_loop else "af_bench_latency"
    mailchimp_port, web_port = free_port(), free_port()
    os.environ["PARTNER_API_BASE_URLS"] = json.dumps({"mailchimp": f"http://127.0.0.1:{mailchimp_port}/3.0"})
    queue = os.environ.setdefault("CELERY_QUEUE", f"bench-latency-{os.getpid()}")  # private queues
    if args.profile:
        os.environ["EVENTS_API_RATE_LIMIT"] = "0"
        use_database(name, fresh=not os.environ.get("BENCH_DATABASE_URL"))
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        partner = None
        try:
            if args.worker:
                handle, arrivals_file = tempfile.mkstemp(prefix="realtime-latency-", suffix=".json")
                os.close(handle)
                partner = subprocess.Popen(
                    [sys.executable, __file__, "--serve-mailchimp", str(mailchimp_port), arrivals_file], cwd=ROOT
                )
                wait_for_port(mailchimp_port, partner, "the local Mailchimp")
                profile_worker_in_process(
                    requests=args.profile, per_request=args.batches_per_request, cprofile=args.cprofile
                )
            else:
                profile_in_process(requests=args.profile, per_request=args.batches_per_request, cprofile=args.cprofile)
        finally:
            if partner is not None:
                partner.terminate()
                partner.wait(30)
                os.unlink(arrivals_file)
            import redis

            from config.queues import queue_names

            redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).delete(*queue_names(queue))
        return
    if args.recompute_loop:
        use_database(name, fresh=False)
        recompute_loop(args.recompute_loop)
        return
    url = use_database(name, fresh=not args.recompute and not os.environ.get("BENCH_DATABASE_URL"))
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db import connection

    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CELERY_QUEUE": queue,
        "WEB_BIND": f"127.0.0.1:{web_port}",
        "WEB_ACCESS_LOG": "/dev/null",
        # The load, not the per-input limit (bench/ratelimit.py measures what the limits cost).
        "EVENTS_API_RATE_LIMIT": "0",
    }
    run = uuid.uuid4().hex[:8]
    handle, arrivals_file = tempfile.mkstemp(prefix="realtime-latency-", suffix=".json")
    os.close(handle)
    processes: list[subprocess.Popen] = []
    # The web's and the worker's logs (a failed request or task is looked for there).
    log = open(Path(tempfile.gettempdir()) / f"realtime-latency-{run}.log", "w")
    python = str(ROOT / ".venv/bin/python")
    try:
        mailchimp = subprocess.Popen(
            [python, __file__, "--serve-mailchimp", str(mailchimp_port), arrivals_file], cwd=ROOT, env=env
        )
        processes.append(mailchimp)
        wait_for_port(mailchimp_port, mailchimp, "the local Mailchimp")
        premium_id, auth = setup_audiences(recompute=args.recompute)
        web = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "-c", "config/gunicorn.py", "config.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        processes.append(web)
        worker = subprocess.Popen(
            [str(ROOT / ".venv/bin/celery"), "-A", "config", "worker", "--loglevel=WARNING", "--concurrency=2"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        processes.append(worker)
        wait_for_port(web_port, web, "gunicorn")
        events_url = f"http://127.0.0.1:{web_port}/v2/bulkevents"
        # Warm-up: until a user sent now reaches the list, the worker is not taking work yet.
        warm = run_load(events_url, auth, rate=20, seconds=1, per_request=1, clients=2, run=f"{run}w")
        wait_for_members(mailchimp_port, len(warm), timeout=60)
        load_before = uptime()
        cpu_before, machine_before = proccpu.snapshot(), proccpu.machine_cpu_seconds()
        loop = None
        if premium_id is not None:
            loop = subprocess.Popen(
                [python, __file__, "--recompute-loop", str(premium_id), "--profiles", str(args.profiles)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(loop)
            assert loop.stdout is not None
            json.loads(loop.stdout.readline())  # the first recompute has started
        records = run_load(
            events_url,
            auth,
            rate=args.rate,
            seconds=args.seconds,
            per_request=args.batches_per_request,
            clients=args.clients,
            run=run,
        )
        load_after = uptime()
        recomputes: list[dict] = []
        if loop is not None:
            loop.send_signal(signal.SIGTERM)
            out, _ = loop.communicate(timeout=600)
            recomputes = [json.loads(line) for line in out.splitlines() if line.strip()]
            recomputes = [r for r in recomputes if "ended" in r]
        # The last users' deliveries: until the list holds them all (or the drain time passes).
        expected = len(warm) + sum(len(r["emails"]) for r in records if r["status"] == 202)
        try:
            wait_for_members(mailchimp_port, expected, timeout=args.drain_seconds)
        except SystemExit as exc:
            print(exc, file=sys.stderr)  # and counted below as users that never arrived
        # Each process's CPU over the load and its drain (the service still runs: its connections are read).
        cpu_split = proccpu.cpu_split(
            cpu_before,
            proccpu.snapshot(),
            roles={"web": web.pid, "worker": worker.pid, "partner": mailchimp.pid}
            | ({"recompute": loop.pid} if loop is not None else {}),
            alone={"load generator": os.getpid()},
            connections=proccpu.backends(connection.settings_dict["NAME"]),
        )
        cpu_split["machine"] = round(proccpu.machine_cpu_seconds() - machine_before, 3)
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

    arrivals = json.loads(Path(arrivals_file).read_text())
    os.unlink(arrivals_file)
    from_sent: list[float] = []
    from_accepted: list[float] = []
    missing = 0
    for record in records:
        if record["status"] != 202:
            continue
        for email in record["emails"]:
            at = arrivals.get(email)
            if at is None:
                missing += 1
                continue
            from_sent.append((at - record["sent"]) * 1000)
            from_accepted.append((at - record["answered"]) * 1000)
    accepted = [r for r in records if r["status"] == 202]
    first_sent = min(r["sent"] for r in records)
    last_answered = max(r["answered"] for r in records)
    late = [r["sent"] - r["due"] for r in records]

    def summary(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {q: round(percentile(values, f), 1) for q, f in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))} | {
            "max": round(max(values), 1)
        }

    print(
        json.dumps(
            {
                "rate_asked_batches_per_second": args.rate,
                "achieved_batches_per_second": round(
                    len(accepted) * args.batches_per_request / (last_answered - first_sent), 1
                ),
                "batches_per_request": args.batches_per_request,
                "requests": len(records),
                "failed_requests": len(records) - len(accepted),
                "sends_late_by_over_10ms": sum(1 for x in late if x > 0.010),
                "send_lateness_ms": summary([x * 1000 for x in late]),
                "request_duration_ms": summary([(r["answered"] - r["sent"]) * 1000 for r in records]),
                "users_measured": len(from_sent),
                "users_never_arrived": missing,
                "latency_ms_request_sent_to_partner": summary(from_sent),
                "latency_ms_202_to_partner": summary(from_accepted),
                "recomputes_during_load": [
                    {"seconds": r["seconds"], "entered": r["entered"], "left": r["left"], "size": r["size"]}
                    for r in recomputes
                ],
                "cpu_ms_per_request": {
                    role: round(seconds * 1000 / max(1, len(accepted)), 2) for role, seconds in cpu_split.items()
                },
                "uptime_before": load_before,
                "uptime_after": load_after,
                "service_log": log.name,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

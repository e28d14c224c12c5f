"""The fault suite's machinery: real processes, a private broker, churn, and the final reckoning.

- ``Redis``: a private redis-server on a free port (kill -9 and restart it at will; the shared
  Redis on 6379 is never touched).
- ``CeleryProcess``: a ``celery worker`` (prefork, as the Procfile runs it) or ``celery beat``,
  started with the project's settings in its own process group, logging to a file.
- ``Population``: the users of the scenario and the harness's own model of who is in the
  audience, independent of the system under test; ``Churn`` changes it while faults happen
  (enter, leave, enter then leave, leave then re-enter) through the product's ingestion paths
  (the Events API service and the profile upsert service), each change a fresh ``round``
  attribute, so every membership word reaches the partner as a distinct write.
- ``Stack``: one scenario's world (the above plus the fault-injecting partner) and its verdict:
  ``converge()`` waits until the partner holds exactly the expected members, and checks every
  leaver is not held, counts duplicate writes, and times the convergence.

Scenario failures (the product did not converge, or converged too slowly) raise
``ScenarioFailed``; the defect scenarios are marked xfail on that exception only, so a broken
harness still fails loudly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from django.db import InterfaceError, OperationalError, connection, connections

ROOT = Path(__file__).resolve().parents[2]
LIST_ID = "faults"
GOOD_KEY = "0123456789abcdef0123456789abcdef-us6"
OTHER_KEY = "fedcba9876543210fedcba9876543210-us6"  # also accepted: a rotated key
WRONG_KEY = "deadbeefdeadbeefdeadbeefdeadbeef-us6"  # refused by the partner
JOINED_STATUSES = ("subscribed", "pending")
POLL_SECONDS = 0.5


class ScenarioFailed(AssertionError):
    """The product did not end exact, or not in time: what a defect scenario is expected to show."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


# --- processes -------------------------------------------------------------------------------


class Redis:
    """A private redis-server without persistence: a kill -9 loses whatever it held, as a
    crashed broker without a disk would."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        with open(self.workdir / f"redis-{self.starts}.log", "w") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), timeout=10, what=f"redis-server on port {self.port}")

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    stop = kill9


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class CeleryProcess:
    """A celery worker or beat in its own process group (so kill -9 reaches its pool too)."""

    name: str
    kind: str  # "worker" | "beat"
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """kill -9 of the whole worker (main process and its pool), as a crashed machine would."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()

    def children(self) -> list[int]:
        """Pids of the main process's children (a supervisor's command, a worker's pool)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def terminate(self) -> None:
        """SIGTERM to the main process, as honcho or a supervisor sends it: Celery's warm shutdown."""
        self.popen.send_signal(signal.SIGTERM)


# --- the audience's users ----------------------------------------------------------------------


@dataclass
class Population:
    """Who is in the audience, as the harness itself tracks it."""

    members: set[str] = field(default_factory=set)
    ever: set[str] = field(default_factory=set)  # everyone who was a member at some point
    rounds: int = 0
    last_change: float = 0.0  # time.monotonic() of the last membership change made
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_round(self) -> int:
        with self.lock:
            self.rounds += 1
            return self.rounds

    def entered(self, email: str) -> None:
        with self.lock:
            self.members.add(email)
            self.ever.add(email)
            self.last_change = time.monotonic()

    def left(self, email: str) -> None:
        with self.lock:
            self.members.discard(email)
            self.last_change = time.monotonic()

    @property
    def leavers(self) -> set[str]:
        with self.lock:
            return self.ever - self.members


def member_attributes(round_: int, *, member: bool) -> dict[str, Any]:
    """Attributes that put a profile in the audience (Potential Parisians) or take it out.
    ``round`` makes every word distinct at the partner (merge field ROUND)."""
    return {"status": "Premium" if member else "Free", "favourite_city": "Paris", "round": round_}


def _retrying(call: Callable[[], Any]) -> Any:
    """Run a write, resending it when the database dropped the connection, as a client would: the
    writes used here are idempotent (same identities, same attributes)."""
    for attempt in range(6):
        try:
            return call()
        except (OperationalError, InterfaceError):
            if attempt == 5:
                raise
            connection.close()
            time.sleep(0.2 * (attempt + 1))
    return None


def _events_batch(email: str, attributes: dict[str, Any]):
    from audiences.events_api.parsing import parse_batch

    return parse_batch(
        {
            "environment": "production",
            "user_identities": {"email": email},
            "user_attributes": attributes,
            "events": [{"event_type": "custom_event", "data": {"event_name": "Fault suite churn"}}],
        }
    )


def set_membership(population: Population, email: str, *, member: bool, via_events: bool, events_input) -> None:
    """One user enters or leaves, through the Events API service or the profile upsert service."""
    from audiences.events_api.ingest import ingest_batches
    from audiences.profiles import profile_upsert

    attributes = member_attributes(population.next_round(), member=member)
    if via_events:
        _retrying(lambda: ingest_batches(events_input, [_events_batch(email, attributes)]))
    else:
        _retrying(lambda: profile_upsert(identities=[{"type": "email", "value": email}], attributes=attributes))
    if member:
        population.entered(email)
    else:
        population.left(email)


def set_memberships(population: Population, emails: list[str], *, member: bool, events_input) -> None:
    """Many users enter or leave at once, 100 batches per Events API request (the bulk path)."""
    from audiences.events_api.ingest import ingest_batches

    for start in range(0, len(emails), 100):
        part = emails[start : start + 100]
        batches = [_events_batch(e, member_attributes(population.next_round(), member=member)) for e in part]
        _retrying(lambda batches=batches: ingest_batches(events_input, batches))
        for email in part:
            (population.entered if member else population.left)(email)


@dataclass(order=True)
class _Step:
    at: float
    email: str = field(compare=False)
    member: bool = field(compare=False)
    via_events: bool = field(compare=False)
    thread: int = field(compare=False)


class Churn:
    """Users entering, leaving, entering then leaving, and leaving then re-entering, spread over
    ``seconds``, in ``threads`` threads, from a seeded plan (a run can be repeated).

    ``ops`` is the number of user stories, taken in turn from ``kinds``. Leavers are picked among
    the current members, new users are new addresses. One story's words stay in one thread, in
    order; every other story goes through the Events API service, the others through the profile
    upsert service.
    """

    KINDS = ("enter", "leave", "enter-leave", "leave-reenter")

    def __init__(
        self,
        stack: Stack,
        *,
        ops: int,
        seconds: float,
        threads: int = 1,
        kinds: tuple[str, ...] = KINDS,
        seed: int = 6,
    ) -> None:
        self.stack = stack
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []
        self.done = 0
        rng = random.Random(seed + stack.churn_runs)
        candidates = sorted(stack.population.members)
        rng.shuffle(candidates)
        steps: list[_Step] = []
        for n in range(ops):
            kind = kinds[n % len(kinds)]
            start = rng.uniform(0, seconds)
            later = min(seconds, start + rng.uniform(0.05, 3.0))  # often before the first word is delivered
            new_user = f"churn-{stack.churn_runs}-{n}@example.com"
            email = candidates.pop() if kind in ("leave", "leave-reenter") else new_user
            words = {
                "enter": [(start, True)],
                "leave": [(start, False)],
                "enter-leave": [(start, True), (later, False)],
                "leave-reenter": [(start, False), (later, True)],
            }[kind]
            steps += [_Step(at, email, member, n % 2 == 1, n % threads) for at, member in words]
        stack.churn_runs += 1
        self.plans: list[list[_Step]] = [sorted(s for s in steps if s.thread == t) for t in range(threads)]

    def start(self) -> Churn:
        self.started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._run, args=(plan,), name=f"churn-{i}", daemon=True)
            for i, plan in enumerate(self.plans)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, plan: list[_Step]) -> None:
        try:
            for step in plan:
                delay = self.started + step.at - time.monotonic()
                if (delay > 0 and self.stopped.wait(delay)) or self.stopped.is_set():
                    return
                set_membership(
                    self.stack.population,
                    step.email,
                    member=step.member,
                    via_events=step.via_events,
                    events_input=self.stack.events_input,
                )
                self.done += 1
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)
        finally:
            connections.close_all()

    def join(self, *, stop: bool = False) -> None:
        if stop:
            self.stopped.set()
        try:
            for thread in self._threads:
                thread.join()
        except BaseException:  # e.g. the scenario's time limit: no churn may outlive the scenario
            self.stopped.set()
            raise
        if self.errors:
            raise self.errors[0]


# --- the scenario's world ------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the suite's table."""

    scenario: str
    result: str = ""
    expected: str = ""
    got: str = ""
    duplicates: str = ""
    converge: str = ""
    problems: list[str] = field(default_factory=list)


class Stack:
    """One scenario: private broker, partner, processes, data, and the verdict."""

    def __init__(self, *, workdir: Path, row: Row, celery_app, settings) -> None:
        from local_partners.faulty import FaultyMailchimp
        from local_partners.mailchimp import LocalMailchimpServer

        self.workdir = workdir
        self.row = row
        self.celery_app = celery_app
        self.settings = settings
        self.redis = Redis(workdir)
        self.upstream = LocalMailchimpServer(api_keys=[GOOD_KEY, OTHER_KEY])
        self.upstream.create_list(LIST_ID, "Fault suite")
        self.partner = FaultyMailchimp(self.upstream, seed=6).start()
        self.processes: list[CeleryProcess] = []
        self.population = Population()
        self.churn_runs = 0
        self.events_input = None
        self.audience = None
        self.output = None
        self.connection = None
        self.double_opt_in = False
        self.stalled = False  # a fault phase already failed: the verdict is taken as things stand

    # -- processes ----------------------------------------------------------------------------

    def start_broker(self) -> None:
        self.redis.start()
        self.point_publisher_at_broker()

    def point_publisher_at_broker(self) -> None:
        """This process rings the doorbell too (after its own writes): on the private broker,
        until stop() points it back where it was."""
        from tests.e2e.conftest import _reset_broker_connections

        conf = self.celery_app.conf
        self._publisher_was = {"broker_url": conf.broker_url, "task_default_queue": conf.task_default_queue}
        conf.update(broker_url=self.redis.url, task_default_queue="forwarding")
        _reset_broker_connections()

    def env(self, **overrides: str) -> dict[str, str]:
        from django.db import connection as db

        settings_dict = db.settings_dict
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": (
                f"postgres://{settings_dict['USER'] or 'postgres'}@{settings_dict['HOST'] or '127.0.0.1'}:"
                f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
            ),
            "REDIS_URL": self.redis.url,
            "CELERY_QUEUE": "forwarding",
            "PARTNER_API_BASE_URLS": json.dumps({"mailchimp": self.partner.base_url}),
            # Secrets are required outside DEBUG: the same ones as this process, which encrypted
            # the output's API key.
            "SECRET_KEY": self.settings.SECRET_KEY,
            "SECRETS_ENCRYPTION_KEYS": ",".join(self.settings.SECRETS_ENCRYPTION_KEYS),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DATABASE_TEST_NAME", None)
        env.update(overrides)
        return env

    def _spawn(self, kind: str, name: str, argv: list[str], env: dict[str, str]) -> CeleryProcess:
        number = sum(1 for p in self.processes if p.name == name) + 1
        log_path = self.workdir / f"{name}-{number}.log"
        with open(log_path, "w") as log:
            popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        process = CeleryProcess(name, kind, argv, log_path, popen)
        self.processes.append(process)
        return process

    def start_worker(
        self, name: str = "worker1", *, wait: bool = True, supervised: bool = False, **env: str
    ) -> CeleryProcess:
        """A worker as the Procfile starts it (prefork, two processes), named for this scenario;
        ``supervised``: under scripts/supervise.py, as the Procfile runs it."""
        argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO", "--concurrency=2"]
        argv += ["-n", f"{name}@%h"]
        if supervised:
            argv = [sys.executable, str(ROOT / "scripts" / "supervise.py"), "--name", name, "--", *argv]
        process = self._spawn("worker", name, argv, self.env(**env))
        if wait:
            wait_for(lambda: " ready." in process.log() or not process.alive(), timeout=60, what=f"{name} ready")
            if not process.alive():
                raise RuntimeError(f"{name} exited at start:\n{process.log()[-3000:]}")
        return process

    def start_beat(self, name: str = "beat1", **env: str) -> CeleryProcess:
        argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO"]
        argv += [f"--pidfile={self.workdir / (name + '.pid')}", f"--schedule={self.workdir / (name + '.db')}"]
        process = self._spawn("beat", name, argv, self.env(**env))
        wait_for(lambda: "beat: Starting" in process.log() or not process.alive(), timeout=60, what=f"{name} up")
        return process

    def start(self, *, workers: int = 1, beats: int = 1, **env: str) -> list[CeleryProcess]:
        """``workers`` workers and ``beats`` beats (worker1, worker2, ..., beat1, ...); the workers."""
        started = [self.start_worker(f"worker{n}", **env) for n in range(1, workers + 1)]
        for n in range(1, beats + 1):
            self.start_beat(f"beat{n}")
        return started

    def workers(self) -> list[CeleryProcess]:
        return [p for p in self.processes if p.kind == "worker" and p.alive()]

    def stop(self) -> None:
        from tests.e2e.conftest import _reset_broker_connections

        for process in self.processes:
            if process.alive():
                process.kill9()
        if hasattr(self, "_publisher_was"):
            self.celery_app.conf.update(**self._publisher_was)
            _reset_broker_connections()
        self.redis.stop()
        self.partner.stop()
        self.upstream.stop()

    def logs_tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {p.log_path.name} ---\n{p.log()[-chars:]}" for p in self.processes)

    # -- data ---------------------------------------------------------------------------------

    def prepare(self, *, members: int, double_opt_in: bool = False, api_key: str = GOOD_KEY) -> None:
        """``members`` profiles in the audience (set-wise SQL, the audience computed by the product's
        recompute), a Mailchimp output pointing at the faulty partner, an Events API input."""
        from audiences.inputs import input_create
        from audiences.models import Identity, Profile
        from tests import factories

        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {Profile._meta.db_table} (mpid, attributes, created_at, updated_at) "
                "SELECT 900000000000 + g, jsonb_build_object('status', 'Premium', 'favourite_city', 'Paris', "
                "'round', 0), now(), now() FROM generate_series(1, %s) g RETURNING id",
                [members],
            )
            ids = [row[0] for row in cursor.fetchall()]
            cursor.execute(
                f"INSERT INTO {Identity._meta.db_table} (profile_id, type, value, created_at) "
                "SELECT id, 'email', 'member-' || (mpid - 900000000000) || '@example.com', now() "
                f"FROM {Profile._meta.db_table} WHERE id = ANY(%s)",
                [ids],
            )
        for n in range(1, members + 1):
            self.population.entered(f"member-{n}@example.com")
        self.audience = factories.active_audience()
        self.double_opt_in = double_opt_in
        self.output = factories.mailchimp_output(api_key=api_key, double_opt_in=double_opt_in)
        self.events_input, _ = input_create("Fault suite")
        self.settings.PARTNER_API_BASE_URLS = {"mailchimp": self.partner.base_url}

    def connect(self):
        """Connect the audience to the output, as a user would: a failure is noted (it is one of
        the product's), and the user tries again."""
        from tests import factories

        for attempt in range(3):
            try:
                self.connection = factories.connect(self.audience, self.output, list_id=LIST_ID)
                return self.connection
            except OperationalError as exc:
                first_line = str(exc).splitlines()[0]
                self.row.problems.append(f"connect attempt {attempt + 1} failed: {first_line}")
        raise ScenarioFailed("the audience could not be connected")

    def churn_through(self, **options: Any) -> None:
        """Churn (see Churn), waiting until it is done."""
        with self.churn(**options):
            pass

    @contextmanager
    def churn(self, **options: Any) -> Iterator[Churn]:
        churn = Churn(self, **options).start()
        try:
            yield churn
        except BaseException:
            churn.join(stop=True)
            raise
        churn.join()

    @contextmanager
    def fault_phase(self) -> Iterator[None]:
        """The part of a scenario where faults are injected: if the product fails there (a stall),
        the failure is noted, and the final state is still reckoned for the table."""
        try:
            yield
        except ScenarioFailed as exc:
            self.row.problems.append(str(exc))
            self.stalled = True

    def set_members(self, emails: list[str], *, member: bool) -> None:
        set_memberships(self.population, emails, member=member, events_input=self.events_input)

    def writes(self) -> int:
        return self.partner.write_count(LIST_ID)

    def members_written(self) -> int:
        """Members the partner applied at least one write for."""
        return len(self.partner.statuses(LIST_ID))

    def wait_for_writes(self, more: int, *, within: float, what: str) -> None:
        """Wait until the partner applied ``more`` writes beyond now (or the outbox is empty: all
        was delivered already); a stall is a scenario failure."""
        target = self.writes() + more
        try:
            wait_for(lambda: self.writes() >= target or not self.pending_changes(), timeout=within, what=what)
        except TimeoutError as exc:
            raise ScenarioFailed(f"{exc}: the partner applied no more than {self.writes():,} writes") from None

    def terminate_database_backends(self) -> int:
        """pg_terminate_backend for every other session of this scenario's database only."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    # -- the verdict --------------------------------------------------------------------------

    @property
    def joined(self) -> str:
        return "pending" if self.double_opt_in else "subscribed"

    def pending_changes(self) -> int:
        from forwarding.models import PendingChange

        return PendingChange.objects.filter(connection=self.connection).count()

    def _fast_exact(self) -> bool:
        statuses = self.partner.statuses(LIST_ID)
        expected = self.population.members
        held = {e for e, s in statuses.items() if s in JOINED_STATUSES}
        return held == expected and all(statuses[e] == self.joined for e in expected)

    def converge(self, *, since: float, limit: float, target: float | None = None, after: str = "") -> float:
        """Wait until the partner holds exactly the expected members and nothing is left to send;
        returns the seconds from ``since`` (time.monotonic()). Gives up after ``limit`` seconds, or
        as soon as nothing is left to do (empty outbox, partner idle) with the state still wrong.
        Then checks the state member by member, the duplicates, and ``target``. Time is counted
        from the last membership change instead when churn went on after ``since``."""
        from connections.models import Connection

        if self.population.last_change > since:
            since = self.population.last_change
            after = f"{after} and the last change" if after else "the last change"

        deadline = since + limit
        idle_polls = 0
        converged_at = None
        while not self.stalled:
            now = time.monotonic()
            pending = self.pending_changes()
            if pending == 0 and self._fast_exact():
                converged_at = now
                break
            status, reason = Connection.objects.filter(pk=self.connection.pk).values_list("status", "status_reason")[0]
            if status == Connection.Status.FAULTED:
                self.row.problems.append(f"connection faulted: {reason[:200]}")
                break
            idle_polls = idle_polls + 1 if pending == 0 and self.partner.busy == 0 else 0
            if idle_polls >= 4:
                break  # nothing left to send: the state is final
            if now > deadline:
                self.stalled = True
                self.row.problems.append(
                    f"not converged within {limit:.0f}s{' after ' + after if after else ''} "
                    f"({pending:,} changes still pending)"
                )
                break
            time.sleep(POLL_SECONDS)
        seconds = (converged_at or time.monotonic()) - since
        self._reckon(seconds if converged_at else None, after)
        if converged_at and target is not None and seconds > target:
            self.row.problems.append(
                f"converged in {seconds:.1f}s{' after ' + after if after else ''}, over {target:.0f}s"
            )
        return seconds

    def _reckon(self, seconds: float | None, after: str) -> None:
        """The exact final state, from the partner's own list (not the front's counts)."""
        held = {m["email_address"].lower(): m["status"] for m in self.upstream.members(LIST_ID).values()}
        expected = set(self.population.members)
        leavers = self.population.leavers
        self._check_membership_matches_model(expected)
        right = {e for e in expected if held.get(e) == self.joined}
        missing = expected - held.keys()
        other = {e: held[e] for e in expected - right - missing}
        stayed = {e for e in leavers if held.get(e) in JOINED_STATUSES}
        strangers = {e for e, s in held.items() if s in JOINED_STATUSES and e not in expected and e not in leavers}
        self.row.expected = f"{len(expected):,} {self.joined}; {len(leavers):,} leavers not held"
        got = [f"{len(right):,} {self.joined}"]
        if missing:
            got.append(f"{len(missing):,} missing")
        for status in sorted(set(other.values())):
            got.append(f"{sum(1 for s in other.values() if s == status):,} {status}")
        got.append(f"{len(stayed):,} of {len(leavers):,} leavers still held")
        if strangers:
            got.append(f"{len(strangers):,} never members held")
        self.row.got = "; ".join(got)
        if missing or other or stayed or strangers:
            self.row.problems.append(f"partner state not exact: {self.row.got}")
        duplicates = self.partner.duplicates(LIST_ID)
        self.row.duplicates = f"{duplicates.unallowed} (+{duplicates.allowed} replays)"
        if duplicates.unallowed:
            self.row.problems.append(f"{duplicates.unallowed} duplicate writes, e.g. {', '.join(duplicates.examples)}")
        where = f" after {after}" if after else ""
        self.row.converge = f"{seconds:.1f}s{where}" if seconds is not None else f"no{where}"
        print(f"[{self.row.scenario}] converge: {self.row.converge}; got {self.row.got}; dup {self.row.duplicates}")

    def _check_membership_matches_model(self, expected: set[str]) -> None:
        """The product's own membership must agree with the harness's model; if not, the harness
        (not the delivery) is wrong, and that is a plain failure, not a scenario result."""
        from audiences.models import AudienceMembership, Identity

        profile_ids = AudienceMembership.objects.filter(audience=self.audience).values("profile_id")
        in_db = set(Identity.objects.filter(profile_id__in=profile_ids, type="email").values_list("value", flat=True))
        assert in_db == expected, (
            f"harness model and audience membership differ: {len(in_db - expected)} only in the database, "
            f"{len(expected - in_db)} only in the model"
        )

    def verdict(self) -> None:
        if self.row.problems:
            raise ScenarioFailed("; ".join(self.row.problems))

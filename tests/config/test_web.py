"""The web tier under the real gunicorn command of the Procfile (config/gunicorn.py, config/web.py):
slow clients cannot take it down, a stalled or endless body frees its thread in bounded time, and the
access log carries no query string."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMAIL = "jeanne.dupont@example.com"


def procfile_web_command() -> list[str]:
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    return shlex.split(line.removeprefix("web:"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Gunicorn:
    def __init__(self, tmp_path: Path, *, with_input: bool = False, **environment: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"gunicorn-{self.port}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'web.sqlite3'}",  # these requests touch no table
            "WEB_BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": "1",
            "WEB_GRACEFUL_TIMEOUT": "2",
            # Its own Events API limits, which these unauthenticated requests must not trip.
            "RATE_LIMIT_KEY_PREFIX": f"test-web:{uuid.uuid4().hex}:",
            "EVENTS_API_AUTH_FAILURES_PER_CLIENT": "0",
            **environment,
        }
        env.pop("DATABASE_TEST_NAME", None)
        if with_input:  # an SQLite database of its own, with an Events API input: self.credentials
            manage = [sys.executable, "manage.py"]
            subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
            created = subprocess.run(
                [*manage, "create_input", "web test"], cwd=ROOT, env=env, check=True, timeout=60, capture_output=True
            ).stdout.decode()
            self.credentials = tuple(re.search(rf"{name}: (\S+)", created).group(1) for name in ("key", "secret"))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                procfile_web_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    pytest.fail(f"gunicorn did not start:\n{self.output()}")
                time.sleep(0.05)
        normal_request(self)  # warm: the application's first request imports its views

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:  # any worker left behind: the process group the arbiter led (start_new_session)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def gunicorn(tmp_path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(**environment: str) -> Gunicorn:
        server = Gunicorn(tmp_path, **environment)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or 30 s)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def normal_request(server: Gunicorn) -> tuple[int, float]:
    """A small POST to the Events API without credentials (401: no database needed); (status, seconds)."""
    started = time.monotonic()
    with server.connect() as sock:
        body = b'{"events": []}'
        sock.sendall(
            b"POST /v2/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status = int(answer(sock).split(b" ", 2)[1])
    return status, time.monotonic() - started


class Trickler(threading.Thread):
    """A slow client: sends the head, then its body one byte every `every` seconds, for ever (or until cut off)."""

    def __init__(self, server: Gunicorn, *, every: float = 0.2, declared: int = 10_000, chunked: bool = False) -> None:
        super().__init__(daemon=True)
        self.server, self.every, self.declared, self.chunked = server, every, declared, chunked
        self.started_at = self.ended_at = 0.0
        self.reply = b""
        self.sent = 0

    def run(self) -> None:
        framing = b"Transfer-Encoding: chunked" if self.chunked else b"Content-Length: %d" % self.declared
        with self.server.connect() as sock:
            self.started_at = time.monotonic()
            sock.sendall(b"POST /v2/events HTTP/1.1\r\nHost: localhost\r\n" + framing + b"\r\n\r\n")
            sock.settimeout(self.every)
            try:
                while True:
                    try:
                        self.reply += sock.recv(65536)
                        if not self.reply or self.reply.endswith(b"}"):
                            break
                    except TimeoutError:
                        sock.sendall(b"1\r\n[\r\n" if self.chunked else b"[")
                        self.sent += 1
            except OSError:
                pass
            self.ended_at = time.monotonic()


def test_two_slow_clients_trickling_bodies_do_not_slow_a_normal_request(gunicorn):
    server = gunicorn()  # the Procfile's command with config/gunicorn.py's defaults (one worker process here)
    slow = [Trickler(server), Trickler(server)]
    for client in slow:
        client.start()
    while not all(client.sent >= 2 for client in slow):  # both are being read, byte by byte
        time.sleep(0.05)
    timings = [normal_request(server) for _ in range(5)]
    assert [status for status, _ in timings] == [401] * 5
    worst = max(seconds for _, seconds in timings)
    print(f"normal request while two clients trickle: worst of 5 = {worst * 1000:.1f} ms")
    assert worst < 1.0  # without threads (or deadlines) it waits for a trickler: 30 s, the body deadline
    assert all(client.is_alive() for client in slow)  # still trickling: held by no more than their own threads


def test_a_trickled_body_is_cut_off_at_the_total_deadline_and_frees_the_only_thread(gunicorn):
    server = gunicorn(WEB_THREADS="1", WEB_BODY_TIMEOUT="1")
    slow = Trickler(server, every=0.1)  # a byte every 0.1 s: no single read ever waits a whole second
    slow.start()
    while slow.sent < 2:
        time.sleep(0.02)
    status, seconds = normal_request(server)  # queued behind the trickler on the only thread
    slow.join(timeout=10)
    assert slow.reply.startswith(b"HTTP/1.1 408"), slow.reply
    assert b'"code": "request_timeout"' in slow.reply
    assert 0.9 <= slow.ended_at - slow.started_at < 2.5
    assert status == 401 and seconds < 2.5


@pytest.mark.parametrize(
    "head",
    [
        # Shorter than its Content-Length.
        b'POST /v2/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"events":',
        # A chunked body that never ends.
        b'POST /v2/events HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"eve\r\n',
    ],
    ids=["short-body", "endless-chunked-body"],
)
def test_a_stalled_body_answers_408_in_bounded_time(gunicorn, head):
    server = gunicorn(WEB_THREADS="1", WEB_BODY_TIMEOUT="1")
    with server.connect() as sock:
        started = time.monotonic()
        sock.sendall(head)  # and then nothing, the connection kept open
        reply = answer(sock)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert 0.9 <= elapsed < 2.5
    assert normal_request(server)[0] == 401  # the thread is free again


def test_a_chunked_body_reaches_the_application_whole(gunicorn):
    server = gunicorn(with_input=True)
    token = base64.b64encode(":".join(server.credentials).encode())
    body = json.dumps({"environment": "production", "user_identities": {"customer_id": "c-1"}, "events": []}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(
            b"POST /v2/events HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nAuthorization: Basic " + token + b"\r\n\r\n" + chunks
        )
        reply = answer(sock)
    # Accepted: the batch arrived whole (read as empty, it would be a 400 "Malformed JSON").
    assert reply.startswith(b"HTTP/1.1 202"), reply


def test_a_head_trickled_byte_by_byte_is_cut_off_at_its_deadline(gunicorn):
    server = gunicorn(WEB_THREADS="1", WEB_HEADER_TIMEOUT="1")
    with server.connect() as sock:
        started = time.monotonic()
        sock.settimeout(0.1)
        reply = b""
        for byte in b"POST /v2/events HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000:
            try:
                sock.sendall(bytes([byte]))
                reply += sock.recv(65536)
                if reply:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert 0.9 <= elapsed < 2.5
    assert normal_request(server)[0] == 401


def test_a_body_over_the_limit_is_refused_unread(gunicorn):
    server = gunicorn()
    with server.connect() as sock:
        sock.sendall(b"POST /v2/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999999\r\n\r\n")
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply


def test_the_access_log_has_no_query_string_referrer_or_user(gunicorn):
    server = gunicorn()
    with server.connect() as sock:
        sock.sendall(
            f"GET /v2/events?email={EMAIL} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Referer: http://localhost/admin/?q={EMAIL}\r\nAuthorization: Basic Zm9vQGJhci5jb206eA==\r\n\r\n".encode()
        )
        assert answer(sock).startswith(b"HTTP/1.1 405")
    server.stop()
    log = server.output()
    access = [line for line in log.splitlines() if '"GET /v2/events HTTP/1.1" 405' in line]
    assert access, log
    assert EMAIL not in log and "foo@bar.com" not in log

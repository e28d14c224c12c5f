"""The web tier under gunicorn (config/gunicorn.py): a threaded worker that slow clients cannot hold.

gunicorn's threaded worker (gthread) gives each request a thread, and a thread blocks reading from its
client for as long as the client cares to trickle. So a handful of clients sending a byte every few
seconds, or a body shorter than its Content-Length, or a chunked body that never ends, would hold every
thread, forever. Here each request gets total deadlines (not per-read timeouts, which a trickle
defeats):

* the request head (request line and headers) must arrive within WEB_HEADER_TIMEOUT seconds: a watchdog
  thread answers 408 and closes the connection of any request still sending its head by then;
* the body must arrive within WEB_BODY_TIMEOUT seconds: it is read completely before the application
  runs (as a buffering proxy would), else 408 (the same watchdog ends the read); a body over
  Django's DATA_UPLOAD_MAX_MEMORY_SIZE answers 413 unread. Chunked bodies reach the application with
  their real length (Django would read an empty body otherwise).

In production a buffering reverse proxy in front (README, "Production") takes the slow clients off the
application servers altogether; these deadlines are what remains true without one.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn import glogging
from gunicorn.http.errors import ParseException
from gunicorn.workers.gthread import ThreadWorker

from config.log_redaction import RedactPersonalData

READ_CHUNK = 64 * 1024
WATCHDOG_INTERVAL = 0.1


def env_seconds(name: str, default: float) -> float:
    value = float(os.environ.get(name, default))
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds")
    return value


class Deadlines:
    """One watchdog thread per worker: runs a deadline's `on_expiry` unless it is disarmed in time.

    A blocked socket read cannot be given a total deadline from inside (a timeout bounds each read, and a
    client sending a byte just before each timeout never trips it); shutting the socket from outside
    ends the read at once, whatever the client does."""

    def __init__(self) -> None:
        self._armed: dict[object, tuple[float, Callable[[], None]]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="request-read-deadlines", daemon=True).start()

    def arm(self, key: object, seconds: float, on_expiry: Callable[[], None]) -> None:
        with self._lock:
            self._armed[key] = (time.monotonic() + seconds, on_expiry)

    def disarm(self, key: object) -> bool:
        """True when disarmed in time, False when the deadline had passed (its on_expiry has run)."""
        with self._lock:
            return self._armed.pop(key, None) is not None

    def _watch(self) -> None:
        while True:
            time.sleep(WATCHDOG_INTERVAL)
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _) in self._armed.items() if deadline <= now]
                for key in late:
                    _, on_expiry = self._armed.pop(key)
                    on_expiry()


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _json_answer(start_response: Callable, status: str, code: str, message: str) -> list[bytes]:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _BodyTooLarge(Exception):
    pass


class BufferedBody:
    """WSGI middleware: the whole request body, read within a total deadline and a size cap, before the app.

    When the deadline passes, the watchdog shuts the socket's read side: the read in progress ends, the
    answer is a 408, and gunicorn then finds the end of the input (no drain of an unread body) and closes."""

    def __init__(self, app: Callable, *, deadlines: Deadlines, timeout: float, max_bytes: int) -> None:
        self.app, self.deadlines, self.timeout, self.max_bytes = app, deadlines, timeout, max_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        declared = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not declared and not chunked:
            return self.app(environ, start_response)
        sock: socket.socket = environ["gunicorn.socket"]
        too_large = f"The request body is larger than {self.max_bytes} bytes."
        if declared and int(declared) > self.max_bytes:  # gunicorn has checked it is a number
            _shutdown(sock, socket.SHUT_RD)
            return _json_answer(start_response, "413 Content Too Large", "request_too_large", too_large)
        key = ("body", id(sock))
        self.deadlines.arm(key, self.timeout, lambda: _shutdown(sock, socket.SHUT_RD))
        try:
            body = self._read(environ["wsgi.input"], int(declared) if declared else None)
        except _BodyTooLarge:
            self.deadlines.disarm(key)
            _shutdown(sock, socket.SHUT_RD)
            return _json_answer(start_response, "413 Content Too Large", "request_too_large", too_large)
        except (OSError, ParseException):
            body = None  # cut off by the deadline, or the client closed early or sent broken chunks
        if not self.deadlines.disarm(key):
            return _json_answer(
                start_response,
                "408 Request Timeout",
                "request_timeout",
                f"The request body did not arrive within {self.timeout:g} seconds.",
            )
        if body is None:
            _shutdown(sock, socket.SHUT_RD)
            return _json_answer(start_response, "400 Bad Request", "incomplete_body", "The request body is incomplete.")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)

    def _read(self, stream: Any, length: int | None) -> bytes:
        limit = self.max_bytes if length is None else length
        parts: list[bytes] = []
        received = 0
        while length is None or received < length:
            part = stream.read(min(READ_CHUNK, limit + 1 - received))
            if not part:
                if length is not None:
                    raise OSError("the body is shorter than its Content-Length")
                break
            received += len(part)
            if received > limit:
                raise _BodyTooLarge
            parts.append(part)
        return b"".join(parts)


def _head_timeout_answer() -> bytes:
    body = json.dumps({"errors": [{"code": "request_timeout", "message": "The request head did not arrive in time."}]})
    return (
        "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


HEAD_TIMEOUT_ANSWER = _head_timeout_answer()


class DeadlineThreadWorker(ThreadWorker):
    """gthread with a total deadline on each request's head and body (see the module's docstring)."""

    def init_process(self) -> None:
        self.header_timeout = env_seconds("WEB_HEADER_TIMEOUT", 10)
        self.body_timeout = env_seconds("WEB_BODY_TIMEOUT", 30)
        self.deadlines = Deadlines()
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        from django.conf import settings  # the application is loaded: its settings are configured

        self.wsgi = BufferedBody(
            self.wsgi,
            deadlines=self.deadlines,
            timeout=self.body_timeout,
            max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
        )

    def handle(self, conn: Any) -> Any:
        key = ("head", id(conn))
        self.deadlines.arm(key, self.header_timeout, lambda: self._head_too_slow(conn))
        try:
            return super().handle(conn)
        finally:
            self.deadlines.disarm(key)

    def handle_request(self, req: Any, conn: Any) -> bool:
        if not self.deadlines.disarm(("head", id(conn))):  # the watchdog answered 408 and closed it meanwhile
            return False
        return super().handle_request(req, conn)

    def _head_too_slow(self, conn: Any) -> None:
        """Answer 408 and close: the thread blocked reading this head wakes up to an ended input."""
        self.log.warning("Closed a connection whose request head took over %gs", self.header_timeout)
        try:
            # Without blocking: a client that does not read cannot hold the watchdog either.
            conn.sock.send(HEAD_TIMEOUT_ANSWER, socket.MSG_DONTWAIT)
        except (OSError, ValueError):  # gone, or a TLS socket (no flags): close without an answer
            pass
        _shutdown(conn.sock, socket.SHUT_RDWR)


class RedactingLogger(glogging.Logger):
    """gunicorn's own logs (errors, access) through the same personal-data filter as the application's."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not any(isinstance(f, RedactPersonalData) for f in handler.filters):
                    handler.addFilter(RedactPersonalData())

"""One HTTP client base for every partner: bounded in time and size, no redirects, typed errors.

A partner can misbehave in ways a read timeout does not catch. Every call here is bounded:

* **Total deadline** (`PARTNER_CALL_DEADLINE_SECONDS`, see partner_call_deadline()): connect, send
  and the whole answer. The connect and read timeouts bound one silence; a partner trickling a
  byte now and then never trips them. A timer shuts the call's socket down at the deadline,
  which ends a blocked send or read at once, and the call fails with a TransientError.
* **Answer size** (`PARTNER_MAX_RESPONSE_BYTES`): the answer is streamed and read up to that
  many (decoded) bytes, so a huge answer costs the cap, not its size, in memory. Over it, the
  call fails with a TransientError: the request may well have been applied (only its answer
  is unreadable), every write we send a partner is an idempotent upsert, so sending it again
  is safe, and a cause that persists for FORWARDING_OUTAGE_FAULT_MINUTES faults the connection
  with the message, which names the setting to raise.
* **Request budget**: a partner declaring a request rate limit has a token taken from its account's
  budget before every request (`budget`, outputs/partners/budget.py), so several connections on one
  account together stay under the limit.
* **URLs**: a value that goes into a path (a setting such as Mailchimp's list id, a member id)
  goes through url_segment(), so it stays one segment whatever it holds.
"""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from typing import Any, Protocol
from urllib.parse import quote

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection

from config import fast_json

# Bytes read from the socket at a time while streaming an answer.
READ_CHUNK = 64 * 1024


def partner_call_deadline() -> float:
    """The longest one partner call may last, in seconds: connect, send and the whole answer
    (PARTNER_CALL_DEADLINE_SECONDS). A call still running then fails with a TransientError.

    A step making several calls (end_connection sends one per member) takes up to that many
    deadlines. The delivery lease is not derived from it: a heartbeat renews the lease while the
    call runs, and cuts the call (CallScope) when it cannot (forwarding/leases.py).
    """
    return float(settings.PARTNER_CALL_DEADLINE_SECONDS)


class PartnerError(Exception):
    """A partner call failed. `message` is the partner's own words where it gave any, `code` its own
    name for the error (e.g. Mailchimp's problem title), `status` the HTTP status of its answer."""

    def __init__(self, message: str, *, status: int | None = None, code: str = ""):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class TransientError(PartnerError):
    """Try again later: connection errors, timeouts, 408, 429, 5xx."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "", retry_after: float | None = None):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class BudgetRefused(TransientError):
    """Our own request budget for the partner account refused the call (outputs/partners/budget.py): the
    partner was not called, so this is no sign of it failing. The connection waits `retry_after` as a whole,
    but neither its run of failures (probes, the outage fault, its alerts) nor its changes' attempts count it."""


class AuthError(PartnerError):
    """Credentials refused (401/403): the connection is faulted until someone fixes and resumes it."""


class PermanentError(PartnerError):
    """The request itself is wrong (400, 404 on the list): sending it again cannot help."""


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def url_segment(value: object) -> str:
    """A value as one URL path segment: percent-encoded whole (`/`, `?`, `#`, `%` included), so
    it can neither climb the path nor start a query. "." and ".." would still move along the
    path once encoded (they are unreserved characters), and an empty one drops a level: refused."""
    text = str(value)
    if text in ("", ".", ".."):
        raise PermanentError(f"'{text}' cannot be used in a partner URL")
    return quote(text, safe="")


# --- the deadline ---------------------------------------------------------------------------

_current = threading.local()  # the call running in this thread, if any


def _shut_down(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown, under TLS too: it ends the blocked read or write on the
        # file descriptor and leaves the SSL object for the reading thread to fail on.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _CallDeadline:
    """The deadline of the partner call running in this thread (a context manager).

    The connections of our pools register their socket with it as they connect or send
    (_WatchedConnection); at the deadline a timer thread shuts that socket down. A CallScope
    the thread runs in can end it sooner (cut()), the same way.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self.why = ""  # why it was cut before its deadline, if it was
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._scope: CallScope | None = getattr(_current, "scope", None)

    def __enter__(self) -> _CallDeadline:
        _current.call = self
        self._timer.start()
        if self._scope is not None:
            self._scope.attach(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        if self._scope is not None:
            self._scope.detach(self)
        _current.call = None

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socket = sock
            if self.expired:
                _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                _shut_down(self._socket)


class CallScope:
    """Partner calls made by this thread inside ``with scope:`` can be cut from another thread:
    cut() ends the call running (as its deadline would: the call fails with a TransientError
    naming why) and any later one at once. Used by the delivery lease's heartbeat
    (forwarding/leases.py): a call never outlives the lease that covers it."""

    def __init__(self) -> None:
        self.why = ""
        self._lock = threading.Lock()
        self._call: _CallDeadline | None = None

    def __enter__(self) -> CallScope:
        _current.scope = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.scope = None

    def attach(self, call: _CallDeadline) -> None:
        with self._lock:
            self._call = call
            if self.why:
                call.why = self.why
                call._expire()

    def detach(self, call: _CallDeadline) -> None:
        with self._lock:
            if self._call is call:
                self._call = None

    def cut(self, why: str) -> None:
        with self._lock:
            self.why = why or "cut"
            if self._call is not None:
                self._call.why = self.why
                self._call._expire()


def _watch_socket(sock: socket.socket | None) -> None:
    call = getattr(_current, "call", None)
    if call is not None and sock is not None:
        call.watch(sock)


class _WatchedConnection:
    """Registers its socket with the running call: when connected (a new connection, after TLS)
    and when a request starts (a kept-alive one). The TCP connect itself is bounded by the
    connect timeout, which is never longer than the deadline."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch_socket(self.sock)  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_socket(self.sock)  # type: ignore[attr-defined]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter, with connection pools whose connections a call's deadline can cut off."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own: read timeouts only
            manager.pool_classes_by_scheme = _POOLS
        return manager


# --- the client -----------------------------------------------------------------------------


class RequestGate(Protocol):
    """What a request passes before it goes out (outputs/partners/budget.py's RequestBudget)."""

    def take(self, what: str) -> None: ...

    def hold_until(self, until: float) -> None: ...


class PartnerClient:
    """Base for partner API clients. Subclasses describe errors with `error_message`."""

    def __init__(self, base_url: str, *, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        adapter = _DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.timeout = settings.FORWARDING["HTTP_TIMEOUT"]
        self.last_status: int | None = None  # the status of the last answer (delivery attempts record it)
        # The partner account's request budget: a token is taken before every request (raises a
        # TransientError, as a 429, when none frees soon).
        self.budget: RequestGate | None = None

    def auth_headers(self) -> dict[str, str]:
        return {}

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> requests.Response:
        """One call, bounded by the deadline and the size cap; the answer is read whole (capped)
        before it is returned, so `.content`, `.text` and `.json()` work as usual."""
        what = f"{method} {path}"
        seconds = partner_call_deadline()
        connect_timeout, read_timeout = self.timeout
        if self.budget is not None:
            self.budget.take(what)
        with _CallDeadline(seconds) as deadline:
            headers = {"Accept": "application/json", **self.auth_headers()}
            if json is not None:  # encoded here, in C (requests' json= takes the json module: slower)
                headers["Content-Type"] = "application/json"
            try:
                response = self.session.request(
                    method,
                    f"{self.base_url}{path}",
                    data=None if json is None else fast_json.dumps(json),
                    params=params,
                    headers=headers,
                    timeout=(min(connect_timeout, seconds), min(read_timeout, seconds)),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                raise self._call_error(what, exc, deadline) from exc
            try:
                self._read_answer(what, response, deadline)
            except requests.RequestException as exc:
                if deadline.expired:
                    raise self._late(what, deadline) from exc
                raise TransientError(f"{what}: the answer broke off ({exc.__class__.__name__})") from exc
            finally:
                response.close()  # back to the pool when read whole; else the connection is dropped
        self.last_status = response.status_code
        self.raise_for_status(response)
        return response

    def _call_error(self, what: str, exc: requests.RequestException, deadline: _CallDeadline) -> PartnerError:
        if deadline.expired:
            return self._late(what, deadline)
        if isinstance(exc, requests.Timeout):
            return TransientError(f"{what} timed out")
        if isinstance(exc, requests.ConnectionError):
            return TransientError(f"{what}: could not connect ({exc.__class__.__name__})")
        # A bad base URL and the like: fix the settings.
        return PermanentError(f"{what}: {exc.__class__.__name__}: {exc}")

    @staticmethod
    def _late(what: str, deadline: _CallDeadline) -> TransientError:
        if deadline.why:
            return TransientError(f"{what}: cut short: {deadline.why}")
        return TransientError(
            f"{what}: no complete answer within the call deadline of {deadline.seconds:g} s "
            "(PARTNER_CALL_DEADLINE_SECONDS)"
        )

    def _read_answer(self, what: str, response: requests.Response, deadline: _CallDeadline) -> None:
        """Read the body into the response, at most PARTNER_MAX_RESPONSE_BYTES (decoded)."""
        limit = settings.PARTNER_MAX_RESPONSE_BYTES
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_big(what, response, limit)
        body = bytearray()
        for chunk in response.iter_content(READ_CHUNK):
            body += chunk
            if len(body) > limit:
                raise self._too_big(what, response, limit)
            if deadline.expired:
                break
        # Checked after the loop too: a body that ends with the connection ends early, and looks
        # complete, when the deadline shut the socket down. An answer completed in the very
        # instant of the deadline is taken as late: sending again is safe, a cut body is not.
        if deadline.expired:
            raise self._late(what, deadline)
        response._content = bytes(body)  # what requests' own .content would hold
        response._content_consumed = True

    @staticmethod
    def _too_big(what: str, response: requests.Response, limit: int) -> TransientError:
        return TransientError(
            f"{what}: the answer is larger than {limit:,} bytes (PARTNER_MAX_RESPONSE_BYTES); not read further",
            status=response.status_code,
        )

    def json(self, response: requests.Response) -> dict:
        """The body as a JSON object; anything else is a permanent error (e.g. a wrong base URL)."""
        try:
            data = fast_json.loads(response.content)
        except ValueError:  # UnicodeDecodeError included
            data = None
        if not isinstance(data, dict):
            raise PermanentError(
                f"{response.request.method} {response.url}: the answer is not a JSON object",
                status=response.status_code,
            )
        return data

    def error_message(self, response: requests.Response) -> str:
        return response.text[:500] or response.reason or f"HTTP {response.status_code}"

    def error_code(self, response: requests.Response) -> str:
        """The partner's own short name for an error answer, where it gives one."""
        return ""

    def raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status < 300:
            return
        message = f"HTTP {status}: {self.error_message(response)}"
        code = self.error_code(response)[:100]
        if status in (408, 429) or status >= 500:
            raise TransientError(
                message,
                status=status,
                code=code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            raise AuthError(message, status=status, code=code)
        raise PermanentError(message, status=status, code=code)

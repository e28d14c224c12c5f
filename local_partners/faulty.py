"""A fault-injecting Mailchimp: the partner of the fault suite (tests/faults/).

``FaultyMailchimp`` listens on its own port and answers with a ``LocalMailchimpServer`` it wraps
(in-process: no second HTTP hop), except when told to misbehave:

- ``slow(seconds)``: apply each request, then answer only after ``seconds`` (a client with a
  shorter read timeout never learns the outcome of a request that was applied);
- ``fail(rate, answers)``: answer that share of requests with the given errors (5xx, 429 with
  ``Retry-After``), without applying them; the choice is seeded, so a run can be repeated;
- ``refuse_key()``: answer 401 "API Key Invalid" without applying;
- ``drop_after_apply(times, rate)``: apply the request, then drop the connection unanswered;
- ``go_down("refused" | "reset")`` and ``come_back()``: stop listening (connection refused), or
  accept and reset every connection; then serve again on the same port.

It counts every write the server applied, per list and member, in the order applied, so the
suite can assert the final state and count duplicates: a write identical to the member's
previous applied write. A duplicate is allowed only when it replays a request whose outcome the
client cannot have recorded: one applied but never answered (the front knows which), or one in
hand when a fault struck the client (``fault_at``: a worker killed, its database connection cut).

Standard library only, like the other local partners.
"""

from __future__ import annotations

import itertools
import json
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from local_partners.mailchimp import (
    API_PREFIX,
    LocalMailchimpServer,
    _Fault,
    _HTTPServer,
    _parse_json,
    _RequestHandler,
    _Response,
)

# A request that started before a fault and was answered at most this long before it may have
# been in the client's hands (sent, answered, not yet recorded) when the fault struck.
IN_HAND_SECONDS = 2.0
DOWN_MODES = ("refused", "reset")


@dataclass
class PartnerRequest:
    """One request as the front saw it. Times are time.monotonic()."""

    number: int
    method: str
    path: str
    started: float
    outcome: str = ""  # "applied", "error 503", "refused key", "reset", ...
    answered_at: float | None = None  # the whole answer was written to the client
    unanswered: bool = False  # applied, but the client never got the answer


@dataclass(frozen=True)
class Write:
    """A member write the server applied: the resulting status and what was asked, as JSON."""

    request: int
    status: str
    asked: str


@dataclass
class Duplicates:
    allowed: int = 0  # replays of a request whose outcome the client could not have recorded
    unallowed: int = 0
    examples: list[str] = field(default_factory=list)  # members written twice for no reason


@dataclass
class _Plan:
    delay: float = 0.0
    drop: bool = False


class FaultyMailchimp:
    """Mailchimp with faults on demand. ``port=0`` picks a free port; ``base_url`` is usable at once."""

    def __init__(
        self, upstream: LocalMailchimpServer, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0
    ) -> None:
        self.upstream = upstream
        self.verbose = False  # read by the HTTP layer shared with LocalMailchimpServer
        self._lock = threading.RLock()
        self._random = random.Random(seed)
        self._numbers = itertools.count(1)
        self._requests: list[PartnerRequest] = []
        self._writes: dict[str, dict[str, list[Write]]] = {}  # list id -> email -> writes, in order
        self._fault_times: list[float] = []
        self._busy = 0
        self._stopping = threading.Event()
        # Faults.
        self._delay = 0.0
        self._fail_rate = 0.0
        self._fail_answers: tuple[tuple[int, dict[str, str]], ...] = ((503, {}),)
        self._refuse_key = False
        self._drops_left = 0
        self._drop_rate = 0.0
        self.down: str | None = None
        self._httpd = _HTTPServer((host, port), self, _FaultyHandler)
        self._host, self._port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}{API_PREFIX}"

    def start(self) -> FaultyMailchimp:
        self._serve()
        return self

    def stop(self) -> None:
        self._stopping.set()  # cuts short the wait of slowed answers
        self._close_listener()

    def _serve(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="faulty-mailchimp", daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> FaultyMailchimp:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --------------------------------------------------------------------- faults

    def slow(self, seconds: float) -> None:
        """Apply each request, then answer after ``seconds`` (0: answer at once)."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def fail(self, rate: float, answers: Sequence[tuple[int, Mapping[str, str]]] = ((503, {}),)) -> None:
        """Answer ``rate`` (0..1) of the requests with one of ``answers`` (status, headers), unapplied."""
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be between 0 and 1: {rate}")
        if not answers:
            raise ValueError("give at least one (status, headers) answer")
        with self._lock:
            self._fail_rate = rate
            self._fail_answers = tuple((int(status), dict(headers)) for status, headers in answers)

    def refuse_key(self, refuse: bool = True) -> None:
        """Answer every request 401 "API Key Invalid", whatever the key."""
        with self._lock:
            self._refuse_key = refuse

    def drop_after_apply(self, times: int = 0, *, rate: float = 0.0) -> None:
        """Apply the next ``times`` requests (and then ``rate`` of them) and drop their connections."""
        with self._lock:
            self._drops_left, self._drop_rate = max(0, times), rate

    def go_down(self, how: str = "refused") -> None:
        """``refused``: stop listening, so connecting fails; ``reset``: accept, then reset."""
        if how not in DOWN_MODES:
            raise ValueError(f"how must be one of {DOWN_MODES}: {how!r}")
        with self._lock:
            self.down = how
        if how == "refused":
            self._close_listener()
        else:
            self._httpd.close_connections()  # keep-alive clients reconnect, and meet the reset
            self._listen()

    def come_back(self) -> None:
        with self._lock:
            self.down = None
        self._listen()

    def _listen(self) -> None:
        if self._thread is None:
            self._httpd = _HTTPServer((self._host, self._port), self, _FaultyHandler)
            self._serve()

    def heal(self) -> None:
        """Every fault off (a front that is down comes back)."""
        self.slow(0)
        self.fail(0)
        self.refuse_key(False)
        self.drop_after_apply(0)
        if self.down:
            self.come_back()

    # ----------------------------------------------------------------- accounting

    def fault_at(self, when: float | None = None) -> None:
        """A fault struck the clients at ``when`` (time.monotonic(), default now): requests in their
        hands then may be sent again, and their replays are not counted against them."""
        with self._lock:
            self._fault_times.append(time.monotonic() if when is None else when)

    @property
    def busy(self) -> int:
        """Requests being handled right now."""
        with self._lock:
            return self._busy

    @property
    def requests(self) -> list[PartnerRequest]:
        with self._lock:
            return list(self._requests)

    def statuses(self, list_id: str) -> dict[str, str]:
        """email -> status after the last write applied to the member (cheap: no copy of the list)."""
        with self._lock:
            return {email: writes[-1].status for email, writes in self._writes.get(list_id, {}).items()}

    def writes(self, list_id: str, email: str) -> list[Write]:
        with self._lock:
            return list(self._writes.get(list_id, {}).get(email.lower(), ()))

    def write_count(self, list_id: str) -> int:
        with self._lock:
            return sum(len(w) for w in self._writes.get(list_id, {}).values())

    def duplicates(self, list_id: str) -> Duplicates:
        with self._lock:
            requests = {r.number: r for r in self._requests}
            found = Duplicates()
            for email, writes in self._writes.get(list_id, {}).items():
                for previous, write in itertools.pairwise(writes):
                    if write.asked != previous.asked:
                        continue
                    if self._replayable(requests[previous.request]):
                        found.allowed += 1
                    else:
                        found.unallowed += 1
                        if len(found.examples) < 5:
                            found.examples.append(email)
            return found

    def _replayable(self, request: PartnerRequest) -> bool:
        if request.unanswered:
            return True
        answered = request.answered_at if request.answered_at is not None else float("inf")
        return any(request.started <= t and answered >= t - IN_HAND_SECONDS for t in self._fault_times)

    # ------------------------------------------------------ used by the HTTP handler

    def _receive(self, method: str, path: str) -> tuple[PartnerRequest, _Response | None]:
        """Register a request; returns it and the error to answer instead of applying it, if any."""
        with self._lock:
            request = PartnerRequest(next(self._numbers), method, path, time.monotonic())
            self._requests.append(request)
            self._busy += 1
            if self._refuse_key:
                request.outcome = "refused key"
                return request, _Fault(401, None, {}).response()
            if self._fail_rate and self._random.random() < self._fail_rate:
                status, headers = self._random.choice(self._fail_answers)
                request.outcome = f"error {status}"
                return request, _Fault(status, None, headers).response()
            return request, None

    def _apply(self, request: PartnerRequest, headers: Mapping[str, str], raw_body: bytes) -> tuple[_Response, _Plan]:
        # Under the lock, so writes are recorded in the order the server applied them.
        with self._lock:
            response = self.upstream.dispatch(request.method, request.path, headers, raw_body)
            request.outcome = "applied" if response.status < 400 else f"answered {response.status}"
            self._record_writes(request, raw_body, response)
            plan = _Plan(delay=self._delay)
            if self._drops_left:
                self._drops_left -= 1
                plan.drop = True
            elif self._drop_rate and self._random.random() < self._drop_rate:
                plan.drop = True
            return response, plan

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _finish(self, request: PartnerRequest, *, answered: bool) -> None:
        with self._lock:
            self._busy -= 1
            if answered:
                request.answered_at = time.monotonic()
            elif request.outcome == "applied":
                request.unanswered = True

    def _record_writes(self, request: PartnerRequest, raw_body: bytes, response: _Response) -> None:
        parts = request.path.split("?")[0][len(API_PREFIX) :].strip("/").split("/")
        if len(parts) < 2 or parts[0] != "lists":
            return
        list_id = parts[1]
        writes = self._writes.setdefault(list_id, {})
        if request.method == "POST" and len(parts) == 2 and response.status == 200:
            body, _ = _parse_json(raw_body)
            asked = {
                str(m.get("email_address", "")).strip().lower(): m
                for m in (body or {}).get("members", [])
                if isinstance(m, dict)
            }
            applied = response.body.get("new_members", []) + response.body.get("updated_members", [])
            for member in applied:
                email = member["email_address"].strip().lower()
                writes.setdefault(email, []).append(
                    Write(request.number, member["status"], json.dumps(asked.get(email), sort_keys=True))
                )
        elif request.method == "DELETE" and len(parts) == 4 and parts[2] == "members" and response.status == 204:
            member = self.upstream.members(list_id, include_archived=True).get(parts[3].lower())
            if member is not None:
                email = member["email_address"].strip().lower()
                writes.setdefault(email, []).append(Write(request.number, member["status"], "DELETE"))


class _FaultyHandler(_RequestHandler):
    server_version = "FaultyMailchimp/1.0"

    def handle(self) -> None:
        if self.server.app.down == "reset":
            self._reset()
            return
        super().handle()

    def _serve(self) -> None:
        front: FaultyMailchimp = self.server.app
        body = self._read_body()
        if body is None:
            return
        if front.down == "reset":  # a keep-alive connection opened before the reset began
            self._reset()
            return
        request, error = front._receive(self.command, self.path)
        answered = False
        try:
            if error is not None:
                self._send(error)
                answered = True
                return
            response, plan = front._apply(request, self.headers, body)
            if plan.delay:
                front._wait(plan.delay)
            if plan.drop or not self._client_connected():
                self._reset()
                return
            self._send(response)
            self.wfile.flush()
            answered = True
        finally:
            front._finish(request, answered=answered)

    def _client_connected(self) -> bool:
        """False when the client has closed its end (it gave up waiting, or its process died)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            return bool(self.connection.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def _reset(self) -> None:
        """Close the connection with a reset (SO_LINGER 0), without an answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

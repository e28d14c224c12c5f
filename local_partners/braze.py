"""A local, in-memory server speaking Braze's `POST /users/track` contract, strictly.

Used by end-to-end tests and manual runs: point PARTNER_API_BASE_URLS' "braze" at ``base_url``. It checks
what real Braze checks (reference/PARTNERS.md, "Braze /users/track"): the Bearer key, the body's shape, at
most 75 attribute objects (more: 400 for the whole request), an email with whitespace (400 for the whole
request), one identifier per object (else a non-fatal error at that index). It applies array edits
(`{"add": [...], "remove": [...]}`), whole arrays, booleans and `null` (unset) to its users, and sends
`X-RateLimit-Limit/Remaining/Reset` on every answer (429 once the window is used up). Standard library only.

    GET /local/users    every user (tests and people read what Braze would hold)
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from local_partners.serving import JSONHandler, LocalServer

ATTRIBUTES_PER_REQUEST = 75
IDENTIFIERS = ("external_id", "user_alias", "braze_id", "email", "phone")


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class LocalBrazeServer(LocalServer):
    thread_name = "local-braze"

    """``port=0`` picks a free port; ``api_keys=None`` accepts any Bearer key. ``rate_limit`` requests are
    allowed per ``rate_window`` seconds (Braze: 3,000 per 3 s)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] | None = None,
        *,
        rate_limit: int = 3000,
        rate_window: float = 3.0,
        verbose: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.verbose = verbose
        self._users: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._window_start = time.time()
        self._window_used = 0
        self._faults: list[_Answer] = []
        self.requests: list[dict[str, Any]] = []  # the bodies of POST /users/track, as received
        self._listen(host, port, _Handler)

    @property
    def base_url(self) -> str:
        return self.root_url

    # --- test helpers ----------------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        """Every user (deep copies), in creation order; each has its `braze_id`."""
        with self._lock:
            return copy.deepcopy(self._users)

    def user(self, *, external_id: str | None = None, email: str | None = None) -> dict[str, Any] | None:
        for user in self.users():
            if (external_id is not None and user.get("external_id") == external_id) or (
                email is not None and external_id is None and user.get("email") == email
            ):
                return user
        return None

    def reset(self) -> None:
        with self._lock:
            self._users.clear()
            self._faults.clear()
            self.requests.clear()
            self._window_used = 0

    def fail_next(self, status: int, body: dict[str, Any] | None = None, *, times: int = 1) -> None:
        """Answer the next `times` track requests with this status (after auth) instead of applying them."""
        with self._lock:
            self._faults.extend(_Answer(status, body or {"message": f"HTTP {status}"}) for _ in range(times))

    # --- the API ---------------------------------------------------------------------------

    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - self._window_used)),
            "X-RateLimit-Reset": str(int(self._window_start + self.rate_window) + 1),
        }

    def dispatch(self, method: str, path: str, authorization: str, raw: bytes) -> _Answer:
        with self._lock:
            if method == "GET" and path == "/local/users":
                return _Answer(200, {"users": copy.deepcopy(self._users)})
            if (method, path) != ("POST", "/users/track"):
                return _Answer(404, {"message": f"No route for {method} {path}"})
            scheme, _, key = authorization.partition(" ")
            if scheme != "Bearer" or not key or (self._api_keys is not None and key not in self._api_keys):
                return _Answer(401, {"message": "Invalid API key"})
            now = time.time()
            if now >= self._window_start + self.rate_window:
                self._window_start, self._window_used = now, 0
            if self._window_used >= self.rate_limit:
                return _Answer(429, {"message": "Rate limit exceeded"}, self._rate_headers())
            self._window_used += 1
            answer = self._track(raw)
            answer.headers.update(self._rate_headers())
            return answer

    def _track(self, raw: bytes) -> _Answer:
        if self._faults:
            return self._faults.pop(0)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return _Answer(400, {"message": "Invalid JSON"})
        if not isinstance(body, dict):
            return _Answer(400, {"message": "The request body must be a JSON object"})
        attributes = body.get("attributes", [])
        if not isinstance(attributes, list) or not all(isinstance(a, dict) for a in attributes):
            return _Answer(400, {"message": "'attributes' must be an array of objects"})
        if len(attributes) > ATTRIBUTES_PER_REQUEST:
            return _Answer(400, {"message": f"Too many attributes: at most {ATTRIBUTES_PER_REQUEST} per request"})
        for item in attributes:
            email = item.get("email")
            if isinstance(email, str) and any(ch.isspace() for ch in email):
                return _Answer(400, {"message": f"Invalid email: {email!r} contains whitespace"})
        self.requests.append(copy.deepcopy(body))
        errors = []
        for index, item in enumerate(attributes):
            problem = self._apply(item)
            if problem:
                errors.append({"type": problem, "input_array": "attributes", "index": index})
        answer: dict[str, Any] = {"message": "success", "attributes_processed": len(attributes) - len(errors)}
        if errors:
            answer["errors"] = errors
        return _Answer(201, answer)

    def _apply(self, item: dict[str, Any]) -> str | None:
        named = [k for k in IDENTIFIERS if k in item]
        if not named or (len(named) > 1 and named != ["external_id", "email"]):
            return "'external_id', 'user_alias', 'braze_id', 'email' or 'phone' is required (exactly one)"
        for name, value in item.items():
            if isinstance(value, dict) and name != "user_alias":
                if not set(value) <= {"add", "remove"} or not all(isinstance(v, list) for v in value.values()):
                    return f"'{name}': an array edit takes 'add' and 'remove' arrays"
        users = self._find(item)
        for user in users:
            for name, value in item.items():
                if name in ("external_id", "braze_id", "user_alias") or (name == "email" and named == ["email"]):
                    continue
                if value is None:
                    user.pop(name, None)
                elif isinstance(value, dict):
                    current = [v for v in user.get(name) or [] if v not in value.get("remove", [])]
                    current += [v for v in value.get("add", []) if v not in current]
                    user[name] = current
                else:
                    user[name] = copy.deepcopy(value)
        return None

    def _find(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """The users an object names; Braze creates one when none matches (an email may name several)."""
        if "external_id" in item:
            matches = [u for u in self._users if u.get("external_id") == str(item["external_id"])]
            new = {"external_id": str(item["external_id"])}
        elif "email" in item:
            matches = [u for u in self._users if u.get("email") == item["email"]]
            new = {"email": item["email"]}
        else:
            key = next(k for k in IDENTIFIERS if k in item)
            matches = [u for u in self._users if u.get(key) == item[key]]
            new = {key: copy.deepcopy(item[key])}
        if not matches:
            matches = [{"braze_id": f"local-{next(self._ids)}", **new}]
            self._users.extend(matches)
        return matches


class _Handler(JSONHandler):
    server_version = "LocalBraze/1.0"

    def answer(self, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        app: LocalBrazeServer = self.server.app  # type: ignore[attr-defined]
        try:
            answer = app.dispatch(self.command, self.path, self.headers.get("Authorization", ""), raw)
        except Exception:  # a bug here must still answer
            self.log_error("unhandled error for %s %s", self.command, self.path)
            answer = _Answer(500, {"message": "Internal Server Error"})
        return answer.status, answer.body, answer.headers

"""A local, in-memory server speaking Meta's Graph API for Custom Audiences, strictly.

Used by end-to-end tests, the demo and manual runs: point PARTNER_API_BASE_URLS' "meta" at ``base_url`` (it
carries the version, like https://graph.facebook.com/v21.0). It checks what Meta checks (reference/PARTNERS.md,
"Meta (Facebook) Custom Audiences"): a versioned path, the access token (Bearer header or `access_token`
parameter; a wrong or expired one is code 190), `customer_file_source` on create, at most 10,000 rows per
request, each row's format for its schema (SHA-256 hex for EMAIL_SHA256 / PHONE_SHA256; an invalid row is
counted in `num_invalid_entries` and sampled, the request still succeeds), and the `session` object: batches
numbered from 1 one after the other (`batch_seq`), none after the one flagged last. A session never closed by
a `last_batch_flag` request is one Meta holds open: open_sessions() lists them, so a test can catch it.
Bodies are JSON, or form fields whose values are JSON, as Meta's SDKs send them.
Errors are `{"error": {message, type, code, error_subcode, fbtrace_id}}`, with HTTP 400 for throttling too (no
429), as Meta answers. Standard library only.

    GET /local/audiences    every audience with its members (tests and people read what Meta would hold)
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from local_partners.serving import JSONHandler, LocalServer

ROWS_PER_REQUEST = 10_000
VERSION_RE = re.compile(r"/v[0-9]{1,2}\.0(?P<path>/.*)")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
MADID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{64}")
SCHEMAS = {"EMAIL_SHA256": HEX64_RE, "PHONE_SHA256": HEX64_RE, "MOBILE_ADVERTISER_ID": MADID_RE}
FILE_SOURCES = frozenset({"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"})
INVALID_SAMPLES = 10  # Meta returns a few samples of the invalid rows, not all


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def graph_error(
    message: str, code: int, *, subcode: int | None = None, kind: str = "OAuthException", status: int = 400
) -> _Answer:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": secrets.token_hex(8)}
    if subcode is not None:
        error["error_subcode"] = subcode
    return _Answer(status, {"error": error})


def _invalid(message: str, subcode: int | None = None) -> _Answer:
    return graph_error(f"(#100) {message}", 100, subcode=subcode)


@dataclass
class _Session:
    estimated_num_total: int | None
    last_seq: int = 0
    closed: bool = False
    received: int = 0


class LocalMetaServer(LocalServer):
    thread_name = "local-meta"

    """``port=0`` picks a free port; ``access_tokens=None`` accepts any token."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        access_tokens: Iterable[str] | None = None,
        *,
        ad_accounts: Iterable[str] = (),
        verbose: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._tokens = None if access_tokens is None else set(access_tokens)
        self._ad_accounts = set(ad_accounts)  # empty: any ad account exists
        self.verbose = verbose
        self._audiences: dict[str, dict[str, Any]] = {}
        self._members: dict[str, dict[str, set]] = {}  # audience id -> schema -> rows
        self._sessions: dict[tuple[str, str, int], _Session] = {}  # (audience, method, session id)
        self._ids = itertools.count(23850000000000001)
        self._faults: list[_Answer] = []
        self.uploads: list[dict[str, Any]] = []  # each /users request: method, audience, session, schema, rows
        self._listen(host, port, _Handler)

    @property
    def base_url(self) -> str:
        return self.root_url + "/v21.0"  # with the API version, as PARTNER_API_BASE_URLS takes it

    # --- test helpers ----------------------------------------------------------------------

    def audiences(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._audiences)

    def members(self, audience_id: str, schema: str | None = None) -> set:
        """The rows an audience holds (of one schema, or of all)."""
        with self._lock:
            held = self._members.get(str(audience_id), {})
            if schema is not None:
                return set(held.get(schema, set()))
            return set().union(*held.values()) if held else set()

    def create_audience(self, name: str, ad_account: str = "1", audience_id: str | None = None) -> str:
        with self._lock:
            audience_id = audience_id or str(next(self._ids))
            self._audiences[audience_id] = {
                "id": audience_id,
                "account_id": ad_account,
                "name": name,
                "subtype": "CUSTOM",
                "description": "",
                "customer_file_source": "USER_PROVIDED_ONLY",
            }
            self._members[audience_id] = {}
            return audience_id

    def sessions(self) -> list[dict[str, Any]]:
        """Every upload session received: audience, method, id, batches, rows received, estimate, closed."""
        with self._lock:
            return [
                {
                    "audience_id": audience_id,
                    "method": method,
                    "session_id": session_id,
                    "batches": state.last_seq,
                    "received": state.received,
                    "estimated_num_total": state.estimated_num_total,
                    "closed": state.closed,
                }
                for (audience_id, method, session_id), state in self._sessions.items()
            ]

    def open_sessions(self) -> list[dict[str, Any]]:
        """The sessions no request flagged last_batch_flag closed: Meta would hold them open."""
        return [session for session in self.sessions() if not session["closed"]]

    def reset(self) -> None:
        with self._lock:
            self._audiences.clear()
            self._members.clear()
            self._sessions.clear()
            self._faults.clear()
            self.uploads.clear()

    def revoke_token(self, token: str) -> None:
        """The token expires: every later call with it is answered code 190."""
        with self._lock:
            if self._tokens is None:
                self._tokens = set()
            self._tokens.discard(token)

    def fail_next(self, answer: _Answer, *, times: int = 1) -> None:
        """Answer the next `times` authenticated requests with this (see graph_error()) instead of serving them."""
        with self._lock:
            self._faults.extend(copy.deepcopy(answer) for _ in range(times))

    def throttle_next(self, *, code: int = 80003, minutes: int = 0, times: int = 1) -> None:
        """Meta's throttling: HTTP 400 with a rate-limit code; `minutes` goes in X-Business-Use-Case-Usage."""
        answer = graph_error(
            "(#80003) There have been too many calls to this ad-account. Wait a bit and try again.",
            code,
            subcode=2446079 if code == 80003 else None,
        )
        if minutes:
            usage = {"1": [{"type": "custom_audience", "call_count": 100, "estimated_time_to_regain_access": minutes}]}
            answer.headers["X-Business-Use-Case-Usage"] = json.dumps(usage)
        self.fail_next(answer, times=times)

    # --- the API ---------------------------------------------------------------------------

    def dispatch(self, method: str, target: str, authorization: str, content_type: str, raw: bytes) -> _Answer:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            if method == "GET" and url.path == "/local/audiences":
                return _Answer(
                    200,
                    {
                        "audiences": [
                            {**a, "members": {s: sorted(rows) for s, rows in self._members.get(i, {}).items()}}
                            for i, a in self._audiences.items()
                        ]
                    },
                )
            versioned = VERSION_RE.fullmatch(url.path)
            if not versioned:
                return _invalid(f"Unknown path components: {url.path} (the path starts with a version, /v21.0)")
            try:
                params = {**query, **self._body(content_type, raw)}
            except ValueError as exc:
                return _invalid(f"Invalid request body: {exc}")
            token = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
            token = token or str(params.pop("access_token", "") or "")
            if not token:
                return graph_error("An active access token must be used to query information.", 2500)
            if self._tokens is not None and token not in self._tokens:
                return graph_error("Error validating access token: Session has expired.", 190, subcode=463)
            if self._faults:
                return self._faults.pop(0)
            return self._route(method, versioned["path"].rstrip("/").split("/")[1:], params)

    @staticmethod
    def _body(content_type: str, raw: bytes) -> dict[str, Any]:
        if not raw:
            return {}
        if content_type.startswith("application/json"):
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("a JSON object is expected")
            return body
        # Form fields; object-valued ones (payload, session) are JSON-encoded, as the SDKs send them.
        fields: dict[str, Any] = {}
        for name, values in parse_qs(raw.decode(), keep_blank_values=True).items():
            value = values[-1]
            if name in ("payload", "session"):
                value = json.loads(value)
            fields[name] = value
        return fields

    def _route(self, method: str, parts: list[str], params: dict[str, Any]) -> _Answer:
        if len(parts) == 1 and parts[0].startswith("act_"):
            if method != "GET":
                return _invalid(f"Unsupported {method} request.")
            return self._ad_account(parts[0])
        if len(parts) == 2 and parts[0].startswith("act_") and parts[1] == "customaudiences":
            if method != "POST":
                return _invalid(f"Unsupported {method} request.")
            return self._create(parts[0], params)
        if not parts or parts[0] not in self._audiences:
            obj = parts[0] if parts else ""
            return _invalid(
                f"Unsupported {method.lower()} request. Object with ID '{obj}' does not exist, cannot be loaded "
                "due to missing permissions, or does not support this operation.",
                subcode=33,
            )
        audience_id = parts[0]
        if len(parts) == 1:
            if method == "GET":
                return self._describe(audience_id)
            if method == "DELETE":
                del self._audiences[audience_id]
                self._members.pop(audience_id, None)
                return _Answer(200, {"success": True})
        if len(parts) == 2 and parts[1] == "users" and method in ("POST", "DELETE"):
            return self._users(method, audience_id, params)
        return _invalid(f"Unsupported {method.lower()} request.")

    def _ad_account(self, account: str) -> _Answer:
        number = account.removeprefix("act_")
        if self._ad_accounts and number not in self._ad_accounts:
            return _invalid(f"Ad account owner has NOT grant ads_management or ads_read permission ({account})", 33)
        return _Answer(200, {"id": account, "account_id": number, "name": f"Local ad account {number}"})

    def _create(self, account: str, params: dict[str, Any]) -> _Answer:
        checked = self._ad_account(account)
        if checked.status != 200:
            return checked
        name = params.get("name")
        if not isinstance(name, str) or not name.strip():
            return _invalid("The parameter name is required")
        if params.get("subtype", "CUSTOM") != "CUSTOM":
            return _invalid("Only subtype CUSTOM is served here")
        source = params.get("customer_file_source")
        if source not in FILE_SOURCES:
            return _invalid(f"Param customer_file_source must be one of {sorted(FILE_SOURCES)}", 1870037)
        audience_id = self.create_audience(name.strip(), account.removeprefix("act_"))
        self._audiences[audience_id].update(
            description=str(params.get("description") or ""), customer_file_source=source
        )
        return _Answer(200, {"id": audience_id})

    def _describe(self, audience_id: str) -> _Answer:
        count = len(self.members(audience_id))
        # Meta shows a range, never an exact count; locally the range is the count itself.
        return _Answer(
            200,
            {
                **self._audiences[audience_id],
                "approximate_count_lower_bound": count,
                "approximate_count_upper_bound": count,
            },
        )

    def _users(self, method: str, audience_id: str, params: dict[str, Any]) -> _Answer:
        payload = params.get("payload")
        if not isinstance(payload, dict):
            return _invalid("The parameter payload is required")
        schema, data = payload.get("schema"), payload.get("data")
        if not isinstance(data, list) or not data:
            return _invalid("payload.data must be a non-empty array")
        if len(data) > ROWS_PER_REQUEST:
            return _invalid(f"Too many records: at most {ROWS_PER_REQUEST} per request, got {len(data)}")
        if isinstance(schema, list):  # a multi-key schema: each row has one value per key
            if not schema or any(s not in SCHEMAS for s in schema):
                return _invalid(f"Invalid schema {schema}")
            width = len(schema)
            if any(not isinstance(row, list) or len(row) != width for row in data):
                return _invalid("Each row of a multi-key payload has one value per schema key")
        elif schema not in SCHEMAS:
            return _invalid(f"Invalid schema {schema!r}: one of {sorted(SCHEMAS)} or a list of them")
        session = params.get("session")
        key = None
        if session is not None:
            problem = self._check_session(session)
            if problem:
                return _invalid(problem)
            key = (audience_id, method, session["session_id"])
            state = self._sessions.get(key)
            if state is not None and state.closed:
                return _invalid(f"Session {session['session_id']} has ended: its last batch was received", 2650)
            expected = 1 if state is None else state.last_seq + 1
            if session["batch_seq"] != expected:
                return _invalid(
                    f"Session {session['session_id']}: batch_seq {session['batch_seq']} out of order, {expected} "
                    "expected (a session's batches are numbered from 1, one after the other)"
                )
        valid, invalid = self._split(schema, data)
        held = self._members.setdefault(audience_id, {})
        name = "+".join(schema) if isinstance(schema, list) else schema
        if method == "POST":
            held.setdefault(name, set()).update(valid)
        else:
            held.setdefault(name, set()).difference_update(valid)
        if key is not None:
            state = self._sessions.setdefault(key, _Session(session.get("estimated_num_total")))
            state.last_seq = session["batch_seq"]
            state.received += len(data)
            state.closed = bool(session["last_batch_flag"])
        self.uploads.append(
            {"method": method, "audience_id": audience_id, "session": session, "schema": schema, "rows": len(data)}
        )
        return _Answer(
            200,
            {
                "audience_id": audience_id,
                "session_id": session["session_id"] if session else None,
                "num_received": len(data),
                "num_invalid_entries": len(invalid),
                "invalid_entry_samples": {str(row): "Invalid format" for row in invalid[:INVALID_SAMPLES]},
            },
        )

    @staticmethod
    def _check_session(session: Any) -> str:
        if not isinstance(session, dict):
            return "session must be an object"
        for name in ("session_id", "batch_seq"):
            if not isinstance(session.get(name), int) or isinstance(session.get(name), bool) or session[name] < 1:
                return f"session.{name} must be a positive integer"
        if not isinstance(session.get("last_batch_flag"), bool):
            return "session.last_batch_flag must be true or false"
        total = session.get("estimated_num_total")
        if total is not None and (not isinstance(total, int) or total < 0):
            return "session.estimated_num_total must be a whole number"
        return ""

    @staticmethod
    def _split(schema: Any, data: list) -> tuple[list, list]:
        valid, invalid = [], []
        if isinstance(schema, list):
            patterns = [SCHEMAS[s] for s in schema]
            for row in data:
                ok = all(isinstance(v, str) and p.fullmatch(v) for v, p in zip(row, patterns, strict=True))
                (valid if ok else invalid).append(tuple(row) if ok else json.dumps(row))
            return valid, invalid
        pattern = SCHEMAS[schema]
        for row in data:
            (valid if isinstance(row, str) and pattern.fullmatch(row) else invalid).append(row)
        return valid, invalid


class _Handler(JSONHandler):
    server_version = "LocalMeta/1.0"

    def answer(self, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        app: LocalMetaServer = self.server.app  # type: ignore[attr-defined]
        try:
            answer = app.dispatch(
                self.command,
                self.path,
                self.headers.get("Authorization", ""),
                self.headers.get("Content-Type", ""),
                raw,
            )
        except Exception:  # a bug here must still answer
            self.log_error("unhandled error for %s %s", self.command, self.path)
            answer = graph_error("An unknown error occurred", 1, status=500)
        return answer.status, answer.body, answer.headers

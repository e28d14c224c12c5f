"""A local, in-memory server speaking the Mailchimp Marketing API v3 contract.

Used by the product demo and by end-to-end tests: point the Mailchimp output's base
URL override at ``LocalMailchimpServer.base_url`` and it behaves like a Mailchimp
datacenter for the endpoints the output uses (see the "Mailchimp" section of
/work/shared/reference/PARTNERS.md). It needs only the standard library, so it also runs where
the project's dependencies are not installed (it takes orjson from them where they are).

Behaviour worth knowing when writing tests against it:

- Auth is checked before routing; a missing key is 401 "API Key Missing" and an
  unknown key 401 "API Key Invalid" (the two titles real Mailchimp uses).
- ``fail_next`` faults are served before auth and routing, so they also hit ``/ping``.
- Every request (faulted or not) is recorded in ``requests``.
- Archived members (DELETE) keep their record with status "archived": GET on the
  member still answers, but they are not listed or counted, and DELETE/PATCH/tags on
  them answer 404. Re-adding one creates a fresh member.
- A permanently deleted member cannot be re-added ("Forgotten Email Not Subscribed").
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import http
import ipaddress
import itertools
import json
import re
import secrets
import socket
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

try:  # orjson where it is installed (the benchmarks' partner must not eat the machine); else the stdlib alone
    import orjson
except ImportError:
    orjson = None


def _json_loads(raw: bytes) -> Any:
    """json.loads, in C where orjson is installed (the json module reads what orjson refuses, e.g. NaN)."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def _json_bytes(value: Any) -> bytes:
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:  # a big integer, a key that is not a string: the json module writes those
            pass
    return json.dumps(value).encode("utf-8")


API_PREFIX = "/3.0"
ERROR_TYPE_URL = "https://mailchimp.com/developer/marketing/docs/errors/"
BATCH_MEMBER_LIMIT = 500
# GET /lists and GET /lists/{id}/members paging, as documented by Mailchimp (count and offset).
MEMBERS_PAGE_DEFAULT = 10
MEMBERS_PAGE_MAX = 1000
LISTS_PAGE_DEFAULT = 10
LISTS_PAGE_MAX = 1000
MEMBER_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
ARCHIVED = "archived"
EMAIL_TYPES = ("html", "text")
TAG_STATUSES = ("active", "inactive")

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"

# Loose syntax check: Mailchimp's own validation is stricter and undocumented; this
# only has to reject what is obviously not an address (no @, spaces, no dotted domain).
_EMAIL_RE = re.compile(
    r"^[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)

# Default problem titles/details for fault injection, worded like Mailchimp's.
_FAULT_TEXT: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "Your request could not be processed."),
    401: (
        "API Key Invalid",
        "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
    ),
    403: ("Forbidden", "You are not permitted to access this resource."),
    404: ("Resource Not Found", "The requested resource could not be found."),
    429: ("Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."),
    500: (
        "Internal Server Error",
        "An unexpected internal error has occurred. Please contact Support for more information.",
    ),
}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: lower-case hex MD5 of the trimmed, lower-cased address."""
    return hashlib.md5(email.strip().lower().encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RecordedRequest(NamedTuple):
    """One request as received: ``path`` is the raw target (query string included)."""

    method: str
    path: str
    body: Any  # parsed JSON, or None when there was no body or it was not JSON


@dataclass
class _Response:
    status: int
    body: Any = None  # None = no body at all
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


def _problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> _Response:
    body: dict[str, Any] = {
        "type": ERROR_TYPE_URL,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(uuid.uuid4()),
    }
    if errors is not None:
        body["errors"] = errors
    return _Response(status, body, PROBLEM_JSON, dict(headers or {}))


class ApiError(Exception):
    """Raised by endpoint handlers; becomes a problem+json response."""

    def __init__(self, status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None):
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.errors = status, title, detail, errors

    def response(self) -> _Response:
        return _problem(self.status, self.title, self.detail, errors=self.errors)


_INVALID_RESOURCE_DETAIL = (
    "The resource submitted could not be validated. For field-specific details, see the 'errors' array."
)


def _invalid_resource(field_name: str, message: str, detail: str | None = None) -> ApiError:
    return ApiError(
        400,
        "Invalid Resource",
        detail or _INVALID_RESOURCE_DETAIL,
        [{"field": field_name, "message": message}],
    )


def _not_found() -> ApiError:
    return ApiError(404, "Resource Not Found", "The requested resource could not be found.")


class _MemberError(Exception):
    """A problem with one member.

    Batch calls report it in ``errors[]`` (the batch itself still succeeds); single-member
    endpoints answer 400 with ``title`` and ``message`` as the problem detail.
    """

    def __init__(
        self,
        title: str,
        message: str,
        *,
        code: str = "ERROR_GENERIC",
        field_name: str = "",
        field_message: str = "",
    ):
        super().__init__(message)
        self.title, self.message, self.code = title, message, code
        self.field_name, self.field_message = field_name, field_message

    def batch_entry(self, email: Any) -> dict[str, Any]:
        return {
            "email_address": email if isinstance(email, str) else "",
            "error": self.message,
            "error_code": self.code,
            "field": self.field_name,
            "field_message": self.field_message,
        }

    def api_error(self) -> ApiError:
        errors = [{"field": self.field_name, "message": self.field_message}] if self.field_name else None
        return ApiError(400, self.title, self.message, errors)


def _fake_email_error(email: str) -> _MemberError:
    return _MemberError(
        "Invalid Resource",
        f"{email} looks fake or invalid, please enter a real email address.",
        field_name="email_address",
        field_message="Please enter a real email address.",
    )


@dataclass
class _AudienceList:
    id: str
    name: str
    web_id: int
    date_created: str
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash -> member, archived included
    compliance: set[str] = field(default_factory=set)  # hashes that unsubscribed themselves
    forgotten: set[str] = field(default_factory=set)  # hashes deleted permanently
    tag_ids: dict[str, int] = field(default_factory=dict)
    # Declared merge fields, tag -> {"tag", "name", "type", "required", "options"} (a list's settings at Mailchimp).
    merge_fields: dict[str, dict[str, Any]] = field(default_factory=dict)

    def active_member(self, member_hash: str) -> dict[str, Any] | None:
        member = self.members.get(member_hash)
        return member if member is not None and member["status"] != ARCHIVED else None

    def stats(self) -> dict[str, int]:
        statuses = [m["status"] for m in self.members.values() if m["status"] != ARCHIVED]
        return {
            "member_count": statuses.count("subscribed"),
            "unsubscribe_count": statuses.count("unsubscribed"),
            "cleaned_count": statuses.count("cleaned"),
            "total_contacts": len(statuses),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "web_id": self.web_id,
            "name": self.name,
            "date_created": self.date_created,
            "email_type_option": False,
            "double_optin": False,
            "stats": self.stats(),
        }


@dataclass
class _Fault:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]

    def response(self) -> _Response:
        if self.body is None:
            title, detail = _FAULT_TEXT.get(self.status) or (_phrase(self.status),) * 2
            return _problem(self.status, title, detail, headers=self.headers)
        if not self.body:
            # Mailchimp under heavy load can answer 429/403 with no body at all.
            return _Response(self.status, None, headers=dict(self.headers))
        content_type = PROBLEM_JSON if self.status >= 400 else JSON
        return _Response(self.status, copy.deepcopy(self.body), content_type, dict(self.headers))


Handler = Callable[[dict[str, str], dict[str, str], Any], _Response]


class LocalMailchimpServer:
    """In-memory Mailchimp Marketing API v3 over HTTP on a local port.

    ``port=0`` picks a free port (read it back from ``base_url``); ``api_keys=None``
    accepts any non-empty key. The socket is bound in the constructor, so ``base_url``
    is usable before ``start()``. Also usable as a context manager (start/stop).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] | None = None,
        *,
        verbose: bool = False,
        record_requests: bool = True,
    ) -> None:
        # One lock for all state: requests are served on many threads.
        self._lock = threading.RLock()
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._lists: dict[str, _AudienceList] = {}
        self._faults: deque[_Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._serving = False
        self._thread: threading.Thread | None = None
        self.verbose = verbose
        # Tests read back what was sent (requests()); a benchmark sending millions of members turns it off.
        self.record_requests = record_requests
        # Addresses answered with the "looks fake or invalid" per-member error.
        self.reject_emails: set[str] = set()
        self._routes = self._build_routes()
        self._httpd = _HTTPServer((host, port), self)

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        try:
            if ipaddress.ip_address(host).is_unspecified:
                host = "127.0.0.1"  # bound to all interfaces: loopback reaches it
        except ValueError:
            pass  # a host name
        return f"http://{host}:{port}{API_PREFIX}"

    def start(self) -> LocalMailchimpServer:
        """Serve on a daemon thread (it never blocks interpreter exit)."""
        with self._lock:
            if self._serving:
                raise RuntimeError("server already running")
            self._serving = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            # stop() waits up to one poll interval; keep it short so test teardown is quick.
            kwargs={"poll_interval": 0.02},
            name="local-mailchimp",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` (from another thread) or an exception."""
        with self._lock:
            if self._serving:
                raise RuntimeError("server already running")
            self._serving = True
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving, close keep-alive connections and the listening socket. Idempotent."""
        with self._lock:
            serving, self._serving = self._serving, False
        # shutdown() waits for a serve loop to acknowledge; only ask when one was started.
        if serving and (self._thread is None or self._thread is not threading.current_thread()):
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def _close(self) -> None:
        with self._lock:
            self._serving = False
        # Without this, handler threads of idle keep-alive clients would keep serving.
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> LocalMailchimpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------ test helpers

    def create_list(self, list_id: str, name: str = "", *, merge_fields: Iterable[Mapping[str, Any]] = ()) -> None:
        """Create an audience with a known id (idempotent; a non-empty name renames it). `merge_fields` declares
        the list's merge fields, e.g. ``{"tag": "FNAME", "type": "text", "required": True}`` (types: text,
        number, address, phone, date, birthday, dropdown, radio; ``options.choices`` for the last two)."""
        with self._lock:
            existing = self._lists.get(list_id)
            if existing is not None:
                existing.name = name or existing.name
            else:
                existing = self._lists[list_id] = _AudienceList(list_id, name or list_id, next(self._ids), _now())
            for declared in merge_fields:
                self.declare_merge_field(list_id, **declared)

    def declare_merge_field(
        self,
        list_id: str,
        tag: str,
        type: str = "text",
        *,
        required: bool = False,
        name: str = "",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Add (or replace) a merge field of a list: members then must fit its type, and have a value when it is
        required (unless the request says skip_merge_validation=true)."""
        if type not in MERGE_FIELD_TYPES:
            raise ValueError(f"merge field type must be one of {', '.join(MERGE_FIELD_TYPES)}")
        with self._lock:
            lst = self._lists[list_id]
            lst.merge_fields[tag] = {
                "merge_id": next(self._ids),
                "tag": tag,
                "name": name or tag.title(),
                "type": type,
                "required": required,
                "options": dict(options or {}),
                "list_id": list_id,
            }

    def members(self, list_id: str, *, include_archived: bool = False) -> dict[str, dict[str, Any]]:
        """subscriber_hash -> member (deep copy). Archived members are left out unless asked for.

        Raises KeyError for an unknown list.
        """
        with self._lock:
            lst = self._lists[list_id]
            return {h: copy.deepcopy(m) for h, m in lst.members.items() if include_archived or m["status"] != ARCHIVED}

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def connection_count(self) -> int:
        """TCP connections accepted so far (lets tests assert keep-alive reuse)."""
        return self._httpd.connections_opened

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` API requests with ``status`` instead of serving them.

        ``body=None`` sends a Mailchimp-style problem+json body, ``body={}`` no body at
        all, anything else is sent as given. Calls queue up in order.
        """
        if not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            for _ in range(times):
                self._faults.append(_Fault(status, copy.deepcopy(body), dict(headers or {})))

    def mark_compliance_state(self, list_id: str, email: str) -> None:
        """Make ``email`` a self-unsubscribed member: it can no longer be set to subscribed."""
        with self._lock:
            lst = self._lists[list_id]
            member_hash = subscriber_hash(email)
            member = lst.active_member(member_hash)
            if member is None:
                member = self._new_member(lst, email.strip(), member_hash)
                lst.members[member_hash] = member
            member["status"] = "unsubscribed"
            member["last_changed"] = _now()
            lst.compliance.add(member_hash)

    def reset(self) -> None:
        """Forget all lists, members, faults, recorded requests and rejected addresses."""
        with self._lock:
            self._lists.clear()
            self._faults.clear()
            self._requests.clear()
            self.reject_emails.clear()

    # ------------------------------------------------------------------ dispatch

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        list_path = r"/lists/(?P<list_id>[^/]+)"
        member_path = list_path + r"/members/(?P<member>[^/]+)"
        table: list[tuple[str, str, Handler]] = [
            ("GET", r"/ping", self._api_ping),
            ("GET", r"/lists", self._api_get_lists),
            ("POST", r"/lists", self._api_create_list),
            ("GET", list_path, self._api_get_list),
            ("POST", list_path, self._api_batch_members),
            ("GET", list_path + r"/members", self._api_list_members),
            ("GET", list_path + r"/merge-fields", self._api_merge_fields),
            ("POST", list_path + r"/members", self._api_add_member),
            ("GET", member_path, self._api_get_member),
            ("PUT", member_path, self._api_put_member),
            ("PATCH", member_path, self._api_patch_member),
            ("DELETE", member_path, self._api_archive_member),
            ("POST", member_path + r"/actions/delete-permanent", self._api_delete_permanent),
            ("POST", member_path + r"/tags", self._api_member_tags),
        ]
        return [(method, re.compile(pattern + r"/?"), handler) for method, pattern, handler in table]

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], raw_body: bytes) -> _Response:
        """Answer one request. Separate from the HTTP layer so it stays easy to follow."""
        split = urlsplit(target)
        body, body_is_json = _parse_json(raw_body)
        with self._lock:
            if self.record_requests:
                self._requests.append(RecordedRequest(method, target, body))
            fault = self._faults.popleft() if self._faults and _is_api_path(split.path) else None

        if not _is_api_path(split.path):
            return _not_found().response()
        if fault is not None:
            return fault.response()
        auth_problem = self._check_auth(headers.get("Authorization"))
        if auth_problem is not None:
            return auth_problem

        route_path = split.path[len(API_PREFIX) :] or "/"
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(route_path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            if not body_is_json:
                return _problem(400, "JSON Parse Error", "We encountered an unspecified JSON parsing error.")
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            try:
                with self._lock:
                    return handler(params, query, body)
            except ApiError as exc:
                return exc.response()
        if allowed:
            return _problem(
                405,
                "Method Not Allowed",
                "The requested method and resource are not compatible. "
                "See the Allow header for this resource's available methods.",
                headers={"Allow": ", ".join(allowed)},
            )
        return _not_found().response()

    def _check_auth(self, authorization: str | None) -> _Response | None:
        key = _api_key_from_header(authorization)
        if not key:
            return _problem(401, "API Key Missing", "Your request did not include an API key.")
        if self._api_keys is not None and key not in self._api_keys:
            return _problem(401, "API Key Invalid", _FAULT_TEXT[401][1])
        return None

    # ---------------------------------------------------------------- endpoints

    def _api_ping(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        return _Response(200, {"health_status": "Everything's Chimpy!"})

    def _api_get_lists(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        """A page of the account's lists, oldest first: `count` (default 10, at most 1,000) from `offset`;
        `total_items` counts them all. `fields` is accepted and ignored (Mailchimp then returns fewer keys)."""
        count = min(_int_param(query, "count", LISTS_PAGE_DEFAULT), LISTS_PAGE_MAX)
        offset = _int_param(query, "offset", 0)
        lists = list(self._lists.values())
        page = [lst.as_json() for lst in lists[offset : offset + count]]
        return _Response(200, {"lists": page, "total_items": len(lists), "_links": []})

    def _api_create_list(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        data = _require_object(body)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _invalid_resource("name", "This value should not be blank.")
        list_id = secrets.token_hex(5)  # Mailchimp list ids are 10 hex characters
        while list_id in self._lists:
            list_id = secrets.token_hex(5)
        self.create_list(list_id, name.strip())
        return _Response(200, self._lists[list_id].as_json())

    def _api_get_list(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        return _Response(200, self._get_list(params["list_id"]).as_json())

    def _api_batch_members(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        data = _require_object(body)
        items = data.get("members")
        if not isinstance(items, list):
            raise _invalid_resource("members", "Schema describes array, but a different type was found.")
        if len(items) > BATCH_MEMBER_LIMIT:
            raise _invalid_resource(
                "members",
                f"Schema describes array with at most {BATCH_MEMBER_LIMIT} items, {len(items)} found.",
                detail=f"A batch can add or update at most {BATCH_MEMBER_LIMIT} members; "
                f"this request has {len(items)}.",
            )
        update_existing = data.get("update_existing", False)
        if not isinstance(update_existing, bool):
            raise _invalid_resource("update_existing", "Schema describes boolean.")

        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in items:
            raw_email = item.get("email_address") if isinstance(item, dict) else None
            try:
                if not isinstance(item, dict):
                    raise _MemberError("Invalid Resource", "Each member must be an object.")
                email, member_hash = self._parse_email(item.get("email_address"))
                existing = lst.active_member(member_hash)
                if existing is not None and not update_existing:
                    raise _MemberError(
                        "Member Exists",
                        f"{email} is already a list member, do you want to update? "
                        "please provide update_existing:true in the request body",
                        code="ERROR_CONTACT_EXISTS",
                    )
                member, is_new = self._write_member(lst, email, member_hash, item, existing, _skip_merge(query))
            except _MemberError as exc:
                errors.append(exc.batch_entry(raw_email))
                continue
            (created if is_new else updated).append(_json_copy(member))
        return _Response(
            200,
            {
                "new_members": created,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(created),
                "total_updated": len(updated),
                "error_count": len(errors),
                "_links": [],
            },
        )

    def _api_list_members(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        count = _int_param(query, "count", MEMBERS_PAGE_DEFAULT)
        offset = _int_param(query, "offset", 0)
        # UNCONFIRMED whether Mailchimp rejects count > 1000 or caps it; capping is the lenient choice.
        count = min(count, MEMBERS_PAGE_MAX)
        status = query.get("status")
        if status is not None and status not in (*MEMBER_STATUSES, ARCHIVED):
            raise _invalid_resource("status", f"Value must be one of: {', '.join((*MEMBER_STATUSES, ARCHIVED))}.")
        matching = [m for m in lst.members.values() if (m["status"] == status if status else m["status"] != ARCHIVED)]
        page = [_json_copy(m) for m in matching[offset : offset + count]]
        data = {"members": page, "list_id": lst.id, "total_items": len(matching), "_links": []}
        return _Response(200, _only_fields(data, query.get("fields")))

    def _api_merge_fields(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        count = min(_int_param(query, "count", MEMBERS_PAGE_DEFAULT), MEMBERS_PAGE_MAX)
        offset = _int_param(query, "offset", 0)
        fields = list(lst.merge_fields.values())
        page = [copy.deepcopy(f) for f in fields[offset : offset + count]]
        return _Response(200, {"merge_fields": page, "list_id": lst.id, "total_items": len(fields), "_links": []})

    def _api_add_member(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        data = _require_object(body)
        try:
            email, member_hash = self._parse_email(data.get("email_address"))
            if lst.active_member(member_hash) is not None:
                raise _MemberError(
                    "Member Exists",
                    f"{email} is already a list member. Use PUT to insert or update list members.",
                )
            member, _ = self._write_member(lst, email, member_hash, data, None, _skip_merge(query))
        except _MemberError as exc:
            raise exc.api_error() from None
        return _Response(200, copy.deepcopy(member))

    def _api_get_member(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        member = lst.members.get(_member_key(params["member"]))
        if member is None:
            raise _not_found()
        return _Response(200, copy.deepcopy(member))

    def _api_put_member(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        data = _require_object(body)
        url_hash = _member_key(params["member"])
        existing = lst.active_member(url_hash)
        try:
            raw_email = data.get("email_address")
            if raw_email is None and existing is not None:
                raw_email = existing["email_address"]  # optional for members already on the list
            email, member_hash = self._parse_email(raw_email)
            if member_hash != url_hash:
                raise _MemberError(
                    "Invalid Resource",
                    "The email address in the body does not match the subscriber hash in the URL.",
                    field_name="email_address",
                    field_message="Does not match the subscriber hash.",
                )
            member, _ = self._write_member(lst, email, member_hash, data, existing, _skip_merge(query))
        except _MemberError as exc:
            raise exc.api_error() from None
        return _Response(200, copy.deepcopy(member))

    def _api_patch_member(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        data = _require_object(body)
        member_hash = _member_key(params["member"])
        existing = lst.active_member(member_hash)
        if existing is None:
            raise _not_found()
        try:
            new_email = data.get("email_address")
            if new_email is not None and subscriber_hash(str(new_email)) != member_hash:
                # PATCH may change the address: the member moves to the new hash.
                email, new_hash = self._parse_email(new_email)
                if lst.active_member(new_hash) is not None:
                    raise _MemberError(
                        "Member Exists",
                        f"{email} is already a list member. Use PUT to insert or update list members.",
                    )
                member, _ = self._write_member(
                    lst, existing["email_address"], member_hash, data, existing, _skip_merge(query)
                )
                del lst.members[member_hash]
                member.update(id=new_hash, email_address=email)
                lst.members[new_hash] = member
            else:
                member, _ = self._write_member(
                    lst, existing["email_address"], member_hash, data, existing, _skip_merge(query)
                )
        except _MemberError as exc:
            raise exc.api_error() from None
        return _Response(200, copy.deepcopy(member))

    def _api_archive_member(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        member = lst.active_member(_member_key(params["member"]))
        if member is None:
            raise _not_found()  # also for already-archived members: removal callers must accept 404
        member["status"] = ARCHIVED
        member["last_changed"] = _now()
        return _Response(204)

    def _api_delete_permanent(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        member_hash = _member_key(params["member"])
        if member_hash not in lst.members:
            raise _not_found()
        del lst.members[member_hash]
        lst.compliance.discard(member_hash)
        lst.forgotten.add(member_hash)
        return _Response(204)

    def _api_member_tags(self, params: dict[str, str], query: dict[str, str], body: Any) -> _Response:
        lst = self._get_list(params["list_id"])
        member = lst.active_member(_member_key(params["member"]))
        if member is None:
            raise _not_found()
        tags = _require_object(body).get("tags")
        if not isinstance(tags, list):
            raise _invalid_resource("tags", "Schema describes array, but a different type was found.")
        for tag in tags:
            if (
                not isinstance(tag, dict)
                or not isinstance(tag.get("name"), str)
                or not tag["name"].strip()
                or tag.get("status") not in TAG_STATUSES
            ):
                raise _invalid_resource("tags", 'Each tag needs a "name" and a "status" of active or inactive.')
        current = {t["name"]: t for t in member["tags"]}
        for tag in tags:
            name = tag["name"].strip()
            if tag["status"] == "active":
                tag_id = lst.tag_ids.setdefault(name, next(self._ids))
                current.setdefault(name, {"id": tag_id, "name": name})
            else:
                current.pop(name, None)
        member["tags"] = list(current.values())
        member["tags_count"] = len(member["tags"])
        member["last_changed"] = _now()
        return _Response(204)

    # ------------------------------------------------------------ member logic

    def _get_list(self, list_id: str) -> _AudienceList:
        lst = self._lists.get(list_id)
        if lst is None:
            raise _not_found()
        return lst

    def _parse_email(self, raw: Any) -> tuple[str, str]:
        """Validate an address; returns (trimmed address, subscriber hash)."""
        if not isinstance(raw, str) or not raw.strip():
            raise _MemberError(
                "Invalid Resource",
                "Please provide a valid email address.",
                field_name="email_address",
                field_message="This value should not be blank.",
            )
        email = raw.strip()
        rejected = {e.strip().lower() for e in set(self.reject_emails)}
        if len(email) > 254 or not _EMAIL_RE.match(email) or email.lower() in rejected:
            raise _fake_email_error(email)
        return email, subscriber_hash(email)

    def _new_member(self, lst: _AudienceList, email: str, member_hash: str) -> dict[str, Any]:
        now = _now()
        return {
            "id": member_hash,
            "email_address": email,
            "unique_email_id": secrets.token_hex(5),
            "contact_id": secrets.token_hex(16),
            "web_id": next(self._ids),
            "email_type": "html",
            "status": "pending",
            "merge_fields": {},
            "timestamp_signup": now,
            "last_changed": now,
            "source": "API - Generic",
            "tags_count": 0,
            "tags": [],
            "list_id": lst.id,
        }

    def _write_member(
        self,
        lst: _AudienceList,
        email: str,
        member_hash: str,
        data: dict[str, Any],
        existing: dict[str, Any] | None,
        skip_merge_validation: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Create or update one member from a request body; returns (member, created).

        New members take ``status_if_new`` (falling back to ``status``); existing ones only
        change status when ``status`` is given, as with Mailchimp's PUT and batch calls.
        A value that does not fit its merge field's type is refused whatever the request says;
        a required merge field without a value (given now or stored) is refused unless
        ``skip_merge_validation`` (the query parameter) is true.
        """
        for key in ("status", "status_if_new"):
            value = data.get(key)
            if value is not None and value not in MEMBER_STATUSES:
                raise _MemberError(
                    "Invalid Resource",
                    f"Invalid value {value!r} for {key}.",
                    field_name=key,
                    field_message=f"Value must be one of: {', '.join(MEMBER_STATUSES)}.",
                )
        email_type = data.get("email_type")
        if email_type is not None and email_type not in EMAIL_TYPES:
            raise _MemberError(
                "Invalid Resource",
                f"Invalid value {email_type!r} for email_type.",
                field_name="email_type",
                field_message="Value must be one of: html, text.",
            )
        merge_fields = data.get("merge_fields")
        if merge_fields is not None and not isinstance(merge_fields, dict):
            raise _MemberError(
                "Invalid Resource",
                "Your merge fields were invalid.",
                field_name="merge_fields",
                field_message="Schema describes object, but a different type was found.",
            )
        _check_merge_fields(lst, merge_fields or {}, existing, skip_merge_validation)

        if existing is None:
            if member_hash in lst.forgotten:
                raise _MemberError(
                    "Forgotten Email Not Subscribed",
                    f"{email} was permanently deleted and cannot be re-imported. "
                    "The contact must re-subscribe to get back on the list.",
                )
            status = data.get("status_if_new") or data.get("status")
            if status is None:
                raise _MemberError(
                    "Invalid Resource",
                    "A status is required for a new member (status or status_if_new).",
                    field_name="status",
                    field_message="This value should not be blank.",
                )
        else:
            status = data.get("status") or existing["status"]

        already_subscribed = existing is not None and existing["status"] == "subscribed"
        if status == "subscribed" and member_hash in lst.compliance and not already_subscribed:
            # Only the contact can undo a self-unsubscribe; the API may still send them to `pending`.
            raise _MemberError(
                "Member In Compliance State",
                f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
                "and cannot be subscribed.",
            )

        member = existing if existing is not None else self._new_member(lst, email, member_hash)
        member["status"] = status
        if email_type is not None:
            member["email_type"] = email_type
        if merge_fields:
            member["merge_fields"].update(merge_fields)
        member["last_changed"] = _now()
        lst.members[member_hash] = member  # replaces an archived record when re-adding
        return member, existing is None


# ---------------------------------------------------------------------- helpers

MERGE_FIELD_TYPES = ("text", "number", "address", "phone", "date", "birthday", "dropdown", "radio")
MERGE_TEXT_MAX = 255
ADDRESS_PARTS = ("addr1", "city", "state", "zip")
MERGE_INVALID = "Your merge fields were invalid."
SCHEMA_MISMATCH = "Data did not match any of the schemas described in anyOf."


def _json_copy(value: Any) -> Any:
    """A copy of a JSON value (dicts, lists and scalars) that later writes to the stored member cannot change.
    copy.deepcopy's memo and dispatch cost 80% of a 500-member batch call; a member holds only JSON."""
    if type(value) is dict:
        return {key: _json_copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_json_copy(item) for item in value]
    return value


def _only_fields(data: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """Mailchimp's `fields` parameter: keep only these comma-separated dotted paths ("members.email_address",
    "total_items"); a path into a list applies to each of its items."""
    if not fields:
        return data
    paths = [p.strip().split(".") for p in fields.split(",") if p.strip()]

    def pick(value: Any, wanted: list[list[str]]) -> Any:
        if isinstance(value, list):
            return [pick(item, wanted) for item in value]
        if not isinstance(value, dict) or any(not p for p in wanted):
            return value
        out: dict[str, Any] = {}
        for key in dict.fromkeys(p[0] for p in wanted):
            if key in value:
                out[key] = pick(value[key], [p[1:] for p in wanted if p[0] == key])
        return out

    return pick(data, paths)


def _skip_merge(query: dict[str, str]) -> bool:
    return query.get("skip_merge_validation", "").lower() == "true"


def _fits(declared: dict[str, Any], value: Any) -> bool:
    """Whether a merge value fits its field's type (an empty string clears any field)."""
    kind = declared["type"]
    if value == "":
        return True
    if kind == "number":
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float):
            return True
        try:
            float(str(value))
        except ValueError:
            return False
        return True
    if kind == "address":
        return isinstance(value, dict) and all(isinstance(value.get(p), str) and value[p] for p in ADDRESS_PARTS)
    if not isinstance(value, str) or len(value) > MERGE_TEXT_MAX:
        return False
    if kind in ("dropdown", "radio"):
        return value in (declared["options"].get("choices") or ())
    return True


def _check_merge_fields(
    lst: _AudienceList, given: dict[str, Any], existing: dict[str, Any] | None, skip_validation: bool
) -> None:
    """Refuse values that do not fit their field, then (unless skipped) required fields left without a value."""
    for tag, value in given.items():
        declared = lst.merge_fields.get(tag)
        if declared is not None and not _fits(declared, value):
            raise _MemberError(
                "Invalid Resource", MERGE_INVALID, field_name=f"merge_fields.{tag}", field_message=SCHEMA_MISMATCH
            )
    if skip_validation:
        return
    stored = existing["merge_fields"] if existing is not None else {}
    for tag, declared in lst.merge_fields.items():
        if declared["required"] and given.get(tag, stored.get(tag)) in (None, ""):
            raise _MemberError("Invalid Resource", MERGE_INVALID, field_name=tag, field_message="Please enter a value")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    """(parsed body, ok). An empty body is valid and parses to None."""
    if not raw.strip():
        return None, True
    try:
        return _json_loads(raw), True
    except (ValueError, UnicodeDecodeError):
        return None, False


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid_resource("", "Schema describes object, but a different type was found.")
    return body


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise _invalid_resource(name, "Value must be a non-negative integer.")
    return value


def _member_key(raw: str) -> str:
    """Mailchimp accepts the subscriber hash or the address itself in member URLs."""
    return subscriber_hash(raw) if "@" in raw else raw.lower()


def _api_key_from_header(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, _, key = decoded.partition(":")  # any user name; the key is the password
        return key or None
    return None


# -------------------------------------------------------------------- HTTP layer


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive handlers must not block shutdown

    def __init__(
        self,
        address: tuple[str, int],
        app: Any,
        handler: type[BaseHTTPRequestHandler] | None = None,
    ) -> None:
        # `app` answers requests (LocalMailchimpServer, or the fault-injecting wrapper of
        # local_partners.faulty with its own handler class).
        self.app = app
        self.connections_opened = 0
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler or _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds
        # without working reverse DNS; the name is never used here.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.add(conn)
            self.connections_opened += 1

    def untrack(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(conn)

    def close_connections(self) -> None:
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the handler thread blocked on read
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response are routine (timeouts, stop()); don't spam tracebacks.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    # Keep-alive needs HTTP/1.1 and an exact Content-Length on every response.
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY the headers and body writes hit Nagle + delayed ACK and a
    # keep-alive client is capped at ~23 requests/s.
    disable_nagle_algorithm = True
    server_version = "LocalMailchimp/1.0"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        try:
            response = self.server.app.dispatch(self.command, self.path, self.headers, body)
        except Exception:  # a bug here must not drop the connection without an answer
            self.log_error("unhandled error for %s %s", self.command, self.path)
            response = _problem(500, *_FAULT_TEXT[500])
        self._send(response)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 400 for an unreadable one."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.send_error(400, "Bad chunked encoding")
                    return None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after each chunk
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "Bad Content-Length")
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, response: _Response) -> None:
        payload = b"" if response.body is None else _json_bytes(response.body)
        self.send_response(response.status)
        if payload:
            self.send_header("Content-Type", response.content_type + "; charset=utf-8")
        if response.status not in (204, 304):  # these must not carry Content-Length
            self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.verbose:
            super().log_message(format, *args)

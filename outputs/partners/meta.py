"""Meta (Facebook) Custom Audiences: list pattern, hashed identities, bulk (reference/PARTNERS.md, "Meta").

Connecting creates the custom audience in the ad account (`POST /act_<id>/customaudiences`, Capability
CREATES_AUDIENCE); its id is kept in the connection's settings. Adds go to `POST /<audience_id>/users`, removes
to `DELETE /<audience_id>/users`, as rows of one schema each: `EMAIL_SHA256`, `PHONE_SHA256` (normalised, then
SHA-256 hex, as Meta specifies) or `MOBILE_ADVERTISER_ID` (lower case, not hashed: see HASH_ADVERTISING_IDS).
At most 10,000 rows per request, each request carrying Meta's `session` (id, sequence number, last-batch flag,
estimated total). A session is what one call sends for one action (one delivery batch, or one batch of a
connection's clean-up), because only then is it known exactly: its requests go in order, batch_seq 1..n, the
last flagged, estimated_num_total the rows they carry, once the rows Meta could not match and the changes
delivery skipped are left out. An upload-wide session would be closed by a request that may never come (its
last rows skipped, the drain cut short), and Meta would hold it open.

Meta answers errors as `{"error": {message, type, code, error_subcode, fbtrace_id}}`, and its throttling as
codes inside an HTTP 400 (4, 17, 32, 613, 80003, ...), not as a 429: classified in MetaClient.raise_for_status.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

import requests
from django.core.exceptions import ValidationError

from outputs.partners.base import (
    Action,
    AudienceRef,
    Capability,
    MemberChange,
    MemberResult,
    Outcome,
    Partner,
    Setting,
    SettingKind,
    UploadCriteria,
)
from outputs.partners.http import AuthError, PartnerClient, PermanentError, TransientError, url_segment

GRAPH_API_VERSION = "v21.0"
# Meta refuses a request of more rows than this.
ROWS_PER_REQUEST = 10_000
EMAIL_SHA256 = "EMAIL_SHA256"
PHONE_SHA256 = "PHONE_SHA256"
MOBILE_ADVERTISER_ID = "MOBILE_ADVERTISER_ID"
EMAIL_TYPES = frozenset({"email"})
PHONE_TYPES = frozenset({"mobile_number", "phone_number_2", "phone_number_3"})
ADVERTISING_ID_TYPES = frozenset({"ios_advertising_id", "google_advertising_id"})
# UNCONFIRMED (reference/PARTNERS.md): Meta's current pages say a mobile advertiser id is sent in lower case,
# unhashed; the business SDK hashes it. Kept as a named constant so that one line changes if Meta says otherwise.
HASH_ADVERTISING_IDS = False
CUSTOMER_FILE_SOURCES = (
    ("USER_PROVIDED_ONLY", "Collected directly from customers"),
    ("PARTNER_PROVIDED_ONLY", "Provided by partners"),
    ("BOTH_USER_AND_PARTNER_PROVIDED", "Both"),
)
# Error codes (Graph API, Marketing API "Error codes" and rate-limiting pages). Throttling comes as an HTTP 400.
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
TEMPORARY_CODES = frozenset({1, 2, 368})  # "unknown, possibly temporary", "service temporarily unavailable"
AUTH_CODES = frozenset({102, 190, 10, *range(200, 300)})  # token expired or invalid, permission missing
OBJECT_MISSING_SUBCODE = 33  # code 100: "the object does not exist" (e.g. an audience deleted at Meta)
# Meta sends no Retry-After; its X-Business-Use-Case-Usage header may say how long to wait. Without it, this.
THROTTLE_DEFAULT_WAIT_SECONDS = 60.0
AD_ACCOUNT_RE = re.compile(r"(?:act_)?(?P<id>[0-9]{1,30})")
AUDIENCE_ID_RE = re.compile(r"[0-9]{1,30}")
COUNTRY_CODE_RE = re.compile(r"[1-9][0-9]{0,2}")


def ad_account_number(account: str) -> str:
    """The ad account's number, without Meta's act_ prefix."""
    match = AD_ACCOUNT_RE.fullmatch(account)
    if not match:
        raise ValidationError("An ad account id is digits, e.g. 1234567890 or act_1234567890.")
    return match["id"]


def country_calling_code(country: str) -> str:
    country = country.lstrip("+")
    if not COUNTRY_CODE_RE.fullmatch(country):
        raise ValidationError("A country calling code: 1 to 3 digits, e.g. 33 or 1.")
    return country


WHITESPACE_RE = re.compile(r"\s")


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def normalise_email(value: str) -> str | None:
    """Meta: trim, lower case. None when it is no address at all."""
    email = value.strip().lower()
    return email if "@" in email and not WHITESPACE_RE.search(email) else None


def normalise_phone(value: str, default_country_code: str = "") -> str | None:
    """Meta: digits only, with the country code, no '+' and no leading zeros. "+33 6 12..." and "0033 6 12..."
    carry their country code; a national number ("06 12...", one leading 0) gets `default_country_code` instead
    of its 0, and without one it cannot be matched: None. A number without '+' or 0 is taken as international."""
    text = value.strip()
    digits = re.sub(r"\D", "", text)
    if not digits:
        return None
    if text.startswith("+"):
        pass
    elif digits.startswith("00"):
        digits = digits[2:]
    elif digits.startswith("0"):
        if not default_country_code:
            return None
        digits = default_country_code + digits[1:]
    digits = digits.lstrip("0")
    return digits if 7 <= len(digits) <= 15 else None


def normalise_advertising_id(value: str) -> str | None:
    """Meta: the id in lower case, hyphens kept."""
    madid = value.strip().lower()
    return madid or None


def schema_of(identity_type: str) -> str:
    if identity_type in EMAIL_TYPES:
        return EMAIL_SHA256
    if identity_type in PHONE_TYPES:
        return PHONE_SHA256
    return MOBILE_ADVERTISER_ID


def hashed_row(identity_type: str, value: str, default_country_code: str = "") -> str | None:
    """The value as it goes into Meta's `data`, or None when it cannot be normalised."""
    if identity_type in EMAIL_TYPES:
        email = normalise_email(value)
        return sha256(email) if email else None
    if identity_type in PHONE_TYPES:
        phone = normalise_phone(value, default_country_code)
        return sha256(phone) if phone else None
    madid = normalise_advertising_id(value)
    if madid is None:
        return None
    return sha256(madid) if HASH_ADVERTISING_IDS else madid


def throttle_wait(response: requests.Response) -> float:
    """Seconds Meta asks us to wait, from X-Business-Use-Case-Usage's estimated_time_to_regain_access (minutes)."""
    try:
        usage = json.loads(response.headers.get("X-Business-Use-Case-Usage") or "{}")
        minutes = [
            float(entry.get("estimated_time_to_regain_access") or 0)
            for entries in usage.values()
            for entry in entries
            if isinstance(entry, dict)
        ]
    except (ValueError, AttributeError, TypeError):
        minutes = []
    wait = max(minutes, default=0.0) * 60
    return wait or THROTTLE_DEFAULT_WAIT_SECONDS


class MetaClient(PartnerClient):
    """The access token as a Bearer header (Meta takes it so or as the access_token parameter)."""

    def __init__(self, base_url: str, access_token: str, *, session: requests.Session | None = None):
        super().__init__(base_url, session=session)
        self.access_token = access_token

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    @staticmethod
    def graph_error(response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        error = body.get("error") if isinstance(body, dict) else None
        return error if isinstance(error, dict) else {}

    def error_message(self, response: requests.Response) -> str:
        error = self.graph_error(response)
        if error.get("message"):
            trace = f" (fbtrace_id {error['fbtrace_id']})" if error.get("fbtrace_id") else ""
            return f"{str(error['message'])[:450]}{trace}"
        return super().error_message(response)

    def error_code(self, response: requests.Response) -> str:
        error = self.graph_error(response)
        if "code" not in error:
            return ""
        subcode = f"/{error['error_subcode']}" if error.get("error_subcode") else ""
        return f"{error['code']}{subcode}"

    def raise_for_status(self, response: requests.Response) -> None:
        if response.status_code < 300:
            return
        error = self.graph_error(response)
        code = error.get("code")
        message = f"HTTP {response.status_code}: {self.error_message(response)}"
        if code in THROTTLE_CODES:
            raise TransientError(
                message,
                status=response.status_code,
                code=self.error_code(response),
                retry_after=throttle_wait(response),
            )
        if code in TEMPORARY_CODES or error.get("is_transient") is True:
            raise TransientError(message, status=response.status_code, code=self.error_code(response))
        if code in AUTH_CODES:
            raise AuthError(message, status=response.status_code, code=self.error_code(response))
        super().raise_for_status(response)


@dataclass(frozen=True)
class _Request:
    """One request of a call: its action and schema, the rows, the changes they stand for, and its session."""

    action: Action
    schema: str
    rows: list[str]
    changes: list[MemberChange]
    session: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"session": self.session, "payload": {"schema": self.schema, "data": self.rows}}


def is_missing_object(error: PermanentError) -> bool:
    return error.status == 404 or error.code == f"100/{OBJECT_MISSING_SUBCODE}"


class Meta(Partner):
    key = "meta"
    name = "Meta Custom Audiences"
    description = (
        "Creates a Custom Audience in a Meta ad account on connect and keeps its members in sync with hashed "
        "emails, phone numbers and mobile advertising ids, uploaded in bulk."
    )
    capabilities = frozenset({Capability.LIST, Capability.BULK, Capability.CREATES_AUDIENCE, Capability.REPORTS_COUNT})
    accepted_identity_types = EMAIL_TYPES | PHONE_TYPES | ADVERTISING_ID_TYPES
    configuration_settings = (
        Setting(
            "access_token",
            "Access Token",
            SettingKind.SECRET,
            help_text="A system user's access token with the ads_management permission on the ad account.",
            max_length=1000,
        ),
        Setting(
            "ad_account_id",
            "Ad Account ID",
            help_text="The ad account's number (act_ prefix optional).",
            check=ad_account_number,
        ),
        Setting(
            "customer_file_source",
            "Customer File Source",
            SettingKind.CHOICE,
            default="USER_PROVIDED_ONLY",
            choices=CUSTOMER_FILE_SOURCES,
            help_text="Where the customer information of created audiences comes from (Meta requires it).",
        ),
        Setting(
            "delete_audience_on_end",
            "Delete Audience on Connection End",
            SettingKind.BOOLEAN,
            default=True,
            help_text="Deleting a connection deletes the Custom Audience it created at Meta; "
            "otherwise its members are removed and the audience is left.",
        ),
        Setting(
            "default_phone_country_code",
            "Default phone country code",
            required=False,
            help_text="Digits, e.g. 33: put in place of the leading 0 of national numbers (Meta needs the "
            "country code). Empty: such numbers are not sent.",
            max_length=3,
            check=country_calling_code,
        ),
    )
    connection_settings = (
        Setting(
            "audience_id",
            "Custom Audience ID",
            required=False,
            help_text="Empty: connecting creates a Custom Audience named after the audience. Or the id of an "
            "existing one to fill.",
            max_length=30,
        ),
        Setting(
            "created_on_connect",
            "Created on connect",
            SettingKind.BOOLEAN,
            default=False,
            help_text="Set by the service: the audience was created by this connection (only then is it deleted "
            "at the connection's end).",
        ),
    )
    # mParticle's Facebook default: every 3 hours or at 750,000 messages, first reached wins.
    default_upload_criteria = UploadCriteria(wait=timedelta(hours=3), messages=750_000)
    batch_limit = ROWS_PER_REQUEST
    default_base_url = f"https://graph.facebook.com/{GRAPH_API_VERSION}"

    @classmethod
    def clean_connection_settings(cls, values: Mapping[str, Any]) -> dict:
        cleaned = super().clean_connection_settings(values)
        if cleaned["audience_id"] and not AUDIENCE_ID_RE.fullmatch(cleaned["audience_id"]):
            raise ValidationError({"audience_id": ["A Custom Audience id is digits, e.g. 23851234567890123."]})
        return cleaned

    @cached_property
    def _client(self) -> MetaClient:
        return MetaClient(self.base_url(), self.configuration["access_token"])

    def client(self) -> MetaClient:
        """One client (one keep-alive session) per partner instance."""
        return self._client

    def last_http_status(self) -> int | None:
        return self._client.last_status if "_client" in self.__dict__ else None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, params: dict | None = None) -> dict:
        client = self.client()
        return client.json(client.request(method, path, json=body, params=params))

    @staticmethod
    def audience_path(connection_settings: Mapping[str, Any]) -> str:
        audience_id = connection_settings.get("audience_id")
        if not audience_id:
            raise PermanentError("The connection has no Meta Custom Audience id (it was not created on connect).")
        return f"/{url_segment(audience_id)}"

    # --- the audience ---------------------------------------------------------------------------

    def test_connection(self, connection_settings: Mapping[str, Any], audience: AudienceRef | None) -> str:
        if connection_settings.get("audience_id"):
            data = self._audience(connection_settings)
            return f"Meta Custom Audience '{data.get('name', '')}' ({data.get('id')}) is reachable."
        account = self.configuration["ad_account_id"]
        data = self.call("GET", f"/act_{url_segment(account)}", params={"fields": "id,name"})
        return f"Meta ad account '{data.get('name', account)}' is reachable; connecting creates the audience."

    def _audience(self, connection_settings: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.call(
                "GET",
                self.audience_path(connection_settings),
                params={"fields": "id,name,approximate_count_lower_bound,approximate_count_upper_bound"},
            )
        except PermanentError as exc:
            if is_missing_object(exc):
                raise PermanentError(
                    f"Meta has no Custom Audience {connection_settings['audience_id']} ({exc.message})", status=404
                ) from exc
            raise

    def create_audience(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> dict[str, Any]:
        """Create the Custom Audience, unless the connection names an existing one: that one is used as it is
        (the connect page's test checks it; the connection then leaves it in place at its end)."""
        if connection_settings.get("audience_id"):
            return {}
        account = self.configuration["ad_account_id"]
        data = self.call(
            "POST",
            f"/act_{url_segment(account)}/customaudiences",
            {
                "name": audience.external_name,
                "subtype": "CUSTOM",
                "description": f"Forwarded by the audience forwarding service (audience {audience.id}).",
                "customer_file_source": self.configuration.get("customer_file_source", "USER_PROVIDED_ONLY"),
            },
        )
        if not data.get("id"):
            raise PermanentError(f"Meta created no audience: {str(data)[:300]}")
        return {"audience_id": str(data["id"]), "created_on_connect": True}

    def audience_count(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> int | None:
        """Meta's approximate lower bound (it shows no exact count, and none at all below about 1,000)."""
        count = self._audience(connection_settings).get("approximate_count_lower_bound")
        return count if isinstance(count, int) and count >= 0 else None

    def deletes_audience_on_end(self, connection_settings: Mapping[str, Any]) -> bool:
        return bool(
            self.configuration.get("delete_audience_on_end", True) and connection_settings.get("created_on_connect")
        )

    def wants_cleanup_on_end(self) -> bool:
        return True  # members are removed at the end, unless release_audience() deleted the audience

    def release_audience(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> bool:
        """Delete the Custom Audience when the output says so and this connection created it: its members go
        with it (True). An audience already deleted at Meta is what we wanted."""
        if not self.deletes_audience_on_end(connection_settings):
            return False
        try:
            self.call("DELETE", self.audience_path(connection_settings))
        except PermanentError as exc:
            if not is_missing_object(exc):
                raise
        return True

    # --- uploads ---------------------------------------------------------------------------------

    def requests_for(self, changes: Sequence[MemberChange]) -> tuple[list[_Request], list[MemberResult]]:
        """The requests of one call (at most 10,000 rows each, one schema each), each action's together as one
        session, and the changes refused before sending (a value Meta could not match once normalised)."""
        country = self.configuration.get("default_phone_country_code") or ""
        groups: dict[tuple[Action, str], tuple[list[str], list[MemberChange]]] = {}
        refused: list[MemberResult] = []
        for change in changes:
            row = hashed_row(change.identity_type, change.value, country)
            if row is None:
                refused.append(MemberResult(change, Outcome.REJECTED, f"not a {change.identity_type} Meta can match"))
                continue
            rows, sent = groups.setdefault((change.action, schema_of(change.identity_type)), ([], []))
            rows.append(row)
            sent.append(change)
        planned: list[_Request] = []
        for action in Action:
            chunks = [
                (schema, rows[start : start + ROWS_PER_REQUEST], sent[start : start + ROWS_PER_REQUEST])
                for (of, schema), (rows, sent) in groups.items()
                if of is action
                for start in range(0, len(rows), ROWS_PER_REQUEST)
            ]
            # Sized and closed by what is sent: no session is opened for an action with nothing to send.
            session_id, total = secrets.randbits(63), sum(len(rows) for _, rows, _ in chunks)
            for seq, (schema, rows, sent) in enumerate(chunks, start=1):
                session = {
                    "session_id": session_id,
                    "batch_seq": seq,
                    "last_batch_flag": seq == len(chunks),
                    "estimated_num_total": total,
                }
                planned.append(_Request(action, schema, rows, sent, session))
        return planned, refused

    def apply_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> list[MemberResult]:
        path = f"{self.audience_path(connection_settings)}/users"
        planned, results = self.requests_for(changes)
        for index, request in enumerate(planned):
            try:
                answer = self.call("POST" if request.action is Action.ADD else "DELETE", path, request.body())
            except TransientError as exc:
                if index == 0:
                    raise  # nothing applied: the whole batch waits
                # What went through is recorded; the rest is tried again. (A session cut here stays open at
                # Meta, which ends it by itself: no request with rows is left to close it.)
                for rest in planned[index:]:
                    results.extend(MemberResult(c, Outcome.RETRY, exc.message[:500]) for c in rest.changes)
                return results
            invalid = answer.get("invalid_entry_samples") or {}
            invalid = invalid if isinstance(invalid, dict) else {}
            for row, change in zip(request.rows, request.changes, strict=True):
                reason = invalid.get(row)
                if reason is None:
                    results.append(MemberResult(change, Outcome.DELIVERED))
                else:
                    results.append(MemberResult(change, Outcome.REJECTED, f"Meta: {str(reason)[:480]}"))
        return results

    def describe_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> dict:
        planned, _ = self.requests_for(changes)
        if not planned:
            return {"requests": 0}
        first = planned[0]
        return {
            "method": "POST" if first.action is Action.ADD else "DELETE",
            "path": f"/{connection_settings.get('audience_id') or '<created on connect>'}/users",
            "body": first.body(),
            "requests": len(planned),
        }

    def end_connection(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, held: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """Remove the members the connection holds (when its audience is not deleted instead)."""
        results = self.apply_batch(connection_settings, audience, held)
        retry = [r for r in results if r.outcome is Outcome.RETRY]
        if retry:
            raise TransientError(retry[0].reason or "Meta asked to retry part of the cleanup")
        return results

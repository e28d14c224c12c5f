"""Braze `POST /users/track`: attribute pattern, realtime (reference/PARTNERS.md, "Braze /users/track").

Braze has no segments to fill by API: membership is written onto each user as custom attributes, in one or
both of mParticle's shapes ("Send Segments As"):

* one array attribute (`SegmentMembership` by default) holding audience ids, always edited with Braze's
  `{"add": [...]}` / `{"remove": [...]}` syntax, never set whole, so several connections writing to one Braze
  account leave each other's ids alone (mParticle sets the whole array, and they overwrite each other);
* one boolean attribute per audience, `In <External Name>`.

A user is named by the External Identity Type (Braze's `external_id`: a customer id, another id, or the
profile id as mParticle's MPID) or else by the Email Identity Type (Braze's `email` identifier). All of one
user's identity changes go out in one attribute object; each change gets that object's outcome.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import requests
from django.core.exceptions import ValidationError

from outputs.partners.base import (
    Action,
    AudienceRef,
    Capability,
    IdentityCheck,
    MemberChange,
    MemberResult,
    Outcome,
    Partner,
    ProfileUpdate,
    Setting,
    SettingKind,
    check_request_rate,
    group_by_profile,
)
from outputs.partners.budget import RequestRate
from outputs.partners.http import PartnerClient, PermanentError, TransientError

# Braze answers 400 for the whole request above this many attribute objects.
ATTRIBUTES_PER_REQUEST = 75
INSTANCES: dict[str, str] = {
    **{f"US-0{n}": f"https://rest.iad-0{n}.braze.com" for n in range(1, 9)},
    **{f"EU-0{n}": f"https://rest.fra-0{n}.braze.eu" for n in range(1, 3)},
}
CUSTOM_INSTANCE = "custom"
# A custom instance is a host name (Braze gives an authority, no scheme), with an optional port.
AUTHORITY_RE = re.compile(r"(?=.{1,253}(:|$))[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*(?::\d{1,5})?")
MPID = "mpid"  # External Identity Type: the profile id (mParticle's MPID) as external_id
ID_TYPES = ("customer", "other", *(f"other{n}" for n in range(2, 11)))
EMAIL_TYPES = ("email", "other", *(f"other{n}" for n in range(2, 11)))
SINGLE_ATTRIBUTE = "single_attribute"
ATTRIBUTE_PER_SEGMENT = "attribute_per_segment"
BOTH = "both"
DEFAULT_SEGMENTS_ATTRIBUTE = "SegmentMembership"  # mParticle's name for the array attribute
# Braze refuses a whole request for one address with whitespace inside; the rest is a loose syntax check.
EMAIL_CHECK = IdentityCheck(
    pattern=r"[^@\s]+@[^@\s]+\.[^@\s]+", reason="not an email address Braze accepts (whitespace?)"
)


def normalise_email(value: str) -> str | None:
    """The address as Braze takes it (trimmed, lower case), or None when Braze would refuse it."""
    return EMAIL_CHECK.normalise(value)


def clean_authority(value: str) -> str:
    """A custom instance's host[:port]; "https://" and a trailing "/" are forgiven, anything else refused."""
    authority = value.strip().removeprefix("https://").rstrip("/")
    if not AUTHORITY_RE.fullmatch(authority):
        raise ValidationError(
            "A Braze REST endpoint host, without scheme or path, e.g. rest.iad-09.braze.com.", code="invalid"
        )
    return authority


def instance_url(instance: str, custom_endpoint: str) -> str:
    if instance == CUSTOM_INSTANCE:
        return f"https://{clean_authority(custom_endpoint)}"
    return INSTANCES[instance]


class BrazeClient(PartnerClient):
    """Bearer key; remembers the X-RateLimit-* headers of the last answer and, once the window is used up,
    refuses to send before its reset (a TransientError carrying the wait, as a 429's Retry-After would), and
    holds the account's shared budget until then, so its other connections wait too."""

    def __init__(self, base_url: str, api_key: str, *, session: requests.Session | None = None):
        super().__init__(base_url, session=session)
        self.api_key = api_key
        self.exhausted_until: float | None = None  # epoch seconds

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> requests.Response:
        wait = self.rate_limit_wait()
        if wait:
            raise TransientError(
                f"{method} {path}: Braze's rate limit is used up for {wait:.0f} s (X-RateLimit-Remaining: 0)",
                status=429,
                retry_after=wait,
            )
        return super().request(method, path, json=json, params=params)

    def rate_limit_wait(self) -> float:
        if self.exhausted_until is None:
            return 0.0
        return max(0.0, self.exhausted_until - time.time())

    def note_rate_limit(self, response: requests.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining", "")
        reset = response.headers.get("X-RateLimit-Reset", "")
        try:
            exhausted = int(remaining) <= 0
            reset_at = float(reset)
        except ValueError:
            self.exhausted_until = None
            return
        self.exhausted_until = reset_at if exhausted else None
        if exhausted and self.budget is not None:
            self.budget.hold_until(reset_at)

    def error_message(self, response: requests.Response) -> str:
        try:
            problem = response.json()
        except ValueError:
            return super().error_message(response)
        if isinstance(problem, dict) and problem.get("message"):
            return str(problem["message"])[:500]
        return super().error_message(response)

    def raise_for_status(self, response: requests.Response) -> None:
        self.note_rate_limit(response)
        if response.status_code == 429 and not response.headers.get("Retry-After"):
            # Braze sends no Retry-After: the wait is until X-RateLimit-Reset.
            raise TransientError(
                f"HTTP 429: {self.error_message(response)}", status=429, retry_after=self.rate_limit_wait() or None
            )
        super().raise_for_status(response)


@dataclass
class _UserObject:
    """One attribute object and the identity changes whose outcome it carries."""

    body: dict[str, Any]
    changes: list[MemberChange] = field(default_factory=list)


class Braze(Partner):
    key = "braze"
    name = "Braze"
    description = (
        "Writes audience membership onto Braze users as custom attributes (POST /users/track): an array of "
        "audience ids, a boolean per audience, or both."
    )
    capabilities = frozenset({Capability.ATTRIBUTE, Capability.REALTIME})
    request_rate = RequestRate(requests=3000, per_seconds=3)  # per REST API key (some plans differ)
    request_rate_setting = "request_rate"
    # Every type the identity settings can name; a user's other accepted identities ride with its object.
    accepted_identity_types = frozenset({*ID_TYPES, *EMAIL_TYPES})
    configuration_settings = (
        Setting("api_key", "REST API Key", SettingKind.SECRET, help_text="Settings > APIs and Identifiers."),
        Setting(
            "instance",
            "Braze Instance",
            SettingKind.CHOICE,
            choices=(*((i, i) for i in INSTANCES), (CUSTOM_INSTANCE, "Custom")),
            help_text="The cluster of your dashboard's URL (dashboard-03 is US-03); Custom for another endpoint.",
        ),
        Setting(
            "custom_endpoint",
            "Custom REST endpoint",
            required=False,
            help_text="With Braze Instance Custom: the REST endpoint's host, e.g. rest.iad-09.braze.com.",
        ),
        Setting(
            "external_identity_type",
            "External Identity Type",
            SettingKind.CHOICE,
            default="customer",
            choices=(*((t, t) for t in ID_TYPES), (MPID, "MPID (the profile id)")),
            help_text="The identity sent as Braze's external_id.",
        ),
        Setting(
            "email_identity_type",
            "Email Identity Type",
            SettingKind.CHOICE,
            default="email",
            choices=tuple((t, t) for t in EMAIL_TYPES),
            help_text="The identity sent as Braze's email: names the user when it has no external id.",
        ),
        Setting(
            "send_segments_as",
            "Send Segments As",
            SettingKind.CHOICE,
            default=SINGLE_ATTRIBUTE,
            choices=(
                (SINGLE_ATTRIBUTE, "Single Attribute (an array of audience ids)"),
                (ATTRIBUTE_PER_SEGMENT, "One Attribute Per Segment (In <External Name>)"),
                (BOTH, "Both"),
            ),
        ),
        Setting(
            "segments_attribute",
            "Array attribute name",
            default=DEFAULT_SEGMENTS_ATTRIBUTE,
            help_text="The array custom attribute holding audience ids (Single Attribute, Both).",
        ),
        Setting(
            "request_rate",
            "Request rate limit",
            required=False,
            help_text="This REST API key's /users/track limit as requests/seconds, for a plan other than Braze's "
            "default, e.g. 250000/3600 for an hourly limit. Empty: 3000/3 (or the deployment's "
            "PARTNER_REQUEST_RATES).",
            max_length=40,
            check=check_request_rate,
        ),
    )
    connection_settings = ()
    # Outbox rows per delivery batch: at most 150 attribute objects, two requests of 75, so a batch's calls
    # (each within PARTNER_CALL_DEADLINE_SECONDS) stay well inside the delivery lease.
    batch_limit = 2 * ATTRIBUTES_PER_REQUEST

    @classmethod
    def clean_configuration(cls, values: Mapping[str, Any]) -> dict:
        errors: dict[str, list[str]] = {}
        try:
            cleaned = super().clean_configuration(values)
        except ValidationError as exc:
            errors, cleaned = exc.message_dict, {}
        if cleaned.get("instance", values.get("instance")) == CUSTOM_INSTANCE and "custom_endpoint" not in errors:
            endpoint = cleaned.get("custom_endpoint", values.get("custom_endpoint")) or ""
            if not str(endpoint).strip():
                errors["custom_endpoint"] = ["Required when Braze Instance is Custom."]
            else:
                try:
                    cleaned["custom_endpoint"] = clean_authority(str(endpoint))
                except ValidationError as exc:
                    errors["custom_endpoint"] = exc.messages
        if cleaned.get("external_identity_type") and cleaned.get("external_identity_type") == cleaned.get(
            "email_identity_type"
        ):
            errors["email_identity_type"] = ["Must differ from the External Identity Type."]
        attribute = cleaned.get("segments_attribute")
        if isinstance(attribute, str) and attribute.startswith("$"):
            errors["segments_attribute"] = ["Braze custom attribute names cannot start with '$'."]
        if errors:
            raise ValidationError(errors)
        return cleaned

    def base_url(self) -> str:
        """PARTNER_API_BASE_URLS when it names Braze (a local server), else the configured instance."""
        return super().base_url() or instance_url(
            self.configuration["instance"], self.configuration.get("custom_endpoint", "")
        )

    @cached_property
    def _client(self) -> BrazeClient:
        client = BrazeClient(self.base_url(), self.configuration["api_key"])
        client.budget = self.request_budget()
        return client

    def client(self) -> BrazeClient:
        """One client (one keep-alive session, one view of the rate limit) per partner instance."""
        return self._client

    def identity_checks(self) -> Mapping[str, IdentityCheck]:
        # Only the Email Identity Type is read as an address; external ids go as they are.
        return {self.configuration.get("email_identity_type", "email"): EMAIL_CHECK}

    def test_connection(self, connection_settings: Mapping[str, Any], audience: AudienceRef | None) -> str:
        # An empty track call is Braze's cheapest authenticated request: it checks the key and the instance
        # (a wrong key is a 401; Braze may answer 400 for the empty body, which means the key passed).
        try:
            self.send({"attributes": []})
        except PermanentError as exc:
            if exc.status != 400:
                raise
        return f"Braze ({self.configuration['instance']}) accepted the REST API key."

    # --- the attribute objects ------------------------------------------------------------

    def membership_attributes(self, audience: AudienceRef, action: Action | None) -> dict[str, Any]:
        """What one user's object says about the audience; action None: the connection ends, unset what it wrote."""
        shape = self.configuration.get("send_segments_as", SINGLE_ATTRIBUTE)
        attributes: dict[str, Any] = {}
        if shape in (SINGLE_ATTRIBUTE, BOTH):
            verb = "add" if action is Action.ADD else "remove"
            attributes[self.configuration.get("segments_attribute") or DEFAULT_SEGMENTS_ATTRIBUTE] = {
                verb: [str(audience.id)]
            }
        if shape in (ATTRIBUTE_PER_SEGMENT, BOTH):
            attributes[f"In {audience.external_name}"] = None if action is None else action is Action.ADD
        return attributes

    def user_objects(
        self, audience: AudienceRef, updates: Sequence[ProfileUpdate], *, ending: bool = False
    ) -> tuple[list[_UserObject], list[MemberResult]]:
        """The attribute objects for these users, and the changes refused before sending (an email Braze
        would refuse, a user with no identity Braze can name it by): they are sent in no object."""
        external_type = self.configuration.get("external_identity_type", "customer")
        email_type = self.configuration.get("email_identity_type", "email")
        objects: list[_UserObject] = []
        refused: list[MemberResult] = []
        for update in updates:
            named: list[tuple[dict[str, Any], MemberChange]] = []  # (identifier, change) per object
            riders: list[MemberChange] = []
            email_add: str | None = None
            for change in update.changes:
                if change.identity_type == email_type:
                    email = normalise_email(change.value)
                    if email is None:
                        refused.append(MemberResult(change, Outcome.REJECTED, EMAIL_CHECK.reason))
                        continue
                    if change.action is Action.ADD:
                        email_add = email_add or email
                if external_type != MPID and change.identity_type == external_type and change.value.strip():
                    named.append(({"external_id": change.value.strip()}, change))
                else:
                    riders.append(change)
            if external_type == MPID and update.profile_id is not None:
                named = [({"external_id": str(update.profile_id)}, riders[0])] if riders else []
                riders = riders[1:]
            if not named:
                # No external id: each email names the user (Braze's email identifier).
                by_email = [c for c in riders if c.identity_type == email_type]
                named = [({"email": normalise_email(c.value)}, c) for c in by_email]
                riders = [c for c in riders if c.identity_type != email_type]
            if not named:
                reason = (
                    f"no identity Braze can name the user by (External Identity Type {external_type}, "
                    f"Email Identity Type {email_type})"
                )
                refused.extend(MemberResult(c, Outcome.REJECTED, reason) for c in riders)
                continue
            for index, (identifier, change) in enumerate(named):
                if ending:
                    action = None
                elif external_type == MPID and "external_id" in identifier:
                    action = update.action  # the profile is one user: in while any identity is added
                else:
                    action = change.action
                body = {**identifier, **self.membership_attributes(audience, action)}
                if "external_id" in body and action is Action.ADD and email_add:
                    body["email"] = email_add  # as mParticle does: the Email Identity Type is the user's email
                objects.append(_UserObject(body, [change, *(riders if index == 0 else [])]))
        return objects, refused

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        client = self.client()
        answer = client.json(client.request("POST", "/users/track", json=body))
        if answer.get("message") not in ("success", "queued"):  # queued: 202 while Braze is in maintenance
            raise TransientError(f"POST /users/track: unexpected answer {str(answer)[:300]}")
        return answer

    def send_objects(self, objects: Sequence[_UserObject]) -> list[MemberResult]:
        """Send the objects 75 to a request; map Braze's per-index errors to rejections. A failure of the first
        request raises (the whole batch is retried or faulted by delivery); once one request went through,
        a transient failure leaves the rest to retry, so what Braze applied is recorded."""
        results: list[MemberResult] = []
        for start in range(0, len(objects), ATTRIBUTES_PER_REQUEST):
            chunk = objects[start : start + ATTRIBUTES_PER_REQUEST]
            try:
                answer = self.send({"attributes": [o.body for o in chunk]})
            except TransientError as exc:
                if start == 0:
                    raise
                for rest in objects[start:]:
                    results.extend(MemberResult(c, Outcome.RETRY, exc.message[:500]) for c in rest.changes)
                return results
            errors: dict[int, str] = {}
            for error in answer.get("errors") or []:
                if isinstance(error, dict) and isinstance(error.get("index"), int):
                    errors.setdefault(error["index"], str(error.get("type") or "refused by Braze")[:500])
            for index, user in enumerate(chunk):
                reason = errors.get(index)
                outcome = Outcome.DELIVERED if reason is None else Outcome.REJECTED
                results.extend(MemberResult(c, outcome, reason or "") for c in user.changes)
        return results

    # --- the calls ----------------------------------------------------------------------------

    def apply_profile_updates(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, updates: Sequence[ProfileUpdate]
    ) -> list[MemberResult]:
        objects, refused = self.user_objects(audience, updates)
        return refused + self.send_objects(objects)

    def describe_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> dict:
        objects, _ = self.user_objects(audience, group_by_profile(changes))
        return {
            "method": "POST",
            "path": "/users/track",
            "body": {"attributes": [o.body for o in objects[:ATTRIBUTES_PER_REQUEST]]},
        }

    def wants_cleanup_on_end(self) -> bool:
        return True  # mParticle leaves the attributes behind; we remove what the connection wrote

    def end_connection(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, held: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """Remove the audience's id from the array and unset its boolean (null) on every user it holds."""
        objects, refused = self.user_objects(audience, group_by_profile(held), ending=True)
        results = refused + self.send_objects(objects)
        retry = [r for r in results if r.outcome is Outcome.RETRY]
        if retry:
            # The connection's end records every held member as removed: it must not stop half way.
            raise TransientError(retry[0].reason or "Braze asked to retry part of the cleanup")
        return results

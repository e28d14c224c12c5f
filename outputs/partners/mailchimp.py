"""Mailchimp Marketing API v3: list pattern, email only, realtime (reference/PARTNERS.md)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cache, cached_property
from typing import Any

import requests
from django.core.exceptions import ValidationError

from outputs.partners.base import (
    SKIPPED_FIELDS_NOTE,
    Action,
    AudienceRef,
    Capability,
    Destination,
    IdentityCheck,
    MemberChange,
    MemberResult,
    Outcome,
    Partner,
    Setting,
    SettingKind,
)
from outputs.partners.http import PartnerClient, PermanentError, TransientError, url_segment

API_KEY_RE = re.compile(r"^[A-Za-z0-9]+-(?P<dc>[a-z]+[0-9]+)$")
# Mailchimp issues list (audience) ids of ten hexadecimal characters ("a1b2c3d4e5"); letters,
# digits, "-" and "_" leave room for local and staging servers ("potential-parisians") and
# for nothing that could change the URL it goes into.
LIST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,50}")
MERGE_TAG_MAX = 10
# GET /lists pages: Mailchimp's largest page is 1,000; an account with more lists than LISTS_MAX_PAGES pages
# is offered the first ones (and the list id can still be typed).
LISTS_PAGE_SIZE = 1000
LISTS_MAX_PAGES = 10
# GET /lists/{id}/members pages (Mailchimp's largest page is 1,000 too).
MEMBERS_PAGE_SIZE = 1000
# The addresses Mailchimp takes, as far as its (undocumented) checks are known: a local part without "@" or
# whitespace, and a domain of dotted labels of letters, digits and inner hyphens ("a@b_c.com", "a@-b.com" and
# "a@b" are refused as "looks fake or invalid"). Stored emails passed our looser check (audiences.identities).
EMAIL_CHECK = IdentityCheck(
    pattern=r"[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+",
    reason="invalid email after normalisation (not an address Mailchimp accepts)",
)
# Member statuses: "subscribed" and "pending" (double opt-in) are what an add makes; "unsubscribed" is a remove.
HELD_STATUSES = frozenset({"subscribed", "pending"})
# mParticle's reserved user attributes and the Mailchimp merge fields every list has.
RESERVED_MERGE_TAGS = {"$firstname": "FNAME", "$lastname": "LNAME", "$mobile": "PHONE", "$address": "ADDRESS"}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: lower-case hex MD5 of the trimmed, lower-cased address."""
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


def data_center(api_key: str) -> str:
    match = API_KEY_RE.match(api_key.strip())
    if not match:
        raise ValidationError(
            "A Mailchimp API key ends with its data center after a dash, e.g. 0123456789abcdef-us6.",
            code="invalid_api_key",
        )
    return match["dc"]


def checked_api_key(api_key: str) -> str:
    data_center(api_key)
    return api_key


@cache  # audiences name few attributes, and a 500-member batch asks for each of them 500 times
def merge_tag(attribute: str) -> str | None:
    """Merge field tag for a user attribute: upper case letters, digits and _, at most 10 characters."""
    reserved = RESERVED_MERGE_TAGS.get(attribute.lower())
    if reserved:
        return reserved
    if attribute.startswith("$"):
        return None  # other reserved mParticle attributes have no Mailchimp counterpart
    tag = re.sub(r"[^A-Z0-9_]", "", attribute.upper())[:MERGE_TAG_MAX]
    return tag or None


def merge_fields(attributes: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in attributes.items():
        tag = merge_tag(str(name))
        if tag is None or value is None or isinstance(value, dict | list):
            continue
        fields[tag] = value if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
    return fields


class MailchimpClient(PartnerClient):
    def __init__(self, base_url: str, api_key: str, *, session: requests.Session | None = None):
        super().__init__(base_url, session=session)
        # HTTP Basic with any user name and the key as password.
        self.session.auth = ("audience-forwarding", api_key)

    def error_message(self, response: requests.Response) -> str:
        try:
            problem = response.json()
        except ValueError:
            return super().error_message(response)
        if isinstance(problem, dict) and ("title" in problem or "detail" in problem):
            return ": ".join(str(p) for p in (problem.get("title"), problem.get("detail")) if p)
        return super().error_message(response)

    def error_code(self, response: requests.Response) -> str:
        # Mailchimp names each error by its problem title ("API Key Invalid", "Resource Not Found").
        try:
            problem = response.json()
        except ValueError:
            return ""
        return str(problem.get("title") or "") if isinstance(problem, dict) else ""

    def raise_for_status(self, response: requests.Response) -> None:
        # Under very high load Mailchimp answers 403 without a body: that is throttling.
        if response.status_code == 403 and not response.content:
            raise TransientError("HTTP 403 without a body (Mailchimp throttling)", status=403)
        super().raise_for_status(response)


# Per-member error texts (lower case) and what they mean for an add and for a remove.
MEMBER_ERRORS: tuple[tuple[str, Outcome, Outcome], ...] = (
    ("already a list member", Outcome.DELIVERED, Outcome.DELIVERED),
    ("forgotten email", Outcome.REJECTED, Outcome.DELIVERED),
    ("permanently deleted", Outcome.REJECTED, Outcome.DELIVERED),
    ("signed up to a lot of lists very recently", Outcome.RETRY, Outcome.RETRY),
    ("compliance state", Outcome.REJECTED, Outcome.DELIVERED),
)


SKIP_MERGE_VALIDATION = {"skip_merge_validation": "true"}


def _reason(error: Mapping[str, Any]) -> str:
    reason = str(error.get("error") or error.get("error_code") or "rejected by Mailchimp")
    if error.get("field"):
        reason = f"{reason} (field {error['field']}: {error.get('field_message', '')})".strip()
    return reason


def _offending_merge_tags(error: Mapping[str, Any], change: MemberChange) -> frozenset[str] | None:
    """The merge tags to leave out when Mailchimp refused an add's merge fields (field "merge_fields.TAG", or
    "Your merge fields were invalid." naming none we sent: then all of them); None when the error is not about
    merge fields we sent."""
    if change.action is not Action.ADD:
        return None
    sent = merge_fields(change.attributes)
    field_name = str(error.get("field") or "")
    about_merge = field_name.startswith("merge_fields") or "merge fields were invalid" in str(error.get("error", ""))
    if not sent or not about_merge:
        return None
    tag = field_name.removeprefix("merge_fields").lstrip(".")
    return frozenset({tag}) if tag in sent else frozenset(sent)


def classify_member_error(error: Mapping[str, Any], action: Action) -> Outcome:
    text = str(error.get("error", "")).lower()
    if error.get("error_code") == "ERROR_CONTACT_EXISTS":
        return Outcome.DELIVERED
    for needle, on_add, on_remove in MEMBER_ERRORS:
        if needle in text:
            return on_add if action is Action.ADD else on_remove
    # Fake-looking addresses, merge field errors and anything unknown: permanent for that member.
    return Outcome.REJECTED


class Mailchimp(Partner):
    key = "mailchimp"
    name = "Mailchimp"
    description = "Keeps a Mailchimp list (audience) in sync: members are subscribed and unsubscribed."
    # A list we subscribe and unsubscribe, in real time; its members can be read back, it counts them, and an
    # erased member can be deleted for good (an unsubscribe alone leaves the address on the list).
    capabilities = frozenset(
        {
            Capability.LIST,
            Capability.REALTIME,
            Capability.LISTS_MEMBERS,
            Capability.REPORTS_COUNT,
            Capability.FORGETS_MEMBERS,
        }
    )
    accepted_identity_types = frozenset({"email"})
    configuration_settings = (
        Setting(
            "api_key",
            "API Key",
            SettingKind.SECRET,
            help_text="From Account > Extras > API keys; ends with -us6 or similar.",
            check=checked_api_key,
        ),
        Setting(
            "email_type",
            "Email Type",
            SettingKind.CHOICE,
            default="html",
            choices=(("html", "HTML"), ("text", "Text")),
        ),
        Setting(
            "double_opt_in",
            "Double Opt-In",
            SettingKind.BOOLEAN,
            default=True,
            help_text="New members are added as 'pending' and receive a confirmation email.",
        ),
        Setting(
            "delete_on_subscription_end",
            "Delete on Subscription End",
            SettingKind.BOOLEAN,
            default=True,
            help_text="When the connection is deleted, archive every member it added to the list.",
        ),
        Setting(
            "send_merge_fields",
            "Send user attributes as merge fields",
            SettingKind.BOOLEAN,
            default=True,
            help_text="Attribute names become merge tags: upper case, at most 10 characters ($FirstName -> FNAME).",
        ),
    )
    connection_settings = (
        Setting(
            "list_id",
            "Mailchimp audience (list) ID",
            help_text="The Mailchimp list to keep in sync. Mailchimp calls it an audience; its id is under "
            "Audience > Settings > Audience name and defaults.",
            max_length=100,
            target=True,
        ),
    )
    batch_limit = 500
    default_base_url = "https://{dc}.api.mailchimp.com/3.0"
    destination_setting = "list_id"
    audience_count_note = (
        "Mailchimp counts subscribed members only: with Double Opt-In, new members stay pending (not counted) "
        "until they confirm, and members added to the list by other means are counted too."
    )
    cleanup_setting = "delete_on_subscription_end"

    def identity_checks(self) -> Mapping[str, IdentityCheck]:
        return {"email": EMAIL_CHECK}

    @classmethod
    def clean_connection_settings(cls, values: Mapping[str, Any]) -> dict:
        cleaned = super().clean_connection_settings(values)
        if not LIST_ID_RE.fullmatch(cleaned["list_id"]):
            raise ValidationError(
                {
                    "list_id": [
                        "A Mailchimp audience id is letters and digits, like a1b2c3d4e5 (Audience > Settings > "
                        "Audience name and defaults); '-' and '_' are allowed too, at most 50 characters."
                    ]
                }
            )
        return cleaned

    @cached_property
    def _client(self) -> MailchimpClient:
        api_key = self.configuration["api_key"]
        base_url = self.base_url().replace("{dc}", data_center(api_key))
        return MailchimpClient(base_url, api_key)

    def client(self) -> MailchimpClient:
        """One client (one keep-alive session) per partner instance."""
        return self._client

    def last_http_status(self) -> int | None:
        return self._client.last_status if "_client" in self.__dict__ else None

    def _get_list(self, connection_settings: Mapping[str, Any]) -> dict[str, Any]:
        list_id = connection_settings["list_id"]
        try:
            client = self.client()
            return client.json(client.request("GET", f"/lists/{url_segment(list_id)}"))
        except PermanentError as exc:
            if exc.status == 404:
                raise PermanentError(f"Mailchimp has no list with id '{list_id}' ({exc.message})", status=404) from exc
            raise

    def test_connection(self, connection_settings: Mapping[str, Any], audience: AudienceRef | None) -> str:
        list_id = connection_settings["list_id"]
        data = self._get_list(connection_settings)
        stats = data.get("stats", {})
        return (
            f"Mailchimp list '{data.get('name', list_id)}' is reachable: "
            f"{stats.get('member_count', 0)} subscribed, {stats.get('unsubscribe_count', 0)} unsubscribed."
        )

    def list_destinations(self) -> list[Destination]:
        """The account's lists, page by page (GET /lists, count and offset), with their subscribed counts."""
        client = self.client()
        destinations: list[Destination] = []
        for page in range(LISTS_MAX_PAGES):
            query = {
                "count": LISTS_PAGE_SIZE,
                "offset": page * LISTS_PAGE_SIZE,
                "fields": "lists.id,lists.name,lists.stats.member_count,total_items",
            }
            data = client.json(client.request("GET", "/lists", params=query))
            lists = data.get("lists") or []
            for item in lists:
                if isinstance(item, dict) and item.get("id"):
                    members = (item.get("stats") or {}).get("member_count")
                    destinations.append(Destination(str(item["id"]), str(item.get("name") or item["id"]), members))
            total = data.get("total_items")
            if not lists or not isinstance(total, int) or len(destinations) >= total:
                break
        return destinations

    def batch_body(self, changes: Sequence[MemberChange]) -> dict[str, Any]:
        """The body of POST /lists/{list_id}: what apply_batch sends, and what the connect page previews."""
        return {"members": [self.member_payload(c) for c in changes], "update_existing": True}

    def describe_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> dict:
        return {
            "method": "POST",
            "path": f"/lists/{url_segment(connection_settings['list_id'])}",
            "query": dict(SKIP_MERGE_VALIDATION),
            "body": self.batch_body(changes),
        }

    def member_payload(self, change: MemberChange) -> dict[str, Any]:
        member: dict[str, Any] = {"email_address": change.value, "email_type": self.configuration["email_type"]}
        if change.action is Action.REMOVE:
            member["status"] = "unsubscribed"
            return member
        joined = "pending" if self.configuration["double_opt_in"] else "subscribed"
        # status_if_new leaves a confirmed member confirmed; status re-subscribes one we had removed.
        member["status_if_new"] = joined
        member["status"] = joined
        if self.configuration.get("send_merge_fields", True):
            fields = merge_fields(change.attributes)
            if fields:
                member["merge_fields"] = fields
        return member

    def apply_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> list[MemberResult]:
        if len(changes) > self.batch_limit:
            raise ValueError(f"Mailchimp takes at most {self.batch_limit} members per call")
        if not changes:
            return []
        errors = self._post_batch(connection_settings, self.batch_body(changes))
        # A merge value that does not fit its field (text in a number field, too long a text) refuses the
        # member even with skip_merge_validation: send those members again without the offending fields,
        # once, so membership never depends on a profile's attributes. The skip is recorded as the reason.
        skipped: dict[str, str] = {}
        again = []
        for change in changes:
            error = errors.get(change.value)
            offending = _offending_merge_tags(error, change) if error is not None else None
            if offending is not None:
                skipped[change.value] = f"{SKIPPED_FIELDS_NOTE}{', '.join(sorted(offending))} ({_reason(error)})"
                again.append((change, offending))
        if again:
            body = {"members": [self._without(change, tags) for change, tags in again], "update_existing": True}
            retried = self._post_batch(connection_settings, body)
            for change, _ in again:
                errors[change.value] = retried.get(change.value)
        results = []
        for change in changes:
            error = errors.get(change.value)
            if error is None:
                results.append(MemberResult(change, Outcome.DELIVERED, skipped.get(change.value, "")[:500]))
                continue
            results.append(MemberResult(change, classify_member_error(error, change.action), _reason(error)[:500]))
        return results

    def _post_batch(self, connection_settings: Mapping[str, Any], body: dict[str, Any]) -> dict[str, dict]:
        """POST /lists/{id}?skip_merge_validation=true (lists requiring FNAME, ADDRESS... still take members,
        reference/PARTNERS.md); returns the per-member errors by lower-cased address."""
        client = self.client()
        path = f"/lists/{url_segment(connection_settings['list_id'])}"
        answer = client.json(client.request("POST", path, json=body, params=SKIP_MERGE_VALIDATION))
        return {
            str(e.get("email_address", "")).strip().lower(): e
            for e in answer.get("errors") or []
            if isinstance(e, dict)
        }

    def _without(self, change: MemberChange, tags: frozenset[str]) -> dict[str, Any]:
        member = self.member_payload(change)
        fields = {tag: value for tag, value in (member.pop("merge_fields", None) or {}).items() if tag not in tags}
        if fields:
            member["merge_fields"] = fields
        return member

    def wants_cleanup_on_end(self) -> bool:
        return bool(self.configuration.get("delete_on_subscription_end"))

    def end_connection(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, held: Sequence[MemberChange]
    ) -> list[MemberResult]:
        if not self.wants_cleanup_on_end():
            return super().end_connection(connection_settings, audience, held)
        client = self.client()
        list_id = url_segment(connection_settings["list_id"])
        results = []
        for change in held:
            try:
                client.request("DELETE", f"/lists/{list_id}/members/{subscriber_hash(change.value)}")
            except PermanentError as exc:
                if exc.status != 404:  # already gone is what we wanted
                    raise
            results.append(MemberResult(change, Outcome.DELIVERED))
        return results

    def forget_members(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, identities: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """Mailchimp's permanent delete, one member per call (POST .../members/{hash}/actions/delete-permanent,
        204). A 404 means the list holds no such member (never added, or already deleted): forgotten as well.
        Another refusal of one member (400) is that member's; throttling, auth and 5xx fail the whole call."""
        client = self.client()
        list_id = url_segment(connection_settings["list_id"])
        results = []
        for identity in identities:
            path = f"/lists/{list_id}/members/{subscriber_hash(identity.value)}/actions/delete-permanent"
            try:
                client.request("POST", path)
            except PermanentError as exc:
                if exc.status != 404:
                    results.append(MemberResult(identity, Outcome.REJECTED, exc.message[:500]))
                    continue
            results.append(MemberResult(identity, Outcome.DELIVERED))
        return results

    def list_members(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> Iterator[MemberChange]:
        """The list's members, page by page (GET /lists/{id}/members, count and offset; archived ones are not
        listed): subscribed and pending ones as adds, every other (unsubscribed, cleaned, transactional) as a
        remove, so that each entry listed is one read (listed_members_total() counts them)."""
        client = self.client()
        path = f"/lists/{url_segment(connection_settings['list_id'])}/members"
        offset = 0
        while True:
            query = {
                "count": MEMBERS_PAGE_SIZE,
                "offset": offset,
                "fields": "members.email_address,members.status,total_items",
            }
            data = client.json(client.request("GET", path, params=query))
            page = [m for m in data.get("members") or [] if isinstance(m, dict)]
            for member in page:
                email = str(member.get("email_address") or "").strip().lower()
                status = member.get("status")
                if email:
                    yield MemberChange("email", email, Action.ADD if status in HELD_STATUSES else Action.REMOVE)
            offset += len(page)
            total = data.get("total_items")
            if not page or not isinstance(total, int) or offset >= total:
                return

    def listed_members_total(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> int | None:
        """The members list_members() reads: the listing's own total_items (archived ones are not listed)."""
        client = self.client()
        path = f"/lists/{url_segment(connection_settings['list_id'])}/members"
        data = client.json(client.request("GET", path, params={"count": 1, "fields": "total_items"}))
        total = data.get("total_items")
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    def audience_count(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> int | None:
        """Mailchimp's own count of subscribed members (stats.member_count of GET /lists/{id})."""
        count = (self._get_list(connection_settings).get("stats") or {}).get("member_count")
        return count if isinstance(count, int) and not isinstance(count, bool) else None

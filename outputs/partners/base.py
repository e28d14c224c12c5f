"""What a partner is, declared as data, and the few methods each one implements."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError

from outputs.partners.budget import RequestBudget, RequestRate, account_key, configured_rates


def check_request_rate(value: str) -> str:
    """The rule of a request rate setting (Partner.request_rate_setting): requests per seconds, "3000/3"."""
    try:
        return str(RequestRate.parse(value))
    except ValueError:
        raise ValidationError(
            f"'{value}' is not a request rate: requests/seconds, at least 1 request per a positive number of "
            "seconds, e.g. 3000/3.",
            code="invalid",
        ) from None


class SettingKind(enum.StrEnum):
    STRING = "string"
    SECRET = "secret"  # encrypted at rest, write-only in the admin and the API
    BOOLEAN = "boolean"
    CHOICE = "choice"
    INTEGER = "integer"


@dataclass(frozen=True)
class Setting:
    name: str
    label: str
    kind: SettingKind = SettingKind.STRING
    required: bool = True
    default: Any = None
    choices: tuple[tuple[str, str], ...] = ()
    help_text: str = ""
    max_length: int = 255
    # A connection setting naming the partner-side audience (Mailchimp's list id): editing it moves the
    # connection to another target, which is backfilled, and the old one cleaned up where the partner says so.
    target: bool = False
    # A text setting's own rule: given the trimmed value (not empty), returns it, normalised if need be, or
    # raises ValidationError (the message without the field name), e.g. Mailchimp's key ends with its data
    # center. Rules across settings go in the partner's clean_configuration.
    check: Callable[[str], str] | None = None

    @property
    def is_secret(self) -> bool:
        return self.kind is SettingKind.SECRET

    def describe(self) -> dict[str, Any]:
        """The setting as the API's partner directory shows it."""
        data: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "kind": str(self.kind),
            "required": self.required,
            "help_text": self.help_text,
        }
        if self.default is not None:
            data["default"] = self.default
        if self.choices:
            data["choices"] = [value for value, _ in self.choices]
        return data

    def clean(self, value: Any) -> Any:
        """Coerce one submitted value; raise ValidationError (message without the field name)."""
        if value is None or value == "":
            if self.default is not None:
                return self.default
            if self.required:
                raise ValidationError("This setting is required.", code="required")
            return "" if self.kind in (SettingKind.STRING, SettingKind.SECRET) else None
        if self.kind is SettingKind.BOOLEAN:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in {
                "true",
                "false",
                "1",
                "0",
                "yes",
                "no",
                "on",
                "off",
            }:
                return value.strip().lower() in {"true", "1", "yes", "on"}
            raise ValidationError("Expected true or false.", code="invalid")
        if self.kind is SettingKind.INTEGER:
            if isinstance(value, bool):
                raise ValidationError("Expected a whole number.", code="invalid")
            try:
                return int(value)
            except (TypeError, ValueError):
                raise ValidationError("Expected a whole number.", code="invalid") from None
        if not isinstance(value, str):
            raise ValidationError("Expected a string.", code="invalid")
        value = value.strip()
        if len(value) > self.max_length:
            raise ValidationError(f"At most {self.max_length} characters.", code="max_length")
        if self.kind is SettingKind.CHOICE and value not in {c for c, _ in self.choices}:
            allowed = ", ".join(c for c, _ in self.choices)
            raise ValidationError(f"'{value}' is not one of: {allowed}.", code="invalid_choice")
        return self.check(value) if self.check is not None else value


def clean_settings(schema: Sequence[Setting], values: Mapping[str, Any]) -> dict:
    """Validate a complete set of settings against a schema; errors name each field.

    A setting not given takes its default. Partial updates (keeping stored values, secrets
    included) are outputs.services.output_update's business: it completes `values` first.
    """
    known = {s.name for s in schema}
    errors: dict[str, list[str]] = {}
    for name in values:
        if name not in known:
            errors[name] = [f"Unknown setting '{name}'. Known settings: {', '.join(sorted(known))}."]
    cleaned: dict[str, Any] = {}
    for setting in schema:
        try:
            cleaned[setting.name] = setting.clean(values.get(setting.name))
        except ValidationError as exc:
            errors[setting.name] = exc.messages
    if errors:
        raise ValidationError(errors)
    return cleaned


class Capability(enum.StrEnum):
    """What a partner is and can do, declared as data on its class (Partner.capabilities) and read by the
    generic code: the planner, delivery, the sweeper and forwarding/bulk.py decide from these, never from
    a partner's key."""

    # The membership pattern: exactly one of these two.
    LIST = "list"  # the partner holds an audience (list, segment) we add identities to and remove them from
    ATTRIBUTE = "attribute"  # we write the audience onto each user's record (an attribute or tag)
    # The delivery rhythm: exactly one of these two.
    REALTIME = "realtime"  # changes are sent as they happen (the doorbell, the sweeper)
    BULK = "bulk"  # changes wait in the outbox and are uploaded on upload criteria (forwarding/bulk.py)
    # Optional abilities, each with its method (Partner.__init_subclass__ checks it is implemented).
    CREATES_AUDIENCE = "creates_audience"  # create_audience(): connecting creates the partner-side audience
    LISTS_MEMBERS = "lists_members"  # list_members(): what the partner holds can be read back
    REPORTS_COUNT = "reports_count"  # audience_count(): the partner's own count of the audience
    # forget_members(): a data subject's erasure deletes the member for good (not merely removed: unsubscribed)
    FORGETS_MEMBERS = "forgets_members"


PATTERNS = frozenset({Capability.LIST, Capability.ATTRIBUTE})
RHYTHMS = frozenset({Capability.REALTIME, Capability.BULK})
# Which method a capability obliges a partner class to implement.
CAPABILITY_METHODS = {
    Capability.LIST: "apply_batch",
    Capability.ATTRIBUTE: "apply_profile_updates",
    Capability.CREATES_AUDIENCE: "create_audience",
    Capability.LISTS_MEMBERS: "list_members",
    Capability.REPORTS_COUNT: "audience_count",
    Capability.FORGETS_MEMBERS: "forget_members",
}


@dataclass(frozen=True)
class UploadCriteria:
    """When a bulk connection's outbox is uploaded: after `wait` since its oldest waiting change, or as soon as
    `messages` changes wait, whichever comes first (mParticle's upload criteria, reference/PARTNERS.md)."""

    wait: timedelta
    messages: int

    def describe(self) -> dict[str, int]:
        return {"wait_seconds": int(self.wait.total_seconds()), "messages": self.messages}


@dataclass(frozen=True)
class IdentityCheck:
    """How a partner normalises and checks the values of one identity type before it takes them: trimmed,
    lower-cased when `lower`, then matched whole by `pattern`. The pattern is read alike by Python's `re` and
    PostgreSQL's regular expressions (no lookarounds, no `\\Z`), so the identity funnel (forwarding/funnel.py)
    counts in SQL what a partner decides in Python. `reason` says why a value fails, in the partner's terms."""

    pattern: str
    reason: str
    lower: bool = True

    def normalise(self, value: str) -> str | None:
        """The value as the partner takes it, or None when the partner would refuse it."""
        text = value.strip()
        if self.lower:
            text = text.lower()
        return text if re.fullmatch(self.pattern, text) else None


@dataclass(frozen=True)
class AudienceRef:
    """The connection's audience, as every partner call is told: our id, its name, and the name partners show
    (mParticle's external name; the name when it has none)."""

    id: int
    name: str
    external_name: str


class Action(enum.StrEnum):
    ADD = "add"
    REMOVE = "remove"


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"  # the partner now holds what we said
    REJECTED = "rejected"  # the partner refused this member for good; its reason is recorded
    RETRY = "retry"  # the partner asked us to try this member again later


@dataclass(frozen=True)
class MemberChange:
    """One membership message: an identity to add to, or remove from, the partner's audience."""

    identity_type: str
    value: str
    action: Action
    attributes: Mapping[str, Any] = field(default_factory=dict)
    # The profile (mParticle's MPID) the identity belongs to, when known: attribute-pattern partners update
    # a user, not an identity, and may identify the user by it.
    profile_id: int | None = None


@dataclass(frozen=True)
class ProfileUpdate:
    """Attribute pattern: everything one user's record at the partner must change, sent as one update.
    `changes` are that user's identity changes (one or more); the partner answers one MemberResult per change,
    because each identity's outcome is recorded."""

    profile_id: int | None
    changes: tuple[MemberChange, ...]

    @property
    def action(self) -> Action:
        """ADD while any of the user's identities is added: the user is in the audience."""
        return Action.ADD if any(c.action is Action.ADD for c in self.changes) else Action.REMOVE


def group_by_profile(changes: Sequence[MemberChange]) -> list[ProfileUpdate]:
    """One ProfileUpdate per user, in the order users first appear; a change without a profile stands alone."""
    groups: dict[object, list[MemberChange]] = {}
    for index, change in enumerate(changes):
        key = ("profile", change.profile_id) if change.profile_id is not None else ("alone", index)
        groups.setdefault(key, []).append(change)
    return [ProfileUpdate(group[0].profile_id, tuple(group)) for group in groups.values()]


# The reason of a DELIVERED result whose change went out without some of its fields (a merge value Mailchimp
# refused): the member is held, its profile data partly not; counted in each connection's figures.
SKIPPED_FIELDS_NOTE = "Fields skipped: "


@dataclass(frozen=True)
class MemberResult:
    change: MemberChange
    outcome: Outcome
    reason: str = ""


@dataclass(frozen=True)
class Destination:
    """A list or audience the partner account holds, as offered when connecting."""

    id: str
    name: str
    members: int | None = None


class Partner:
    """Base class of partner integrations. Subclasses declare the class attributes below as data, and implement
    the methods their capabilities name (checked when the class is defined)."""

    key: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    # One pattern (LIST or ATTRIBUTE), one rhythm (REALTIME or BULK), and any optional abilities.
    capabilities: ClassVar[frozenset[Capability]]
    accepted_identity_types: ClassVar[frozenset[str]]
    configuration_settings: ClassVar[tuple[Setting, ...]] = ()
    connection_settings: ClassVar[tuple[Setting, ...]] = ()
    # Bulk partners: when an upload is due, unless a connection says otherwise (forwarding/bulk.py).
    default_upload_criteria: ClassVar[UploadCriteria | None] = None
    # The most outbox rows (identities) one call takes.
    batch_limit: ClassVar[int] = 100
    default_base_url: ClassVar[str] = ""
    # The connection setting naming the partner-side list or audience, when list_destinations() can list
    # them (the admin then offers a choice instead of a free-text id).
    destination_setting: ClassVar[str | None] = None
    # The configuration setting asking for the clean-up of what a connection delivered when it ends (or when
    # its target is edited), named in what the admin says of such an edit.
    cleanup_setting: ClassVar[str | None] = None
    # The partner's request rate limit per account (outputs/partners/budget.py), None when it has none to
    # keep to; PARTNER_REQUEST_RATES overrides it (another plan).
    request_rate: ClassVar[RequestRate | None] = None
    # The configuration setting (checked by check_request_rate) by which one output states its own account's
    # rate (another plan), over PARTNER_REQUEST_RATES and request_rate; None when outputs cannot.
    request_rate_setting: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_declaration(cls)

    def __init__(self, configuration: Mapping[str, Any]):
        self.configuration = dict(configuration)

    # --- what it is (read by the generic code) -------------------------------------------------

    @classmethod
    def has(cls, capability: Capability) -> bool:
        return capability in cls.capabilities

    @classmethod
    def pattern(cls) -> Capability:
        """Capability.LIST or Capability.ATTRIBUTE."""
        return next(iter(cls.capabilities & PATTERNS))

    @classmethod
    def rhythm(cls) -> Capability:
        """Capability.REALTIME or Capability.BULK."""
        return next(iter(cls.capabilities & RHYTHMS))

    # --- configuration -------------------------------------------------------------------

    @classmethod
    def clean_configuration(cls, values: Mapping[str, Any]) -> dict:
        """Validate a complete configuration. Subclasses add partner-specific checks."""
        return clean_settings(cls.configuration_settings, values)

    @classmethod
    def clean_connection_settings(cls, values: Mapping[str, Any]) -> dict:
        return clean_settings(cls.connection_settings, values)

    @classmethod
    def target_setting_names(cls) -> frozenset[str]:
        """The connection settings that name the partner-side audience (Setting.target)."""
        return frozenset(s.name for s in cls.connection_settings if s.target)

    @classmethod
    def secret_setting_names(cls) -> frozenset[str]:
        return frozenset(s.name for s in cls.configuration_settings if s.is_secret)

    def identity_checks(self) -> Mapping[str, IdentityCheck]:
        """Per accepted identity type, the check a value must pass after normalisation before this partner
        takes it (may depend on the configuration, e.g. which type Braze reads as the email). Types not named
        are taken as stored (audiences.identities normalised them on the way in)."""
        return {}

    def account_key(self) -> str:
        """The partner account this configuration uses: its partner and credentials (secret settings), hashed."""
        return account_key(self.key, self.configuration, self.secret_setting_names())

    def request_rate_in_force(self) -> RequestRate | None:
        """The output's own rate (request_rate_setting, when set), else PARTNER_REQUEST_RATES' for the partner,
        else the partner's declared request_rate; None: no budget."""
        own = self.configuration.get(self.request_rate_setting) if self.request_rate_setting else None
        if own:
            return RequestRate.parse(own)  # checked when the output was saved (check_request_rate)
        return configured_rates().get(self.key, self.request_rate)

    def request_budget(self) -> RequestBudget | None:
        """The account's shared request budget, which its client takes a token from before each request; None
        when no request rate is in force. (The outputs of one account share its log: they should agree.)"""
        rate = self.request_rate_in_force()
        return None if rate is None else RequestBudget(self.account_key(), rate)

    def base_url(self) -> str:
        """The API root, overridable per partner with PARTNER_API_BASE_URLS."""
        return settings.PARTNER_API_BASE_URLS.get(self.key) or self.default_base_url

    # --- the calls: every one is told the connection's settings and its audience --------------

    def test_connection(self, connection_settings: Mapping[str, Any], audience: AudienceRef | None) -> str:
        """Check credentials and the partner-side audience; return a human summary or raise PartnerError.
        `audience` is None when no audience is chosen yet."""
        raise NotImplementedError

    def apply_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """LIST pattern: send up to batch_limit identity changes; return one result per change, in any order.

        Raises TransientError / AuthError / PermanentError when the whole request fails.
        """
        raise NotImplementedError

    def apply_profile_updates(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, updates: Sequence[ProfileUpdate]
    ) -> list[MemberResult]:
        """ATTRIBUTE pattern: one update per user (forwarding groups the claimed changes by profile);
        return one result per change of every update. Raises as apply_batch does."""
        raise NotImplementedError

    def list_destinations(self) -> list[Destination]:
        """The lists or audiences the account holds (partners declaring destination_setting); may raise PartnerError."""
        return []

    def describe_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> dict:
        """What one call would send for these changes, without sending it (the connect page's preview).
        No secret goes in it. The default names each change; partners show their real request."""
        return {
            "changes": [{"identity_type": c.identity_type, "value": c.value, "action": str(c.action)} for c in changes]
        }

    def end_connection(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, held: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """The connection is being deleted: clean up what the partner holds (called in batches).

        The default leaves the partner's data alone.
        """
        return [MemberResult(change, Outcome.DELIVERED) for change in held]

    def wants_cleanup_on_end(self) -> bool:
        return False

    def release_audience(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> bool:
        """The connection is being deleted, before any member is cleaned up: let go of the partner-side audience
        (Meta deletes the audience the connection created). True when its members went with it, so none needs
        removing one by one. The default keeps the audience: False. May raise PartnerError (retried later)."""
        return False

    def last_http_status(self) -> int | None:
        """The HTTP status of the partner's last answer to this instance, if it made a call (recorded on
        each delivery attempt)."""
        return None

    # --- optional abilities (declare the capability, implement the method) -------------------

    def create_audience(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> dict[str, Any]:
        """CREATES_AUDIENCE: create the partner-side audience on connect; return the connection settings to
        store (e.g. the new audience's id)."""
        raise NotImplementedError

    def list_members(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> Iterator[MemberChange]:
        """LISTS_MEMBERS: what the partner holds, page by page: an ADD per identity in the audience, a REMOVE per
        identity it keeps as out of it (Mailchimp's unsubscribed)."""
        raise NotImplementedError

    def listed_members_total(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> int | None:
        """LISTS_MEMBERS: how many entries list_members() is about to read (a reconcile's progress: x of N),
        None when the partner cannot say beforehand. May raise PartnerError."""
        return None

    # REPORTS_COUNT: what the partner's count counts, when it is not simply every member we added (shown beside
    # the count in the identity funnel).
    audience_count_note: ClassVar[str] = ""

    def audience_count(self, connection_settings: Mapping[str, Any], audience: AudienceRef) -> int | None:
        """REPORTS_COUNT: the partner's own count of the audience's members (None when it cannot say now)."""
        raise NotImplementedError

    def forget_members(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, identities: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """FORGETS_MEMBERS: erase these identities from the partner-side audience for good (called once their
        remove was delivered); one result per identity: DELIVERED when the partner holds no record of it any more
        (an identity it never held included), REJECTED with the partner's reason when it refuses. Raises
        PartnerError when the whole call fails (the identities stay owed and are tried again)."""
        raise NotImplementedError


def check_declaration(cls: type[Partner]) -> None:
    """A partner class declares one pattern, one rhythm, upload criteria when bulk, and implements the method of
    each capability it declares; a mistake fails at import, not at the first delivery."""
    capabilities = frozenset(Capability(c) for c in getattr(cls, "capabilities", ()))
    problems = []
    if len(capabilities & PATTERNS) != 1:
        problems.append("exactly one of Capability.LIST, Capability.ATTRIBUTE")
    if len(capabilities & RHYTHMS) != 1:
        problems.append("exactly one of Capability.REALTIME, Capability.BULK")
    if Capability.BULK in capabilities and cls.default_upload_criteria is None:
        problems.append("default_upload_criteria (it is bulk)")
    rate_setting = next((s for s in cls.configuration_settings if s.name == cls.request_rate_setting), None)
    if cls.request_rate_setting is not None and (rate_setting is None or rate_setting.check is not check_request_rate):
        problems.append(f"a configuration setting {cls.request_rate_setting!r} checked by check_request_rate")
    for capability, method in CAPABILITY_METHODS.items():
        if capability in capabilities and getattr(cls, method) is getattr(Partner, method):
            problems.append(f"an implementation of {method}() (it declares {capability})")
    if problems:
        raise TypeError(f"Partner {cls.__name__} must declare {'; '.join(problems)}.")
    cls.capabilities = capabilities

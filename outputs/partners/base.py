"""What a partner is, declared as data, and the few methods each one implements."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError


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
        return value


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
    """Base class of partner integrations. Subclasses declare the class attributes below."""

    key: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    # "list": the partner holds an audience we add to and remove from; "attribute": we tag users.
    pattern: ClassVar[str] = "list"
    accepted_identity_types: ClassVar[frozenset[str]]
    configuration_settings: ClassVar[tuple[Setting, ...]] = ()
    connection_settings: ClassVar[tuple[Setting, ...]] = ()
    # "realtime": delivered as changes happen; "bulk": uploaded by upload criteria.
    delivery_mode: ClassVar[str] = "realtime"
    batch_limit: ClassVar[int] = 100
    default_base_url: ClassVar[str] = ""
    # The connection setting naming the partner-side list or audience, when list_destinations() can list
    # them (the admin then offers a choice instead of a free-text id).
    destination_setting: ClassVar[str | None] = None

    def __init__(self, configuration: Mapping[str, Any]):
        self.configuration = dict(configuration)

    # --- configuration -------------------------------------------------------------------

    @classmethod
    def clean_configuration(cls, values: Mapping[str, Any]) -> dict:
        """Validate a complete configuration. Subclasses add partner-specific checks."""
        return clean_settings(cls.configuration_settings, values)

    @classmethod
    def clean_connection_settings(cls, values: Mapping[str, Any]) -> dict:
        return clean_settings(cls.connection_settings, values)

    @classmethod
    def secret_setting_names(cls) -> frozenset[str]:
        return frozenset(s.name for s in cls.configuration_settings if s.is_secret)

    def base_url(self) -> str:
        """The API root, overridable per partner with PARTNER_API_BASE_URLS."""
        return settings.PARTNER_API_BASE_URLS.get(self.key) or self.default_base_url

    # --- the calls ------------------------------------------------------------------------

    def test_connection(self, connection_settings: Mapping[str, Any]) -> str:
        """Check credentials and the partner-side audience; return a human summary or raise PartnerError."""
        raise NotImplementedError

    def apply_batch(
        self, connection_settings: Mapping[str, Any], changes: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """Send up to batch_limit changes; return one result per change, in any order.

        Raises TransientError / AuthError / PermanentError when the whole request fails.
        """
        raise NotImplementedError

    def list_destinations(self) -> list[Destination]:
        """The lists or audiences the account holds (partners declaring destination_setting); may raise PartnerError."""
        return []

    def describe_batch(self, connection_settings: Mapping[str, Any], changes: Sequence[MemberChange]) -> dict:
        """What apply_batch would send for these changes, without sending it (the connect page's preview).
        No secret goes in it. The default names each change; partners show their real request."""
        return {
            "changes": [{"identity_type": c.identity_type, "value": c.value, "action": str(c.action)} for c in changes]
        }

    def end_connection(
        self, connection_settings: Mapping[str, Any], held: Sequence[MemberChange]
    ) -> list[MemberResult]:
        """The connection is being deleted: clean up what the partner holds (called in batches).

        The default leaves the partner's data alone.
        """
        return [MemberResult(change, Outcome.DELIVERED) for change in held]

    def wants_cleanup_on_end(self) -> bool:
        return False

    def last_http_status(self) -> int | None:
        """The HTTP status of the partner's last answer to this instance, if it made a call (recorded on
        each delivery attempt)."""
        return None

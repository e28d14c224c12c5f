"""Validate one mParticle Events API batch and normalise it into a ParsedBatch.

The format is mParticle's inbound batch schema (docs: ../shared/reference/mparticle/events-api/).
Every error names the JSON path of the problem (`events[2].event_type`, `user_identities.email`), and a
batch with any error is refused whole. What is checked and what is let through:

* refused: a batch that is not an object, a batch without any identity (no mpid, no user or device
  identity: nobody could find that profile again), a missing or unknown `environment`, an `event_type` outside the
  schema's EventType enum, an event without its name (`data.event_name` of a custom event,
  `data.screen_name` of a screen view), identities of the wrong shape (an email that is not an email, an
  advertising id that is not a UUID, an unknown key in `user_identities`), user attributes over
  mParticle's limits (names 256 characters, values 4,096, lists 1,000 entries), values of the wrong JSON
  type where we use them;
* ignored: keys we do not use (`application_info`, `consent_state`, `schema_version` that the official SDK
  sends but the schema omits, ...), so clients sending more of the format than we read keep working;
  `user_identities.alias` and `facebook_custom_audience_id`, which have no identity type here; a null or
  empty identity value; a `push_token` whose platform is not known (it could be an APNs or a GCM token).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError

from audiences.identities import normalise_identity
from config.strict_json import find_unstorable

MAX_ATTRIBUTE_NAME = 256
MAX_ATTRIBUTE_VALUE = 4096
MAX_ATTRIBUTE_LIST = 1000
MAX_EVENT_NAME = 256  # Event.name
MAX_ID_LENGTH = 128  # source_request_id, source_message_id

ENVIRONMENTS = frozenset({"development", "production", "unknown"})

# The schema's EventType enum.
EVENT_TYPES = frozenset(
    {
        "session_start",
        "session_end",
        "screen_view",
        "custom_event",
        "crash_report",
        "opt_out",
        "first_run",
        "pre_attribution",
        "push_registration",
        "application_state_transition",
        "push_message",
        "network_performance",
        "breadcrumb",
        "profile",
        "push_reaction",
        "commerce_event",
        "user_attribute_change",
        "user_identity_change",
        "uninstall",
    }
)
# custom_event_type of custom and commerce events (the commerce list includes the custom one).
CUSTOM_EVENT_TYPES = frozenset(
    {
        "navigation",
        "location",
        "search",
        "transaction",
        "user_content",
        "user_preference",
        "social",
        "other",
        "media",
        "add_to_cart",
        "remove_from_cart",
        "checkout",
        "checkout_option",
        "click",
        "view_detail",
        "purchase",
        "refund",
        "promotion_view",
        "promotion_click",
        "add_to_wishlist",
        "remove_from_wishlist",
        "impression",
        "attribution",
        "consent_granted",
        "consent_denied",
    }
)

# user_identities key -> our identity type (audiences/identities.py). The official Python SDK sends
# `customerid`, the schema and the docs `customer_id`: both are accepted.
USER_IDENTITY_KEYS: dict[str, str | None] = {
    "customer_id": "customer",
    "customerid": "customer",
    "email": "email",
    "other": "other",
    **{f"other_id_{n}": f"other{n}" for n in range(2, 11)},
    "mobile_number": "mobile_number",
    "phone_number_2": "phone_number_2",
    "phone_number_3": "phone_number_3",
    "facebook": "facebook",
    "twitter": "twitter",
    "google": "google",
    "microsoft": "microsoft",
    "yahoo": "yahoo",
    # In the schema, with no identity type here: accepted and ignored.
    "alias": None,
    "facebook_custom_audience_id": None,
}
# device_info key -> our identity type. push_token depends on the platform (PUSH_TOKEN_TYPES).
DEVICE_IDENTITY_KEYS: dict[str, str] = {
    "ios_advertising_id": "ios_advertising_id",
    "ios_idfv": "ios_vendor_id",
    "android_advertising_id": "google_advertising_id",
    "android_uuid": "android_id",
    "roku_advertising_id": "roku_advertising_id",
    "roku_publisher_id": "roku_publisher_id",
    "fire_advertising_id": "fire_advertising_id",
    "microsoft_advertising_id": "microsoft_advertising_id",
    "microsoft_publisher_id": "microsoft_publisher_id",
}
# device_info fields the schema types as UUIDs (identities.py checks some of them already).
DEVICE_UUID_KEYS = frozenset(
    {"ios_advertising_id", "ios_idfv", "android_advertising_id", "roku_advertising_id", "roku_publisher_id"}
    | {"fire_advertising_id"}
)
PUSH_TOKEN_TYPES = {
    "ios": "apple_push_notification_token",
    "tvos": "apple_push_notification_token",
    "android": "google_cloud_messaging_token",
}

# Bounds of a plausible timestamp (ms): after 1970, before the year 3000. Outside them is a unit mistake.
MAX_TIMESTAMP_MS = 32_503_680_000_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# An mpid sent as a string: ASCII digits (str.isdigit() also takes "²"), at most a 64-bit integer's 19.
MPID_TEXT = re.compile(r"-?[0-9]{1,19}")


@dataclass
class ParsedEvent:
    event_type: str
    name: str
    custom_event_type: str
    attributes: dict[str, Any]  # names lower-cased
    timestamp: datetime
    source_message_id: str


@dataclass
class ParsedBatch:
    environment: str
    mpid: int | None
    source_request_id: str  # "" when absent
    # Normalised (our type, value) pairs, unique, in the order sent.
    identities: list[tuple[str, str]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)  # names lower-cased; set (or replaced)
    deleted_attributes: list[str] = field(default_factory=list)  # names lower-cased
    events: list[ParsedEvent] = field(default_factory=list)


class BatchError(Exception):
    """The batch is refused; `errors` is [{"path": ..., "message": ...}, ...]."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))


def join_path(prefix: str, name: str) -> str:
    if not name:
        return prefix
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SCALARS = (str, int, float, bool)  # a tuple: isinstance is faster with it than with a union


def _is_scalar(value: Any) -> bool:
    # The schema's "String": string, number, boolean or null.
    return value is None or isinstance(value, SCALARS)


class _Parser:
    def __init__(self, prefix: str, now: datetime):
        self.prefix = prefix
        self.now = now
        self.errors: list[dict[str, str]] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append({"path": join_path(self.prefix, path) or "$", "message": message})

    def object_or_none(self, value: Any, path: str) -> Mapping[str, Any] | None:
        if value is None or isinstance(value, Mapping):
            return value
        self.error(path, "Expected an object.")
        return None

    def timestamp(self, value: Any, path: str) -> datetime | None:
        if value is None:
            return None
        if not _is_int(value) or not 0 <= value <= MAX_TIMESTAMP_MS:
            self.error(path, "Expected a Unix time in milliseconds (an integer).")
            return None
        return datetime.fromtimestamp(value / 1000, tz=UTC)

    def short_string(self, value: Any, path: str) -> str:
        if value is None:
            return ""
        if not _is_scalar(value):
            self.error(path, "Expected a string.")
            return ""
        text = str(value)
        if len(text) > MAX_ID_LENGTH:
            self.error(path, f"At most {MAX_ID_LENGTH} characters.")
            return ""
        return text

    def batch(self, data: Any) -> ParsedBatch | None:
        if not isinstance(data, Mapping):
            self.error("", "Expected a batch (a JSON object).")
            return None
        environment = data.get("environment")
        if environment is None:
            self.error("environment", "Required: 'development', 'production' or 'unknown'.")
        elif not isinstance(environment, str) or environment not in ENVIRONMENTS:  # a list or object is no key
            self.error("environment", f"{environment!r:.60} is not 'development', 'production' or 'unknown'.")
        mpid = data.get("mpid")
        if isinstance(mpid, str) and MPID_TEXT.fullmatch(mpid):
            mpid = int(mpid)  # int64 ids often travel as strings (JavaScript loses their precision)
        if mpid is not None and (not _is_int(mpid) or not INT64_MIN <= mpid <= INT64_MAX):
            self.error("mpid", "Expected a signed 64-bit integer.")
            mpid = None
        batch = ParsedBatch(
            environment=environment if isinstance(environment, str) else "",
            mpid=mpid or None,  # 0 is "no mpid"
            source_request_id=self.short_string(data.get("source_request_id"), "source_request_id"),
        )
        batch_time = self.timestamp(data.get("timestamp_unixtime_ms"), "timestamp_unixtime_ms") or self.now
        self.user_identities(data.get("user_identities"), batch)
        self.device_identities(data.get("device_info"), batch)
        batch.attributes = self.user_attributes(data.get("user_attributes"))
        batch.deleted_attributes = self.deleted_attributes(data.get("deleted_user_attributes"))
        events = data.get("events")
        if events is not None and not isinstance(events, list):
            self.error("events", "Expected an array of events.")
        for index, event in enumerate(events if isinstance(events, list) else []):
            parsed = self.event(event, f"events[{index}]", batch_time)
            if parsed is not None:
                batch.events.append(parsed)
        if batch.mpid is None and not batch.identities and not self.errors:
            # Data nobody can be found by again would only pile up as anonymous profiles.
            self.error("user_identities", "A batch needs an mpid, a user identity or a device identity.")
        return batch

    def add_identity(self, batch: ParsedBatch, identity_type: str, value: Any, path: str) -> None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return  # absent
        try:
            pair = (identity_type, normalise_identity(identity_type, value))
        except ValidationError as exc:
            self.error(path, " ".join(exc.messages))
            return
        if pair not in batch.identities:
            batch.identities.append(pair)

    def user_identities(self, value: Any, batch: ParsedBatch) -> None:
        identities = self.object_or_none(value, "user_identities")
        for key, raw in (identities or {}).items():
            path = f"user_identities.{key}"
            if key not in USER_IDENTITY_KEYS:
                self.error(path, "Unknown identity type.")
            elif USER_IDENTITY_KEYS[key] is not None:
                self.add_identity(batch, USER_IDENTITY_KEYS[key], raw, path)

    def device_identities(self, value: Any, batch: ParsedBatch) -> None:
        device = self.object_or_none(value, "device_info")
        if not device:
            return
        for key, identity_type in DEVICE_IDENTITY_KEYS.items():
            raw = device.get(key)
            path = f"device_info.{key}"
            if key in DEVICE_UUID_KEYS and isinstance(raw, str) and raw.strip():
                try:
                    uuid.UUID(raw.strip())
                except ValueError:
                    self.error(path, f"'{raw}' is not a UUID.")
                    continue
            self.add_identity(batch, identity_type, raw, path)
        token = device.get("push_token")
        platform = device.get("platform")
        identity_type = PUSH_TOKEN_TYPES.get(platform.lower()) if isinstance(platform, str) else None
        if identity_type:
            self.add_identity(batch, identity_type, token, "device_info.push_token")

    def attribute_value(self, value: Any, path: str, *, lists: bool) -> bool:
        if isinstance(value, list) and lists:
            if len(value) > MAX_ATTRIBUTE_LIST:
                self.error(path, f"Lists hold at most {MAX_ATTRIBUTE_LIST} entries.")
                return False
            return all(self.attribute_value(item, f"{path}[{i}]", lists=False) for i, item in enumerate(value))
        if not _is_scalar(value):
            kind = "a string, number, boolean or null" + (" or a list of those" if lists else "")
            self.error(path, f"Expected {kind}.")
            return False
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_VALUE:
            self.error(path, f"Values are at most {MAX_ATTRIBUTE_VALUE} characters.")
            return False
        return True

    def attributes(self, value: Any, path: str, *, lists: bool) -> dict[str, Any]:
        attributes = self.object_or_none(value, path)
        cleaned: dict[str, Any] = {}
        for name, item in (attributes or {}).items():
            item_path = f"{path}.{name if len(name) <= 60 else name[:60] + '…'}"
            if not name.strip():
                self.error(item_path, "Attribute names may not be blank.")
            elif len(name) > MAX_ATTRIBUTE_NAME:
                self.error(item_path, f"Attribute names are at most {MAX_ATTRIBUTE_NAME} characters.")
            elif self.attribute_value(item, item_path, lists=lists):
                # Names are case-insensitive: stored lower-cased (docs/criteria.md).
                cleaned[name.lower()] = item
        return cleaned

    def user_attributes(self, value: Any) -> dict[str, Any]:
        return self.attributes(value, "user_attributes", lists=True)

    def deleted_attributes(self, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error("deleted_user_attributes", "Expected an array of attribute names.")
            return []
        names: list[str] = []
        for index, name in enumerate(value):
            if not isinstance(name, str) or not name.strip() or len(name) > MAX_ATTRIBUTE_NAME:
                self.error(f"deleted_user_attributes[{index}]", "Expected an attribute name (1 to 256 characters).")
            elif name.lower() not in names:
                names.append(name.lower())
        return names

    def event(self, value: Any, path: str, batch_time: datetime) -> ParsedEvent | None:
        if not isinstance(value, Mapping):
            self.error(path, "Expected an event (an object with event_type and data).")
            return None
        event_type = value.get("event_type")
        if not isinstance(event_type, str) or event_type not in EVENT_TYPES:  # a list or object is no key
            self.error(f"{path}.event_type", f"Unknown event type {event_type!r:.60}.")
            return None
        data = self.object_or_none(value.get("data"), f"{path}.data") or {}
        name = self.event_name(event_type, data, f"{path}.data")
        custom_event_type = data.get("custom_event_type")
        if custom_event_type is None:
            custom_event_type = ""
        elif not isinstance(custom_event_type, str) or custom_event_type not in CUSTOM_EVENT_TYPES:
            self.error(f"{path}.data.custom_event_type", f"Unknown custom event type {custom_event_type!r:.60}.")
        attributes = self.attributes(data.get("custom_attributes"), f"{path}.data.custom_attributes", lists=False)
        timestamp = self.timestamp(data.get("timestamp_unixtime_ms"), f"{path}.data.timestamp_unixtime_ms")
        if name is None:
            return None
        return ParsedEvent(
            event_type=event_type,
            name=name,
            custom_event_type=custom_event_type if isinstance(custom_event_type, str) else "",
            attributes=attributes,
            timestamp=timestamp or batch_time,
            source_message_id=self.short_string(data.get("source_message_id"), f"{path}.data.source_message_id"),
        )

    def event_name(self, event_type: str, data: Mapping[str, Any], path: str) -> str | None:
        """custom_event: event_name; screen_view: screen_name; commerce_event: event_name, else the product
        action (e.g. "purchase"); every other type: the event type itself."""
        if event_type == "custom_event":
            key, required = "event_name", True
        elif event_type == "screen_view":
            key, required = "screen_name", True
        elif event_type == "commerce_event":
            key, required = "event_name", False
        else:
            return event_type
        name = data.get(key)
        if name is None and event_type == "commerce_event":
            action = data.get("product_action")
            action = action.get("action") if isinstance(action, Mapping) else None
            return action if isinstance(action, str) and action.strip() else event_type
        if not isinstance(name, str | int | float) or isinstance(name, bool) or not str(name).strip():
            if required or name is not None:
                self.error(f"{path}.{key}", "Required: a non-blank string.")
            return None
        name = str(name).strip()
        if len(name) > MAX_EVENT_NAME:
            self.error(f"{path}.{key}", f"Event names are at most {MAX_EVENT_NAME} characters.")
            return None
        return name


def parse_batch(data: Any, *, path: str = "", now: datetime | None = None) -> ParsedBatch:
    """Validate and normalise one batch; raise BatchError listing every problem with its path.

    `path` prefixes every error path (`[3]` for the fourth batch of a bulk request)."""
    parser = _Parser(path, now or datetime.now(tz=UTC))
    # What the database cannot store or the parser should not walk (NaN, 1e400, NUL, lone surrogates,
    # excessive depth) refuses the batch before anything reads it (config/strict_json.py).
    unstorable = find_unstorable(data)
    if unstorable is not None:
        where, message = unstorable
        parser.error("" if where == "$" else where, message)
        raise BatchError(parser.errors)
    batch = parser.batch(data)
    if parser.errors or batch is None:
        raise BatchError(parser.errors)
    return batch

"""Identity types (mParticle's names) and how each one's values are validated and normalised."""

from __future__ import annotations

import re
import uuid

from django.core.exceptions import ValidationError

USER_IDENTITY_TYPES = (
    "customer",
    "email",
    "other",
    *(f"other{n}" for n in range(2, 11)),
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
    "facebook",
    "twitter",
    "google",
    "microsoft",
    "yahoo",
)
DEVICE_IDENTITY_TYPES = (
    "ios_advertising_id",
    "ios_vendor_id",
    "google_advertising_id",
    "android_id",
    "roku_advertising_id",
    "roku_publisher_id",
    "fire_advertising_id",
    "microsoft_advertising_id",
    "microsoft_publisher_id",
    "apple_push_notification_token",
    "google_cloud_messaging_token",
)
IDENTITY_TYPES = USER_IDENTITY_TYPES + DEVICE_IDENTITY_TYPES
IDENTITY_TYPE_CHOICES = [(t, t) for t in IDENTITY_TYPES]

# Advertising and vendor ids are UUIDs; partners match them in lower case.
UUID_IDENTITY_TYPES = frozenset(
    {
        "ios_advertising_id",
        "ios_vendor_id",
        "google_advertising_id",
        "roku_advertising_id",
        "fire_advertising_id",
        "microsoft_advertising_id",
    }
)
PHONE_IDENTITY_TYPES = frozenset({"mobile_number", "phone_number_2", "phone_number_3"})

MAX_IDENTITY_LENGTH = 255
# Deliberately plain: one @, no spaces, a dot in the domain. Partners run their own checks.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
PHONE_RE = re.compile(r"^\+?[0-9]{4,20}$")


def normalise_identity(identity_type: str, value: object) -> str:
    """Return the canonical form of an identity value, or raise ValidationError."""
    if identity_type not in IDENTITY_TYPES:
        raise ValidationError(f"Unknown identity type '{identity_type}'.", code="unknown_type")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValidationError("Identity values must be strings.", code="invalid")
    text = str(value).strip()
    if not text:
        raise ValidationError("Identity value may not be blank.", code="blank")
    if len(text) > MAX_IDENTITY_LENGTH:
        raise ValidationError(f"Identity value is longer than {MAX_IDENTITY_LENGTH} characters.", code="max_length")
    if identity_type == "email":
        text = text.lower()
        if not EMAIL_RE.match(text):
            raise ValidationError(f"'{text}' is not a valid email address.", code="invalid_email")
        return text
    if identity_type in UUID_IDENTITY_TYPES:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise ValidationError(f"'{text}' is not a valid {identity_type} (a UUID).", code="invalid_uuid") from None
    if identity_type in PHONE_IDENTITY_TYPES:
        digits = re.sub(r"[\s\-().]", "", text)
        if not PHONE_RE.match(digits):
            raise ValidationError(f"'{text}' is not a valid phone number.", code="invalid_phone")
        return digits
    return text

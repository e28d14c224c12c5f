import pytest
from django.core.exceptions import ValidationError

from audiences.identities import normalise_identity


@pytest.mark.parametrize(
    ("identity_type", "raw", "expected"),
    [
        ("email", "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("google_advertising_id", "38400000-8CF0-11BD-B23E-10B96E40000D", "38400000-8cf0-11bd-b23e-10b96e40000d"),
        ("ios_advertising_id", "{6D92078A-8246-4BA4-AE5B-76104861E7DC}", "6d92078a-8246-4ba4-ae5b-76104861e7dc"),
        ("mobile_number", "+33 (1) 23-45-67-89", "+33123456789"),
        ("customer", " 12345 ", "12345"),
        ("customer", 12345, "12345"),
    ],
)
def test_values_are_normalised_per_type(identity_type, raw, expected):
    assert normalise_identity(identity_type, raw) == expected


@pytest.mark.parametrize(
    ("identity_type", "raw", "code"),
    [
        ("fax", "x", "unknown_type"),
        ("email", "not-an-email", "invalid_email"),
        ("email", "a@b", "invalid_email"),
        ("google_advertising_id", "not-a-uuid", "invalid_uuid"),
        ("mobile_number", "call me", "invalid_phone"),
        ("customer", "   ", "blank"),
        ("customer", "x" * 256, "max_length"),
        ("customer", True, "invalid"),
    ],
)
def test_bad_values_are_refused(identity_type, raw, code):
    with pytest.raises(ValidationError) as excinfo:
        normalise_identity(identity_type, raw)
    assert excinfo.value.code == code

"""Property-based fuzzing of the Events API (issue 7, item 3): batches built from the real format with any
field replaced by anything (lists and objects for strings, NaN, Infinity, 1e400, NUL, lone surrogates,
odd mpids, deep nesting). Whatever comes in: no answer is a 5xx, and rows change only when something was
accepted (a 2xx, or a bulk answer listing accepted batches). FUZZ_EXAMPLES bounds the count (tests/fuzzing.py)."""

from __future__ import annotations

import pytest
from django.db import transaction
from hypothesis import given
from hypothesis import strategies as st

from audiences.models import BatchReceipt, Event, Identity, IdentityConflict, Profile
from tests.fuzzing import FUZZ_SETTINGS, dumps, nasty_strings, values

pytestmark = pytest.mark.django_db


def maybe(good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes anything."""
    return st.one_of(good, good, values)


identities = st.dictionaries(
    st.one_of(st.sampled_from(["customer_id", "email", "other", "mobile_number", "alias"]), nasty_strings),
    maybe(st.one_of(st.sampled_from(["c-1", "c-2", "a@b.co", "+33612345678", "x" * 255]), nasty_strings)),
    max_size=3,
)
event = st.fixed_dictionaries(
    {"event_type": maybe(st.sampled_from(["custom_event", "screen_view", "commerce_event", "session_start"]))},
    optional={
        "data": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "event_name": maybe(st.sampled_from(["Play", "Destination Intro"])),
                    "screen_name": maybe(st.just("Home")),
                    "custom_event_type": maybe(st.sampled_from(["navigation", "other"])),
                    "custom_attributes": maybe(st.dictionaries(nasty_strings, values, max_size=3)),
                    "timestamp_unixtime_ms": maybe(st.integers(0, 32_503_680_000_000)),
                    "source_message_id": maybe(st.just("m-1")),
                },
            )
        )
    },
)
batch = st.fixed_dictionaries(
    {"environment": maybe(st.sampled_from(["production", "development", "unknown"]))},
    optional={
        "mpid": maybe(st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(["42", "-7", "²", "--5"]))),
        "user_identities": maybe(identities),
        "device_info": maybe(st.dictionaries(st.sampled_from(["android_uuid", "ios_idfv", "platform"]), values)),
        "user_attributes": maybe(st.dictionaries(nasty_strings, values, max_size=4)),
        "deleted_user_attributes": maybe(st.lists(nasty_strings, max_size=3)),
        "events": maybe(st.lists(event, max_size=3)),
        "source_request_id": maybe(st.sampled_from(["r-1", "r-2"])),
        "timestamp_unixtime_ms": maybe(st.integers(0, 32_503_680_000_000)),
    },
)


def row_counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (Profile, Identity, Event, BatchReceipt, IdentityConflict))


@pytest.fixture
def unlimited(settings):
    # Every request of the run counted by the Events API limits would end in 429s, not in the parser.
    settings.EVENTS_API_RATE_LIMIT = 0
    settings.EVENTS_API_AUTH_FAILURES_PER_KEY = 0
    settings.EVENTS_API_AUTH_FAILURES_PER_CLIENT = 0


def test_events_never_answer_5xx_and_write_only_when_accepted(post, unlimited):
    @FUZZ_SETTINGS
    @given(body=st.one_of(batch, values))
    def check(body):
        with transaction.atomic():
            before = row_counts()
            response = post("/v2/events", dumps(body))
            assert response.status_code < 500, (response.status_code, response.content[:500])
            if response.status_code >= 300:
                assert row_counts() == before, response.content[:500]
            transaction.set_rollback(True)

    check()


def test_bulk_events_never_answer_5xx_and_write_only_what_they_accept(post, unlimited):
    @FUZZ_SETTINGS
    @given(body=st.one_of(st.lists(batch, max_size=4), values))
    def check(body):
        with transaction.atomic():
            before = row_counts()
            response = post("/v2/bulkevents", dumps(body))
            assert response.status_code < 500, (response.status_code, response.content[:500])
            accepted = response.json().get("accepted") if response.status_code == 400 else None
            if response.status_code >= 300 and not accepted:
                assert row_counts() == before, response.content[:500]
            transaction.set_rollback(True)

    check()

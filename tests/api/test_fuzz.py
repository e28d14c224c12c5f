"""Property-based fuzzing of the REST API's inputs (issue 7, item 3): profile upserts, audiences (criteria
included), the estimate, outputs and connection settings, with bodies built from the real shapes and any
field replaced by anything (NaN, Infinity, 1e400, NUL, lone surrogates, wrong types, deep nesting).
Whatever comes in: no answer is a 5xx, and rows change only on a 2xx. FUZZ_EXAMPLES bounds the count
(tests/fuzzing.py)."""

from __future__ import annotations

import pytest
from django.db import transaction
from hypothesis import given
from hypothesis import strategies as st

from audiences.models import Audience, AudienceMembership, Identity, Profile
from connections.models import Connection
from outputs.models import Output
from tests.fuzzing import FUZZ_SETTINGS, dumps, nasty_strings, values

pytestmark = pytest.mark.django_db


def maybe(good: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good, good, values)


identity = st.fixed_dictionaries(
    {
        "type": maybe(st.sampled_from(["email", "customer", "mobile_number", "google_advertising_id"])),
        "value": maybe(st.one_of(st.sampled_from(["a@b.co", "c-1", "+33612345678"]), nasty_strings)),
    }
)
profile = st.fixed_dictionaries(
    {"identities": maybe(st.lists(identity, max_size=3))},
    optional={"attributes": maybe(st.dictionaries(nasty_strings, values, max_size=4))},
)
condition = st.fixed_dictionaries(
    {
        "attribute": maybe(st.sampled_from(["plan", "valid_until", "path"])),
        "operator": maybe(
            st.sampled_from(["equals", "matches", "date_after", "date_between", "within_last", "between"])
        ),
    },
    optional={
        "value": maybe(
            st.one_of(
                st.sampled_from(["premium", "*/*/*.pdf", "9999-12-31", "2026-01-01", "*" * 300]),
                st.just(["2026-01-01", "9999-12-31"]),
                st.just({"amount": 100_001, "unit": "days"}),
            )
        )
    },
)
criteria = st.one_of(condition, st.fixed_dictionaries({"and": st.lists(condition, max_size=3)}), values)
audience = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["A", "B"])), "criteria": criteria},
    optional={"status": maybe(st.sampled_from(["draft", "active"])), "external_name": maybe(st.just("x"))},
)
output = st.fixed_dictionaries(
    {"name": maybe(st.just("O")), "partner_key": maybe(st.just("mailchimp"))},
    optional={"settings": maybe(st.fixed_dictionaries({"api_key": maybe(st.just("k-us6"))}))},
)
connection_change = st.fixed_dictionaries(
    {}, optional={"settings": maybe(st.dictionaries(st.sampled_from(["list_id", "x"]), values, max_size=2))}
)

# (method, path, body strategy)
ENDPOINTS = [
    ("POST", "/api/v1/profiles/", profile),
    ("POST", "/api/v1/audiences/", audience),
    ("POST", "/api/v1/audiences/estimate/", st.fixed_dictionaries({"criteria": criteria})),
    ("POST", "/api/v1/outputs/", output),
    ("PATCH", "/api/v1/connections/{connection}/", connection_change),
]


def row_counts() -> tuple[int, ...]:
    models = (Profile, Identity, AudienceMembership, Audience, Output, Connection)
    return tuple(model.objects.count() for model in models)


@pytest.mark.parametrize(("method", "path", "bodies"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_the_rest_api_never_answers_5xx_and_writes_only_on_2xx(api, connection, method, path, bodies):
    url = path.format(connection=connection.pk)

    @FUZZ_SETTINGS
    @given(body=st.one_of(bodies, values))
    def check(body):
        with transaction.atomic():
            before = row_counts()
            settings_before = Connection.objects.get().settings
            response = api.generic(method, url, dumps(body), content_type="application/json")
            assert response.status_code < 500, (response.status_code, response.content[:500])
            if response.status_code >= 300:
                assert row_counts() == before, response.content[:500]
                assert Connection.objects.get().settings == settings_before
            transaction.set_rollback(True)

    check()

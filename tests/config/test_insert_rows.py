"""config.db.insert_rows: many rows in a statement, chunked under the bound-parameter limit, RETURNING in order."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audiences.models import Profile
from config import db


@pytest.mark.django_db
def test_rows_are_inserted_in_chunks_under_the_parameter_limit_and_returned_in_order(monkeypatch):
    monkeypatch.setattr(db, "_max_query_params", lambda: 9)  # two rows of four columns per statement
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [(1000 + n, {"n": n, "name": f"é{n}"}, at, at) for n in range(5)]

    with CaptureQueriesContext(connection) as queries:
        returned = db.insert_rows(
            Profile._meta.db_table,
            ("mpid", "attributes", "created_at", "updated_at"),
            rows,
            json_columns=("attributes",),
            returning="id, mpid",
        )

    assert len(queries) == 3
    assert [mpid for _, mpid in returned] == [1000, 1001, 1002, 1003, 1004]
    stored = {p.pk: p for p in Profile.objects.all()}
    for (pk, mpid), (_, attributes, _, _) in zip(returned, rows, strict=True):
        # Read back through the ORM as it writes: the JSON and the datetimes.
        assert (stored[pk].mpid, stored[pk].attributes, stored[pk].created_at) == (mpid, attributes, at)
    assert Profile.objects.filter(created_at__gte=at).count() == 5


@pytest.mark.django_db
def test_no_rows_no_statement():
    with CaptureQueriesContext(connection) as queries:
        assert db.insert_rows(Profile._meta.db_table, ("mpid",), [], returning="id") == []
    assert len(queries) == 0

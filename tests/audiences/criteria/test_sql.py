"""The set-based criteria evaluator (audiences/criteria/sql.py) on PostgreSQL, one operator family at a time.
The property test (test_equivalence.py) covers the combinations; these name the rules of
docs/criteria.md one by one, the NULL-safety of negations, and the SQL helper functions of migration 0002."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from audiences.criteria.sql import like_pattern, member_sql
from audiences.models import Audience, AudienceMembership, Event, Identity, Profile
from tests.conftest import service_missing

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _postgresql():
    if connection.vendor != "postgresql":
        service_missing("the set-based evaluator needs PostgreSQL")


def members(tree: dict) -> set[int]:
    sql, params = member_sql(tree, now=NOW)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def profiles_with(*values, name: str = "status") -> list[int]:
    """One profile per value of the attribute `name`; `...` leaves the attribute out."""
    rows = [Profile(attributes={} if value is ... else {name: value}) for value in values]
    return [p.pk for p in Profile.objects.bulk_create(rows)]


def scalar(sql: str, *params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


# --- groups and NULL-safety ---------------------------------------------------------------------


def test_empty_and_matches_everybody_and_empty_or_nobody():
    ids = set(profiles_with("a", ...))
    assert members({"and": []}) == ids
    assert members({"or": []}) == set()
    assert members({"exclude": {"or": []}}) == ids


def test_absent_and_null_attributes_make_negative_operators_true_and_positive_ones_false():
    absent, null, premium, free = profiles_with(..., None, "Premium", "free")
    assert members({"attribute": "status", "operator": "equals", "value": "premium"}) == {premium}
    assert members({"attribute": "status", "operator": "not_equals", "value": "premium"}) == {absent, null, free}
    # NOT of a positive condition keeps the absent profiles: no NULL leaks out of a condition.
    assert members({"exclude": {"attribute": "status", "operator": "equals", "value": "premium"}}) == {
        absent,
        null,
        free,
    }
    assert members({"exclude": {"attribute": "status", "operator": "not_equals", "value": "x"}}) == set()
    assert members({"attribute": "status", "operator": "exists"}) == {premium, free}
    assert members({"attribute": "status", "operator": "not_exists"}) == {absent, null}
    assert members({"attribute": "STATUS", "operator": "contains", "value": "EMI"}) == {premium}


def test_wrong_type_makes_positive_operators_false_and_negative_true():
    number, boolean, listed, text = profiles_with(42, True, ["premium"], "premium")
    assert members({"attribute": "status", "operator": "equals", "value": "premium"}) == {text}
    assert members({"attribute": "status", "operator": "contains", "value": "4"}) == set()
    assert members({"attribute": "status", "operator": "not_contains", "value": "prem"}) == {number, boolean, listed}
    assert members({"attribute": "status", "operator": "greater_than", "value": 1}) == {number}


# --- numbers and booleans -----------------------------------------------------------------------


def test_numeric_view_is_a_number_or_a_trimmed_decimal_string():
    ids = profiles_with(12, " 12 ", "12.0", "1e1", "+12", True, 0.1, "0.10", "12.")
    twelve, padded, decimal, exponent, plus, boolean, tenth, tenth_text, trailing_dot = ids
    assert members({"attribute": "status", "operator": "equals", "value": 12}) == {twelve, padded, decimal}
    assert members({"attribute": "status", "operator": "equals", "value": 0.1}) == {tenth, tenth_text}
    assert members({"attribute": "status", "operator": "between", "value": [0.1, 12]}) == {
        twelve,
        padded,
        decimal,
        tenth,
        tenth_text,
    }
    assert members({"attribute": "status", "operator": "less_than", "value": 12}) == {tenth, tenth_text}
    assert members({"attribute": "status", "operator": "greater_or_equal", "value": 12}) == {twelve, padded, decimal}
    assert members({"attribute": "status", "operator": "not_equals", "value": 12}) == {
        exponent,
        plus,
        boolean,
        tenth,
        tenth_text,
        trailing_dot,
    }


def test_boolean_view_is_a_boolean_or_the_word_in_any_case():
    true, text_true, false, yes, one = profiles_with(True, "TRUE", "False", "yes", 1)
    assert members({"attribute": "status", "operator": "equals", "value": True}) == {true, text_true}
    assert members({"attribute": "status", "operator": "equals", "value": False}) == {false}
    assert members({"attribute": "status", "operator": "not_equals", "value": True}) == {false, yes, one}


# --- patterns --------------------------------------------------------------------------------------


def test_like_pattern_escapes_like_metacharacters():
    assert like_pattern("A*b?") == "a%b_"
    assert like_pattern("50%_\\") == "50\\%\\_\\\\"


def test_matches_treats_percent_underscore_and_backslash_literally():
    backslash, percent, underscore, plain, longer = profiles_with("x\\y", "x%y", "x_y", "XaY", "xaay")
    assert members({"attribute": "status", "operator": "matches", "value": "x\\y"}) == {backslash}
    assert members({"attribute": "status", "operator": "matches", "value": "x%y"}) == {percent}
    assert members({"attribute": "status", "operator": "matches", "value": "x_y"}) == {underscore}
    assert members({"attribute": "status", "operator": "matches", "value": "x?y"}) == {
        backslash,
        percent,
        underscore,
        plain,
    }
    assert members({"attribute": "status", "operator": "matches", "value": "X*Y"}) == {
        backslash,
        percent,
        underscore,
        plain,
        longer,
    }
    assert members({"attribute": "status", "operator": "not_matches", "value": "*\\*"}) == {
        percent,
        underscore,
        plain,
        longer,
    }


def test_values_are_parameters_not_sql_text():
    (quoted,) = profiles_with("o'brien'); drop table audiences_profile; --")
    tree = {"attribute": "status", "operator": "equals", "value": "O'Brien'); DROP TABLE audiences_profile; --"}
    sql, _ = member_sql(tree, now=NOW)
    assert "brien" not in sql.lower() and "status" not in sql
    assert members(tree) == {quoted}


# --- lists -------------------------------------------------------------------------------------


def test_list_operators_look_inside_lists_and_others_do_not():
    tags, mixed, text, absent = profiles_with(["Paris", "Rome"], [1, "2", True, None], "paris", ..., name="tags")
    assert members({"attribute": "tags", "operator": "includes", "value": "PARIS"}) == {tags}
    assert members({"attribute": "tags", "operator": "includes", "value": 2}) == {mixed}
    assert members({"attribute": "tags", "operator": "includes", "value": True}) == {mixed}
    assert members({"attribute": "tags", "operator": "not_includes", "value": "paris"}) == {mixed, text, absent}
    assert members({"attribute": "tags", "operator": "partial_match", "value": "om"}) == {tags}
    assert members({"attribute": "tags", "operator": "equals", "value": "paris"}) == {text}
    assert members({"attribute": "tags", "operator": "exists"}) == {tags, mixed, text}


# --- dates -------------------------------------------------------------------------------------


def test_af_timestamp_reads_the_accepted_forms_and_refuses_impossible_instants():
    def read(text):
        return scalar("SELECT af_timestamp(%s)", text)

    assert read("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert read("2026-03-01 10:20") == datetime(2026, 3, 1, 10, 20, tzinfo=UTC)
    assert read("2026-03-01T10:20:30.000001Z") == datetime(2026, 3, 1, 10, 20, 30, 1, tzinfo=UTC)
    assert read("2026-03-01T10:20:30.5") == datetime(2026, 3, 1, 10, 20, 30, 500000, tzinfo=UTC)
    assert read("2026-03-01T10:00+02:00") == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert read("2026-03-01T10:00-0530") == datetime(2026, 3, 1, 15, 30, tzinfo=UTC)
    assert read("2024-02-29") == datetime(2024, 2, 29, tzinfo=UTC)
    for impossible in [
        "2026-02-29",
        "2026-02-30",
        "2026-13-01",
        "2026-00-10",
        "0000-01-01",
        "2026-03-01T24:00",
        "2026-03-01T10:60",
        "2026-03-01T10:00:60",
        "2026-03-01T10:00+24:00",
        "2026-03-01T10:00+01:60",
        "2026-03-01t10:00",
        "2026-03-01T10:00:00.1234567",
        "2026-03-01Z",
        " 2026-03-01",
        "20260301",
    ]:
        assert read(impossible) is None, impossible


def test_date_operators_on_attributes():
    ids = profiles_with("2026-03-14", "2026-03-14T23:59:59Z", "2026-03-15T00:00", "2026-02-30", 20260314, name="born")
    day_start, day_end, next_day, impossible, number = ids
    assert members({"attribute": "born", "operator": "date_on", "value": "2026-03-14"}) == {day_start, day_end}
    assert members({"attribute": "born", "operator": "date_before", "value": "2026-03-15"}) == {day_start, day_end}
    assert members({"attribute": "born", "operator": "date_after", "value": "2026-03-15"}) == {next_day}
    between = {"attribute": "born", "operator": "date_between", "value": ["2026-03-14T12:00:00Z", "2026-03-14"]}
    assert members(between) == {day_end}
    upto = {"attribute": "born", "operator": "date_between", "value": ["2026-03-01", "2026-03-15T00:00:00Z"]}
    assert members(upto) == {day_start, day_end, next_day}
    assert members({"attribute": "born", "operator": "within_last", "value": {"amount": 12, "unit": "hours"}}) == {
        next_day
    }
    assert members({"attribute": "born", "operator": "within_last", "value": {"amount": 2, "unit": "days"}}) == {
        day_start,
        day_end,
        next_day,
    }
    assert impossible not in members({"attribute": "born", "operator": "date_before", "value": "2027-01-01"})
    assert number not in members({"attribute": "born", "operator": "date_after", "value": "2000-01-01"})


# --- identities and audiences ------------------------------------------------------------------


def test_identity_conditions():
    with_email, with_customer, without = profiles_with("a", "b", "c")
    Identity.objects.create(profile_id=with_email, type="email", value="ann_1@example.com")
    Identity.objects.create(profile_id=with_customer, type="customer", value="C42")
    assert members({"identity": "email", "operator": "exists"}) == {with_email}
    assert members({"identity": "email", "operator": "not_exists"}) == {with_customer, without}
    assert members({"identity": "customer", "operator": "matches", "value": "c?2"}) == {with_customer}
    assert members({"identity": "email", "operator": "matches", "value": "ann_1@*"}) == {with_email}
    assert members({"identity": "email", "operator": "matches", "value": "annx1@*"}) == set()
    assert members({"identity": "email", "operator": "not_matches", "value": "*@example.com"}) == {
        with_customer,
        without,
    }


def test_audience_conditions_read_stored_membership():
    inside, outside = profiles_with("a", "b")
    other = Audience.objects.create(name="Other")
    AudienceMembership.objects.create(audience=other, profile_id=inside, entered_at=NOW)
    assert members({"audience": other.pk, "operator": "member"}) == {inside}
    assert members({"audience": other.pk, "operator": "not_member"}) == {outside}


# --- events ------------------------------------------------------------------------------------


def add_events(profile_id: int, *events: tuple[str, dict, timedelta]) -> None:
    Event.objects.bulk_create(
        Event(
            profile_id=profile_id,
            event_type="custom_event",
            name=name,
            attributes=attributes,
            timestamp=NOW - ago,
            received_at=NOW,
        )
        for name, attributes, ago in events
    )


def test_event_conditions_count_matching_events_in_the_window():
    once, twice, old, other_city, none = profiles_with("a", "b", "c", "d", "e")
    paris = {"city": "PARIS"}
    add_events(once, ("Destination Intro", paris, timedelta(days=30)))  # on the window's first instant
    add_events(twice, ("destination intro", paris, timedelta(hours=1)), ("DESTINATION INTRO", paris, timedelta()))
    add_events(old, ("Destination Intro", paris, timedelta(days=30, microseconds=1)))
    add_events(other_city, ("Destination Intro", {"city": "Rome"}, timedelta(days=1)))
    city = [{"attribute": "city", "operator": "equals", "value": "paris"}]

    def event(**extra):
        return members({"event": "Destination INTRO", **extra})

    assert event() == {once, twice, other_city}  # default: more than 0 in the last 30 days
    assert event(attributes=city) == {once, twice}
    assert event(attributes=city, frequency={"operator": "at_least", "count": 2}) == {twice}
    assert event(attributes=city, frequency={"operator": "more_than", "count": 1}) == {twice}
    assert event(frequency={"operator": "at_least", "count": 0}) == {once, twice, old, other_city, none}
    assert event(attributes=city, frequency={"operator": "fewer_than", "count": 1}) == {old, other_city, none}
    assert event(attributes=city, frequency={"operator": "fewer_than", "count": 2}) == {once, old, other_city, none}
    assert event(recency={"within_last": {"amount": 1, "unit": "hours"}}) == {twice}
    between = {"between": ["2026-02-13", "2026-02-13T12:00:00Z"]}  # NOW - 30 days is 2026-02-13T12:00Z
    assert event(recency=between) == {once, old}
    assert event(attributes=[{"attribute": "city", "operator": "not_equals", "value": "paris"}]) == {other_city}


def test_event_condition_uses_the_name_and_time_index():
    sql, params = member_sql(
        {"event": "Destination Intro", "recency": {"within_last": {"amount": 30, "unit": "days"}}}, now=NOW
    )
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # the test tables are tiny
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "event_name_time_idx" in plan, plan


def test_date_conditions_run_in_parallel_workers():
    # af_timestamp is PARALLEL SAFE: it must not start a subtransaction (an EXCEPTION block would), which
    # PostgreSQL refuses inside a parallel worker.
    (born,) = profiles_with("2026-03-14T10:00+02:00", name="born")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL force_parallel_mode = on")
        cursor.execute("SET LOCAL parallel_setup_cost = 0")
        cursor.execute("SET LOCAL parallel_tuple_cost = 0")
        cursor.execute("SET LOCAL min_parallel_table_scan_size = 0")
        assert members({"attribute": "born", "operator": "date_on", "value": "2026-03-14"}) == {born}

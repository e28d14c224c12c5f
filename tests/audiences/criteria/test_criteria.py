"""The criteria language (docs/criteria.md): the per-profile evaluator and validation."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from audiences.criteria import (
    CriteriaError,
    attribute_names,
    compile_criteria,
    date_view,
    depends_on_time,
    event_window_start,
    matches,
    referenced_audiences,
    validate_criteria,
)
from audiences.criteria.facts import EventFact, ProfileFacts
from audiences.criteria.sql import member_sql

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
PARIS = {"attribute": "city", "operator": "equals", "value": "Paris"}
PREMIUM = {"attribute": "status", "operator": "equals", "value": "premium"}


def facts(attributes=None, identities=(), events=(), memberships=()):
    return ProfileFacts(
        profile_id=1,
        attributes=attributes or {},
        identities=list(identities),
        events=list(events),
        memberships=set(memberships),
    )


def holds(operator, value, attribute_value, *, absent=False):
    node = {"attribute": "a", "operator": operator}
    if value is not ...:
        node["value"] = value
    validate_criteria(node)
    return matches(node, facts({} if absent else {"a": attribute_value}), NOW)


def event(name="Destination Intro", at=NOW - timedelta(days=1), **attributes):
    return EventFact(name=name.lower(), attributes=attributes, timestamp=at)


# --- groups -----------------------------------------------------------------------------------


def test_and_or_exclude_combine():
    tree = {"and": [PARIS, {"exclude": {"attribute": "banned", "operator": "equals", "value": True}}]}
    assert matches(tree, facts({"city": "paris"}), NOW)
    assert not matches(tree, facts({"city": "paris", "banned": True}), NOW)
    assert not matches(tree, facts({"city": "Lyon"}), NOW)
    either = {"or": [PARIS, PREMIUM]}
    assert matches(either, facts({"status": "PREMIUM"}), NOW)
    assert not matches(either, facts({"status": "free", "city": "Rome"}), NOW)


def test_empty_and_matches_everybody_and_empty_or_nobody():
    assert matches({"and": []}, facts(), NOW)
    assert not matches({"or": []}, facts({"city": "Paris"}), NOW)


def test_a_plain_attribute_mapping_is_still_accepted_with_names_lower_cased():
    assert matches(PARIS, {"CITY": "PARIS"})


# --- attribute operators ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "value", "attribute", "expected"),
    [
        ("exists", ..., "x", True),
        ("exists", ..., [], True),
        ("equals", "Paris", "PARIS", True),
        ("equals", "Paris", " Paris", False),  # no trimming: the text itself
        ("equals", "1", 1, False),  # a string value compares strings only
        ("equals", 18, "18.0", True),  # numeric view of a string
        ("equals", 18, " 18 ", True),  # trimmed for the numeric view
        ("equals", 18, 18.0, True),
        ("equals", 0.1, "0.1", True),  # exact decimals
        ("equals", 18, "1e1", False),  # not a numeric view
        ("equals", 12, "\t12\n", True),  # ASCII whitespace is trimmed
        ("equals", 12, "12\x1c", False),  # as PostgreSQL's btrim: nothing else
        ("equals", 12, "12\n5", False),
        ("equals", 1, True, False),  # booleans have no numeric view
        ("equals", True, "TRUE", True),
        ("equals", False, "false", True),
        ("equals", True, 1, False),
        ("equals", True, " true", False),
        ("not_equals", "Paris", "Lyon", True),
        ("not_equals", "Paris", "paris", False),
        ("not_equals", 3, "three", True),  # wrong type: negative operators hold
        ("contains", "AR", "Paris", True),
        ("contains", "x", "Paris", False),
        ("contains", "1", 12, False),  # not a string
        ("not_contains", "yon", "Paris", True),
        ("not_contains", "par", "Paris", False),
        ("not_contains", "1", 12, True),
        ("matches", "p*s", "PARIS", True),
        ("matches", "p?ris", "Paris", True),
        ("matches", "p?ris", "Pariis", False),
        ("matches", "par", "Paris", False),  # the whole text
        ("matches", "*", "", True),
        ("matches", "a.c", "abc", False),  # every other character stands for itself
        ("matches", "a+b", "a+b", True),
        ("matches", "[ab]", "a", False),
        ("not_matches", "p*", "Rome", True),
        ("not_matches", "p*", "paris", False),
        ("greater_than", 17, "18", True),
        ("greater_than", 18, 18, False),
        ("greater_or_equal", 18, 18, True),
        ("less_than", 18, 17.5, True),
        ("less_or_equal", 17, 18, False),
        ("less_or_equal", 18, "-18", True),
        ("greater_than", 1, "old", False),
        ("greater_than", 0, True, False),
        ("between", [1, 10], 1, True),
        ("between", [1, 10], "10", True),
        ("between", [1, 10], 10.5, False),
        ("between", [1, 1], 1, True),
    ],
)
def test_attribute_operators(operator, value, attribute, expected):
    assert holds(operator, value, attribute) is expected


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("exists", ..., False),
        ("not_exists", ..., True),
        ("equals", "x", False),
        ("not_equals", "x", True),
        ("contains", "x", False),
        ("not_contains", "x", True),
        ("matches", "*", False),
        ("not_matches", "*", True),
        ("greater_than", 0, False),
        ("between", [0, 1], False),
        ("includes", "x", False),
        ("not_includes", "x", True),
        ("partial_match", "", False),
        ("date_after", "2000-01-01", False),
        ("within_last", {"amount": 1, "unit": "days"}, False),
    ],
)
def test_absent_attribute_holds_only_for_negative_operators_and_not_exists(operator, value, expected):
    assert holds(operator, value, None, absent=True) is expected


def test_null_counts_as_absent_and_names_are_case_insensitive():
    assert not matches({"attribute": "city", "operator": "exists"}, facts({"city": None}), NOW)
    assert matches({"attribute": "CITY", "operator": "equals", "value": "paris"}, facts({"city": "Paris"}), NOW)


@pytest.mark.parametrize(
    ("operator", "value", "attribute", "expected"),
    [
        ("includes", "VIP", ["new", "vip"], True),
        ("includes", "vip", ["new"], False),
        ("includes", 3, ["1", "3.0"], True),
        ("includes", True, ["TRUE"], True),
        ("includes", "vip", "vip", False),  # not a list
        ("not_includes", "vip", ["new"], True),
        ("not_includes", "vip", ["VIP"], False),
        ("not_includes", "vip", "vip", True),  # not a list
        ("partial_match", "ar", ["Paris", 3], True),
        ("partial_match", "3", [3], False),  # string elements only
        ("partial_match", "ar", "Paris", False),
        # Other operators treat a list as the wrong type.
        ("equals", "vip", ["vip"], False),
        ("not_equals", "vip", ["vip"], True),
        ("contains", "v", ["vip"], False),
        ("not_contains", "v", ["vip"], True),
        ("greater_than", 0, [1], False),
        ("date_after", "2000-01-01", ["2026-01-01"], False),
    ],
)
def test_lists(operator, value, attribute, expected):
    assert holds(operator, value, attribute) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T10:30", datetime(2026, 3, 1, 10, 30, tzinfo=UTC)),
        ("2026-03-01 10:30:15", datetime(2026, 3, 1, 10, 30, 15, tzinfo=UTC)),
        ("2026-03-01T10:30:15.5", datetime(2026, 3, 1, 10, 30, 15, 500000, tzinfo=UTC)),
        ("2026-03-01T10:30:15.123456Z", datetime(2026, 3, 1, 10, 30, 15, 123456, tzinfo=UTC)),
        ("2026-03-01T10:30+02:00", datetime(2026, 3, 1, 8, 30, tzinfo=UTC)),
        ("2026-03-01T23:30-0130", datetime(2026, 3, 2, 1, 0, tzinfo=UTC)),
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2026-02-30", None),  # impossible
        ("2026-02-29", None),  # not a leap year
        ("2026-13-01", None),
        ("2026-03-01T24:00", None),
        ("2026-03-01T10:30+25:00", None),
        ("2026-03-01T10", None),
        ("2026-3-1", None),
        ("01/03/2026", None),
        ("2026-03-01Z", None),
        (" 2026-03-01", None),
        ("2026-03-01\n", None),  # the whole string, a final newline included
        ("2026-03-01t10:30", None),  # `T` or a space, as written
        (20260301, None),  # numbers are not dates
    ],
)
def test_date_view(text, expected):
    assert date_view(text) == expected


@pytest.mark.parametrize(
    ("operator", "value", "attribute", "expected"),
    [
        ("date_before", "2026-03-01", "2026-02-28T23:59:59", True),
        ("date_before", "2026-03-01", "2026-03-01", False),  # exclusive
        ("date_before", "2026-03-01T12:00", "2026-03-01T11:59", True),
        ("date_after", "2026-03-01", "2026-03-01T00:00", True),  # inclusive
        ("date_after", "2026-03-01", "2026-02-28T23:59", False),
        ("date_after", "2026-03-01", "2026-03-01T01:00+02:00", False),  # 23:00 UTC the day before
        ("date_on", "2026-03-01", "2026-03-01T23:59:59.999999", True),
        ("date_on", "2026-03-01", "2026-03-02", False),
        ("date_on", "2026-03-01", "2026-02-28T23:59:59", False),
        ("date_between", ["2026-03-01", "2026-03-02"], "2026-03-02T23:00", True),  # the whole last day
        ("date_between", ["2026-03-01", "2026-03-02"], "2026-03-03", False),
        ("date_between", ["2026-03-01", "2026-03-02T12:00"], "2026-03-02T12:00", True),  # a timestamp: <=
        ("date_between", ["2026-03-01", "2026-03-02T12:00"], "2026-03-02T12:00:01", False),
        ("date_between", ["2026-03-01T06:00", "2026-03-02"], "2026-03-01T05:59", False),
        ("within_last", {"amount": 2, "unit": "days"}, "2026-03-13T12:00", True),  # now - 48 h, inclusive
        ("within_last", {"amount": 2, "unit": "days"}, "2026-03-13T11:59", False),
        ("within_last", {"amount": 2, "unit": "days"}, "2026-03-15T12:00:01", False),  # the future
        ("within_last", {"amount": 3, "unit": "hours"}, "2026-03-15T09:00Z", True),
        ("within_last", {"amount": 3, "unit": "hours"}, "2026-03-15T08:59Z", False),
        ("date_after", "2000-01-01", "2026-02-30", False),  # impossible dates have no date view
        ("date_after", "2000-01-01", 1767225600, False),  # numbers are not dates
    ],
)
def test_dates(operator, value, attribute, expected):
    assert holds(operator, value, attribute) is expected


# --- identities -------------------------------------------------------------------------------


def test_identity_conditions():
    profile = facts(identities=[("email", "Ana@Example.com"), ("customer", "c-1")])
    assert matches({"identity": "email", "operator": "exists"}, profile, NOW)
    assert not matches({"identity": "mobile_number", "operator": "exists"}, profile, NOW)
    assert matches({"identity": "mobile_number", "operator": "not_exists"}, profile, NOW)
    assert matches({"identity": "email", "operator": "matches", "value": "*@EXAMPLE.com"}, profile, NOW)
    assert not matches({"identity": "customer", "operator": "matches", "value": "*@example.com"}, profile, NOW)
    assert matches({"identity": "email", "operator": "not_matches", "value": "*@other.com"}, profile, NOW)
    assert matches({"identity": "other", "operator": "not_matches", "value": "*"}, profile, NOW)


# --- events -----------------------------------------------------------------------------------


def test_event_condition_defaults_to_more_than_zero_in_the_last_30_days():
    node = {"event": "destination intro"}
    assert matches(node, facts(events=[event(at=NOW - timedelta(days=30))]), NOW)
    assert not matches(node, facts(events=[event(at=NOW - timedelta(days=30, seconds=1))]), NOW)
    assert not matches(node, facts(events=[event(name="Other")]), NOW)
    assert not matches(node, facts(), NOW)


def test_event_attribute_filters_frequency_and_recency():
    paris = {
        "event": "Destination Intro",
        "attributes": [{"attribute": "City", "operator": "equals", "value": "paris"}],
        "frequency": {"operator": "at_least", "count": 2},
        "recency": {"within_last": {"amount": 7, "unit": "days"}},
    }
    two = [event(city="Paris"), event(city="PARIS", at=NOW - timedelta(days=7))]
    assert matches(paris, facts(events=two), NOW)
    assert not matches(paris, facts(events=[two[0], event(city="Rome")]), NOW)
    assert not matches(paris, facts(events=[two[0], event(city="Paris", at=NOW - timedelta(days=8))]), NOW)
    more = {**paris, "frequency": {"operator": "more_than", "count": 1}}
    assert matches(more, facts(events=two), NOW)
    assert not matches(more, facts(events=two[:1]), NOW)
    fewer = {**paris, "frequency": {"operator": "fewer_than", "count": 2}}
    assert matches(fewer, facts(), NOW)  # no such event at all
    assert matches(fewer, facts(events=two[:1]), NOW)
    assert not matches(fewer, facts(events=two), NOW)


def test_event_recency_between_dates_and_missing_event_attributes():
    node = {
        "event": "purchase",
        "attributes": [{"attribute": "coupon", "operator": "not_exists"}],
        "recency": {"between": ["2026-01-01", "2026-01-31"]},
    }
    assert matches(node, facts(events=[event("Purchase", at=datetime(2026, 1, 31, 23, tzinfo=UTC))]), NOW)
    assert not matches(node, facts(events=[event("Purchase", at=datetime(2026, 2, 1, tzinfo=UTC))]), NOW)
    assert not matches(node, facts(events=[event("Purchase", at=datetime(2026, 1, 5, tzinfo=UTC), coupon="x")]), NOW)


def test_audience_conditions_read_the_memberships():
    assert matches({"audience": 3, "operator": "member"}, facts(memberships={3}), NOW)
    assert not matches({"audience": 3, "operator": "member"}, facts(memberships={4}), NOW)
    assert matches({"audience": 3, "operator": "not_member"}, facts(), NOW)


def test_a_compiled_tree_follows_the_clock_it_is_given():
    within = compile_criteria({"event": "login", "recency": {"within_last": {"amount": 1, "unit": "hours"}}})
    profile = facts(events=[event("login", at=NOW)])
    assert within(profile, NOW)
    assert not within(profile, NOW + timedelta(hours=1, seconds=1))


# --- reading a tree ---------------------------------------------------------------------------


def test_depends_on_time():
    assert not depends_on_time({"and": [PARIS]})
    assert depends_on_time({"attribute": "seen", "operator": "within_last", "value": {"amount": 1, "unit": "days"}})
    assert depends_on_time({"or": [PARIS, {"event": "login"}]})  # default recency: the last 30 days
    assert not depends_on_time({"event": "login", "recency": {"between": ["2026-01-01", "2026-01-02"]}})
    assert depends_on_time(
        {
            "event": "login",
            "recency": {"between": ["2026-01-01", "2026-01-02"]},
            "attributes": [{"attribute": "at", "operator": "within_last", "value": {"amount": 1, "unit": "hours"}}],
        }
    )


def test_event_window_start_is_the_earliest_window():
    assert event_window_start({"and": [PARIS]}, NOW) is None
    tree = {
        "and": [
            {"event": "a"},
            {"exclude": {"event": "b", "recency": {"within_last": {"amount": 40, "unit": "days"}}}},
            {"event": "c", "recency": {"between": ["2026-03-10", "2026-03-20"]}},
        ]
    }
    assert event_window_start(tree, NOW) == NOW - timedelta(days=40)
    assert event_window_start({"event": "c", "recency": {"between": ["2025-01-01", "2026-01-01"]}}, NOW) == datetime(
        2025, 1, 1, tzinfo=UTC
    )


def test_referenced_audiences_and_attribute_names():
    tree = {
        "and": [
            PARIS,
            {"exclude": PREMIUM},
            {"audience": 4, "operator": "member"},
            {"or": [{"audience": 9, "operator": "not_member"}]},
            {"event": "x", "attributes": [{"attribute": "Colour", "operator": "exists"}]},
        ]
    }
    assert referenced_audiences(tree) == {4, 9}
    assert attribute_names(tree) == {"city", "status"}


# --- validation -------------------------------------------------------------------------------


def deep(levels):
    node = PARIS
    for _ in range(levels - 1):
        node = {"and": [node]}
    return node


@pytest.mark.parametrize(
    ("tree", "path"),
    [
        ([], "criteria: expected an object"),
        (
            {"and": [PARIS, {"attribute": "x", "operator": "nearly", "value": 1}]},
            "criteria.and[1].operator: unknown op",
        ),
        ({"and": {"attribute": "x"}}, "criteria.and: expected a list"),
        ({"or": [{"exclude": {"attribute": "", "operator": "exists"}}]}, "criteria.or[0].exclude.attribute"),
        ({"attribute": "a" * 257, "operator": "exists"}, "criteria.attribute"),
        ({"and": [], "or": []}, "criteria: expected exactly one"),
        ({"colour": "red"}, "criteria: expected exactly one"),
        ({"and": [], "colour": "red"}, "criteria.colour: unknown key"),
        ({"attribute": "age", "operator": "equals", "value": 1, "unit": "y"}, "criteria.unit: unknown key"),
        ({"attribute": "age", "operator": ["equals"], "value": 1}, "criteria.operator"),
        ({"attribute": "age", "operator": "in", "value": [1]}, "criteria.operator: unknown operator 'in'"),
        ({"attribute": "age", "operator": "greater_than", "value": "ten"}, "criteria.value"),
        ({"attribute": "age", "operator": "greater_than", "value": True}, "criteria.value"),
        ({"attribute": "age", "operator": "greater_than", "value": float("nan")}, "criteria.value"),
        ({"attribute": "age", "operator": "greater_than"}, "criteria.value"),
        ({"attribute": "age", "operator": "exists", "value": 1}, "criteria.value"),
        ({"attribute": "age", "operator": "equals", "value": None}, "criteria.value"),
        ({"attribute": "age", "operator": "equals", "value": [1]}, "criteria.value"),
        ({"attribute": "age", "operator": "contains", "value": 1}, "criteria.value"),
        ({"attribute": "age", "operator": "matches", "value": None}, "criteria.value"),
        ({"attribute": "age", "operator": "includes", "value": ["a"]}, "criteria.value"),
        ({"attribute": "age", "operator": "between", "value": [10, 1]}, "criteria.value: 'between' needs low <= high"),
        ({"attribute": "age", "operator": "between", "value": [1]}, "criteria.value"),
        ({"attribute": "age", "operator": "between", "value": [1, "9"]}, "criteria.value"),
        ({"attribute": "d", "operator": "date_before", "value": "2026-02-30"}, "criteria.value: expected a date"),
        ({"attribute": "d", "operator": "date_after", "value": 20260101}, "criteria.value: expected a date"),
        ({"attribute": "d", "operator": "date_on", "value": "2026-01-01T10:00"}, "criteria.value"),
        ({"attribute": "d", "operator": "date_between", "value": ["2026-01-02", "2026-01-01"]}, "criteria.value"),
        ({"attribute": "d", "operator": "date_between", "value": ["2026-01-01", "x"]}, "criteria.value[1]"),
        (
            {"attribute": "d", "operator": "within_last", "value": {"amount": 0, "unit": "days"}},
            "criteria.value.amount",
        ),
        ({"attribute": "d", "operator": "within_last", "value": {"amount": 1, "unit": "weeks"}}, "criteria.value.unit"),
        ({"attribute": "d", "operator": "within_last", "value": {"amount": 1.5, "unit": "days"}}, "criteria.value.amo"),
        ({"attribute": "d", "operator": "within_last", "value": {"amount": 1, "unit": "days", "x": 1}}, "criteria.val"),
        ({"identity": "fax", "operator": "exists"}, "criteria.identity: unknown identity type 'fax'"),
        ({"identity": "email", "operator": "equals", "value": "x"}, "criteria.operator"),
        ({"identity": "email", "operator": "matches"}, "criteria.value"),
        ({"identity": "email", "operator": "exists", "value": "x"}, "criteria.value"),
        ({"event": ""}, "criteria.event"),
        ({"event": "x", "attributes": {}}, "criteria.attributes"),
        ({"event": "x", "attributes": [{"attribute": "a", "operator": "nope"}]}, "criteria.attributes[0].operator"),
        ({"event": "x", "attributes": [{"event": "y"}]}, "criteria.attributes[0]: expected an attribute condition"),
        ({"event": "x", "frequency": {"operator": "at_most", "count": 1}}, "criteria.frequency.operator"),
        ({"event": "x", "frequency": {"operator": "at_least", "count": -1}}, "criteria.frequency.count"),
        ({"event": "x", "frequency": {"operator": "fewer_than", "count": 0}}, "criteria.frequency.count"),
        ({"event": "x", "frequency": {"operator": "at_least"}}, "criteria.frequency.count"),
        ({"event": "x", "recency": {}}, "criteria.recency"),
        ({"event": "x", "recency": {"within_last": {"amount": 1, "unit": "days"}, "between": []}}, "criteria.recency"),
        ({"event": "x", "recency": {"last": 1}}, "criteria.recency.last: unknown key"),
        ({"event": "x", "recency": {"between": ["2026-01-02", "2026-01-01T23:00"]}}, "criteria.recency.between"),
        ({"event": "x", "colour": 1}, "criteria.colour: unknown key"),
        ({"audience": "4", "operator": "member"}, "criteria.audience: expected an audience id"),
        ({"audience": 4, "operator": "in"}, "criteria.operator"),
        (deep(11), "criteria" + ".and[0]" * 10 + ": criteria may nest at most 10 levels"),
        ({"or": [PARIS] * 200}, "criteria.or[199]: criteria may hold at most 200 nodes"),
        (
            {"and": [{"event": "x", "attributes": [PARIS] * 198}, PARIS]},
            "criteria.and[1]: criteria may hold at most 200 nodes",
        ),
    ],
)
def test_validation_points_into_the_tree(tree, path):
    with pytest.raises(CriteriaError) as excinfo:
        validate_criteria(tree)
    assert excinfo.value.messages[0].startswith(path), excinfo.value.messages[0]


def test_the_limits_themselves_are_accepted():
    assert validate_criteria(deep(10)) == deep(10)
    assert validate_criteria({"or": [PARIS] * 199})


def test_a_full_tree_validates():
    tree = {
        "and": [
            {"attribute": "status", "operator": "equals", "value": "Premium"},
            {"attribute": "age", "operator": "between", "value": [18, 65.5]},
            {"attribute": "tags", "operator": "partial_match", "value": "vi"},
            {"attribute": "signup", "operator": "date_between", "value": ["2026-01-01", "2026-01-01T23:00+01:00"]},
            {"attribute": "seen", "operator": "within_last", "value": {"amount": 3, "unit": "hours"}},
            {"identity": "email", "operator": "matches", "value": "*@example.com"},
            {
                "event": "Destination Intro",
                "attributes": [{"attribute": "city", "operator": "equals", "value": "Paris"}],
                "frequency": {"operator": "at_least", "count": 1},
                "recency": {"within_last": {"amount": 30, "unit": "days"}},
            },
        ]
    }
    assert validate_criteria(tree) is tree


# --- dates at the edge of the calendar (issue 7, item 2) ----------------------------------------


@pytest.mark.parametrize(
    ("tree", "path"),
    [
        # The reproduction: 9999-12-31 has no next midnight, which both evaluators compute.
        ({"attribute": "valid_until", "operator": "date_after", "value": "9999-12-31"}, "criteria.value"),
        ({"attribute": "d", "operator": "date_before", "value": "9999-12-31"}, "criteria.value"),
        ({"attribute": "d", "operator": "date_on", "value": "9999-12-31"}, "criteria.value"),
        ({"attribute": "d", "operator": "date_between", "value": ["2026-01-01", "9999-12-31"]}, "criteria.value[1]"),
        ({"attribute": "d", "operator": "date_after", "value": "9999-12-31T23:00-05:00"}, "criteria.value"),
        ({"attribute": "d", "operator": "date_before", "value": "0001-01-01T00:00+01:00"}, "criteria.value"),
        ({"event": "x", "recency": {"between": ["2026-01-01", "9999-12-31"]}}, "criteria.recency.between[1]"),
        (
            {"event": "x", "attributes": [{"attribute": "d", "operator": "date_on", "value": "9999-12-31"}]},
            "criteria.attributes[0].value",
        ),
    ],
)
def test_dates_the_evaluators_cannot_compute_with_are_refused_at_validation(tree, path):
    with pytest.raises(CriteriaError) as excinfo:
        validate_criteria(tree)
    assert excinfo.value.messages[0].startswith(f"{path}: expected a date"), excinfo.value.messages[0]


@pytest.mark.parametrize(
    "node",
    [
        {"attribute": "d", "operator": "date_after", "value": "9999-12-30"},
        {"attribute": "d", "operator": "date_on", "value": "9999-12-30"},
        {"attribute": "d", "operator": "date_between", "value": ["0001-01-01", "9999-12-30"]},
        {"attribute": "d", "operator": "date_before", "value": "9999-12-31T23:59:59.999999Z"},
        {"attribute": "d", "operator": "within_last", "value": {"amount": 100_000, "unit": "days"}},
        {"event": "x", "recency": {"between": ["0001-01-01", "9999-12-30"]}},
        {"event": "x", "recency": {"within_last": {"amount": 100_000, "unit": "days"}}},
    ],
)
def test_the_last_dates_validation_accepts_evaluate_in_both_evaluators(node):
    """Whatever validation lets through, both evaluators compute with (the SQL one compiles its bounds here;
    tests/audiences/criteria/test_equivalence.py runs it)."""
    validate_criteria(node)
    at = datetime(9999, 12, 31, 12, tzinfo=UTC)
    assert isinstance(matches(node, facts({"d": "9999-12-30T12:00"}, events=[event("x", at=at)]), NOW), bool)
    member_sql(node, now=NOW)


# --- patterns in bounded time (issue 7, item 4) ---------------------------------------------------


def test_a_long_value_against_many_stars_matches_in_bounded_time():
    """The issue's reproduction: "*/*/*.pdf" against 4,096 characters took 30 s with a backtracking regex."""
    node = {"attribute": "path", "operator": "matches", "value": "*/*/*.pdf"}
    validate_criteria(node)
    started = time.perf_counter()
    for value in ("/" * 4096, "/" + "x" * 4091 + ".pdf", "/" * 4092 + ".pdf"):
        expected = value.count("/") >= 2 and value.endswith(".pdf")
        assert matches(node, facts({"path": value}), NOW) is expected
    assert time.perf_counter() - started < 0.1


def test_pattern_lengths_are_bounded_at_validation():
    validate_criteria({"attribute": "a", "operator": "matches", "value": "*" * 256})
    for node in (
        {"attribute": "a", "operator": "matches", "value": "*" * 257},
        {"attribute": "a", "operator": "not_matches", "value": "x" * 257},
        {"identity": "email", "operator": "matches", "value": "*@" + "x" * 300},
    ):
        with pytest.raises(CriteriaError, match=r"criteria\.value: patterns are at most 256 characters"):
            validate_criteria(node)


def test_nul_and_lone_surrogates_are_refused_anywhere_in_criteria():
    for tree, path in (
        ({"attribute": "a\x00", "operator": "exists"}, "criteria.attribute"),
        ({"and": [{"attribute": "a", "operator": "equals", "value": "x\x00"}]}, "criteria.and[0].value"),
        ({"event": "x", "attributes": [{"attribute": "\ud800", "operator": "exists"}]}, "criteria.attributes[0].att"),
    ):
        with pytest.raises(CriteriaError) as excinfo:
            validate_criteria(tree)
        assert excinfo.value.messages[0].startswith(path), excinfo.value.messages[0]

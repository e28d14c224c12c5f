import pytest

from audiences.criteria import CriteriaError, attribute_names, matches, validate_criteria

PARIS = {"attribute": "city", "operator": "equals", "value": "Paris"}
PREMIUM = {"attribute": "status", "operator": "equals", "value": "premium"}


def test_and_or_exclude_combine():
    tree = {"and": [PARIS, {"exclude": {"attribute": "banned", "operator": "equals", "value": True}}]}
    assert matches(tree, {"city": "paris"})
    assert not matches(tree, {"city": "paris", "banned": True})
    assert not matches(tree, {"city": "Lyon"})
    either = {"or": [PARIS, PREMIUM]}
    assert matches(either, {"status": "PREMIUM"})
    assert not matches(either, {"status": "free", "city": "Rome"})


def test_empty_and_matches_everybody_and_empty_or_nobody():
    assert matches({"and": []}, {})
    assert not matches({"or": []}, {"city": "Paris"})


def test_string_matching_is_case_insensitive_for_values_and_names():
    assert matches(PARIS, {"CITY": " PARIS "})
    assert matches({"attribute": "city", "operator": "contains", "value": "AR"}, {"city": "Paris"})
    assert matches({"attribute": "city", "operator": "not_contains", "value": "yon"}, {"city": "Paris"})


def test_missing_attribute_matches_only_negative_operators():
    assert not matches(PARIS, {})
    assert matches({"attribute": "city", "operator": "not_equals", "value": "Paris"}, {})
    assert matches({"attribute": "city", "operator": "not_exists"}, {})
    assert not matches({"attribute": "city", "operator": "exists"}, {"city": None})


def test_numbers_lists_and_booleans():
    assert matches({"attribute": "age", "operator": "greater_than", "value": 17}, {"age": "18"})
    assert not matches({"attribute": "age", "operator": "less_or_equal", "value": 17}, {"age": 18})
    assert matches({"attribute": "age", "operator": "equals", "value": 18}, {"age": "18.0"})
    assert not matches({"attribute": "age", "operator": "greater_than", "value": 1}, {"age": "old"})
    assert matches({"attribute": "city", "operator": "in", "value": ["Rome", "paris"]}, {"city": "Paris"})
    assert matches({"attribute": "city", "operator": "not_in", "value": ["Rome"]}, {"city": "Paris"})
    assert matches({"attribute": "tags", "operator": "equals", "value": "vip"}, {"tags": ["new", "VIP"]})
    assert matches({"attribute": "optin", "operator": "equals", "value": True}, {"optin": "true"})


@pytest.mark.parametrize(
    ("tree", "path"),
    [
        ([], "criteria: expected an object"),
        ({"and": [PARIS, {"attribute": "x", "operator": "nearly", "value": 1}]}, "criteria.and[1].operator"),
        ({"and": {"attribute": "x"}}, "criteria.and: expected a list"),
        ({"or": [{"exclude": {"attribute": "", "operator": "exists"}}]}, "criteria.or[0].exclude.attribute"),
        ({"and": [], "or": []}, "criteria: expected exactly one"),
        ({"attribute": "age", "operator": "greater_than", "value": "ten"}, "criteria.value"),
        ({"attribute": "age", "operator": "exists", "value": 1}, "criteria.value"),
        ({"attribute": "age", "operator": "in", "value": []}, "criteria.value"),
        ({"attribute": "age", "operator": "equals", "value": 1, "unit": "y"}, "criteria.unit"),
        ({"attribute": "age", "operator": ["equals"], "value": 1}, "criteria.operator"),
    ],
)
def test_validation_points_into_the_tree(tree, path):
    with pytest.raises(CriteriaError) as excinfo:
        validate_criteria(tree)
    assert excinfo.value.messages[0].startswith(path)


def test_attribute_names_lists_what_a_tree_reads():
    assert attribute_names({"and": [PARIS, {"exclude": PREMIUM}]}) == {"city", "status"}

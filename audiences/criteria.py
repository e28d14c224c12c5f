"""Audience criteria, first cut: user-attribute conditions combined with and / or / exclude.

A criteria tree is JSON:

    {"and": [node, ...]}          every node matches (an empty "and" matches everybody)
    {"or": [node, ...]}           at least one node matches
    {"exclude": node}             the node does not match (use inside "and" for AND NOT)
    {"attribute": "status", "operator": "equals", "value": "Premium"}

String comparisons are case-insensitive. The full language (events, identities, other
audiences, dates) extends this tree with more node kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError

MAX_DEPTH = 10
MAX_NODES = 200

STRING_OPERATORS = {"equals", "not_equals", "contains", "not_contains"}
NUMBER_OPERATORS = {"greater_than", "less_than", "greater_or_equal", "less_or_equal"}
LIST_OPERATORS = {"in", "not_in"}
PRESENCE_OPERATORS = {"exists", "not_exists"}
OPERATORS = STRING_OPERATORS | NUMBER_OPERATORS | LIST_OPERATORS | PRESENCE_OPERATORS


class CriteriaError(ValidationError):
    """A criteria tree that cannot be evaluated; the message starts with the path of the problem."""


def validate_criteria(tree: Any) -> dict:
    """Check a criteria tree; raise CriteriaError naming the path (e.g. `and[1].operator`)."""
    counter = [0]
    _validate_node(tree, "criteria", 0, counter)
    return tree


def _fail(path: str, message: str) -> None:
    raise CriteriaError(f"{path}: {message}", code="invalid_criteria")


def _validate_node(node: Any, path: str, depth: int, counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        _fail(path, f"criteria may hold at most {MAX_NODES} nodes")
    if depth > MAX_DEPTH:
        _fail(path, f"criteria may nest at most {MAX_DEPTH} levels")
    if not isinstance(node, Mapping):
        _fail(path, "expected an object")
    if "attribute" in node or "operator" in node:
        _validate_condition(node, path)
        return
    keys = set(node)
    if len(keys) != 1 or not keys <= {"and", "or", "exclude"}:
        _fail(path, "expected exactly one of 'and', 'or', 'exclude', or an attribute condition")
    (kind,) = keys
    if kind == "exclude":
        _validate_node(node["exclude"], f"{path}.exclude", depth + 1, counter)
        return
    children = node[kind]
    if not isinstance(children, list):
        _fail(f"{path}.{kind}", "expected a list")
    for index, child in enumerate(children):
        _validate_node(child, f"{path}.{kind}[{index}]", depth + 1, counter)


def _validate_condition(node: Mapping, path: str) -> None:
    unknown = set(node) - {"attribute", "operator", "value"}
    if unknown:
        _fail(f"{path}.{sorted(unknown)[0]}", "unknown key")
    attribute = node.get("attribute")
    if not isinstance(attribute, str) or not attribute.strip():
        _fail(f"{path}.attribute", "expected a non-empty attribute name")
    if len(attribute) > 256:
        _fail(f"{path}.attribute", "attribute names are at most 256 characters")
    operator = node.get("operator")
    if not isinstance(operator, str) or operator not in OPERATORS:
        _fail(f"{path}.operator", f"unknown operator {operator!r}; expected one of {sorted(OPERATORS)}")
    value = node.get("value")
    if operator in PRESENCE_OPERATORS:
        if "value" in node:
            _fail(f"{path}.value", f"'{operator}' takes no value")
    elif operator in NUMBER_OPERATORS:
        if not _is_number(value):
            _fail(f"{path}.value", f"'{operator}' needs a number")
    elif operator in LIST_OPERATORS:
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            _fail(f"{path}.value", f"'{operator}' needs a non-empty list of strings, numbers or booleans")
    elif not _is_scalar(value):
        _fail(f"{path}.value", f"'{operator}' needs a string, number or boolean")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value is not None


def attribute_names(tree: Mapping) -> set[str]:
    """The user attributes a criteria tree reads (to skip audiences an update cannot affect)."""
    if "attribute" in tree:
        return {tree["attribute"].lower()}
    names: set[str] = set()
    for kind in ("and", "or"):
        for child in tree.get(kind, ()):
            names |= attribute_names(child)
    if "exclude" in tree:
        names |= attribute_names(tree["exclude"])
    return names


def matches(tree: Mapping, attributes: Mapping[str, Any]) -> bool:
    """Evaluate a validated criteria tree against one profile's user attributes."""
    # Attribute names are matched case-insensitively, as values are.
    lowered = {str(k).lower(): v for k, v in attributes.items()}
    return _matches(tree, lowered)


def _matches(node: Mapping, attributes: Mapping[str, Any]) -> bool:
    if "and" in node:
        return all(_matches(child, attributes) for child in node["and"])
    if "or" in node:
        return any(_matches(child, attributes) for child in node["or"])
    if "exclude" in node:
        return not _matches(node["exclude"], attributes)
    return _condition_matches(node, attributes)


def _fold(value: Any) -> Any:
    """Comparable form: strings lower-cased, booleans as 'true'/'false' so "True" == true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip().lower()
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, list):
        return any(_equal(item, expected) for item in actual)
    if _is_number(expected):
        # A number in the criteria compares numerically, so "42" (as sent) equals 42.
        return _as_number(actual) == float(expected)
    return str(_fold(actual)) == str(_fold(expected))


def _condition_matches(node: Mapping, attributes: Mapping[str, Any]) -> bool:
    operator = node["operator"]
    name = node["attribute"].lower()
    present = name in attributes and attributes[name] is not None
    if operator == "exists":
        return present
    if operator == "not_exists":
        return not present
    if not present:
        # A missing attribute matches only the negative operators, as in mParticle.
        return operator in {"not_equals", "not_contains", "not_in"}
    actual = attributes[name]
    expected = node.get("value")
    if operator == "equals":
        return _equal(actual, expected)
    if operator == "not_equals":
        return not _equal(actual, expected)
    if operator in {"contains", "not_contains"}:
        if isinstance(actual, list):
            found = any(str(_fold(expected)) in str(_fold(item)) for item in actual)
        else:
            found = str(_fold(expected)) in str(_fold(actual))
        return found if operator == "contains" else not found
    if operator in {"in", "not_in"}:
        found = any(_equal(actual, option) for option in expected)
        return found if operator == "in" else not found
    number = _as_number(actual)
    if number is None:
        return False
    if operator == "greater_than":
        return number > expected
    if operator == "less_than":
        return number < expected
    if operator == "greater_or_equal":
        return number >= expected
    return number <= expected

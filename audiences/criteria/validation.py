"""Validating a criteria tree: every error names the path of the problem, references form no cycle."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError

from audiences.criteria.buckets import BUCKETS
from audiences.criteria.reading import (
    referenced_audiences,
)
from audiences.criteria.values import (
    date_bounds,
    number_view,
)
from audiences.criteria.vocabulary import (
    AUDIENCE_OPERATORS,
    DATE_OPERATORS,
    DAY_RE,
    FREQUENCY_OPERATORS,
    IDENTITY_OPERATORS,
    MAX_DEPTH,
    MAX_EVENT_COUNT,
    MAX_NAME,
    MAX_NODES,
    MAX_PATTERN,
    MAX_STRING,
    MAX_WINDOW_AMOUNT,
    NODE_KEYS,
    NODE_KINDS,
    NUMBER_OPERATORS,
    OPERATORS,
    PRESENCE_OPERATORS,
    SCALAR_OPERATORS,
    STRING_OPERATORS,
    WINDOW_UNITS,
)
from audiences.identities import IDENTITY_TYPES
from audiences.models import Audience
from config.strict_json import find_unstorable


class CriteriaError(ValidationError):
    """A criteria tree that cannot be evaluated; the message starts with the path of the problem."""


def validate_criteria(tree: Any, *, audience_id: int | None = None) -> dict:
    """Check a criteria tree; raise CriteriaError whose message starts with the path of the problem
    (`criteria.and[1].operator: unknown operator 'nearly'`). Audience references must exist and form no
    cycle with `audience_id` (the audience being edited; None for a new one, which nobody references yet)."""
    # Before anything reads it: a NUL or a lone surrogate cannot be stored (jsonb), a tree of any depth is
    # inspected without recursion (the admin's form reads criteria with Python's lenient json).
    unstorable = find_unstorable(tree, max_depth=MAX_DEPTH * 4)
    if unstorable is not None:
        path, message = unstorable
        _fail(f"criteria.{path}" if path != "$" else "criteria", message)
    counter = [0]
    references: list[tuple[str, int]] = []
    _validate_node(tree, "criteria", 1, counter, references)
    if references:
        _validate_references(references, audience_id)
    return tree


def _fail(path: str, message: str) -> None:
    raise CriteriaError(f"{path}: {message}", code="invalid_criteria")


def _one_of(names: Iterable[str]) -> str:
    """'a' or 'b', for an error message."""
    quoted = [f"'{name}'" for name in sorted(names)]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _count(path: str, counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        _fail(path, f"criteria may hold at most {MAX_NODES} nodes")


def _check_keys(node: Mapping, path: str, allowed: set[str]) -> None:
    for key in node:
        if key not in allowed:
            _fail(f"{path}.{key}", "unknown key")


def _validate_node(node: Any, path: str, depth: int, counter: list[int], references: list) -> None:
    _count(path, counter)
    if depth > MAX_DEPTH:
        _fail(path, f"criteria may nest at most {MAX_DEPTH} levels")
    if not isinstance(node, Mapping):
        _fail(path, "expected an object")
    kinds = [kind for kind in NODE_KINDS if kind in node]
    if len(kinds) != 1:
        expected = ", ".join(f"'{k}'" for k in NODE_KINDS)
        _fail(path, f"expected exactly one of {expected}")
    (kind,) = kinds
    _check_keys(node, path, NODE_KEYS[kind])
    if kind == "exclude":
        _validate_node(node["exclude"], f"{path}.exclude", depth + 1, counter, references)
    elif kind in ("and", "or"):
        children = node[kind]
        if not isinstance(children, list):
            _fail(f"{path}.{kind}", "expected a list")
        for index, child in enumerate(children):
            _validate_node(child, f"{path}.{kind}[{index}]", depth + 1, counter, references)
    elif kind == "attribute":
        _validate_attribute(node, path)
    elif kind == "identity":
        _validate_identity(node, path)
    elif kind == "event":
        _validate_event(node, path, counter)
    elif kind == "split":
        _validate_split(node, path)
    else:
        _validate_audience(node, path, references)


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


def _is_count(value: Any, minimum: int, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum


def _validate_name(value: Any, path: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        _fail(path, f"expected a non-empty {what}")
    if len(value) > MAX_NAME:
        _fail(path, f"{what}s are at most {MAX_NAME} characters")


DATE_FORMS = "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|±HH:MM], UTC unless an offset"


def _validate_date(value: Any, path: str) -> None:
    """A date both evaluators can compute with: date_bounds is the arithmetic they do on it (a day's
    end is the next midnight, which 9999-12-31 does not have), so a date it refuses is refused here."""
    if not isinstance(value, str):
        _fail(path, f"expected a date: {DATE_FORMS}")
    try:
        date_bounds(value)
    except ValueError:
        _fail(path, f"expected a date from 0001-01-01 to 9999-12-30: {DATE_FORMS}")


def _validate_date_range(value: Any, path: str) -> None:
    if not isinstance(value, list) or len(value) != 2:
        _fail(path, "expected [first date, last date]")
    for index, item in enumerate(value):
        _validate_date(item, f"{path}[{index}]")
    start, _, _ = date_bounds(value[0])
    _, end, inclusive = date_bounds(value[1])
    if start > end or (start == end and not inclusive):
        _fail(path, "the first date is after the last one")


def _validate_window(value: Any, path: str) -> None:
    if not isinstance(value, Mapping):
        _fail(path, 'expected {"amount": N, "unit": "days" | "hours"}')
    _check_keys(value, path, {"amount", "unit"})
    if not _is_count(value.get("amount"), 1, MAX_WINDOW_AMOUNT):
        _fail(f"{path}.amount", f"expected a whole number from 1 to {MAX_WINDOW_AMOUNT}")
    if value.get("unit") not in WINDOW_UNITS:
        _fail(f"{path}.unit", f"unknown unit {value.get('unit')!r}; expected {_one_of(WINDOW_UNITS)}")


def _validate_attribute(node: Mapping, path: str) -> None:
    _validate_name(node.get("attribute"), f"{path}.attribute", "attribute name")
    operator = node.get("operator")
    if not isinstance(operator, str) or operator not in OPERATORS:
        _fail(f"{path}.operator", f"unknown operator {operator!r}; expected one of {', '.join(sorted(OPERATORS))}")
    value_path = f"{path}.value"
    if operator in PRESENCE_OPERATORS:
        if "value" in node:
            _fail(value_path, f"'{operator}' takes no value")
        return
    if "value" not in node:
        _fail(value_path, f"'{operator}' needs a value")
    value = node["value"]
    if operator in SCALAR_OPERATORS:
        if not _is_scalar(value):
            _fail(value_path, f"'{operator}' needs a string, number or boolean")
    elif operator in STRING_OPERATORS:
        if not isinstance(value, str):
            _fail(value_path, f"'{operator}' needs a string")
        if len(value) > MAX_STRING:
            _fail(value_path, f"strings are at most {MAX_STRING} characters")
        if operator in ("matches", "not_matches"):
            _validate_pattern(value, value_path)
    elif operator in NUMBER_OPERATORS:
        if not _is_number(value):
            _fail(value_path, f"'{operator}' needs a number")
    elif operator == "between":
        if not isinstance(value, list) or len(value) != 2 or not all(_is_number(v) for v in value):
            _fail(value_path, "'between' needs [low, high], two numbers")
        if number_view(value[0]) > number_view(value[1]):
            _fail(value_path, "'between' needs low <= high")
    elif operator == "date_on":
        if not isinstance(value, str) or not DAY_RE.fullmatch(value):
            _fail(value_path, "'date_on' needs a date YYYY-MM-DD")
        _validate_date(value, value_path)
    elif operator in DATE_OPERATORS:
        _validate_date(value, value_path)
    elif operator == "date_between":
        _validate_date_range(value, value_path)
    else:  # within_last
        _validate_window(value, value_path)


def _validate_identity(node: Mapping, path: str) -> None:
    identity_type = node.get("identity")
    if not isinstance(identity_type, str) or identity_type not in IDENTITY_TYPES:
        _fail(f"{path}.identity", f"unknown identity type {identity_type!r}")
    operator = node.get("operator")
    if not isinstance(operator, str) or operator not in IDENTITY_OPERATORS:
        _fail(
            f"{path}.operator",
            f"unknown operator {operator!r}; expected one of {', '.join(sorted(IDENTITY_OPERATORS))}",
        )
    if operator in PRESENCE_OPERATORS:
        if "value" in node:
            _fail(f"{path}.value", f"'{operator}' takes no value")
    elif not isinstance(node.get("value"), str):
        _fail(f"{path}.value", f"'{operator}' needs a pattern (a string)")
    else:
        _validate_pattern(node["value"], f"{path}.value")


def _validate_pattern(value: str, path: str) -> None:
    # Bounded so that matching stays cheap whatever the value (audiences/criteria/values.py).
    if len(value) > MAX_PATTERN:
        _fail(path, f"patterns are at most {MAX_PATTERN} characters")


def _validate_event(node: Mapping, path: str, counter: list[int]) -> None:
    _validate_name(node.get("event"), f"{path}.event", "event name")
    conditions = node.get("attributes", [])
    if not isinstance(conditions, list):
        _fail(f"{path}.attributes", "expected a list of attribute conditions")
    for index, condition in enumerate(conditions):
        condition_path = f"{path}.attributes[{index}]"
        _count(condition_path, counter)
        if not isinstance(condition, Mapping) or "attribute" not in condition:
            _fail(condition_path, "expected an attribute condition")
        _check_keys(condition, condition_path, NODE_KEYS["attribute"])
        _validate_attribute(condition, condition_path)
    if "frequency" in node:
        frequency = node["frequency"]
        frequency_path = f"{path}.frequency"
        if not isinstance(frequency, Mapping):
            _fail(frequency_path, 'expected {"operator": ..., "count": N}')
        _check_keys(frequency, frequency_path, {"operator", "count"})
        operator = frequency.get("operator")
        if not isinstance(operator, str) or operator not in FREQUENCY_OPERATORS:
            _fail(
                f"{frequency_path}.operator",
                f"unknown operator {operator!r}; expected one of {', '.join(sorted(FREQUENCY_OPERATORS))}",
            )
        minimum = 1 if operator == "fewer_than" else 0
        if not _is_count(frequency.get("count"), minimum, MAX_EVENT_COUNT):
            _fail(f"{frequency_path}.count", f"expected a whole number from {minimum} to {MAX_EVENT_COUNT}")
    if "recency" in node:
        recency = node["recency"]
        recency_path = f"{path}.recency"
        if not isinstance(recency, Mapping) or len(recency) != 1:
            _fail(recency_path, "expected exactly one of 'within_last', 'between'")
        _check_keys(recency, recency_path, {"within_last", "between"})
        if "within_last" in recency:
            _validate_window(recency["within_last"], f"{recency_path}.within_last")
        else:
            _validate_date_range(recency["between"], f"{recency_path}.between")


def _validate_split(node: Mapping, path: str) -> None:
    seed = node["split"]
    if not (isinstance(seed, str) and seed.strip()) and not _is_count(seed, 0, 2**63 - 1):
        _fail(f"{path}.split", "expected a seed: a non-empty string or a whole number")
    if isinstance(seed, str) and len(seed) > MAX_NAME:
        _fail(f"{path}.split", f"seeds are at most {MAX_NAME} characters")
    buckets = node.get("buckets")
    if (
        not isinstance(buckets, list)
        or len(buckets) != 2
        or not all(_is_count(b, 0, BUCKETS) for b in buckets)
        or buckets[0] >= buckets[1]
    ):
        _fail(f"{path}.buckets", f"expected [from, to]: whole percentages, 0 <= from < to <= {BUCKETS}")


def _validate_audience(node: Mapping, path: str, references: list) -> None:
    audience = node.get("audience")
    if not isinstance(audience, int) or isinstance(audience, bool) or audience < 1:
        _fail(f"{path}.audience", "expected an audience id")
    operator = node.get("operator")
    if not isinstance(operator, str) or operator not in AUDIENCE_OPERATORS:
        _fail(f"{path}.operator", f"unknown operator {operator!r}; expected {_one_of(AUDIENCE_OPERATORS)}")
    references.append((f"{path}.audience", audience))


def _validate_references(references: list[tuple[str, int]], audience_id: int | None) -> None:
    graph = {pk: referenced_audiences(tree) for pk, tree in Audience.objects.values_list("id", "criteria")}
    for path, referenced in references:
        if referenced not in graph:
            _fail(path, f"audience {referenced} does not exist")
        if audience_id is None:
            continue  # a new audience: nothing refers to it yet, so it closes no cycle
        if referenced == audience_id:
            _fail(path, f"audience {referenced} is this audience")
        if _reaches(graph, referenced, audience_id):
            _fail(path, f"audience {referenced} refers back to this one")


def _reaches(graph: Mapping[int, set[int]], start: int, target: int) -> bool:
    seen = {start}
    stack = [start]
    while stack:
        for nxt in graph.get(stack.pop(), ()):
            if nxt == target:
                return True
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False

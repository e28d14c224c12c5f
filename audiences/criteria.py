"""The audience criteria language (docs/criteria.md is normative): validation and the per-profile evaluator.

A criteria tree is JSON:

    {"and": [node, ...]}       every node matches (an empty "and" matches everybody)
    {"or": [node, ...]}        at least one node matches (an empty "or" matches nobody)
    {"exclude": node}          the node does not match (inside an "and": AND NOT)
    {"attribute": "status", "operator": "equals", "value": "Premium"}
    {"identity": "email", "operator": "matches", "value": "*@example.com"}
    {"event": "Destination Intro",
     "attributes": [{"attribute": "city", "operator": "equals", "value": "Paris"}],
     "frequency": {"operator": "at_least", "count": 1},
     "recency": {"within_last": {"amount": 30, "unit": "days"}}}
    {"audience": 12, "operator": "member"}

Attribute operators: exists, not_exists, equals, not_equals, contains, not_contains, matches,
not_matches (pattern: * any run, ? one character), greater_than, greater_or_equal, less_than,
less_or_equal, between [low, high], includes, not_includes, partial_match (lists), date_before,
date_after, date_on, date_between [d1, d2], within_last {"amount": N, "unit": "days" | "hours"}.
Event frequency: at_least / more_than / fewer_than N (default more_than 0); recency: within_last
or between [d1, d2] (default the last 30 days). String matching is case-insensitive; dates are UTC.

A tree is compiled once into nested closures (`compile_criteria`), so evaluating it per profile
does not walk the JSON again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.core.exceptions import ValidationError

from audiences.facts import ProfileFacts
from audiences.identities import IDENTITY_TYPES

MAX_DEPTH = 10
MAX_NODES = 200
MAX_NAME = 256
# Bounds what a window can reach back to (about 270 years in days), so `now - amount` never overflows.
MAX_WINDOW_AMOUNT = 100_000
MAX_EVENT_COUNT = 1_000_000
DEFAULT_EVENT_WINDOW = timedelta(days=30)

NEGATIVE_OPERATORS = frozenset({"not_equals", "not_contains", "not_matches", "not_includes"})
PRESENCE_OPERATORS = frozenset({"exists", "not_exists"})
SCALAR_OPERATORS = frozenset({"equals", "not_equals", "includes", "not_includes"})
STRING_OPERATORS = frozenset({"contains", "not_contains", "matches", "not_matches", "partial_match"})
NUMBER_OPERATORS = frozenset({"greater_than", "greater_or_equal", "less_than", "less_or_equal"})
DATE_OPERATORS = frozenset({"date_before", "date_after", "date_on"})
OPERATORS = (
    PRESENCE_OPERATORS
    | SCALAR_OPERATORS
    | STRING_OPERATORS
    | NUMBER_OPERATORS
    | DATE_OPERATORS
    | {"between", "date_between", "within_last"}
)
IDENTITY_OPERATORS = frozenset({"exists", "not_exists", "matches", "not_matches"})
AUDIENCE_OPERATORS = frozenset({"member", "not_member"})
FREQUENCY_OPERATORS = frozenset({"at_least", "more_than", "fewer_than"})
WINDOW_UNITS = {"days": timedelta(days=1), "hours": timedelta(hours=1)}

NODE_KINDS = ("and", "or", "exclude", "attribute", "identity", "event", "audience")
NODE_KEYS = {
    "and": {"and"},
    "or": {"or"},
    "exclude": {"exclude"},
    "attribute": {"attribute", "operator", "value"},
    "identity": {"identity", "operator", "value"},
    "event": {"event", "attributes", "frequency", "recency"},
    "audience": {"audience", "operator"},
}

# The views of docs/criteria.md, written so that PostgreSQL's regular expressions read them the same way.
NUMBER_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
DATE_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"([T ]([0-9]{2}):([0-9]{2})(:([0-9]{2})(\.([0-9]{1,6}))?)?(Z|([+-])([0-9]{2}):?([0-9]{2}))?)?$"
)
DAY_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
TRIMMED = " \t\n\r\f\v"


class CriteriaError(ValidationError):
    """A criteria tree that cannot be evaluated; the message starts with the path of the problem."""


Predicate = Callable[[ProfileFacts, datetime], bool]
ValueTest = Callable[[Any, datetime], bool]


# --- views ------------------------------------------------------------------------------------


def number_view(value: Any) -> Decimal | None:
    """A JSON number, or a string of digits (trimmed); booleans and anything else have none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(str(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        # ASCII whitespace only, as PostgreSQL's btrim does (str.strip() would also take \x1c-\x1f).
        text = value.strip(TRIMMED)
        if NUMBER_RE.fullmatch(text):
            return Decimal(text)
    return None


def boolean_view(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.lower()
        if text == "true":
            return True
        if text == "false":
            return False
    return None


def date_view(value: Any) -> datetime | None:
    """The UTC instant a string names (docs/criteria.md, "Date view"); None for anything else,
    impossible dates included. Numbers are not dates."""
    if not isinstance(value, str):
        return None
    return _parse_date(value)


@lru_cache(maxsize=8192)
def _parse_date(text: str) -> datetime | None:
    # Cached: the same attribute values (birthdays, sign-up dates) are read for every evaluation.
    found = DATE_RE.fullmatch(text)  # fullmatch: `$` alone would accept a final newline
    if found is None:
        return None
    year, month, day = int(found[1]), int(found[2]), int(found[3])
    hour = int(found[5] or 0)
    minute = int(found[6] or 0)
    second = int(found[8] or 0)
    micro = int((found[10] or "0").ljust(6, "0"))
    tz = UTC
    if found[11] and found[11] != "Z":
        offset_hours, offset_minutes = int(found[13]), int(found[14])
        if offset_hours > 23 or offset_minutes > 59:
            return None
        offset = timedelta(hours=offset_hours, minutes=offset_minutes)
        tz = timezone(-offset if found[12] == "-" else offset)
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def date_bounds(text: str) -> tuple[datetime, datetime, bool]:
    """(start, end, end_inclusive) of a date in a condition: a `YYYY-MM-DD` day covers [00:00, next 00:00),
    a timestamp is the instant itself, [t, t]."""
    start = _parse_date(text)
    if start is None:
        raise ValueError(f"not a date: {text!r}")
    if DAY_RE.fullmatch(text):
        return start, start + timedelta(days=1), False
    return start, start, True


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A `matches` pattern as a regular expression on the whole lower-cased text: `*` any run, `?` one character."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()]
    return re.compile("".join(parts), re.DOTALL)


def _window(spec: Mapping[str, Any]) -> timedelta:
    return WINDOW_UNITS[spec["unit"]] * spec["amount"]


# --- validation -------------------------------------------------------------------------------


def validate_criteria(tree: Any, *, audience_id: int | None = None) -> dict:
    """Check a criteria tree; raise CriteriaError whose message starts with the path of the problem
    (`criteria.and[1].operator: unknown operator 'nearly'`). Audience references must exist and form no
    cycle with `audience_id` (the audience being edited; None for a new one, which nobody references yet)."""
    counter = [0]
    references: list[tuple[str, int]] = []
    _validate_node(tree, "criteria", 1, counter, references)
    if references:
        _validate_references(references, audience_id)
    return tree


def _fail(path: str, message: str) -> None:
    raise CriteriaError(f"{path}: {message}", code="invalid_criteria")


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


def _validate_date(value: Any, path: str) -> None:
    if not isinstance(value, str) or date_view(value) is None:
        _fail(path, "expected a date: YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|±HH:MM], UTC unless an offset")


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
        _fail(f"{path}.unit", f"unknown unit {value.get('unit')!r}; expected 'days' or 'hours'")


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
        if len(value) > 4096:
            _fail(value_path, "strings are at most 4096 characters")
    elif operator in NUMBER_OPERATORS:
        if not _is_number(value):
            _fail(value_path, f"'{operator}' needs a number")
    elif operator == "between":
        if not isinstance(value, list) or len(value) != 2 or not all(_is_number(v) for v in value):
            _fail(value_path, "'between' needs [low, high], two numbers")
        if number_view(value[0]) > number_view(value[1]):
            _fail(value_path, "'between' needs low <= high")
    elif operator == "date_on":
        if not isinstance(value, str) or not DAY_RE.fullmatch(value) or date_view(value) is None:
            _fail(value_path, "'date_on' needs a date YYYY-MM-DD")
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


def _validate_audience(node: Mapping, path: str, references: list) -> None:
    audience = node.get("audience")
    if not isinstance(audience, int) or isinstance(audience, bool) or audience < 1:
        _fail(f"{path}.audience", "expected an audience id")
    operator = node.get("operator")
    if not isinstance(operator, str) or operator not in AUDIENCE_OPERATORS:
        _fail(f"{path}.operator", f"unknown operator {operator!r}; expected 'member' or 'not_member'")
    references.append((f"{path}.audience", audience))


def _validate_references(references: list[tuple[str, int]], audience_id: int | None) -> None:
    from audiences.models import Audience

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


# --- reading a (validated) tree ---------------------------------------------------------------


def _walk(tree: Mapping) -> Iterator[Mapping]:
    """Every node of the tree, event attribute conditions included."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        yield node
        if "and" in node or "or" in node:
            stack.extend(node.get("and", node.get("or")) or ())
        elif "exclude" in node:
            stack.append(node["exclude"])
        elif "event" in node:
            stack.extend(node.get("attributes", ()))


def referenced_audiences(tree: Any) -> set[int]:
    """The ids of the audiences the tree's audience conditions name."""
    if not isinstance(tree, Mapping):
        return set()
    return {node["audience"] for node in _walk(tree) if isinstance(node.get("audience"), int)}


def attribute_names(tree: Mapping) -> set[str]:
    """The user attributes a tree reads (not event attributes), lower-cased."""
    return {
        node["attribute"].lower()
        for node in _conditions(tree)
        if "event" not in node and isinstance(node.get("attribute"), str)
    }


def _conditions(tree: Mapping) -> Iterator[Mapping]:
    """The tree's conditions (leaves), without looking inside event conditions."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        if "and" in node or "or" in node:
            stack.extend(node.get("and", node.get("or")) or ())
        elif "exclude" in node:
            stack.append(node["exclude"])
        else:
            yield node


def depends_on_time(tree: Any) -> bool:
    """True when membership can change with the clock alone: any `within_last` (attribute, event
    attribute or event recency, the default recency included)."""
    if not isinstance(tree, Mapping):
        return False
    for node in _walk(tree):
        if node.get("operator") == "within_last":
            return True
        if "event" in node and "between" not in node.get("recency", {}):
            return True
    return False


def event_window_start(tree: Any, now: datetime) -> datetime | None:
    """The earliest event timestamp any event condition of the tree can look at; None without one."""
    window, start = event_lookback(tree)
    starts = [s for s in (now - window if window is not None else None, start) if s is not None]
    return min(starts) if starts else None


def _event_window(node: Mapping, now: datetime) -> tuple[datetime, datetime, bool]:
    """(start, end, end_inclusive) of an event condition's recency at `now`."""
    recency = node.get("recency") or {"within_last": {"amount": 30, "unit": "days"}}
    if "between" in recency:
        first, last = recency["between"]
        start, _, _ = date_bounds(first)
        _, end, inclusive = date_bounds(last)
        return start, end, inclusive
    return now - _window(recency["within_last"]), now, True


# --- the per-profile evaluator ------------------------------------------------------------------


def matches(tree: Mapping, facts: ProfileFacts | Mapping[str, Any], now: datetime | None = None) -> bool:
    """Evaluate a validated tree for one profile at `now`. (Given a plain attribute mapping instead of
    ProfileFacts, it sees a profile with only those attributes: kept for callers of the first cut.)"""
    if not isinstance(facts, ProfileFacts):
        facts = ProfileFacts(profile_id=0, attributes={str(k).lower(): v for k, v in facts.items()})
    if now is None:
        from django.utils import timezone as django_timezone

        now = django_timezone.now()
    return compile_criteria(tree)(facts, now)


def compile_criteria(tree: Mapping) -> Predicate:
    """The tree as one function (facts, now) -> bool, built once: constants (lower-cased strings,
    decimals, patterns, date bounds) are prepared here, not per profile."""
    if "and" in tree or "or" in tree:
        kind = "and" if "and" in tree else "or"
        # Conditions have no side effects, so the cheap ones go first and the scans of events last.
        ordered = sorted(tree[kind], key=_cost)
        children = tuple(compile_criteria(child) for child in ordered)
        if len(children) == 1:
            return children[0]
        if kind == "and":

            def every(facts: ProfileFacts, now: datetime) -> bool:
                for child in children:
                    if not child(facts, now):
                        return False
                return True

            return every

        def some(facts: ProfileFacts, now: datetime) -> bool:
            for child in children:
                if child(facts, now):
                    return True
            return False

        return some
    if "exclude" in tree:
        child = compile_criteria(tree["exclude"])
        return lambda facts, now: not child(facts, now)
    if "attribute" in tree:
        name = tree["attribute"].lower()
        test = compile_value_test(tree["operator"], tree.get("value"))
        return lambda facts, now: test(facts.attributes.get(name), now)
    if "identity" in tree:
        return _compile_identity(tree)
    if "event" in tree:
        return _compile_event(tree)
    audience_id = tree["audience"]
    if tree["operator"] == "member":
        return lambda facts, now: audience_id in facts.memberships
    return lambda facts, now: audience_id not in facts.memberships


def _cost(node: Mapping) -> int:
    """A rough evaluation cost, to order the children of a group: events and nested groups last."""
    if "event" in node:
        return 3
    if "and" in node or "or" in node or "exclude" in node:
        return 2
    if "identity" in node:
        return 1
    return 0


def event_lookback(tree: Any) -> tuple[timedelta | None, datetime | None]:
    """How far back the tree's event conditions look: (the longest `within_last` window, the earliest
    `between` start), each None when no event condition has one. `event_window_start(tree, now)` is
    min(now - window, start)."""
    window: timedelta | None = None
    start: datetime | None = None
    if not isinstance(tree, Mapping):
        return window, start
    for node in _walk(tree):
        if "event" not in node:
            continue
        recency = node.get("recency") or {}
        if "between" in recency:
            first = date_bounds(recency["between"][0])[0]
            start = first if start is None else min(start, first)
        else:
            length = _window(recency["within_last"]) if "within_last" in recency else DEFAULT_EVENT_WINDOW
            window = length if window is None else max(window, length)
    return window, start


def compile_value_test(operator: str, expected: Any) -> ValueTest:
    """An attribute condition as a test of the attribute's value (None when absent), per docs/criteria.md."""
    if operator == "exists":
        return lambda a, now: a is not None
    if operator == "not_exists":
        return lambda a, now: a is None
    positive = _positive_test(operator.removeprefix("not_") if operator in NEGATIVE_OPERATORS else operator, expected)
    if operator in NEGATIVE_OPERATORS:
        # Absent or of the wrong type: negative operators hold.
        return lambda a, now: a is None or not positive(a, now)
    return lambda a, now: a is not None and positive(a, now)


def _equals_test(expected: Any) -> Callable[[Any], bool]:
    """`equals` on one present, non-list value."""
    if isinstance(expected, bool):
        return lambda a: boolean_view(a) is expected
    if isinstance(expected, str):
        text = expected.lower()
        return lambda a: isinstance(a, str) and a.lower() == text
    number = number_view(expected)
    return lambda a: number_view(a) == number


def _positive_test(operator: str, expected: Any) -> ValueTest:
    """The positive form of an operator on a present value; a list is the wrong type except for the
    list operators."""
    if operator == "equals":
        equal = _equals_test(expected)
        return lambda a, now: not isinstance(a, list) and equal(a)
    if operator == "includes":
        equal = _equals_test(expected)
        return lambda a, now: isinstance(a, list) and any(item is not None and equal(item) for item in a)
    if operator == "partial_match":
        text = expected.lower()
        return lambda a, now: isinstance(a, list) and any(isinstance(i, str) and text in i.lower() for i in a)
    if operator == "contains":
        text = expected.lower()
        return lambda a, now: isinstance(a, str) and text in a.lower()
    if operator == "matches":
        fullmatch = pattern_regex(expected).fullmatch
        return lambda a, now: isinstance(a, str) and fullmatch(a.lower()) is not None
    if operator in NUMBER_OPERATORS or operator == "between":
        return _number_test(operator, expected)
    return _date_test(operator, expected)


def _number_test(operator: str, expected: Any) -> ValueTest:
    def view(a: Any) -> Decimal | None:
        return None if isinstance(a, list) else number_view(a)

    if operator == "between":
        low, high = number_view(expected[0]), number_view(expected[1])

        def between(a: Any, now: datetime) -> bool:
            n = view(a)
            return n is not None and low <= n <= high

        return between
    bound = number_view(expected)
    compare = {
        "greater_than": lambda n: n > bound,
        "greater_or_equal": lambda n: n >= bound,
        "less_than": lambda n: n < bound,
        "less_or_equal": lambda n: n <= bound,
    }[operator]

    def test(a: Any, now: datetime) -> bool:
        n = view(a)
        return n is not None and compare(n)

    return test


def _in_range(start: datetime, end: datetime, inclusive: bool) -> Callable[[datetime], bool]:
    if inclusive:
        return lambda d: start <= d <= end
    return lambda d: start <= d < end


def _date_test(operator: str, expected: Any) -> ValueTest:
    if operator == "within_last":
        window = _window(expected)

        def within_last(a: Any, now: datetime) -> bool:
            d = date_view(a)
            return d is not None and now - window <= d <= now

        return within_last
    if operator == "date_before":
        start, _, _ = date_bounds(expected)
        check = lambda d: d < start  # noqa: E731
    elif operator == "date_after":
        start, _, _ = date_bounds(expected)
        check = lambda d: d >= start  # noqa: E731
    elif operator == "date_on":
        start, end, _ = date_bounds(expected)
        check = _in_range(start, end, False)
    else:  # date_between
        start, _, _ = date_bounds(expected[0])
        _, end, inclusive = date_bounds(expected[1])
        check = _in_range(start, end, inclusive)

    def test(a: Any, now: datetime) -> bool:
        d = date_view(a)
        return d is not None and check(d)

    return test


def _compile_identity(node: Mapping) -> Predicate:
    identity_type = node["identity"]
    operator = node["operator"]
    if operator in PRESENCE_OPERATORS:

        def has(facts: ProfileFacts, now: datetime) -> bool:
            return any(t == identity_type for t, _ in facts.identities)

        return has if operator == "exists" else lambda facts, now: not has(facts, now)
    fullmatch = pattern_regex(node["value"]).fullmatch

    def matching(facts: ProfileFacts, now: datetime) -> bool:
        return any(t == identity_type and fullmatch(v.lower()) is not None for t, v in facts.identities)

    return matching if operator == "matches" else lambda facts, now: not matching(facts, now)


def _compile_event(node: Mapping) -> Predicate:
    name = node["event"].lower()
    tests = tuple(
        (c["attribute"].lower(), compile_value_test(c["operator"], c.get("value"))) for c in node.get("attributes", ())
    )
    frequency = node.get("frequency") or {"operator": "more_than", "count": 0}
    count, operator = frequency["count"], frequency["operator"]
    recency = node.get("recency") or {}
    fixed = _event_window(node, datetime.now(UTC)) if "between" in recency else None
    window = _window(recency["within_last"]) if "within_last" in recency else DEFAULT_EVENT_WINDOW

    def qualifying(facts: ProfileFacts, now: datetime) -> int:
        if fixed is None:
            start, end, inclusive = now - window, now, True
        else:
            start, end, inclusive = fixed
        found = 0
        for event in facts.events:
            if event.name != name:
                continue
            t = event.timestamp
            if t < start or t > end or (t == end and not inclusive):
                continue
            attributes = event.attributes
            if all(test(attributes.get(attribute), now) for attribute, test in tests):
                found += 1
                # Enough to decide: stop counting (a profile may carry thousands of events).
                if operator != "fewer_than" and found > count:
                    break
                if operator == "fewer_than" and found >= count:
                    break
        return found

    if operator == "at_least":
        return lambda facts, now: qualifying(facts, now) >= count
    if operator == "more_than":
        return lambda facts, now: qualifying(facts, now) > count
    return lambda facts, now: qualifying(facts, now) < count

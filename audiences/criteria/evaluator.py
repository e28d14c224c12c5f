"""The per-profile evaluator: a tree compiled once into nested closures, then applied to ProfileFacts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from operator import ge, gt, le, lt
from typing import Any

from django.utils import timezone

from audiences.criteria.buckets import profile_bucket, seed_text
from audiences.criteria.facts import ProfileFacts
from audiences.criteria.reading import _event_window
from audiences.criteria.values import (
    boolean_view,
    date_bounds,
    date_view,
    number_view,
    pattern_matcher,
)
from audiences.criteria.vocabulary import (
    DEFAULT_EVENT_WINDOW,
    DEFAULT_FREQUENCY,
    NUMBER_COMPARISONS,
    NUMBER_OPERATORS,
    POSITIVE_OF,
    PRESENCE_OPERATORS,
    window,
)

# A compiled tree: does this profile match at `now`? And a compiled attribute condition on one value.
Predicate = Callable[[ProfileFacts, datetime], bool]
ValueTest = Callable[[Any, datetime], bool]
# The evaluator's meaning of each comparison symbol of NUMBER_COMPARISONS.
COMPARE = {">": gt, ">=": ge, "<": lt, "<=": le}


def matches(tree: Mapping, facts: ProfileFacts | Mapping[str, Any], now: datetime | None = None) -> bool:
    """Evaluate a validated tree for one profile at `now`. (Given a plain attribute mapping instead of
    ProfileFacts, it sees a profile with only those attributes: kept for callers of the first cut.)"""
    if not isinstance(facts, ProfileFacts):
        facts = ProfileFacts(profile_id=0, attributes={str(k).lower(): v for k, v in facts.items()})
    if now is None:
        now = timezone.now()
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
    if "split" in tree:
        seed, (low, high) = seed_text(tree["split"]), tree["buckets"]
        return lambda facts, now: low <= profile_bucket(facts.profile_id, seed) < high
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


def compile_value_test(operator: str, expected: Any) -> ValueTest:
    """An attribute condition as a test of the attribute's value (None when absent), per docs/criteria.md."""
    if operator == "exists":
        return lambda a, now: a is not None
    if operator == "not_exists":
        return lambda a, now: a is None
    positive = _positive_test(POSITIVE_OF.get(operator, operator), expected)
    if operator in POSITIVE_OF:
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
        matching = pattern_matcher(expected)
        return lambda a, now: isinstance(a, str) and matching(a.lower())
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
    compare = COMPARE[NUMBER_COMPARISONS[operator]]

    def test(a: Any, now: datetime) -> bool:
        n = view(a)
        return n is not None and compare(n, bound)

    return test


def _in_range(start: datetime, end: datetime, inclusive: bool) -> Callable[[datetime], bool]:
    if inclusive:
        return lambda d: start <= d <= end
    return lambda d: start <= d < end


def _date_test(operator: str, expected: Any) -> ValueTest:
    if operator == "within_last":
        length = window(expected)

        def within_last(a: Any, now: datetime) -> bool:
            d = date_view(a)
            return d is not None and now - length <= d <= now

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
    matching_value = pattern_matcher(node["value"])

    def matching(facts: ProfileFacts, now: datetime) -> bool:
        return any(t == identity_type and matching_value(v.lower()) for t, v in facts.identities)

    return matching if operator == "matches" else lambda facts, now: not matching(facts, now)


def _compile_event(node: Mapping) -> Predicate:
    name = node["event"].lower()
    tests = tuple(
        (c["attribute"].lower(), compile_value_test(c["operator"], c.get("value"))) for c in node.get("attributes", ())
    )
    frequency = node.get("frequency") or DEFAULT_FREQUENCY
    count, operator = frequency["count"], frequency["operator"]
    recency = node.get("recency") or {}
    fixed = _event_window(node, datetime.now(UTC)) if "between" in recency else None
    length = window(recency["within_last"]) if "within_last" in recency else DEFAULT_EVENT_WINDOW

    def qualifying(facts: ProfileFacts, now: datetime) -> int:
        if fixed is None:
            start, end, inclusive = now - length, now, True
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

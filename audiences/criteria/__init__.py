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
    {"split": "seed", "buckets": [0, 50]}   A/B split: the profile's bucket (0..99, criteria/buckets.py) in [0, 50)

Attribute operators: exists, not_exists, equals, not_equals, contains, not_contains, matches,
not_matches (pattern: * any run, ? one character), greater_than, greater_or_equal, less_than,
less_or_equal, between [low, high], includes, not_includes, partial_match (lists), date_before,
date_after, date_on, date_between [d1, d2], within_last {"amount": N, "unit": "days" | "hours"}.
Event frequency: at_least / more_than / fewer_than N (default more_than 0); recency: within_last
or between [d1, d2] (default the last 30 days). String matching is case-insensitive; dates are UTC.

A tree is compiled once into nested closures (`compile_criteria`), so evaluating it per profile
does not walk the JSON again.
"""

# The public surface, gathered from the modules that hold each part.
from audiences.criteria.evaluator import (
    Predicate,
    ValueTest,
    compile_criteria,
    compile_value_test,
    matches,
)
from audiences.criteria.reading import (
    attribute_names,
    depends_on_time,
    event_lookback,
    event_window_start,
    lookback_start,
    referenced_audiences,
)
from audiences.criteria.validation import (
    CriteriaError,
    validate_criteria,
)
from audiences.criteria.values import (
    boolean_view,
    date_bounds,
    date_view,
    number_view,
    pattern_matcher,
)
from audiences.criteria.vocabulary import (
    AUDIENCE_OPERATORS,
    DATE_OPERATORS,
    DATE_RE,
    DAY_RE,
    DEFAULT_EVENT_WINDOW,
    FREQUENCY_OPERATORS,
    IDENTITY_OPERATORS,
    MAX_DEPTH,
    MAX_EVENT_COUNT,
    MAX_NAME,
    MAX_NODES,
    MAX_WINDOW_AMOUNT,
    NEGATIVE_OPERATORS,
    NODE_KEYS,
    NODE_KINDS,
    NUMBER_OPERATORS,
    NUMBER_RE,
    OPERATORS,
    PRESENCE_OPERATORS,
    SCALAR_OPERATORS,
    STRING_OPERATORS,
    TRIMMED,
    WINDOW_UNITS,
)

__all__ = [
    "AUDIENCE_OPERATORS",
    "DATE_OPERATORS",
    "DATE_RE",
    "DAY_RE",
    "DEFAULT_EVENT_WINDOW",
    "FREQUENCY_OPERATORS",
    "IDENTITY_OPERATORS",
    "MAX_DEPTH",
    "MAX_EVENT_COUNT",
    "MAX_NAME",
    "MAX_NODES",
    "MAX_WINDOW_AMOUNT",
    "NEGATIVE_OPERATORS",
    "NODE_KEYS",
    "NODE_KINDS",
    "NUMBER_OPERATORS",
    "NUMBER_RE",
    "OPERATORS",
    "PRESENCE_OPERATORS",
    "SCALAR_OPERATORS",
    "STRING_OPERATORS",
    "TRIMMED",
    "WINDOW_UNITS",
    "CriteriaError",
    "Predicate",
    "ValueTest",
    "attribute_names",
    "boolean_view",
    "compile_criteria",
    "compile_value_test",
    "date_bounds",
    "date_view",
    "depends_on_time",
    "event_lookback",
    "event_window_start",
    "lookback_start",
    "matches",
    "number_view",
    "pattern_matcher",
    "referenced_audiences",
    "validate_criteria",
]

"""The criteria language's vocabulary (docs/criteria.md): limits, node kinds, operators, time units and
windows, the defaults of event conditions, and the forms of values. Declared once, here: validation and
both evaluators (the per-profile one and the SQL compiler) read them from this module."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

# --- limits ---------------------------------------------------------------------------------

MAX_DEPTH = 10
MAX_NODES = 200
MAX_NAME = 256
MAX_STRING = 4096  # a string operand
# A `matches` pattern: with values of at most 4,096 characters (the Events API's and the REST API's
# limit), the matcher's worst case stays a few million steps (audiences/criteria/values.py).
MAX_PATTERN = 256
# Bounds what a window can reach back to (about 270 years in days), so `now - amount` never overflows.
MAX_WINDOW_AMOUNT = 100_000
MAX_EVENT_COUNT = 1_000_000

# --- nodes ----------------------------------------------------------------------------------

NODE_KINDS = ("and", "or", "exclude", "attribute", "identity", "event", "audience", "split")
NODE_KEYS = {
    "and": {"and"},
    "or": {"or"},
    "exclude": {"exclude"},
    "attribute": {"attribute", "operator", "value"},
    "identity": {"identity", "operator", "value"},
    "event": {"event", "attributes", "frequency", "recency"},
    "audience": {"audience", "operator"},
    # An A/B split: the profiles whose bucket (criteria/buckets.py) is in [from, to).
    "split": {"split", "buckets"},
}

# --- operators ------------------------------------------------------------------------------

# Each negative operator is NOT its positive one (absent or wrong-typed values make it true).
POSITIVE_OF = {"not_equals": "equals", "not_contains": "contains", "not_matches": "matches", "not_includes": "includes"}
NEGATIVE_OPERATORS = frozenset(POSITIVE_OF)
PRESENCE_OPERATORS = frozenset({"exists", "not_exists"})
SCALAR_OPERATORS = frozenset({"equals", "not_equals", "includes", "not_includes"})
STRING_OPERATORS = frozenset({"contains", "not_contains", "matches", "not_matches", "partial_match"})
# Each number comparison as its symbol (SQL's, and the evaluator's key to Python's operator functions).
NUMBER_COMPARISONS = {"greater_than": ">", "greater_or_equal": ">=", "less_than": "<", "less_or_equal": "<="}
NUMBER_OPERATORS = frozenset(NUMBER_COMPARISONS)
# One date each; with date_between and within_last, the operators that read a value's date view.
DATE_OPERATORS = frozenset({"date_before", "date_after", "date_on"})
DATE_VIEW_OPERATORS = DATE_OPERATORS | {"date_between", "within_last"}
OPERATORS = (
    PRESENCE_OPERATORS | SCALAR_OPERATORS | STRING_OPERATORS | NUMBER_OPERATORS | DATE_VIEW_OPERATORS | {"between"}
)
IDENTITY_OPERATORS = frozenset({"exists", "not_exists", "matches", "not_matches"})
AUDIENCE_OPERATORS = frozenset({"member", "not_member"})
FREQUENCY_OPERATORS = frozenset({"at_least", "more_than", "fewer_than"})

# --- time -----------------------------------------------------------------------------------

WINDOW_UNITS = {"days": timedelta(days=1), "hours": timedelta(hours=1)}


def window(spec: Mapping[str, Any]) -> timedelta:
    """The length of a validated window {"amount": N, "unit": "days" | "hours"}."""
    return WINDOW_UNITS[spec["unit"]] * spec["amount"]


# An event condition without frequency or recency: "more than 0 times in the last 30 days".
DEFAULT_FREQUENCY = {"operator": "more_than", "count": 0}
DEFAULT_RECENCY = {"within_last": {"amount": 30, "unit": "days"}}
DEFAULT_EVENT_WINDOW = window(DEFAULT_RECENCY["within_last"])

# --- forms of values ------------------------------------------------------------------------

# The views of docs/criteria.md, written so that PostgreSQL's regular expressions read them the same way.
NUMBER_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
DATE_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"([T ]([0-9]{2}):([0-9]{2})(:([0-9]{2})(\.([0-9]{1,6}))?)?(Z|([+-])([0-9]{2}):?([0-9]{2}))?)?$"
)
DAY_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
TRIMMED = " \t\n\r\f\v"

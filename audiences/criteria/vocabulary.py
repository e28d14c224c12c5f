"""The criteria language's vocabulary: limits, operators, node kinds, value forms (docs/criteria.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError

from audiences.criteria.facts import ProfileFacts

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

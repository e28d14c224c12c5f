"""The set-based criteria evaluator: a criteria tree compiled to one PostgreSQL query (docs/criteria.md).

`member_sql(tree, now=now)` returns `SELECT p.id AS profile_id FROM audiences_profile p WHERE <expr>` and its
parameters; it selects exactly the profiles for which `audiences.criteria.matches(tree, facts, now)` is true
(tests/audiences/criteria/test_equivalence.py shows it).

Every node compiles to a boolean SQL expression that is never NULL, so that NOT and OR keep the meaning of
the spec (a NULL would make `NOT x` drop the very rows "absent → negative operators are true" must keep):
each positive condition is wrapped in COALESCE(..., false) and a negative operator is NOT of its positive.

Event conditions read the events table once per condition, set-wise, through the expression index on
(lower(name), timestamp): `p.id IN (SELECT profile_id ... GROUP BY profile_id HAVING count(*) >= N)`.
The value views (numeric, boolean, date) are SQL functions created by migration 0002_sql_functions.

User values are always parameters; the SQL text holds only table names from model metadata and constants.
"""

# ruff: noqa: S608 (the SQL text holds table names from model metadata and constants; values are parameters)
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from audiences.criteria.buckets import BUCKET_SQL, seed_text
from audiences.criteria.values import date_bounds
from audiences.criteria.vocabulary import (
    DATE_VIEW_OPERATORS,
    DEFAULT_FREQUENCY,
    DEFAULT_RECENCY,
    NUMBER_COMPARISONS,
    POSITIVE_OF,
    window,
)
from audiences.models import AudienceMembership, Event, Identity, Profile

PROFILE_TABLE = Profile._meta.db_table
EVENT_TABLE = Event._meta.db_table
IDENTITY_TABLE = Identity._meta.db_table
MEMBERSHIP_TABLE = AudienceMembership._meta.db_table


def member_sql(tree: Mapping, *, now: datetime) -> tuple[str, list]:
    """The query selecting the ids of the profiles matching a validated criteria tree at `now`."""
    compiler = _Compiler(now)
    expr = compiler.node(tree, "p")
    return compiler.finish(f"SELECT p.id AS profile_id FROM {PROFILE_TABLE} p WHERE {expr}")


def like_pattern(pattern: str) -> str:
    """A criteria pattern (`*` any run, `?` one character) as a LIKE pattern with escape character `\\`."""
    out = []
    for char in pattern.lower():
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


_PLACEHOLDER_RE = re.compile("\x00([0-9]+)\x00")


class _Compiler:
    """Builds the SQL text with a marker per value; finish() turns the markers into %s and lists the values
    in the order they appear (a fragment may be used twice, e.g. an attribute's value)."""

    def __init__(self, now: datetime):
        self.now = now
        self.values: list[Any] = []

    def param(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"\x00{len(self.values) - 1}\x00::{cast}"

    def finish(self, sql: str) -> tuple[str, list]:
        params: list[Any] = []

        def placeholder(match: re.Match) -> str:
            params.append(self.values[int(match.group(1))])
            return "%s"

        return _PLACEHOLDER_RE.sub(placeholder, sql), params

    # --- groups --------------------------------------------------------------------------

    def node(self, node: Mapping, alias: str) -> str:
        if "and" in node:
            parts = [self.node(child, alias) for child in node["and"]]
            return "(" + " AND ".join(parts) + ")" if parts else "true"
        if "or" in node:
            parts = [self.node(child, alias) for child in node["or"]]
            return "(" + " OR ".join(parts) + ")" if parts else "false"
        if "exclude" in node:
            return f"(NOT {self.node(node['exclude'], alias)})"
        if "attribute" in node:
            return self.attribute(node, f"{alias}.attributes")
        if "identity" in node:
            return self.identity(node)
        if "event" in node:
            return self.event(node)
        if "audience" in node:
            return self.audience(node)
        if "split" in node:
            return self.split(node)
        raise ValueError(f"unknown criteria node: {sorted(node)}")

    # --- attribute conditions ------------------------------------------------------------

    def attribute(self, node: Mapping, container: str) -> str:
        """An attribute condition on a jsonb object column (a profile's or an event's attributes)."""
        operator = node["operator"]
        if operator in POSITIVE_OF:
            positive = {**node, "operator": POSITIVE_OF[operator]}
            return f"(NOT {self.attribute(positive, container)})"
        value_sql = f"({container} -> {self.param(node['attribute'].lower(), 'text')})"
        if operator == "not_exists":
            return f"(NOT {self.present(value_sql)})"
        if operator == "exists":
            return self.present(value_sql)
        if operator in ("includes", "partial_match"):
            element = self.value_test(operator, "el.value", node.get("value"))
            return (
                f"(CASE WHEN jsonb_typeof({value_sql}) = 'array' THEN "
                f"EXISTS (SELECT 1 FROM jsonb_array_elements({value_sql}) el WHERE {element}) ELSE false END)"
            )
        return self.value_test(operator, value_sql, node.get("value"))

    @staticmethod
    def present(value_sql: str) -> str:
        # A missing key gives NULL, a JSON null gives 'null': both are absent.
        return f"COALESCE(jsonb_typeof({value_sql}) <> 'null', false)"

    def value_test(self, operator: str, v: str, value: Any) -> str:
        """A positive operator on one jsonb value `v` (a scalar operator; lists are the wrong type)."""
        text = f"({v} #>> '{{}}')"
        is_string = f"jsonb_typeof({v}) = 'string'"
        if operator in ("equals", "includes"):
            if isinstance(value, bool):
                test = f"af_boolean({v}) = {self.param(value, 'boolean')}"
            elif isinstance(value, int | float):
                test = f"af_numeric({v}) = {self.param(_decimal(value), 'numeric')}"
            else:
                test = f"{is_string} AND lower({text}) = {self.param(str(value).lower(), 'text')}"
        elif operator in ("contains", "partial_match"):
            test = f"{is_string} AND strpos(lower({text}), {self.param(str(value).lower(), 'text')}) > 0"
        elif operator == "matches":
            test = f"{is_string} AND lower({text}) LIKE {self.param(like_pattern(str(value)), 'text')} ESCAPE '\\'"
        elif operator in NUMBER_COMPARISONS:
            test = f"af_numeric({v}) {NUMBER_COMPARISONS[operator]} {self.param(_decimal(value), 'numeric')}"
        elif operator == "between":
            low, high = value
            test = (
                f"af_numeric({v}) BETWEEN {self.param(_decimal(low), 'numeric')} "
                f"AND {self.param(_decimal(high), 'numeric')}"
            )
        elif operator in DATE_VIEW_OPERATORS:
            start, end, end_inclusive = self.date_range(operator, value)
            test = self.in_range(f"af_timestamp({text})", start, end, end_inclusive)
        else:
            raise ValueError(f"unknown operator {operator!r}")
        return f"COALESCE({test}, false)"

    def date_range(self, operator: str, value: Any) -> tuple[datetime | None, datetime | None, bool]:
        """(lowest, highest, highest inclusive) instants a date operator accepts; None is unbounded."""
        if operator == "date_before":
            return None, date_bounds(value)[0], False
        if operator == "date_after":
            return date_bounds(value)[0], None, False
        if operator == "date_on":
            start, end, _ = date_bounds(value)
            return start, end, False
        if operator == "date_between":
            start = date_bounds(value[0])[0]
            _, end, end_inclusive = date_bounds(value[1])
            return start, end, end_inclusive
        # within_last
        return self.now - window(value), self.now, True

    def in_range(self, column: str, start: datetime | None, end: datetime | None, end_inclusive: bool) -> str:
        parts = []
        if start is not None:
            parts.append(f"{column} >= {self.param(start, 'timestamptz')}")
        if end is not None:
            parts.append(f"{column} {'<=' if end_inclusive else '<'} {self.param(end, 'timestamptz')}")
        return " AND ".join(parts)

    # --- identity, audience and event conditions -----------------------------------------

    def identity(self, node: Mapping) -> str:
        operator = node["operator"]
        type_sql = self.param(node["identity"], "text")
        if operator in ("exists", "not_exists"):
            found = f"EXISTS (SELECT 1 FROM {IDENTITY_TABLE} i WHERE i.profile_id = p.id AND i.type = {type_sql})"
        else:
            pattern = self.param(like_pattern(str(node["value"])), "text")
            found = (
                f"EXISTS (SELECT 1 FROM {IDENTITY_TABLE} i WHERE i.profile_id = p.id AND i.type = {type_sql} "
                f"AND lower(i.value) LIKE {pattern} ESCAPE '\\')"
            )
        return found if operator in ("exists", "matches") else f"(NOT {found})"

    def audience(self, node: Mapping) -> str:
        audience_id = self.param(int(node["audience"]), "bigint")
        member = f"p.id IN (SELECT m.profile_id FROM {MEMBERSHIP_TABLE} m WHERE m.audience_id = {audience_id})"
        return member if node["operator"] == "member" else f"(NOT {member})"

    def split(self, node: Mapping) -> str:
        low, high = node["buckets"]
        bucket = BUCKET_SQL.format(seed=self.param(seed_text(node["split"]), "text"), profile_id="p.id")
        return f"({bucket} >= {self.param(int(low), 'integer')} AND {bucket} < {self.param(int(high), 'integer')})"

    def event(self, node: Mapping) -> str:
        frequency = node.get("frequency") or DEFAULT_FREQUENCY
        count = int(frequency["count"])
        # Everything is a question "at least N matching events?"; fewer_than N is its negation.
        at_least = count + 1 if frequency["operator"] == "more_than" else count
        negate = frequency["operator"] == "fewer_than"
        if at_least <= 0:
            return "false" if negate else "true"
        recency = node.get("recency") or DEFAULT_RECENCY
        if "within_last" in recency:
            start, end, end_inclusive = self.date_range("within_last", recency["within_last"])
        else:
            start, end, end_inclusive = self.date_range("date_between", recency["between"])
        filters = [
            f"lower(e.name) = {self.param(node['event'].lower(), 'text')}",
            self.in_range("e.timestamp", start, end, end_inclusive),
        ]
        filters += [self.attribute(condition, "e.attributes") for condition in node.get("attributes") or ()]
        having = "" if at_least == 1 else f" GROUP BY e.profile_id HAVING count(*) >= {self.param(at_least, 'bigint')}"
        subquery = f"SELECT e.profile_id FROM {EVENT_TABLE} e WHERE {' AND '.join(filters)}{having}"
        return f"(p.id NOT IN ({subquery}))" if negate else f"(p.id IN ({subquery}))"


def _decimal(value: int | float) -> Decimal:
    # The spec compares exact decimals of the JSON text: Decimal(str(0.1)) is 0.1, not the binary float.
    return Decimal(str(value))

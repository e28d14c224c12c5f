"""Reading a validated tree: what it refers to, whether it depends on time, which events it can see."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from audiences.criteria.values import date_bounds
from audiences.criteria.vocabulary import DEFAULT_EVENT_WINDOW, DEFAULT_RECENCY, window


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
    return lookback_start(*event_lookback(tree), now)


def lookback_start(longest: timedelta | None, earliest: datetime | None, now: datetime) -> datetime | None:
    """The earliest instant an event_lookback() (the longest window, the earliest fixed start) reaches at
    `now`: the earlier of the two; None when both are None."""
    starts = [s for s in (now - longest if longest is not None else None, earliest) if s is not None]
    return min(starts) if starts else None


def _event_window(node: Mapping, now: datetime) -> tuple[datetime, datetime, bool]:
    """(start, end, end_inclusive) of an event condition's recency at `now`."""
    recency = node.get("recency") or DEFAULT_RECENCY
    if "between" in recency:
        first, last = recency["between"]
        start, _, _ = date_bounds(first)
        _, end, inclusive = date_bounds(last)
        return start, end, inclusive
    return now - window(recency["within_last"]), now, True


def event_lookback(tree: Any) -> tuple[timedelta | None, datetime | None]:
    """How far back the tree's event conditions look: (the longest `within_last` window, the earliest
    `between` start), each None when no event condition has one. `event_window_start(tree, now)` is
    min(now - window, start)."""
    longest: timedelta | None = None
    start: datetime | None = None
    if not isinstance(tree, Mapping):
        return longest, start
    for node in _walk(tree):
        if "event" not in node:
            continue
        recency = node.get("recency") or {}
        if "between" in recency:
            first = date_bounds(recency["between"][0])[0]
            start = first if start is None else min(start, first)
        else:
            length = window(recency["within_last"]) if "within_last" in recency else DEFAULT_EVENT_WINDOW
            longest = length if longest is None else max(longest, length)
    return longest, start

"""The views of a value the conditions compare: numeric, boolean, date, and patterns (docs/criteria.md)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from audiences.criteria.vocabulary import (
    DATE_RE,
    DAY_RE,
    NUMBER_RE,
    TRIMMED,
)


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
        if start > LATEST_DAY_START:
            # 9999-12-31 has no next midnight in Python (nor in the evaluators that use one).
            raise ValueError(f"a date after 9999-12-30: {text!r}")
        return start, start + timedelta(days=1), False
    return start, start, True


# The last day whose end (the next midnight) a datetime can hold: date_bounds refuses days after it, and
# validation refuses them in criteria (both evaluators compute that end for date_on, date_before/after,
# date_between and event recency).
LATEST_DAY_START = datetime(9999, 12, 30, tzinfo=UTC)


def pattern_matcher(pattern: str) -> Callable[[str], bool]:
    """A `matches` pattern (`*` any run, `?` one character) as a test of a whole lower-cased text, in
    bounded time: no backtracking regex (`.*/.*/.*\\.pdf` takes cubic time on a long value).

    The pattern splits at its `*`s into pieces of fixed length (a `?` or a character is one character
    each). The first piece must start the text, the last must end it, and each piece between is taken
    where it first occurs after the previous one: the earliest place leaves the most room for the rest,
    so if any placement works this one does. Each piece is a search without quantifiers, so the whole
    costs at most len(text) x len(pattern) steps, and about len(text) in practice."""
    pieces = pattern.lower().split("*")
    if len(pieces) == 1:
        whole = _piece_regex(pieces[0])
        return lambda text: len(text) == len(pieces[0]) and whole.match(text) is not None
    head, *middle, tail = pieces
    head_re, tail_re = _piece_regex(head), _piece_regex(tail)
    middle_res = [_piece_regex(piece) for piece in middle if piece]
    least = len(head) + len(tail) + sum(len(piece) for piece in middle)

    def matching(text: str) -> bool:
        if len(text) < least or head_re.match(text) is None:
            return False
        end = len(text) - len(tail)
        if tail_re.match(text, end) is None:
            return False
        position = len(head)
        for piece in middle_res:
            found = piece.search(text, position, end)
            if found is None:
                return False
            position = found.end()
        return True

    return matching


def _piece_regex(piece: str) -> re.Pattern[str]:
    """A piece of a pattern without `*`: a regex with no quantifier, so matching it never backtracks."""
    return re.compile("".join("." if c == "?" else re.escape(c) for c in piece), re.DOTALL)

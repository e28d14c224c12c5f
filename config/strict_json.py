"""One strict JSON reader for every body the service accepts (the Events API and the REST API).

Python's json module reads more than JSON, and more than PostgreSQL stores: `NaN` and `Infinity`, a
`1e400` that becomes an infinite float, `\\u0000` (jsonb and text columns refuse it), lone surrogates such
as `\\ud800` (not encodable as UTF-8), and nesting deep enough to exhaust the interpreter's recursion. Each
of those used to reach the database, or crash the parser, and answer 500. Here each is refused up front
with the JSON path of the first offending value (`events[2].data.custom_attributes.x`, `$` for the whole
body), so the callers answer a clean 400 and write nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

# Deeper than any body this service reads (a batch is about five levels, criteria at most ten nodes deep
# plus their keys); far below where the parser's recursion would fail.
MAX_DEPTH = 64
# A character PostgreSQL cannot store in text or jsonb (NUL) or UTF-8 cannot encode (a lone surrogate).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class JsonError(ValueError):
    """A body that is not strict JSON; `path` names where (`$` for the body as a whole)."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")


class _LongNumber(str):
    """An integer with more digits than any stored number has: kept as its text until reported with its path."""


def _bounded_int(text: str) -> int | _LongNumber:
    # Python itself refuses over 4,300 digits (a ValueError without a path); no stored number needs 40.
    return _LongNumber(text) if len(text.lstrip("-")) > 40 else int(text)


def loads(body: bytes | str, *, check_values: bool = True) -> Any:
    """Parse a JSON document strictly (see the module's docstring); raise JsonError naming the path.

    check_values=False leaves the values to the caller (find_unstorable on each part): a bulk request
    refuses only the batch holding a NaN or a NUL, not the batches beside it."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError("$", f"The body is not UTF-8 ({exc.reason} at byte {exc.start}).") from None
    if not body.strip():
        raise JsonError("$", "Expected a JSON body; it is empty.")
    try:
        # NaN, Infinity and 1e400 parse as floats that are not finite: find_unstorable reports them by path.
        data = json.loads(body, parse_int=_bounded_int)
    except RecursionError:
        raise JsonError("$", f"JSON nested deeper than {MAX_DEPTH} levels.") from None
    except ValueError as exc:
        raise JsonError("$", f"Malformed JSON: {exc}") from None
    problem = find_unstorable(data) if check_values else None
    if problem is not None:
        raise JsonError(*problem)
    return data


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def find_unstorable(data: Any, *, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """(path, message) of the first value the service cannot store or should not read: a NUL or a lone
    surrogate in a string or a key, a float that is not finite (NaN, Infinity, 1e400), an integer of over
    40 digits, nesting deeper than `max_depth`. None when
    the data is clean. Iterative, so any depth is safe to inspect."""
    stack: list[tuple[str, Any, int]] = [("", data, 1)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, _LongNumber):
            return path or "$", "Numbers have at most 40 digits."
        if isinstance(value, str):
            if UNSTORABLE.search(value):
                return path or "$", _unstorable_message(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                return path or "$", "Numbers must be finite: no NaN, no Infinity, nothing beyond a double (1e400)."
        elif isinstance(value, Mapping | list):
            if depth > max_depth:
                return path or "$", f"JSON nested deeper than {max_depth} levels."
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            children = []
            for key, item in items:
                item_path = _join(path, key if isinstance(key, int) else _printable(str(key)))
                if isinstance(key, str) and UNSTORABLE.search(key):
                    return item_path, f"Names: {_unstorable_message(key)}"
                children.append((item_path, item, depth + 1))
            stack.extend(reversed(children))  # the first problem in the document's order is the one named
    return None


def _unstorable_message(text: str) -> str:
    found = UNSTORABLE.search(text)
    if found is not None and found.group() == "\x00":
        return "Strings may not contain the NUL character (\\u0000)."
    return "Strings may not contain lone surrogates (\\ud800-\\udfff): not valid Unicode text."


def _printable(name: str) -> str:
    """A key as it can appear in a path (an error message must itself be storable and encodable)."""
    name = UNSTORABLE.sub("\ufffd", name)
    return name if len(name) <= 60 else name[:60] + "…"

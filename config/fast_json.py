"""JSON on delivery's hot path, in C: orjson where it gives the same answer, the json module where it does not.

A 500-member Mailchimp batch is encoded, its answer (every member's record) decoded, and the claim and the
record each go through one JSON document: with the json module that was a quarter of the worker's CPU.
orjson reads and writes the same JSON several times faster. Where it refuses what the json module accepts
(`NaN`, `1e400`, integers beyond 64 bits, keys that are not strings) the json module answers instead, so
what is accepted, and how, does not change; only orjson's output is compact (no spaces), which no reader
of these documents depends on. Fingerprints (forwarding/partner_calls.py) keep the json module: they are
stored, and their text must not change.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """json.loads, faster: the same values for the same text (the json module reads what orjson refuses)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """UTF-8 JSON of `value` (compact); the json module writes what orjson refuses."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError: a big integer, a non-string key, another type
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

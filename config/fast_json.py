"""JSON on delivery's hot path, in C: orjson where it gives the same answer, the json module where it does not.

A 500-member Mailchimp batch is encoded, its answer (every member's record) decoded, and the claim and the
record each go through one JSON document: with the json module that was a quarter of the worker's CPU.
orjson reads and writes the same JSON several times faster. Where it refuses what the json module accepts
(`NaN`, `1e400`, integers beyond 64 bits, keys that are not strings) the json module answers instead, so
what is accepted, and how, does not change; only orjson's output is compact (no spaces), which no reader
of these documents depends on.

Fingerprints of adds (forwarding/partner_calls.py, stored on ConnectionMember) are hashed from
`dumps_sorted`. They were hashed from the json module's text before: a fingerprint stored then differs from
the one computed now for the same add, so that add is sent once more (the partner takes it as the update
it is) instead of being skipped, and the new fingerprint is stored with its answer.
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


def dumps_sorted(value: Any) -> bytes:
    """Canonical UTF-8 JSON of `value`: keys sorted, compact, anything unknown as its str() (fingerprints)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()

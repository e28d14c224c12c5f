"""Shared pieces of the property-based fuzz tests of the inputs (tests/audiences/events_api/test_fuzz.py,
tests/api/test_fuzz.py): JSON values including what Python's encoder writes but JSON does not allow, and
the example count.

Reproducible in CI: the examples are derived from the test (derandomize=True, no database of past
failures) and their number is bounded by FUZZ_EXAMPLES (default 200; raise it for a longer local run)."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# A float Python cannot hold: written into the JSON text by dumps() in place of this marker.
OVERFLOW = "\x01overflow\x01"
DEEP = "\x01deep\x01"

nasty_strings = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "\ud800",
            "x\udfff",
            "²",
            "--5",
            "5" * 5000,
            "-9223372036854775809",
            "9223372036854775808",
            "é",
            "😀",
            "a@b.co",
            "A@B.CO",
            "x" * 300,
            "production",
            "custom_event",
            "navigation",
            "9999-12-31",
            OVERFLOW,
            DEEP,
        ]
    ),
    st.text(max_size=20),
)
nasty_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 2**63, 2**63 - 1, -(2**63) - 1, 10**40, 10**41, 1e308, 32_503_680_000_001]),
)
scalars = st.one_of(st.none(), st.booleans(), nasty_numbers, nasty_strings)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(nasty_strings, st.text(max_size=5)), inner, max_size=3)
    ),
    max_leaves=8,
)


def dumps(data: Any) -> bytes:
    """JSON text as a client might send it: NaN and Infinity as Python writes them, escaped NULs and lone
    surrogates (ensure_ascii), the markers as an overflowing number and nesting 10,000 deep."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=True)
    text = text.replace(json.dumps(OVERFLOW), "1e400").replace(json.dumps(DEEP), "[" * 10_000 + "]" * 10_000)
    return text.encode()

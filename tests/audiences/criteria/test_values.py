"""The views of values (audiences.criteria.values): the `matches` pattern matcher against its definition."""

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from audiences.criteria.values import pattern_matcher


def reference(pattern: str, text: str) -> bool:
    """The definition (docs/criteria.md): `*` any run, `?` one character, the rest itself, on the whole text.
    As a backtracking regex: exact, and fine on the short texts drawn here."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, text, re.DOTALL) is not None


@settings(max_examples=500, derandomize=True)
@given(pattern=st.text(alphabet="ab/.*?\\%_\n", max_size=8), text=st.text(alphabet="ab/.\\%_\n*?", max_size=12))
@example(pattern="*/*/*.pdf", text="a/b/c.pdf")
@example(pattern="*a*a", text="aaa")
@example(pattern="?*?", text="a")
@example(pattern="a*", text="A")
@example(pattern="*b*b", text="ab")  # a middle piece may not reach into the last one
def test_the_matcher_means_what_the_definition_says(pattern, text):
    assert pattern_matcher(pattern)(text.lower()) is reference(pattern, text.lower())

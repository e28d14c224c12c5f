"""`matches` in the real-time evaluator: the backtracking regex it used to compile patterns to, against
the linear matcher (audiences.criteria.values.pattern_matcher), on the issue's worst case: "*/*/*.pdf"
against a value of slashes. Pure Python, no database:

    .venv/bin/python bench/pattern_matching.py [--sizes 256,512,1024,4096] [--regex-up-to 1024]

The regex is timed once per size up to --regex-up-to characters (its time grows with about the cube of
the length: tens of seconds at 4,096); the matcher at every size, 200 times.
"""

from __future__ import annotations

import argparse
import re
import time

import common  # noqa: F401 (the project on the path, settings and keys for the run)

PATTERN = "*/*/*.pdf"


def backtracking_regex(pattern: str) -> re.Pattern[str]:
    """What the evaluator compiled a pattern to before: `*` as `.*`, `?` as `.`."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()]
    return re.compile("".join(parts), re.DOTALL)


def seconds(test, text: str, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        test(text)
    return (time.perf_counter() - started) / repeat


def main() -> None:
    import django

    django.setup()  # the matcher's package imports the models
    from audiences.criteria.values import pattern_matcher

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="256,1024,4096")
    parser.add_argument("--regex-up-to", type=int, default=4096)
    args = parser.parse_args()
    regex = backtracking_regex(PATTERN).fullmatch
    matcher = pattern_matcher(PATTERN)
    print(f"pattern {PATTERN!r} against '/' * n (no match: the worst case)")
    for size in (int(s) for s in args.sizes.split(",")):
        text = "/" * size
        # The matcher's own worst case: the ends fit, so it searches the whole middle for its pieces.
        ends_fit = "/" + "x" * (size - 5) + ".pdf"
        assert not matcher(text) and not matcher(ends_fit)
        line = (
            f"n={size:>5}: matcher {seconds(matcher, text, 200) * 1e6:7.1f} µs"
            f" (ends fitting: {seconds(matcher, ends_fit, 200) * 1e6:7.1f} µs)"
        )
        if size <= args.regex_up_to:
            line += f"   backtracking regex {seconds(regex, text, 1):8.3f} s"
        print(line, flush=True)


if __name__ == "__main__":
    main()

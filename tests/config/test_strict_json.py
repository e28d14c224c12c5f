"""The strict JSON reader (config/strict_json.py): what Python's json would let through is refused by path."""

import pytest

from config import strict_json


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        (b'{"a": NaN}', "a", "finite"),
        (b'{"a": [1, Infinity]}', "a[1]", "finite"),
        (b'{"a": {"b": -Infinity}}', "a.b", "finite"),
        (b'{"a": 1e400}', "a", "finite"),
        (b'{"a": "x\\u0000"}', "a", "NUL"),
        (b'{"a\\u0000": 1}', "a\ufffd", "NUL"),
        (b'{"a": ["\\ud800"]}', "a[0]", "surrogate"),
        (b'{"a": "\\udc00x"}', "a", "surrogate"),
        (b'{"a": ' + b"5" * 5000 + b"}", "a", "digits"),
        (b"[" * 10_000 + b"]" * 10_000, "$", "nested"),
        (b"[" * 65 + b"]" * 65, "[0]" * 64, "nested"),
        (b"", "$", "empty"),
        (b"  \n", "$", "empty"),
        (b"\xff\xfe", "$", "UTF-8"),
        (b'{"a": 1', "$", "Malformed"),
        (b'"\xed\xa0\x80"', "$", "UTF-8"),  # a surrogate encoded in the bytes themselves
    ],
)
def test_what_is_refused_and_where(body, path, words):
    with pytest.raises(strict_json.JsonError) as excinfo:
        strict_json.loads(body)
    assert excinfo.value.path == path
    assert words in excinfo.value.message


def test_what_is_read():
    assert strict_json.loads(b'{"a": [1, -2.5, 1e300, "\\u00e9\\ud83d\\ude00", null, true], "b": {}}') == {
        "a": [1, -2.5, 1e300, "é😀", None, True],
        "b": {},
    }
    assert strict_json.loads("[" * 64 + "]" * 64) is not None
    assert strict_json.loads(b'{"n": ' + b"9" * 40 + b"}") == {"n": int("9" * 40)}


def test_values_can_be_left_to_the_caller():
    data = strict_json.loads(b'[{"a": NaN}, {"b": 1}]', check_values=False)
    assert strict_json.find_unstorable(data[0]) == ("a", strict_json.find_unstorable(data[0])[1])
    assert strict_json.find_unstorable(data[1]) is None

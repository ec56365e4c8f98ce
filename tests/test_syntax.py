"""Unit tests of :mod:`flask_tracking.syntax`: finding names and values in a body's text."""

from __future__ import annotations

import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from flask_tracking import syntax


@settings(max_examples=500, deadline=None)
@given(key=st.text(alphabet="\\pxuUN{}0123478abn'\"\n é€", max_size=16))
def test_escapes_are_decoded_as_python_decodes_them(key: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = key.encode("latin-1", "backslashreplace").decode("unicode_escape", "replace")
    assert syntax._unescape(key) == expected


def test_a_value_ends_where_its_quotes_brackets_or_pair_end() -> None:
    text = 'a="x\\"y", b=[1, [2], "]"], c=plain value; d'
    starts = [text.index(marker) + len(marker) for marker in ("a=", "b=", "c=")]
    ends = [syntax.loose_value_end(text, start) for start in starts]
    assert [text[start:end] for start, end in zip(starts, ends)] == [
        '"x\\"y"',
        '[1, [2], "]"]',
        "plain value",
    ]
    assert syntax.loose_value_end(text, len(text)) == len(text)
    assert syntax.loose_value_end("[1, [2", 0) == len("[1, [2")  # a cut body: to its end


def test_loose_objects_skip_braces_in_strings_and_run_to_the_end_when_open() -> None:
    text = '[{"a": "x}\\"}", "b": {"c": "{"}, "name": 1}, {"d": {"e": 2'
    objects = syntax.LooseObjects(text)
    first = text.index("{")
    assert objects.around(text.index('"name"')) == (first, text.index("}, {") + 1)
    assert objects.around(text.index('"c"')) == (text.index('{"c"'), text.index('"{"}') + 4)
    assert objects.around(text.index("x}")) == (text.index('"x}'), -1)  # inside a string
    assert objects.around(text.index('"e"')) == (text.index('{"e"'), len(text))  # left open
    assert objects.around(text.index('"d"')) == (text.index('{"d"'), len(text))
    assert objects.around(0) == (-1, -1)
    assert syntax.LooseObjects('"a": 1, "name": 2}').around(8) == (-1, -1)
    assert syntax.LooseObjects("{'a': '}', 'b': 1").around(10) == (0, 17)

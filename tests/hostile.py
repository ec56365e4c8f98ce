"""Hostile shapes of bodies and request lines: what an attacker sends to make redaction slow.

Shared by the redaction tests (time bounds, a property test) and benchmarks/bench_hostile.py.
Each body builder returns ``(body, content_type)`` of exactly ``size`` bytes or a little less.
"""

from __future__ import annotations

import json
from collections.abc import Callable

BodyShape = Callable[[int], tuple[bytes, str]]


def _fill(unit: bytes, size: int, head: bytes = b"", tail: bytes = b"") -> bytes:
    room = max(size - len(head) - len(tail), 0)
    return head + unit * (room // len(unit)) + tail


def plain_json(size: int) -> tuple[bytes, str]:
    """The reference: an ordinary JSON object with one secret field, parsed and rewritten."""
    items = ['"password": "hunter2"']
    length = 30
    index = 0
    while length < size - 40:
        item = f'"field_{index}": "value number {index}"'
        items.append(item)
        length += len(item) + 2
        index += 1
    return ("{" + ", ".join(items) + "}").encode(), "application/json"


def _one_letter_words(size: int) -> str:
    return "_".join(["a"] * (size // 2))


def _distinct_keys(size: int, before: bytes, after: bytes) -> list[bytes]:
    """Distinct 250-character names of one-letter words (no verdict cache helps), ``size``
    bytes in all."""
    keys = []
    words = _one_letter_words(240).encode()
    total = 0
    while total < size - 300:
        key = before + words + b"_%08d" % len(keys) + after
        keys.append(key)
        total += len(key) + 2
    return keys


BODY_SHAPES: dict[str, BodyShape] = {
    "json: one long key of one-letter words": lambda size: (
        b'{"' + _one_letter_words(size - 16).encode() + b'": "\\u0031"}',
        "application/json",
    ),
    "json: many 250-char keys of one-letter words": lambda size: (
        b"{" + b", ".join(_distinct_keys(size, b'"', b'": 1')) + b', "x\\u0031": 1}',
        "application/json",
    ),
    "json: many keys": lambda size: (
        _fill(b'"k": 1, ', size, b'{"pass": 1, ', b'"x": 1}'),
        "application/json",
    ),
    "json: deep nesting (arrays)": lambda size: (
        b'{"password": ' + b"[" * (size // 2 - 8) + b"]" * (size // 2 - 8) + b"}",
        "application/json",
    ),
    "json: deep nesting (objects)": lambda size: (
        _fill(b'{"password":', size, b"", b"1"),
        "application/json",
    ),
    "json: unclosed strings": lambda size: (_fill(b'"password": "\\', size), "application/json"),
    "json: separator run": lambda size: (
        _fill(b" ", size, b'{"a"', b':"password"}'),
        "application/json",
    ),
    "json: escaped keys, truncated": lambda size: (
        _fill(b'"pass\\u0077ord_\\u0061": "x", ', size, b"{"),
        "application/json",
    ),
    "json: naming keys, values unclosed": lambda size: (
        _fill(b'{"name": [', size, b"", b" token"),
        "application/json",
    ),
    "json: objects named after their values": lambda size: (
        _fill(b'{"v": 1, "name": "password"}, ', size, b"["),
        "application/json",
    ),
    "json: objects named outward, nested": lambda size: (
        b"{" * (size // 40) + b'"v": 1, "name": "pwd"}, "name": "pwd"' * (size // 40),
        "application/json",
    ),
    "json: a named object after many strings": lambda size: (
        _fill(b'"a", ', size, b"[", b'{"v": 1, "name": "password"'),
        "application/json",
    ),
    "text: naming keys, values unclosed": lambda size: (
        _fill(b'"field": "', size, b"", b" token"),
        "text/plain",
    ),
    "form: many keys of one-letter words": lambda size: (
        b"pass=1&" + b"&".join(_distinct_keys(size, b"", b"=1")),
        "application/x-www-form-urlencoded",
    ),
    "form: separator run": lambda size: (
        _fill(b"&", size, b"password=1"),
        "application/x-www-form-urlencoded",
    ),
    "text: key=value pairs": lambda size: (_fill(b"password=a ", size), "text/plain"),
    "text: colon run": lambda size: (_fill(b"a:", size, b"pass "), "text/plain"),
    "text: quote run": lambda size: (_fill(b"\"'", size, b"pass: "), "text/plain"),
    "text: bracket values": lambda size: (_fill(b"pass={", size), "text/plain"),
    "text: space runs": lambda size: (_fill(b" ", size, b"pass a", b"="), "text/plain"),
    "multipart: thousands of parts": lambda size: (
        _fill(b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\nx\r\n', size),
        "multipart/form-data; boundary=b",
    ),
    "multipart: one head of many dispositions": lambda size: (
        _fill(b"Content-Disposition: form-data; ", size, b"--b\r\n", b"\r\n\r\npassword\r\n--b--"),
        "multipart/form-data; boundary=b",
    ),
    "multipart: many name parameters": lambda size: (
        _fill(b';name="a_b_c_d"', size, b"--b\r\nContent-Disposition: form-data", b"\r\n\r\nx"),
        "multipart/form-data; boundary=b",
    ),
    "xml: many secret elements": lambda size: (
        _fill(b"<password>x</password>", size, b"<a>", b"</a>"),
        "application/xml",
    ),
    "xml: many distinct secret elements": lambda size: (
        b"<a>"
        + b"".join(b"<password%d>x</password%d>" % (i, i) for i in range(size // 32))
        + b"</a>",
        "application/xml",
    ),
    "xml: unclosed secret elements": lambda size: (
        _fill(b"<password>", size, b"<a>"),
        "application/xml",
    ),
    "xml: many attributes": lambda size: (
        _fill(b' password="x"', size, b"<a", b"/>"),
        "application/xml",
    ),
    "html: many url parameters": lambda size: (
        _fill(b"?password=x&", size, b"<a href='", b"'>"),
        "text/html",
    ),
    "html: many secret fields": lambda size: (
        _fill(b'<input name="password" value="x">', size, b"<form>"),
        "text/html",
    ),
    "html: one tag of many secret names, unclosed": lambda size: (
        _fill(b' name="password"', size, b"<input"),
        "text/html",
    ),
    "html: secret names in tags never closed": lambda size: (
        _fill(b"<a name=password value=x a=b ", size),
        "text/html",
    ),
    "html: unclosed text areas": lambda size: (_fill(b"<textarea name=pin>", size), "text/html"),
    "html: many scripts": lambda size: (_fill(b"<script>pin=1</script>", size), "text/html"),
    "html: script tags never closed": lambda size: (
        _fill(b"<script a=b ", size, b"<p>password: "),
        "text/html",
    ),
    "html: one script of quoted keys": lambda size: (
        _fill(b'{"name": "', size, b"<script>", b"token"),
        "text/html",
    ),
    "html: quoted pairs, values unclosed": lambda size: (
        _fill(b'"pin": \'', size, b"<p>password</p><script>"),
        "text/html",
    ),
    "html: a script of named pairs": lambda size: (
        _fill(b'pin = "1234"; ', size, b"<script>"),
        "text/html",
    ),
    "html: a quoted key before a run of spaces": lambda size: (
        _fill(b" ", size, b'<p>token</p><script>"k"', b"x"),
        "text/html",
    ),
    "html: an entity-quoted key before a run of line breaks": lambda size: (
        _fill(b"\n", size, b"<p>token</p><p data-x='{(&quot;k&quot;", b"x'>"),
        "text/html",
    ),
    "html: code elements never closed": lambda size: (
        _fill(b'<code>"pin": "1", ', size, b"<p>password</p>"),
        "text/html",
    ),
    "html: quoted keys in text, values unclosed": lambda size: (
        _fill(b'"pin":  "', size, b"<p>password</p><p>"),
        "text/html",
    ),
    "html: colons after runs of spaces": lambda size: (
        _fill(b'"' + b" " * 60 + b': "', size, b"<p>password</p>"),
        "text/html",
    ),
    "html: a script of URL strings": lambda size: (
        _fill(b'"/reset/' + b"a" * 40 + b'", ', size, b"<p>password</p><script>"),
        "text/html",
    ),
    "html: data attributes named secret": lambda size: (
        _fill(b'<div data-pin="1" data-x=', size, b"<p>password</p>"),
        "text/html",
    ),
    "html: escaped quotes, values unclosed": lambda size: (
        _fill(b'\\"pin\\": \\"', size, b"<p>password</p><script>"),
        "text/html",
    ),
    "html: a value of backslashes": lambda size: (
        _fill(b"\\", size, b'<p>password</p><script>pin = "'),
        "text/html",
    ),
    "value: digit runs": lambda size: (_fill(b"4111 1111 1111 111 ", size, b"pass "), "text/plain"),
    "value: almost-JWTs": lambda size: (_fill(b"eyJhbGciOi.eyJ", size, b"pass "), "text/plain"),
    "value: encoded runs": lambda size: (
        _fill(b"a%41+", size, b"https%3A%2F%2F"),
        "application/x-www-form-urlencoded",
    ),
    "value: encoded runs, many": lambda size: (
        _fill(b"%3A%2F%2Fa%3Ab%40 ", size),
        "text/plain",
    ),
    "value: encoded many times": lambda size: (
        b"u=https" + b"%25" * (size // 3 - 8) + b"3A//a:b@h",
        "application/x-www-form-urlencoded",
    ),
    "value: escaped characters": lambda size: (
        _fill(b"\\u0041KIA\\u0030 ", size, b'{"a": "', b'"}'),
        "application/json",
    ),
    "value: JSON in encoded runs": lambda size: (
        _fill(b"%3A%5C%2F%5C%2Fa%3Ab%40%5C", size, b"data=%7B%22u%22%3A%22", b"%22%7D"),
        "application/x-www-form-urlencoded",
    ),
    "value: escaped slashes, encoded": lambda size: (
        _fill(b"%5C%2F", size, b"u=https%3A"),
        "application/x-www-form-urlencoded",
    ),
    "value: schemes and escaped tabs": lambda size: (
        _fill(b"Bearer\\t\\t\\t ", size, b'{"a": "', b'"}'),
        "application/json",
    ),
    "value: a scheme, then escaped tabs": lambda size: (
        _fill(b"\\t", size, b'{"a": "Bearer', b'"}'),
        "application/json",
    ),
    "value: control escapes before digits": lambda size: (
        _fill(b"\\u00094111 1111 1111 111\\u0008", size, b'{"a": "', b'"}'),
        "application/json",
    ),
    "value: escapes ending in a digit before digits": lambda size: (
        _fill(b"\\u00a04111 1111 1111 111\\u2009", size, b'{"a": "', b'"}'),
        "application/json",
    ),
    "value: percent escapes ending in a digit before digits": lambda size: (
        _fill(b"%224111+1111+1111+111%2522", size, b"d="),
        "application/x-www-form-urlencoded",
    ),
    "value: escaped slashes escaped again": lambda size: (
        _fill(b":\\\\\\/\\\\/a:b@\\\\", size, b'{"a": "', b'"}'),
        "application/json",
    ),
    "value: a run of backslashes after a URL": lambda size: (
        _fill(b"\\\\", size, b'{"a": "https:\\\\/\\\\/a:b@h ', b'"}'),
        "application/json",
    ),
    "value: PEM headers": lambda size: (
        _fill(b"-----BEGIN PRIVATE KEY-----", size, b"pass "),
        "text/plain",
    ),
    "graphql: many arguments": lambda size: (
        json.dumps({"query": "mutation { f(" + "password: 1, " * (size // 14 - 4) + ")}"}).encode(),
        "application/json",
    ),
}


def long_header_name(size: int) -> str:
    """One header name of one-letter words, ``size`` characters."""
    return "-".join(["A"] * (size // 2))


def long_query(size: int) -> str:
    """A query string whose parameter names are long runs of one-letter words."""
    name = _one_letter_words(min(size, 4096) - 4)
    count = max(size // (len(name) + 3), 1)
    return "&".join(f"{name}=1" for _ in range(count))

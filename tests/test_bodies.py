"""Unit tests of :mod:`flask_tracking.bodies`, the body formats, called directly.

Most of their behaviour is tested through the redactor in tests/test_redact.py; here, what the
module does with the verdicts it is given, and its functions of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_tracking.bodies import NAMING_KEYS, BodyFilters, by_look, map_items
from flask_tracking.content import Unreadable
from flask_tracking.credentials import FILTERED
from flask_tracking.markup import MarkupFilters

from .test_credentials import JWT

CARD = "4111111111111111"
BLANK_LINES = b"\n" + b"    \n" * 300


class Calls:
    """Plain verdicts (only ``pin`` is secret) and a record of what the filters asked for."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.parts: list[tuple[bytes, str, int, bool]] = []

    def is_secret_field(self, name: str) -> bool:
        return name.lower() == "pin"

    def query(self, text: str) -> str:
        self.queries.append(text)
        return text.replace("pin=1", f"pin={FILTERED}")

    def data(self, value: Any) -> Any:
        return value

    def filter_object(
        self,
        value: Mapping[Any, Any],
        inner: Callable[[Any], Any],
        pairs: Iterable[tuple[Any, Any]] | None = None,
    ) -> Any:
        if "pin" not in value:
            return value
        return {key: FILTERED if key == "pin" else item for key, item in value.items()}

    def scrub_part(self, body: bytes, content_type: str, limit: int, outer: bool) -> bytes:
        self.parts.append((body, content_type, limit, outer))
        if content_type == "application/x-unreadable":
            raise Unreadable("format not scrubbable (test)")
        return body.replace(b"pin", b"PIN")

    def filters(self, max_name_length: int = 256) -> BodyFilters:
        return BodyFilters(
            self.is_secret_field,
            self.query,
            self.data,
            self.filter_object,
            self.scrub_part,
            max_name_length,
            MarkupFilters(self.is_secret_field, lambda: None),
        )


def test_naming_keys() -> None:
    assert {"name", "key", "field", "param", "parameter", "header"} == NAMING_KEYS


def test_map_items_returns_the_list_itself_when_nothing_changed() -> None:
    items = ["a", "b"]
    assert map_items(items, lambda item: item) is items
    assert map_items(items, lambda item: item.upper()) == ["A", "B"]
    assert items == ["a", "b"]


def test_by_look_keeps_the_bytes_when_nothing_looks_like_a_credential() -> None:
    body = b'{"a": "plain", "n": 12}'
    assert by_look(body, json_shaped=True) is body


def test_by_look_writes_a_card_number_in_a_json_number_as_a_string() -> None:
    kept = by_look(f'{{"n": {CARD}, "m": 1.5}}'.encode(), json_shaped=True)
    assert json.loads(kept) == {"n": FILTERED, "m": 1.5}
    # Not read as JSON: the bare filtered number stays.
    assert by_look(f"n={CARD}".encode(), json_shaped=False) == f"n={FILTERED}".encode()


def test_by_look_reads_escaped_slashes_in_json_and_in_other_text() -> None:
    url = b'{"u": "https:\\/\\/user:hunter2@example.org\\/x"}'
    kept = by_look(url, json_shaped=True)
    assert b"hunter2" not in kept
    assert json.loads(kept)["u"].startswith("https://")
    assert by_look(b"log " + url, json_shaped=False) == b"log " + kept
    clean = url.replace(b"user:hunter2@", b"")
    assert by_look(clean, json_shaped=False) is clean


def test_by_look_reads_escaped_slashes_of_json_inside_a_json_string() -> None:
    """JSON written into a JSON string (a log line, a payload kept as text) has the
    backslashes of its escaped slashes escaped again: ``https:\\\\/\\\\/`` as Python writes
    PHP's JSON, ``https:\\\\\\/\\\\\\/`` as PHP writes it. A reader decoding the string
    twice sees the URL: it is read with those slashes as slashes."""
    inner = json.dumps({"u": "https://ada:hunter2@db.example/x"}).replace("/", "\\/")
    for outer in (json.dumps({"p": inner}), json.dumps({"p": inner}).replace("/", "\\/")):
        body = outer.encode()
        kept = by_look(body, json_shaped=True)
        assert b"hunter2" not in kept, body
        assert json.loads(json.loads(kept)["p"]) == {"u": f"https://ada:{FILTERED}@db.example/x"}
    clean = json.dumps({"p": inner.replace("ada:hunter2@", "")}).encode()
    assert by_look(clean, json_shaped=True) is clean
    # read so only when that shows something more: a backslash before a slash is kept
    body = b'{"re": "a\\\\/b", "u": "https:\\/\\/ada:hunter2@h"}'
    assert by_look(body, json_shaped=True) == b'{"re": "a\\\\/b", "u": "https://ada:[Filtered]@h"}'


def test_by_look_unescapes_slashes_and_plus_signs_only() -> None:
    body = b'{"u": "https:\\u002f\\u002Fada:hunter2@h\\u002b", "q": "\\u0022\\u0041\\\\u002f"}'
    kept = by_look(body, json_shaped=True)
    assert json.loads(kept) == {"u": f"https://ada:{FILTERED}@h+", "q": '"A\\u002f'}
    assert kept.endswith(b'"q": "\\u0022\\u0041\\\\u002f"}')


_ESCAPED_SLASHES = {
    "as it is": lambda text: text,
    "\\/": lambda text: text.replace("/", "\\/"),
    "\\u002f": lambda text: text.replace("/", "\\u002f"),
    "\\u002F and \\/": lambda text: text.replace("//", "\\u002F\\/"),
}
_TEXTS = st.lists(
    st.sampled_from(["a", "/", "//", ":", "@", " ", '"', "\\", "\\/", "https://", "x:y@", "é"]),
    max_size=12,
).map("".join)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"n": "\\u0034111111111111111"}', {"n": FILTERED}),
        (b'{"n": "4111\\u002d1111\\u002D1111\\u00201111"}', {"n": FILTERED}),
        (b'{"k": "\\u0041KIAIOSFODNN7EXAMPLE"}', {"k": FILTERED}),
        (
            b'{"u": "https\\u003a//ada:pw@db\\u002eexample"}',
            {"u": f"https://ada:{FILTERED}@db.example"},
        ),
        (b'{"u": "https://ada:pw\\u0040db"}', {"u": f"https://ada:{FILTERED}@db"}),
        (b'{"m": "\\u0022Bearer abcdef123\\u0022, \\u005c"}', {"m": f'"Bearer {FILTERED}", \\'}),
    ],
)
def test_by_look_reads_json_escapes_of_printable_characters_a_second_time(
    body: bytes, expected: dict[str, str]
) -> None:
    """Escaped letters, digits and separators hide a credential from the bytes; read with them
    unescaped (``"`` and ``\\`` as their short escapes) it is found, and the body is stored
    so, still JSON."""
    kept = by_look(body, json_shaped=True)
    assert json.loads(kept) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('see https://ada:pw%40db\\" here', f'see https%3A%2F%2Fada%3A{FILTERED}%40db" here'),
        ("https://ada:pw%40db\\\\", f"https%3A%2F%2Fada%3A{FILTERED}%40db\\"),
        ('https://ada:pw%40db\\\\\\"', f'https%3A%2F%2Fada%3A{FILTERED}%40db\\"'),
        ('a%2525252525252541\\" b', f'{FILTERED}" b'),
    ],
)
def test_by_look_keeps_json_valid_when_a_url_encoded_run_ends_in_an_escape(
    value: str, expected: str
) -> None:
    """A URL-encoded run ends at a quote: in a JSON string, the backslash before an escaped
    quote (or an escaped backslash before the closing quote) is the run's last byte. Written
    encoded again, it would leave the quote unescaped and the body no JSON."""
    body = b'{"m": "' + value.encode() + b'"}'
    json.loads(body)
    assert json.loads(by_look(body, json_shaped=True)) == {"m": expected}


@pytest.mark.parametrize(
    "value",
    [
        "line\\n" + JWT,
        "a\\r\\nBearer abcdef123456",
        "a\\tBasic dXNlcjpwYXNzd29yZA==",
        "x\\u000AAKIAIOSFODNN7EXAMPLE",
        "x\\u0009ASIAIOSFODNN7EXAMPLE y",
        "\\u000Bbearer abcdef123456",
        "x\\f" + JWT,
    ],
)
def test_by_look_finds_a_credential_right_after_a_json_escape(value: str) -> None:
    """A credential at the start of a line of a JSON string follows an escape (``\\n``,
    ``\\u000a``) whose last character is a letter or digit, not a word's end."""
    body = b'{"log": "' + value.encode() + b'"}'
    kept = json.loads(by_look(body, json_shaped=True))["log"]
    assert FILTERED in kept
    for part in ("abcdef123456", "dXNlcjpwYXNz", "IOSFODNN7EXAMPLE", JWT[-20:]):
        assert part not in kept


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('-----BEGIN PRIVATE KEY-----MIIEvQ\\" cut', f'{FILTERED}" cut'),
        ("key: -----BEGIN PRIVATE KEY-----MIIEvQ\\\\", f"key: {FILTERED}"),
        ('-----BEGIN PRIVATE KEY-----\\nMIIE\\\\\\"', f'{FILTERED}"'),
    ],
)
def test_by_look_keeps_json_valid_when_a_private_key_runs_to_an_escaped_quote(
    value: str, expected: str
) -> None:
    """A private key without its end line runs to a quote: in a JSON string, not into the
    backslash that escapes a quote (stored as ``[Filtered]"``, the quote ended the string)."""
    body = b'{"k": "' + value.encode() + b'"}'
    assert json.loads(by_look(body, json_shaped=True)) == {"k": expected}


@pytest.mark.parametrize(
    "value",
    [
        "\\u00094111111111111111",
        "\\u000a4111 1111 1111 1111",
        "x\\u000D\\u000A4111-1111-1111-1111 y",
        "\\u0008378282246310005",
        "\\u000c4111111111111111",
        "Bearer\\tabcdef123456",
        "Bearer\\u0009abcdef123456",
    ],
)
def test_by_look_finds_a_credential_after_a_json_escape_of_a_control_character(
    value: str,
) -> None:
    """The hex digits of ``\\u0009`` joined a card number's digits that follows it (20 digits
    in a row, no card); a tab written ``\\t`` between a token's scheme and the token is a tab.
    Filtered, the body is the same JSON but for the credential."""
    body = b'{"n": "' + value.encode() + b'"}'
    kept = json.loads(by_look(body, json_shaped=True))["n"]
    assert FILTERED in kept, value
    assert "1111" not in kept and "2246" not in kept and "abcdef" not in kept, value
    controls = [c for c in json.loads(body)["n"] if c < " "]
    assert [c for c in kept if c < " "] == controls, value


def test_by_look_keeps_json_escapes_when_the_second_reading_finds_nothing_new() -> None:
    clean = b'{"a": "caf\\u00e9 \\u003cb\\u003e \\u0041"}'
    assert by_look(clean, json_shaped=True) is clean
    found_first = b'{"k": "AKIAIOSFODNN7EXAMPLE\\u0041", "b": "\\u0042"}'
    assert by_look(found_first, json_shaped=True) == (
        b'{"k": "' + FILTERED.encode() + b'\\u0041", "b": "\\u0042"}'
    )


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(_TEXTS, max_size=4),
    escaping=st.sampled_from(sorted(_ESCAPED_SLASHES)),
    ascii_only=st.booleans(),
)
def test_by_look_of_json_with_escaped_slashes(
    texts: list[str], escaping: str, ascii_only: bool
) -> None:
    """JSON however it escapes its slashes: kept as it came when nothing is filtered, still
    the same JSON when a URL's password is."""
    escape = _ESCAPED_SLASHES[escaping]
    clean = escape(json.dumps(texts, ensure_ascii=ascii_only)).encode()
    if b"@" not in clean:
        assert by_look(clean, json_shaped=True) is clean
    with_password = escape(json.dumps([*texts, "https://ada:hunter2@h/x"])).encode()
    kept = json.loads(by_look(with_password, json_shaped=True))
    assert kept[-1] == f"https://ada:{FILTERED}@h/x"
    assert len(kept) == len(texts) + 1


def test_the_filters_judge_names_only_by_the_verdict_given() -> None:
    filters = Calls().filters()
    text = "password=a pin=b"
    assert filters.loose_text(text) == f"password=a pin={FILTERED}"
    assert filters.loose_text("password=a") == "password=a"
    body = b"<r><pin>1</pin><password>2</password></r>"
    assert (
        filters.markup.xml_elements(body)
        == f"<r><pin>{FILTERED}</pin><password>2</password></r>".encode()
    )
    assert filters.markup.urls(b'<a href="/x?pin=1&a=2">') == (
        f'<a href="/x?pin={FILTERED}&a=2">'.encode()
    )


def test_loose_text_returns_the_text_itself_when_nothing_is_filtered() -> None:
    text = "a=1 b: 2"
    assert Calls().filters().loose_text(text) is text


def test_an_object_naming_a_secret_keeps_only_its_naming_keys_in_loose_text() -> None:
    kept = Calls().filters().loose_text('{"value": "1234", "name": "pin", "other": 5}')
    # A quoted key's value is filtered as a JSON string, whatever it was.
    assert kept == f'{{"value": "{FILTERED}", "name": "pin", "other": "{FILTERED}"}}'


def test_a_naming_value_longer_than_a_name_can_be_names_a_secret() -> None:
    """The value of a naming key is read as far as a name can run (``max_name_length``); one
    running past that names a secret, as a name that long is judged secret."""
    text = '{"name": "' + "a" * 100 + '", "value": "v"}'
    assert Calls().filters(max_name_length=256).loose_text(text) is text
    assert f'"value": "{FILTERED}"' in Calls().filters(max_name_length=4).loose_text(text)


@pytest.mark.parametrize(
    ("body", "kind", "shape", "expected"),
    [
        (b"a=1&pin=1", "application/x-www-form-urlencoded", (False, True, False), "a=1&pin=*"),
        (b'{"pin": 1}', "application/json", (True, False, False), '{"pin": "*"}'),
        (b"<r><pin>1</pin></r>", "application/xml", (False, False, True), "<r><pin>*</pin></r>"),
        (b"<r><pin>1</pin></r>", "text/plain", (False, False, False), "<r><pin>*</pin></r>"),
        (b'<a href="?pin=1">', "text/html", (False, False, False), '<a href="?pin=*">'),
        (b"pin: 1", "text/plain", (False, False, False), "pin: *"),
        (b"pin: 1", "text/html", (False, False, False), "pin: *"),
        # A page rendered with over 1 KB of blank lines before its first tag (a template's
        # macros and sets) is a page all the same, and so is XML after them.
        (
            BLANK_LINES + b'<input name="pin" value="1">',
            "text/html",
            (False, False, False),
            BLANK_LINES.decode() + '<input name="pin" value="*">',
        ),
        (
            BLANK_LINES + b"<r><pin>1</pin></r>",
            "text/plain",
            (False, False, False),
            BLANK_LINES.decode() + "<r><pin>*</pin></r>",
        ),
    ],
)
def test_by_name_reads_a_body_as_its_format(
    body: bytes, kind: str, shape: tuple[bool, bool, bool], expected: str
) -> None:
    calls = Calls()
    kept = calls.filters().by_name(body, kind, shape)
    assert kept == expected.replace("*", FILTERED).encode()
    assert calls.queries == ([body.decode()] if shape[1] else [])


def _multipart(*parts: tuple[str, str, str]) -> bytes:
    return (
        "".join(
            f'--B\r\nContent-Disposition: form-data; name="{name}"\r\n{head}\r\n{content}\r\n'
            for name, head, content in parts
        )
        + "--B--\r\n"
    ).encode()


def test_multipart_filters_secret_parts_and_hands_the_others_to_the_part_scrubber() -> None:
    calls = Calls()
    body = _multipart(
        ("pin", "", "1234"),
        ("doc", "Content-Type: application/json\r\n", '{"pin": 1}'),
        ("other", "", "plain"),
    )
    kept = calls.filters().multipart(body, "multipart/form-data; boundary=B", 100)
    assert b"1234" not in kept and FILTERED.encode() in kept
    assert b'{"PIN": 1}' in kept
    assert calls.parts == [
        (b'{"pin": 1}', "application/json", 100, False),
        (b"plain", "text/plain", 100, False),
    ]


def test_multipart_omits_a_part_its_scrubber_cannot_read() -> None:
    body = _multipart(("doc", "Content-Type: application/x-unreadable\r\n", "pin"))
    kept = Calls().filters().multipart(body, "multipart/form-data; boundary=B", 100)
    assert b"[Omitted: format not scrubbable (test)]" in kept


def test_multipart_returns_the_body_itself_when_nothing_is_filtered() -> None:
    body = _multipart(("a", "", "1"))
    assert Calls().filters().multipart(body, "multipart/form-data; boundary=B", 100) is body


def test_multipart_without_a_boundary_is_read_as_loose_text() -> None:
    kept = Calls().filters().multipart(b"pin=1234", "multipart/form-data", 100)
    assert kept == f"pin={FILTERED}".encode()

"""Unit tests of :mod:`flask_tracking.prefilter`: the pre-filter of bodies, with google-re2 and
with Python's re, through the redactor that builds it."""

from __future__ import annotations

import json
import os
import random
import re
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_tracking import credentials, prefilter
from flask_tracking.redact import (
    DEFAULT_REDACT_FIELDS,
    DEFAULT_REDACT_HEADERS,
    FILTERED,
    Redactor,
)

from .conftest import fork_and_report
from .hostile import BODY_SHAPES
from .test_credentials import JWT, PEM, PREFIXED_TOKENS

SECRET = "s3cr3t-VALUE-9f8e7d"


@pytest.mark.parametrize("engine", ["re2", "ahocorasick", "python"])
def test_body_prefilter_finds_the_same_with_every_engine(engine: str) -> None:
    redactor = _with_engine(engine, headers=())
    plain = json.dumps({"items": [{"id": n, "name": f"item-{n}"} for n in range(50)]}).encode()
    assert redactor.scrub_body(plain, "application/json", "", 65536).body is plain
    for name in ("password", "userPassword", "api_key", "AccessToken"):
        body = plain[:-1] + f', "{name}": "hunter2"}}'.encode()
        kept = redactor.scrub_body(body, "application/json", "", 65536).body
        assert kept is not None and b"hunter2" not in kept, name
    assert redactor._scan(b'{"items": [], "auth": "Bearer abc"}') != 0
    assert redactor._scan(plain) == 0


# --- the pre-filter of bodies, with google-re2 and with Python's re ----------------------------


def _with_engine(
    engine: str,
    fields: tuple[str, ...] = DEFAULT_REDACT_FIELDS,
    headers: tuple[str, ...] = DEFAULT_REDACT_HEADERS,
) -> Redactor:
    """A redactor whose body pre-filter runs on ``engine`` for every body: google-re2
    (``"re2"``), the words' pass with pyahocorasick (``"ahocorasick"``), or with Python's ``re``
    (``"python"``, as where neither is installed)."""
    with pytest.MonkeyPatch.context() as patch:
        if engine == "re2":
            pytest.importorskip("re2")
            patch.setattr(prefilter, "_RE2_MIN_LENGTH", 0)  # every body, however short
        else:
            patch.setattr(prefilter, "_re2", None)
        if engine == "ahocorasick":
            pytest.importorskip("ahocorasick")
        elif engine == "python":
            patch.setattr(prefilter, "_ahocorasick", None)
        return Redactor(headers, fields)


def _reference_hints(redactor: Redactor, body: bytes, escapes: bool = True) -> int:
    """What the pre-filter must answer, by its definition, with plain substring searches: the
    terms and the words credentials begin with in the translated words, ``://``, escapes, and
    the full card check.  ``://`` may have its slashes escaped: ``:\\/``, ``:\\u002f``."""
    words = body.translate(prefilter._LOWERCASE, prefilter._NOT_ALPHANUMERIC)
    hints = 0
    if (escapes and (b"\\" in body or b"%" in body)) or any(
        term.encode() in words for term in redactor._fields
    ):
        hints = prefilter.NAME_HINT
    if (
        any(word in words for word in credentials.CREDENTIAL_WORDS)
        or any(url in body for url in (b"://", b":\\/", b":/\\", b":\\u002f", b":\\u002F"))
        or credentials.may_hold_card(body)
        or any(escape in body for escape in _HIDING_ESCAPES)
        or any(escape in _decoded_percents(body) for escape in _HIDING_ESCAPES)
        or re.search(rb":(?:\\+(?:/|u002[fF])){2}", body) is not None
    ):
        hints |= prefilter.VALUE_HINT
    return hints


def _decoded_percents(body: bytes) -> bytes:
    """``body`` with every percent escape encoded again (``%2541``, ``%252541``) read as the
    escape (``%41``)."""
    while True:
        decoded = re.sub(rb"%25(?=[0-9A-Fa-f]{2})", b"%", body)
        if decoded == body:
            return body
        body = decoded


def _both_cases(escape: str) -> set[bytes]:
    return {escape.encode(), escape.upper().replace("\\U", "\\u").encode()}


#: A slash in a URL's ``://``: as it is, percent-encoded, escaped by JSON (``\\/``, ``\\u002f``)
#: and that percent-encoded in part or whole (``%5C%2F``, ``%5C/``, ``\\%2F``, ``%5Cu002f``).
_SLASHES = tuple(
    backslash + slash
    for backslash in ("", "\\", "%5c", "%5C")
    for slash in ("/", "%2f", "%2F", "u002f", "u002F")
    if backslash or not slash.startswith("u")
)

#: The escapes that can hide the look of a credential, written out: JSON's of a printable
#: character but ``"'<>&\\`` (HTML's), JSON's of a control character that has a short escape
#: followed by a digit, percent escapes of letters, digits and ``_``, ``://`` percent-encoded (its
#: slashes also escaped by JSON), and a percent-encoded space, plus or dash between digits; each
#: percent escape also encoded again any number of times (``%2541``, ``%252541``: see
#: :func:`_decoded_percents`).
_HIDING_ESCAPES = (
    {
        escape
        for character in map(chr, range(0x20, 0x7F))
        for escape in _both_cases(f"\\u{ord(character):04x}")
        if character not in "\"'<>&\\"
    }
    | {
        escape
        for character in string.ascii_letters + string.digits + "_"
        for escape in _both_cases(f"%{ord(character):02x}")
    }
    | {
        (colon + first + second).encode()
        for colon in (":", "%3a", "%3A")
        for first in _SLASHES
        for second in _SLASHES
        if "%" in colon + first + second
    }
    | {
        f"\\u00{code}{digit}".encode()
        for code in ("08", "09", "0a", "0A", "0c", "0C", "0d", "0D")
        for digit in string.digits
    }
    | {
        f"{before}%2{code}{after}".encode()
        for before in string.digits
        for after in string.digits
        for code in "0BDbd"
    }
)


ENGINES = ["re2", "ahocorasick", "python"]
CARD = "4111111111111111"  # a Visa test number (passes the Luhn check)
AMEX = "378282246310005"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "number",
    [CARD, "4111 1111 1111 1111", "4111-1111-1111-1111", "3782 822463 10005", "3782-822463-10005"],
)
def test_a_card_number_split_by_spaces_or_dashes_is_found(engine: str, number: str) -> None:
    redactor = _with_engine(engine)
    body = json.dumps({"note": "paid", "n": number}).encode()
    kept = redactor.body(body, "application/json")
    assert kept is not None and json.loads(kept) == {"note": "paid", "n": FILTERED}
    assert redactor.body(f"paid with {number} today".encode(), "text/plain") == (
        f"paid with {FILTERED} today".encode()
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_a_card_number_among_other_digits_is_found(engine: str) -> None:
    redactor = _with_engine(engine)
    body = json.dumps(
        {
            "at": "2026-12-06 10:11:12",
            "ids": list(range(1000, 1040)),
            "phone": "+33 1 23 45 67 89",
            "n": AMEX,
            "order": 12345678901234567,
        }
    ).encode()
    kept = redactor.body(body, "application/json")
    assert kept is not None
    assert json.loads(kept) == {**json.loads(body), "n": FILTERED}


@pytest.mark.parametrize("engine", ENGINES)
def test_digits_that_are_no_card_number_keep_the_body(engine: str) -> None:
    redactor = _with_engine(engine)
    for body, content_type in [
        (json.dumps({"ids": list(range(1000, 1300)), "at": "2026-12-06 10:11:12"}), "text/csv"),
        ("id,n\n1,123456789012\n2,12 34 56 78 90 12 34\n", "text/csv"),
        ("order: 4111111111111112\n", "text/plain"),  # fails the Luhn check
        ("1234 5678 9012 3456 7\n", "text/plain"),  # no card network's prefix
    ]:
        kept = redactor.scrub_body(body.encode(), content_type)
        assert kept == (body.encode(), None), body


@pytest.mark.parametrize("engine", ENGINES)
def test_credential_words_and_url_userinfo_are_found(engine: str) -> None:
    redactor = _with_engine(engine)
    cases = {
        f"token is {JWT}": f"token is {FILTERED}",
        f"Authorization: Bearer {SECRET}": f"Authorization: {FILTERED}",
        f"seen BASIC {SECRET} here": f"seen BASIC {FILTERED} here",
        "keys AKIAIOSFODNN7EXAMPLE end": f"keys {FILTERED} end",
        f"see {PEM}": f"see {FILTERED}",
        "fetch https://ada:hunter2@intranet.example/x": f"fetch https://ada:{FILTERED}@intranet.example/x",
    }
    for text, expected in cases.items():
        body = json.dumps({"note": text}).encode()
        kept = redactor.body(body, "application/json")
        assert kept is not None and json.loads(kept) == {"note": expected}, text
    html = b'<a href="ftp://ada:hunter2@files.example/">x</a>'
    assert redactor.body(html, "text/html") == (
        b'<a href="ftp://ada:' + FILTERED.encode() + b'@files.example/">x</a>'
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("secret", PREFIXED_TOKENS.values(), ids=PREFIXED_TOKENS)
def test_prefixed_tokens_are_found_in_every_format(engine: str, secret: str) -> None:
    """A service's token is let through to the full look in every format, short bodies and
    long ones (google-re2's pass from _RE2_MIN_LENGTH on)."""
    redactor = _with_engine(engine)
    pad = "x" * prefilter._RE2_MIN_LENGTH
    for body, content_type in [
        (json.dumps({"note": f"deploy with {secret}"}), "application/json"),
        (json.dumps({"note": secret, "pad": pad}), "application/json"),
        (f"q=1&note={secret}", "application/x-www-form-urlencoded"),
        (f"<r><note>{secret}</note></r>", "application/xml"),
        (f"<p>{secret}</p>", "text/html"),
        (f"GH_TOKEN={secret}\n", "text/plain"),
        (f"{pad} {secret}", "text/plain"),
    ]:
        assert redactor._hints(body.encode(), escapes=False) & prefilter.VALUE_HINT, body
        kept = redactor.body(body.encode(), content_type)
        assert kept is not None and secret.encode() not in kept and FILTERED.encode() in kept


@settings(max_examples=300, deadline=None)
@given(secret=st.from_regex(credentials._PREFIXED_TOKEN, fullmatch=True))
def test_every_token_of_a_prefixed_shape_gets_past_the_prefilter(secret: str) -> None:
    """Every text of the shapes the look filters holds one of the words the pre-filter looks
    for, so no engine keeps a body holding one as it is."""
    words = secret.encode().translate(prefilter._LOWERCASE, prefilter._NOT_ALPHANUMERIC)
    assert any(word in words for word in credentials.CREDENTIAL_WORDS), secret
    body = b'{"note": "%s"}' % secret.encode()  # its escapes (\\u002D) as JSON escapes
    for redactor in _PREFILTER_REDACTORS:
        assert redactor._hints(body, escapes=False) & prefilter.VALUE_HINT, secret
    assert credentials.scrub_values(body) == b'{"note": "%s"}' % FILTERED.encode()


@pytest.mark.parametrize("engine", ENGINES)
def test_credentials_behind_escaped_slashes_are_found(engine: str) -> None:
    """JSON may escape every slash (PHP's json_encode does): ``https:\\/\\/user:pw@host``."""
    redactor = _with_engine(engine)
    cases = {
        "fetch https://ada:hunter2@intranet.example/x": f"fetch https://ada:{FILTERED}@intranet.example/x",
        f"Authorization: Bearer {SECRET}/more+/x==": f"Authorization: {FILTERED}",
        f"see {PEM}": f"see {FILTERED}",
        "a\\/b https://ada:hunter2@x/": f"a\\/b https://ada:{FILTERED}@x/",
    }
    for text, expected in cases.items():
        body = json.dumps({"note": text}).encode().replace(b"/", b"\\/")
        kept = redactor.body(body, "application/json")
        assert kept is not None and json.loads(kept) == {"note": expected}, text
    clean = json.dumps({"see": "https://example.com/a/b"}).encode().replace(b"/", b"\\/")
    assert redactor.body(clean, "application/json") is clean


@pytest.mark.parametrize("engine", ENGINES)
def test_credentials_behind_unicode_escapes_are_found(engine: str) -> None:
    """JSON may write a printable character as ``\\u00XX``: ``/`` as ``\\u002f``, ``+`` as
    ``\\u002B`` (.NET's System.Text.Json does), also mixed with ``\\/``."""
    redactor = _with_engine(engine)
    cases = {
        "https:\\u002f\\u002fada:hunter2@x\\u002fy": f"https://ada:{FILTERED}@x/y",
        "https:\\u002F\\/ada:hunter2@x": f"https://ada:{FILTERED}@x",
        "https:/\\/ada:hunter2@x": f"https://ada:{FILTERED}@x",
        f"Bearer {SECRET}\\u002fmore\\u002Bx==": f"Bearer {FILTERED}",
    }
    for text, expected in cases.items():
        body = ('{"note": "' + text + '"}').encode()
        assert json.loads(body)["note"] != expected
        kept = redactor.body(body, "application/json")
        assert kept is not None and json.loads(kept) == {"note": expected}, text
    clean = b'{"see": "https:\\u002f\\u002fexample.com\\u002fa", "a": "\\\\u002f"}'
    assert redactor.body(clean, "application/json") is clean


@pytest.mark.parametrize("engine", ENGINES)
def test_escapes_that_can_hide_a_credential_send_the_body_to_the_look(engine: str) -> None:
    """A body whose escapes may hide a credential's look is looked at closely; the escapes
    encoders write for other reasons (HTML's in JSON, a form's spaces and ``@``) are not
    enough."""
    redactor = _with_engine(engine)
    hiding = [
        b'{"n": "\\u0034111111111111111"}',
        b'{"k": "\\u0041KIAIOSFODNN7EXAMPLE"}',
        b"k=%41KIAIOSFODNN7EXAMPLE",
        b"next=https%3A%2F%2Fada%3Apw%40db",
        b"next=https%3a//ada%3Apw%40db",
        b"next=https:%2f%2fada%3Apw%40db",
        b"card=4111%201111%201111%201111",
        # encoded twice or more: the escapes' own "%" encoded as "%25"
        b"next=https%253A%252F%252Fada%253Ahunter2%2540db",
        b"next=https%253A//ada%253Ahunter2%2540db",
        b"next=https:%252F%25252Fada%253Ahunter2%2540db",
        b"n=4111%25201111%25201111%25201111",
        b"k=%252541KIAIOSFODNN7EXAMPLE",
        # a token's prefix split by an escaped underscore
        b"k=sk%5Flive%5F4eC39HqLyjWDarjtT1zdp7dc",
        b"k=github%255Fpat%255F11ABCDEFG",
        # JSON in a URL-encoded value: its slashes escaped (\\/ encoded as %5C%2F)
        b"data=%7B%22url%22%3A%22https%3A%5C%2F%5C%2Fada%3Ahunter2%40host%22%7D",
        b"u=https:%5C/%5C/ada:hunter2@host",
        b"u=https%3A%5Cu002f%5Cu002fada%3Ahunter2%40host",
        b"u=https%253A%255C%252F%255C%252Fada%253Ahunter2%2540host",
        # a card number after a control character's escape, its hex digits before the card's
        b'{"n": "\\u00094111111111111111"}',
        b'{"n": "\\u00084111 1111 1111 1111"}',
        # JSON that escapes its slashes, written into a JSON string
        b'{"p": "{\\"u\\": \\"https:\\\\\\/\\\\\\/ada:hunter2@h\\"}"}',
        b'{"p": "{\\"u\\": \\"https:\\\\/\\\\/ada:hunter2@h\\"}"}',
        b'{"p": "{\\"u\\": \\"https:\\\\u002f\\\\u002fada:hunter2@h\\"}"}',
        # a card number after any escape whose hex ends in a digit
        b'{"n": "Card:\\u00a04111 1111 1111 1111"}',
        b"d=%7B%22c%22%3A%224111+1111+1111+1111%22%7D",
        b"v=%094111+1111+1111+1111",
        b"v=%C3%A94111-1111-1111-1111",
        b"v=%25224111+1111+1111+1111",
        b"d=%5Cu00a04111+1111+1111+1111",
    ]
    for body in hiding:
        assert redactor._hints(body, escapes=False) & prefilter.VALUE_HINT, body
    for body in (
        b'{"html": "\\u003cb\\u003e \\u0026 \\u0022 \\u0027 caf\\u00e9 \\n"}',
        b"email=ada%40example.com&q=hello%20world&p=50%25",
        b"p=50%25&q=100%25%20off&e=ada%2540example.com",
        b'{"t": "a\\u0009b\\u000Ac \\u00013", "p": "C:%5C%2Fx"}',
    ):
        assert not redactor._hints(body, escapes=False) & prefilter.VALUE_HINT, body


@pytest.mark.parametrize("engine", ENGINES)
def test_names_split_by_any_byte_are_found(engine: str) -> None:
    """The words of a name are ASCII letters and digits, whatever is between them: bytes that
    are not UTF-8, NUL, line breaks."""
    redactor = _with_engine(engine)
    assert redactor._hints(b"to\r\nKEN") & prefilter.NAME_HINT
    for separator in [b"\xff", b"\x00", b"\t", b"\xc3\xa9", b"-_. "]:
        body = b'{"note": "hi", "TO' + separator + b'ken": "hunter2"}'
        assert redactor._hints(body) & prefilter.NAME_HINT, separator
        kept = redactor.body(body, "application/json")
        assert kept is not None and b"hunter2" not in kept, separator


@pytest.mark.parametrize("engine", ENGINES)
def test_custom_terms_with_digits_and_no_terms_at_all(engine: str) -> None:
    redactor = _with_engine(engine, fields=("x509",))
    assert redactor._hints(b'{"X-509": 1}') == prefilter.NAME_HINT
    assert redactor._hints(b'{"password": 1}') == 0
    nothing = _with_engine(engine, fields=())
    assert nothing._hints(b'{"password": 1}') == 0
    assert nothing._hints(f'{{"a": "{CARD}"}}'.encode()) == prefilter.VALUE_HINT


# Fragments that the pre-filter looks for, cut and joined in every way.
_FRAGMENTS = st.sampled_from(
    [
        b"pass",
        b"Pass",
        b"word",
        b"TOKEN",
        b"to",
        b"ken",
        b"key",
        b"s",
        b"eyJ",
        b"Bear",
        b"er ",
        b"AKIA",
        b"asia",
        b"ghp",
        b"Gh",
        b"_",
        b"sk",
        b"live",
        b"xox",
        b"AIza",
        b"npm",
        b"T3Blbk",
        b"FJ",
        b"private",
        b"Key",
        b":",
        b"/",
        b"//",
        b"\\",
        b"u002f",
        b"u002F",
        b"5C",
        b"u0009",
        b"u000a",
        b"u0034",
        b"u003c",
        b"u0022",
        b"%",
        b"3A",
        b"2f",
        b"41",
        b"20",
        b"25",
        b"4111",
        b"1111",
        b"378282",
        b"246310005",
        b"0",
        b"12",
        b" ",
        b"-",
        b",",
        b'"',
        b"\n",
        b"\x00",
        b"\xff",
        b"\xc3\xa9",
        b"x",
    ]
)
_SEPARATORS = st.sampled_from([b"", b"", b"-", b" ", b"_", b"\n", b"\x00", b"\xff", b"\xc3\xa9"])


@st.composite
def _spread_words(draw: st.DrawFn) -> bytes:
    """A deny-listed term or a credential's first word, in any case, bytes between letters."""
    word = draw(
        st.sampled_from(
            ["token", "secret", "cvv", "apikey", "eyj", "akia", "bearer", "ghs", "sktest", "npm"]
        )
    )
    spread = b""
    for letter in word.encode():
        upper = draw(st.booleans())
        spread += bytes([letter]).upper() if upper else bytes([letter])
        spread += draw(_SEPARATORS)
    return spread


_BODIES = st.lists(_FRAGMENTS | _spread_words() | st.binary(max_size=4), max_size=40).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(body=_BODIES, escapes=st.booleans())
def test_the_prefilter_answers_as_its_definition_with_every_engine(
    body: bytes, escapes: bool
) -> None:
    for redactor in _PREFILTER_REDACTORS:
        assert redactor._hints(body, escapes) == _reference_hints(redactor, body, escapes)
    # The engines find the same, but for the card shape (a different necessary condition).
    exact = ~prefilter._FOUND_CARD
    assert len({redactor._scan(body) & exact for redactor in _PREFILTER_REDACTORS}) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"key " * 2000 + b"Bearer",  # many terms, a credential word last
        b"Bearer " + b"key " * 2000,
        b"eyJ." * 2000 + b"password",  # many credential words, a term last
        b"key " * 2000,
        b"basic " * 1000,
    ],
)
def test_bodies_full_of_matches_get_every_kind_found(body: bytes) -> None:
    """The words' pass stops at its first match and looks for the other kind of word alone:
    a kind found only after thousands of matches of the other is still found."""
    for redactor in _PREFILTER_REDACTORS:
        assert redactor._hints(body, True) == _reference_hints(redactor, body, True)
        assert redactor._scan(body) & ~prefilter._FOUND_CARD == (
            _PREFILTER_REDACTORS[0]._scan(body) & ~prefilter._FOUND_CARD
        )


def test_the_prefilter_answers_as_its_definition_on_large_hostile_bodies() -> None:
    """Bodies of the limit's size and more, made to cost (hostile.py), with every engine."""
    bodies = [shape(65536)[0] for shape in BODY_SHAPES.values()]
    pieces = [b"to-", b"KE", b"n\xff", b"4111 ", b"1111-", b":/", b"/", b"eyJ", b"%", b"\x00", b"7"]
    bodies.append(b"".join(pieces[(i * i + 3 * i) % len(pieces)] for i in range(60000)))
    for body in bodies:
        for escapes in (True, False):
            expected = _reference_hints(_PREFILTER_REDACTORS[0], body, escapes)
            for redactor in _PREFILTER_REDACTORS:
                assert redactor._hints(body, escapes) == expected


def _default_redactor() -> Redactor:
    return Redactor(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_FIELDS)


def _recorded_re2_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of what each RE2 pass of the redactors built from now on reads, in order."""
    scanned: list[int] = []
    real_re2_scanner = prefilter._re2_scanner

    def recording_re2_scanner(terms: list[bytes]) -> Callable[[bytes], int]:
        scan = real_re2_scanner(terms)

        def recorded(body: bytes) -> int:
            scanned.append(len(body))
            return scan(body)

        return recorded

    monkeypatch.setattr(prefilter, "_re2_scanner", recording_re2_scanner)
    return scanned


@settings(max_examples=300, deadline=None)
@given(bodies=st.lists(_BODIES, max_size=12), escapes=st.booleans())
def test_bodies_pre_filtered_together_get_the_hints_each_gets_alone(
    bodies: list[bytes], escapes: bool
) -> None:
    """``many`` joins bodies for one RE2 pass per group (several groups here): what it tells of
    each body gives that body's own hints."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefilter, "_GROUP_BYTES", 64)
        for redactor in [*_PREFILTER_REDACTORS, _default_redactor()]:
            found = redactor._scan_many(bodies)
            assert [prefilter.hints_of(f, b, escapes) for f, b in zip(found, bodies)] == [
                redactor._hints(body, escapes) for body in bodies
            ]


@pytest.mark.parametrize(
    "bodies",
    [
        [b'{"a": "pass', b'word"}'],  # a term across two bodies
        [b"4111 1111 ", b"1111 1111"],  # card-shaped digits across two bodies
        [b"see http:", b"//example.org"],
        [b"", b"Bearer", b"", b"plain"],
    ],
)
def test_nothing_is_found_across_the_bodies_pre_filtered_together(bodies: list[bytes]) -> None:
    for redactor in [*_PREFILTER_REDACTORS, _default_redactor()]:
        assert redactor._scan_many(bodies) == [redactor._scan(body) for body in bodies]


def test_bodies_pre_filtered_together_take_one_re2_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bodies of a batch (many of them short) take one RE2 pass together: a pass costs
    less over one long text than over many short ones, and lets go of the GIL once. A URL or an
    escape in one body is then looked for in each by a substring search."""
    pytest.importorskip("re2")
    scanned = _recorded_re2_passes(monkeypatch)
    redactor = _default_redactor()
    bodies = [b"Hello, World!"] * 100 + [b"a=50%", b'{"next": "https://example.org/2"}']
    scanned.clear()  # the probe of the automaton
    url, escape = prefilter._FOUND_URL, prefilter._FOUND_ESCAPE
    assert redactor._scan_many(bodies) == [0] * 100 + [escape, url]
    assert scanned == [len(prefilter._SEPARATOR.join(bodies))]
    scanned.clear()
    monkeypatch.setattr(prefilter, "_GROUP_BYTES", 13 * 50)
    assert redactor._scan_many(bodies) == [0] * 100 + [escape, url]
    assert len(scanned) == 3  # groups of about _GROUP_BYTES


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_compiles_its_own_re2_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """RE2 locks a set while it adds states to its automaton: a child forked while a thread of
    the parent held that lock would wait for it forever (measured: 1 child in 100 hung when the
    parent forked while a thread pre-filtered new bodies). Each process compiles its own set."""
    pytest.importorskip("re2")
    compiled_in: list[int] = []
    real_re2_set = prefilter._re2_set

    def recording_re2_set(terms: list[bytes]) -> Any:
        compiled_in.append(os.getpid())
        return real_re2_set(terms)

    monkeypatch.setattr(prefilter, "_re2_set", recording_re2_set)
    redactor = _default_redactor()
    bodies = [b"Hello", b"Bearer abc"]
    expected = [0, prefilter._FOUND_CREDENTIAL]
    assert redactor._scan_many(bodies) == expected
    before = list(compiled_in)

    def child() -> Any:
        return [redactor._scan_many(bodies), compiled_in[-1] == os.getpid()]

    assert fork_and_report(child) == [expected, True]
    assert compiled_in == before  # the parent keeps its set
    assert redactor._scan_many(bodies) == expected


def test_short_bodies_are_pre_filtered_over_their_words_even_with_google_re2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """google-re2 lets go of the GIL for every match, which costs more than the words' pass
    takes for a short body when another thread wants the GIL: only bodies of at least
    ``_RE2_MIN_LENGTH`` bytes go to RE2."""
    pytest.importorskip("re2")
    scanned = _recorded_re2_passes(monkeypatch)
    redactor = _default_redactor()
    scanned.clear()  # the probe of the automaton
    shortest = prefilter._RE2_MIN_LENGTH
    short = b'{"password": "hunter2"}'
    assert redactor.body(short, "application/json") == b'{"password": "' + FILTERED.encode() + b'"}'
    long = b'{"password": "hunter2", "pad": "' + b"x" * shortest + b'"}'
    kept = redactor.body(long, "application/json")
    assert kept is not None and b"hunter2" not in kept
    assert redactor._scan(b"x" * (shortest - 1)) == 0
    assert redactor._scan(b"x" * shortest) == 0
    assert scanned == [len(long), shortest]


def test_a_google_re2_that_finds_nothing_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """RE2 answers "no match" when it cannot build its automaton: such a pre-filter would keep
    every body as it is, so the redactor checks it on a probe and uses the words' pass instead."""
    pytest.importorskip("re2")
    monkeypatch.setattr(prefilter, "_re2_scanner", lambda terms: lambda body: 0)
    redactor = Redactor(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_FIELDS)
    pad = b"x" * prefilter._RE2_MIN_LENGTH  # long enough for RE2
    kept = redactor.body(b'{"pad": "' + pad + b'", "password": "hunter2"}', "application/json")
    assert kept == b'{"pad": "' + pad + b'", "password": "' + FILTERED.encode() + b'"}'


def test_terms_too_many_for_google_re2_leave_the_words_pass_to_every_body() -> None:
    """RE2 refuses to compile a set beyond its memory budget (10,000 terms; 5,000 compile):
    the redactor is still built, and pre-filters every body over its words."""
    pytest.importorskip("re2")
    letters = random.Random(7).choices
    terms = ["".join(letters(string.ascii_lowercase, k=8)) for _ in range(10_000)]
    redactor = Redactor(DEFAULT_REDACT_HEADERS, (*DEFAULT_REDACT_FIELDS, *terms))
    pad = b"x" * prefilter._RE2_MIN_LENGTH  # long enough for RE2
    kept = redactor.body(b'{"pad": "' + pad + b'", "password": "hunter2"}', "application/json")
    assert kept == b'{"pad": "' + pad + b'", "password": "' + FILTERED.encode() + b'"}'


def test_the_words_pass_runs_on_pyahocorasick_where_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyahocorasick's automaton keeps the GIL (unlike google-re2) and takes about a third of
    Python's ``re`` for the words of a 4 KB body: it does the words' pass when installed."""
    pytest.importorskip("ahocorasick")
    searched: list[bytes] = []

    def recording_aho_finder(terms: list[bytes]) -> Callable[[bytes], int]:
        find = real_aho_finder(terms)

        def recorded(words: bytes) -> int:
            searched.append(words)
            return find(words)

        return recorded

    real_aho_finder = prefilter._aho_finder
    monkeypatch.setattr(prefilter, "_aho_finder", recording_aho_finder)
    redactor = Redactor(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_FIELDS)
    kept = redactor.body(b'{"Pass-Word": "hunter2"}', "application/json")
    assert kept == b'{"Pass-Word": "' + FILTERED.encode() + b'"}'
    assert searched == [b"passwordhunter2"]


_PREFILTER_REDACTORS = [
    _with_engine("python"),
    *([] if prefilter._ahocorasick is None else [_with_engine("ahocorasick")]),
    *([] if prefilter._re2 is None else [_with_engine("re2")]),
]

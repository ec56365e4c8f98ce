"""What redaction costs on hostile input: names in linear time, bodies in bounded time.

The time bounds are generous (a busy 2-core machine runs these); the shapes they guard against
cost seconds to minutes without the bounds.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_tracking.redact import (
    DEFAULT_REDACT_FIELDS,
    DEFAULT_REDACT_HEADERS,
    FILTERED,
    MAX_NAME_LENGTH,
    Redactor,
)

from .hostile import BODY_SHAPES, long_header_name, long_query, plain_json


def fresh() -> Redactor:
    """A redactor with no remembered verdicts (an attacker sends names never seen before)."""
    return Redactor(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_FIELDS)


def best_time(run: Callable[[Redactor], object], rounds: int = 3) -> float:
    """The least time of ``rounds`` runs, each on a fresh redactor, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        redactor = fresh()
        started = time.perf_counter()
        run(redactor)
        best = min(best, time.perf_counter() - started)
    return best


def test_a_long_header_name_of_one_letter_words_is_classified_quickly() -> None:
    name = long_header_name(8000)  # fits gunicorn's 8 KB field limit
    assert best_time(lambda redactor: redactor.headers([(name, "v")])) < 0.2


def test_a_long_query_parameter_name_is_classified_quickly() -> None:
    query = long_query(16_000)
    assert best_time(lambda redactor: redactor.query(query)) < 0.2


def test_names_over_the_cap_are_secret_and_under_it_are_split() -> None:
    redactor = fresh()
    assert redactor.is_secret_field("a" * (MAX_NAME_LENGTH + 1))
    assert not redactor.is_secret_field("a" * MAX_NAME_LENGTH)
    assert redactor.headers([("X-" + "A" * MAX_NAME_LENGTH, "v")]) == [
        ("X-" + "A" * MAX_NAME_LENGTH, FILTERED)
    ]
    assert redactor.query("b" * 300 + "=v") == "b" * 300 + "=" + FILTERED


def test_name_classification_grows_linearly() -> None:
    """Classifying a name twice as long costs about twice as much, not four times."""
    redactor = fresh()

    def cost(words: int) -> float:
        names = [f"{'_'.join(['a'] * words)}_{index}" for index in range(1000)]
        started = time.perf_counter()
        for name in names:
            redactor._is_secret_field(name)
        return time.perf_counter() - started

    small, large = min(cost(60) for _ in range(5)), min(cost(120) for _ in range(5))
    assert large < 4 * small


@pytest.mark.parametrize("shape", sorted(BODY_SHAPES))
def test_hostile_64k_bodies_are_redacted_in_bounded_time(shape: str) -> None:
    body, content_type = BODY_SHAPES[shape](65536)
    assert best_time(lambda redactor: redactor.body(body, content_type), rounds=1) < 1.0


def _plain_cost(size: int) -> float:
    body, content_type = plain_json(size)
    return best_time(lambda redactor: redactor.body(body, content_type))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'["\\u0041' + b"+ " * 32760 + b'"]', "application/json"),
        (b"%41 " + b"a+b " * 16383, "text/plain"),
        (b"k=%41&" + b"+&" * 32764, "application/x-www-form-urlencoded"),
        (b'["\\u0041' + b"%41 " * 16380 + b'"]', "application/json"),
        (b"k=%41&" * 10922, "application/x-www-form-urlencoded"),
    ],
)
def test_many_short_encoded_runs_cost_about_what_a_plain_body_costs(
    body: bytes, content_type: str
) -> None:
    """A form's ``+`` shows nothing the bytes do not (a card's separator, a token's scheme
    and a key's header are read with it as they are), and a body whose text decoded shows no
    credential is not read run by run: a body of many short runs of ``+`` or ``%41`` costs
    a few passes (about 160 ms and 100 ms for 64 KB of JSON, 20 to 30 times a plain body's
    cost, when each run was read on its own)."""
    cost = best_time(lambda redactor: redactor.body(body, content_type))
    assert cost < 8 * _plain_cost(len(body)) + 0.005


#: Pieces an attacker repeats to fill a body: separators, brackets, quotes, escapes, names of
#: short words, markup, part heads, and the beginnings of credentials the values are scanned for.
_PIECES = st.sampled_from(
    [
        "a_",
        "a-",
        "aB",
        "pass",
        "word",
        "=",
        ":",
        "&",
        ";",
        ",",
        " ",
        "\n",
        "\r\n",
        "{",
        "}",
        "[",
        "]",
        '"',
        "'",
        "\\",
        "\\u0070",
        "\\u0041",
        "%70",
        "%3A%2F%2F",
        "%25",
        "+",
        "<",
        ">",
        "</",
        "<password>",
        'name="',
        "<input name=pin ",
        "value=",
        "<textarea name=pin>",
        "<script>",
        "</script>",
        '"pin": "',
        "&quot;",
        " = ",
        "name*=",
        "--b",
        "Content-Disposition: form-data; ",
        "?",
        "#",
        "eyJ",
        ".",
        "4111 ",
        "-----BEGIN PRIVATE KEY-----",
        "Bearer ",
        "AKIA",
        "ghp_",
        "github_pat_",
        "sk_live_",
        "sk-proj-",
        "T3BlbkFJ",
        "xoxb-",
        "AIza",
        "npm_",
        "aB3dE6gH9j",
    ]
)
_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
        "text/plain",
        "text/html",
        "application/xml",
        "",
    ]
)


@settings(max_examples=40, deadline=None)
@given(
    pieces=st.lists(_PIECES, min_size=1, max_size=6),
    content_type=_TYPES,
    size=st.sampled_from([8192, 32768, 65536]),
)
def test_no_body_shape_costs_more_than_a_fixed_multiple_of_a_plain_body(
    pieces: list[str], content_type: str, size: int
) -> None:
    unit = "".join(pieces).encode()
    body = (b"pass=" + unit * (size // len(unit) + 1))[:size]
    cost = best_time(lambda redactor: redactor.body(body, content_type), rounds=2)
    assert cost < 30 * _plain_cost(size) + 0.05, (pieces, content_type, size)


@pytest.mark.parametrize(
    "unit", ['{"name": [', '{"name": {', "name=[", "name=x ", '"field": "', "header: ("]
)
def test_loose_text_with_many_naming_keys_takes_linear_time(unit: str) -> None:
    """A naming key's value is read only as far as a name can run: a body of many naming keys
    whose values run to its end (cut JSON, plain text) is not scanned once per key."""
    redactor = Redactor(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_FIELDS)
    body = (unit * (60000 // len(unit)) + " token").encode()
    start = time.process_time()
    assert redactor.body(body, "text/plain") is not None
    assert time.process_time() - start < 2.0  # about 20 s when scanned once per key


@pytest.mark.parametrize(
    "unit",
    [
        b">/reset/abcdef<",
        b"<a href=/reset/abc>",
        b">https://h/reset/a/b/c/d",
        b">/reset/" + b"/" * 100,
        b"> /reset/x" + b" " * 3000 + b"y",
        b"> /" + b"a" * 5000 + b" x",
        b">/c/" + b"a-" * 2000 + b"<",
        b">/files/" + b"a/" * 2000 + b"<",
        b"<script>'/reset/a', \"/reset/b\"",
        b'<meta content="0; url=/reset/abc">',
        b"content=0;url=/reset/" + b" " * 100,
    ],
)
def test_pages_linking_to_pages_with_secret_rule_variables_are_read_in_linear_time(
    unit: bytes,
) -> None:
    """A page naming no secret field has its links and text URLs read when it names a page
    of a rule with secret variables: 64 KB of links or URLs costs about twice 32 KB."""

    def cost(size: int) -> float:
        body = (unit * (size // len(unit) + 1))[:size]

        def run(redactor: Redactor) -> object:
            redactor.learn_rules(["/reset/<token>", "/c/<uid>-<token>/y", "/files/<path:key>"])
            return redactor.body(body, "text/html")

        return best_time(run)

    small, large = cost(16384), cost(65536)
    assert large < 1.0
    assert large < 8 * small + 0.01  # four times the size: linear, with room for noise


@pytest.mark.parametrize("unit", [b"/", b"/users/", b"<a href=/items/ab/>"])
def test_a_page_is_searched_for_the_leads_of_many_rules_in_time_not_growing_with_them(
    unit: bytes,
) -> None:
    """A page naming no secret field is searched once for the text the paths of the rules
    with secret variables begin with (``/users/abc/``, ``/items/abd/``...): 3,000 rules cost
    no more than 30 (one branch tried per rule at each slash: 0.5 s a 64 KB page)."""
    names = [a + b + c for a in "abcdefghijklmnopqrst" for b in "abcdefghij" for c in "abcdefg"]
    page = unit * (65536 // len(unit))

    def cost(count: int) -> float:
        redactor = fresh()
        redactor.learn_rules(
            f"/{group}/{name}/<token>"
            for name in names[: count // 2]
            for group in ("users", "items")
        )
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            assert redactor.body(page, "text/html") == page
            best = min(best, time.perf_counter() - started)
        return best

    assert cost(3000) < 4 * cost(30) + 0.01


def test_urls_of_a_short_rule_s_shape_are_read_by_the_rules_of_their_length_only() -> None:
    """Beside ``/<key>`` (every one-segment URL has its shape), 1,000 rules of three segments
    with secret variables: each of a page's one-segment URLs was read by every rule (2 s a
    64 KB page of them), now by the rules whose paths have as many slashes."""
    names = [a + b + c for a in "abcdefghijklmnopqrst" for b in "abcdefghij" for c in "abcde"]
    page = b"<li>/ab</li>" * (65536 // 12)

    def cost(count: int) -> float:
        redactor = fresh()
        redactor.learn_rules(["/<key>", *(f"/<lang>/{name}/<token>" for name in names[:count])])
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            assert redactor.body(page, "text/html") == page.replace(
                b"/ab", b"/" + FILTERED.encode()
            )
            best = min(best, time.perf_counter() - started)
        return best

    assert cost(1000) < 4 * cost(10) + 0.2

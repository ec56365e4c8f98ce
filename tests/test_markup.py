"""Unit tests of :mod:`flask_tracking.markup`: XML and HTML filtered by names.

Most of XML's behaviour is tested through the redactor in tests/test_redact.py; here, a page's
fields and values, with a verdict of names of its own (only ``pin`` is secret).
"""

from __future__ import annotations

import re

import pytest

from flask_tracking.credentials import FILTERED
from flask_tracking.markup import MarkupFilters

# Only "pin" is secret.
MARKUP = MarkupFilters(lambda name: name.lower() == "pin", lambda: None)


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        # Flask-WTF's hidden field, a <meta> as htmx and Rails read it, a settings page.
        (
            '<input id="csrf" name="pin" type="hidden" value="IjQ5YzEx.Zx">',
            '<input id="csrf" name="pin" type="hidden" value="*">',
        ),
        ('<meta name="pin" content="abc123">', '<meta name="pin" content="*">'),
        ("<input value='1234' name='pin' readonly>", "<input value='*' name='pin' readonly>"),
        ("<input name=pin value=1234>", "<input name=pin value=*>"),
        ('<INPUT NAME="PIN" VALUE="1234"/>', '<INPUT NAME="PIN" VALUE="*"/>'),
        ('<input\nname="pin"\nvalue="1234">', '<input\nname="pin"\nvalue="*">'),
        # No space after a quoted value: browsers read the next attribute all the same.
        ('<input name="pin"value="1234">', '<input name="pin"value="*">'),
        ("<input value='1234'name='pin'/>", "<input value='*'name='pin'/>"),
        (
            '<textarea name="pin" rows=2>12\n34</textarea><p>',
            '<textarea name="pin" rows=2>*</textarea><p>',
        ),
        ('<textarea name="pin">1234', '<textarea name="pin">*'),  # cut at the limit
        # A tag cut at the limit, or its name written in mixed case.
        ('<input name="pin" type="hidden" value="12', '<input name="pin" type="hidden" value="*"'),
        ('<input value="1234" nAmE="pin"', '<input value="*" nAmE="pin"'),
        ('<input nAmE="pin" value="1234">', '<input nAmE="pin" value="*">'),
        # A value with nothing in it is kept; so is every field not named secret.
        ('<input name="pin" value="">', '<input name="pin" value="">'),
        ('<input type="password" name="pin">', '<input type="password" name="pin">'),
        (
            '<input name="user" value="1234"><a href="?pin=1">',
            '<input name="user" value="1234"><a href="?pin=*">',
        ),
        ('<meta name="description" content="pin">', '<meta name="description" content="pin">'),
        ('<label for="pin">pin</label>', '<label for="pin">pin</label>'),
        ('<p data-name="pin" title="1234">', '<p data-name="pin" title="1234">'),
    ],
)
def test_fields_named_secret_in_a_page_are_filtered(page: str, expected: str) -> None:
    kept = MARKUP.html(page.encode())
    assert kept == expected.replace("*", FILTERED).encode()


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ('<script>var pin = "1234";</script>', '<script>var pin = "*";</script>'),
        ("<script>config.pin = '1234', x = 2</script>", "<script>config.pin = '*', x = 2</script>"),
        (
            "<script>config.pin = 1234; v = {pin: 8}</script>",
            "<script>config.pin = *; v = {pin: *}</script>",
        ),
        # JSON a page shows, in <pre>, <code> or any text, and in an attribute with a ">".
        (
            '<pre>{"pin": "1234"}</pre><td>"pin": "1234"</td><p>a: "b"</p>',
            '<pre>{"pin": "*"}</pre><td>"pin": "*"</td><p>a: "b"</p>',
        ),
        (
            """<div data-x='{"q": "a > b", "pin": "1"}'>""",
            """<div data-x='{"q": "a > b", "pin": "*"}'>""",
        ),
        (
            '<SCRIPT type="application/json">{"user": {"pin": "1234"}}</SCRIPT><p>pin: 1</p>',
            '<SCRIPT type="application/json">{"user": {"pin": "*"}}</SCRIPT><p>pin: 1</p>',
        ),
        ("<script>headers = {pin: 'abc'}", "<script>headers = {pin: '*'}"),  # cut at the limit
        (
            """<script>xhr.setRequestHeader("pin", "1234"); h['pin'] = '1234';</script>""",
            """<script>xhr.setRequestHeader("pin", "*"); h['pin'] = '*';</script>""",
        ),
        # JSON in an attribute (htmx's hx-headers and hx-vals), its quotes as entities too.
        ("""<body hx-headers='{"pin": "1234"}'>""", """<body hx-headers='{"pin": "*"}'>"""),
        (
            '<div hx-vals="{&quot;pin&quot;: &quot;1234&quot;}">',
            '<div hx-vals="{&quot;pin&quot;: &quot;*&quot;}">',
        ),
        # Quotes as Python's html.escape writes them (a dict shown as it prints), and in hex.
        (
            "<pre>{&#x27;pin&#x27;: &#x27;1234&#x27;}</pre>",
            "<pre>{&#x27;pin&#x27;: &#x27;*&#x27;}</pre>",
        ),
        (
            '<div hx-vals="{&#X22;pin&#X22;: &#X22;1234&#X22;}">',
            '<div hx-vals="{&#X22;pin&#X22;: &#X22;*&#X22;}">',
        ),
        # JSON written into a JS string (Jinja's tojson twice): its quotes escaped.
        (
            '<script>JSON.parse("{\\"user\\": {\\"pin\\": \\"1234\\"}}")</script>',
            '<script>JSON.parse("{\\"user\\": {\\"pin\\": \\"*\\"}}")</script>',
        ),
        # data-* attributes named secret.
        ('<div data-pin="1234" data-x="1">', '<div data-pin="*" data-x="1">'),
        ("<div DATA-PIN=1234>", "<div DATA-PIN=*>"),
        # Code is no value: selectors, comparisons, reads of other names are kept.
        (
            """<script>const el = document.querySelector('input[name="pin"]');"""
            """ const mode = "dark"; if (pin == null) { go("/login"); } pin = e.pin;</script>""",
            """<script>const el = document.querySelector('input[name="pin"]');"""
            """ const mode = "dark"; if (pin == null) { go("/login"); } pin = e.pin;</script>""",
        ),
        ('<script>const f = (pin) => "x"; v = {pin: ""}</script>', None),
        # Text outside scripts is the page's own words: kept.
        ("<p>pin: 1234</p><script>go()</script>", "<p>pin: 1234</p><script>go()</script>"),
    ],
)
def test_secret_values_in_a_page_s_scripts_are_filtered(page: str, expected: str | None) -> None:
    kept = MARKUP.html(page.encode())
    assert kept == (page if expected is None else expected).replace("*", FILTERED).encode()


def test_a_page_without_a_secret_field_is_returned_as_it_is() -> None:
    page = b'<form><input name="user" value="ada"><input name=q></form>'
    assert MARKUP.html(page) is page


def reset_paths(url: str) -> str:
    """The URL filter of an app whose rule ``/reset/<token>`` is secret, roughly."""
    return re.sub("/reset/[^/?#]+", "/reset/*", url)


#: The filters of a page of such an app, for its links (no field named secret).
LINKS = MarkupFilters(lambda name: False, lambda: reset_paths)


def test_links_to_pages_with_secret_variables_are_filtered() -> None:
    """The path of a link, a form's action, a source, as the redactor's URL rules filter it
    (here: any path under /reset/)."""
    page = (
        b'<form action="/reset/abc" method="post"><a HREF=/reset/def>again</a>'
        b"<img src='https://h/reset/ghi'><button formaction=\"/reset/j?a=/b\">x</button>"
        b'<button hx-post="/reset/klm">y</button><p title="see /reset/nop">z</p></form>'
    )
    assert LINKS.html(page) == (
        b'<form action="/reset/*" method="post"><a HREF=/reset/*>again</a>'
        b"<img src='https://h/reset/*'><button formaction=\"/reset/*?a=/b\">x</button>"
        b'<button hx-post="/reset/*">y</button><p title="see /reset/nop">z</p></form>'
    )
    assert MarkupFilters(lambda name: False, lambda: None).html(page) is page
    script = b"<script>location.href = '/reset/abc?x=1'; go(\"https://h/reset/d\", '/a')</script>"
    assert LINKS.html(script) == (
        b"<script>location.href = '/reset/*?x=1'; go(\"https://h/reset/*\", '/a')</script>"
    )


def test_htmx_requests_written_as_data_attributes_are_filtered() -> None:
    """htmx reads ``data-hx-post`` as ``hx-post``."""
    page = b"<button data-hx-post=\"/reset/abc\" DATA-HX-GET='/reset/def'>x</button>"
    assert LINKS.html(page) == (
        b"<button data-hx-post=\"/reset/*\" DATA-HX-GET='/reset/*'>x</button>"
    )


def test_a_url_written_as_an_element_s_text_is_filtered() -> None:
    """A redirect's page writes its target as the link's text too; a list of links may."""
    page = (
        b'<a href="/reset/abc">/reset/abc</a>. <li> https://h/reset/def?x=1 </li>'
        b"<p>see /reset/ghi for more</p><td>/about</td>"
    )
    assert LINKS.html_links(page) == (
        b'<a href="/reset/*">/reset/*</a>. <li> https://h/reset/*?x=1 </li>'
        b"<p>see /reset/ghi for more</p><td>/about</td>"
    )


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (b'<a href="/reset/abc', b'<a href="/reset/*'),
        (b"<a href='https://h/reset/abc", b"<a href='https://h/reset/*"),
        (b'<a href="/reset/abc">/reset/ab', b'<a href="/reset/*">/reset/*'),
        (b"<li>\n  /reset/abc", b"<li>\n  /reset/*"),
        (b'<a href="/reset/abc>x</a>', b'<a href="/reset/abc>x</a>'),  # no URL: no quote ends it
    ],
)
def test_a_link_cut_by_the_end_of_the_body_is_filtered(page: bytes, expected: bytes) -> None:
    """A page cut at the capture limit inside a link, or inside a URL written as an
    element's text (a redirect's page), keeps no part of its token."""
    assert LINKS.html_links(page) == expected


def test_an_xhtml_page_s_links_are_filtered() -> None:
    """An XHTML reset page (read as XML, for its secret field) has its form's action filtered
    as an HTML page's is."""
    markup = MarkupFilters(lambda name: name == "password", lambda: reset_paths)
    page = (
        b'<html xmlns="http://www.w3.org/1999/xhtml"><form action="/reset/abc" method="post">'
        b'<input name="password"/></form><a href="/reset/def">/reset/def</a></html>'
    )
    assert markup.xml(page, xhtml=True) == (
        b'<html xmlns="http://www.w3.org/1999/xhtml"><form action="/reset/*" method="post">'
        b'<input name="password"/></form><a href="/reset/*">/reset/*</a></html>'
    )


def test_a_redirect_written_as_a_refresh_or_a_script_is_filtered() -> None:
    """A page of its own may redirect by ``<meta http-equiv="refresh">`` or a script; it is
    read for links when it names no secret field."""
    page = (
        b'<meta http-equiv="refresh" content="0; url=/reset/abc"><meta http-equiv=Refresh '
        b"CONTENT=\"5;URL='https://h/reset/def?x=1'\"><meta name=x content='/reset/ghi'>"
        b'<script>location.replace("/reset/jkl"); go(`/reset/mno`)</script><p>"/reset/pqr"</p>'
    )
    assert LINKS.html_links(page) == (
        b'<meta http-equiv="refresh" content="0; url=/reset/*"><meta http-equiv=Refresh '
        b"CONTENT=\"5;URL='https://h/reset/*?x=1'\"><meta name=x content='/reset/ghi'>"
        b'<script>location.replace("/reset/*"); go(`/reset/*`)</script><p>"/reset/pqr"</p>'
    )


def test_a_field_s_value_that_is_a_url_is_filtered_as_a_link() -> None:
    """A sign-in form keeps where to go next in a hidden field."""
    page = b'<input type=hidden name=next value="/reset/abc"><input VALUE=/reset/def data-value=x>'
    assert LINKS.html_links(page) == (
        b'<input type=hidden name=next value="/reset/*"><input VALUE=/reset/* data-value=x>'
    )


def test_links_are_read_without_the_spaces_around_them() -> None:
    """Browsers drop the spaces around a link's URL (a template wrapping a long url_for)."""
    page = b'<a href="\n  /reset/abc\n">x</a><form action=" /reset/def ">'
    assert LINKS.html(page) == b'<a href="\n  /reset/*\n">x</a><form action=" /reset/* ">'


def test_a_url_parameter_holding_a_query_of_its_own_goes_to_its_filter() -> None:
    """Only values holding a query or a fragment (raw ``?``, ``%3F``, ``%23``) are handed to
    ``query_value``; what it gives back replaces them, and a page it changes nothing in is
    returned itself."""
    seen: list[str] = []

    def query_value(value: str) -> str:
        seen.append(value)
        return value.replace("t0k", "[Filtered]")

    markup = MarkupFilters(lambda name: False, lambda: None, query_value)
    page = (
        b'<a href="/signin?next=%2Freset%3Ftoken%3Dt0k&amp;x=1">a</a>'
        b'<a href="/signin?next=/reset?token=t0k">b</a>'
        b'<a href="/signin?next=%2Fcb%23access_token%3Dt0k">c</a>'
        b'<a href="/search?q=t0k">d</a>'
    )
    assert markup.urls(page) == (
        b'<a href="/signin?next=%2Freset%3Ftoken%3D[Filtered]&amp;x=1">a</a>'
        b'<a href="/signin?next=/reset?token=[Filtered]">b</a>'
        b'<a href="/signin?next=%2Fcb%23access_token%3D[Filtered]">c</a>'
        b'<a href="/search?q=t0k">d</a>'
    )
    assert seen == ["%2Freset%3Ftoken%3Dt0k", "/reset?token=t0k", "%2Fcb%23access_token%3Dt0k"]
    kept = b'<a href="/signin?next=%2Fhome%3Fa%3D1">home</a>'
    assert markup.urls(kept) is kept

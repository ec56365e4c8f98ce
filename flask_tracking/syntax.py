"""Where names and values are in the text of a body, found without parsing it: the heads of
multipart parts, XML elements and attributes, URL parameters, and loose ``key=value`` or
``key: value`` text (cut JSON, plain text, strings inside JSON).

Pure functions and patterns over bytes and text, for :mod:`flask_tracking.bodies`: no names are
judged here. Multipart: :func:`multipart_boundary`, :func:`part_head_end`, :func:`part_header`,
:func:`part_names`. XML: :data:`XML_TAG`, :data:`XML_ATTRIBUTE`, :data:`XML_NAME_ATTRIBUTE`,
:func:`xml_element_end`. URLs in markup: :data:`URL_PARAMETER`. Loose text: :data:`LOOSE_PAIR`,
:func:`loose_key`, :func:`loose_value_end`, :class:`LooseObjects`.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from urllib.parse import unquote, unquote_plus

from werkzeug.http import parse_options_header


def part_header(head: bytes, wanted: bytes) -> str:
    """The value of the header ``wanted`` (lowercase) of a part head, or ``""``."""
    for line in head.splitlines():  # CRLF, LF or CR alone, as Werkzeug splits them
        header, colon, value = line.partition(b":")
        if colon and header.strip().lower() == wanted:
            return value.strip().decode("latin-1")
    return ""


def part_head_end(part: bytes) -> tuple[int, int]:
    """Where the head of a multipart part ends and its content starts (-1, -1: no blank line).
    The head ends at the first empty line, whether lines end in CRLF, in LF or in CR alone
    (Werkzeug reads all three)."""
    blank = _BLANK_LINE.search(part)
    return (blank.start(), blank.end()) if blank else (-1, -1)


def part_names(head: bytes) -> list[str]:
    """Every field name a part head gives in its Content-Disposition (``name="..."``, an
    unquoted ``name=...``, an RFC 2231 ``name*=charset'lang'...``), and the name Werkzeug
    reads there (which also joins RFC 2231 continuations, ``name*0=pass; name*1=word``);
    header lines folded onto the next are unfolded first, as Werkzeug does. Linear in the
    head."""
    names = []
    for line in _FOLDED_LINE.sub(b" ", head).splitlines():
        header, colon, value = line.partition(b":")
        if not colon or header.strip().lower() != b"content-disposition":
            continue
        read = parse_options_header(value.decode("utf-8", "replace").strip())[1].get("name")
        if read:
            names.append(read)
        for match in _PART_PARAMETER.finditer(value):
            key = match.group(1).lower()
            if key not in (b"name", b"name*"):
                continue
            raw = match.group(2).strip()
            if raw[:1] == b'"':
                raw = _BACKSLASH_ESCAPE.sub(rb"\1", raw[1:-1] if raw.endswith(b'"') else raw[1:])
            text = raw.decode("utf-8", "replace")
            if key == b"name*":
                charset, _, rest = text.partition("'")
                _, _, encoded = rest.partition("'")
                text = _percent_decode(encoded if rest else text, charset)
            names.append(text)
    return names


def _percent_decode(text: str, charset: str) -> str:
    try:
        return unquote(text, encoding=charset or "utf-8", errors="replace")
    except LookupError:
        return unquote(text, errors="replace")


def xml_element_end(body: bytes, start: int, name: bytes) -> tuple[int, int]:
    """Where the content of the element ``name`` opened just before ``start`` ends, and
    where scanning goes on (after its end tag); the end of ``body`` for an element left
    open. Elements of the same name nested inside are counted."""
    depth = 1
    for match in XML_TAG.finditer(body, start):
        closing, prefix, local, _, empty = match.groups()
        if (prefix or b"") + local != name:
            continue
        if closing:
            depth -= 1
            if depth == 0:
                return match.start(), match.end()
        elif not empty:
            depth += 1
    return len(body), len(body)


#: Keys whose value names the field another key of the same object holds
#: (``{"name": "password", "value": "..."}``); in XML, attributes naming their element.
NAMING_KEYS = frozenset({"name", "key", "field", "param", "parameter", "header"})


#: An XML tag; its groups: the ``/`` of an end tag, the prefix (with its colon), the local name,
#: the attributes and the ``/`` of an empty element.
XML_TAG = re.compile(
    rb"<(/?)([A-Za-z_][\w.-]{0,100}:)?([A-Za-z_][\w.-]{0,200})((?:\s[^<>]*?)?)(/?)>"
)
#: An attribute among a tag's attributes: its name and its quoted value (the closing quote may
#: be missing in a cut body).
XML_ATTRIBUTE = re.compile(rb"""([A-Za-z_][\w.:-]{0,200})\s*=\s*("[^"]*"?|'[^']*'?)""")
#: An attribute naming the element's field (``name``, ``key`` or ``field``, in any case) and its
#: value.
XML_NAME_ATTRIBUTE = re.compile(
    rb"""(?:^|\s)(name|key|field)\s*=\s*["']([^"'<>]{0,256})""", re.IGNORECASE
)


#: A ``name`` attribute in HTML and its value, quoted or not, found in the page lowercased.
HTML_NAME_ATTRIBUTE = re.compile(
    rb"""name(?<=[\s"']name)\s*=\s*("[^"<>]{0,256}"|'[^'<>]{0,256}'|[^\s"'<>`=]{1,256})"""
)
#: An HTML start tag: its name and its attributes, values quoted or not. A quoted value may
#: hold a ``<`` (an Alpine.js or Vue expression, ``x-bind:disabled="left < 1"``), as browsers
#: read it; elsewhere a ``<`` ends the tag's reading (the match fails). A tag cut by the end
#: of the body (at the capture limit) is read to there. An attribute may follow a quoted value
#: without a space, as browsers read it (``name="pin"value="..."``).
HTML_START_TAG = re.compile(
    rb"""<([A-Za-z][^\s/<>]{0,100})((?:(?:\s+|(?<=["']))[^\s"'<>/=]+"""
    rb"""(?:\s*=\s*(?:"[^"]*(?:"|\Z)|'[^']*(?:'|\Z)|[^\s"'<>`]+))?)*)\s*(?:/?>|\Z)"""
)
#: A ``value`` or ``content`` attribute among a tag's attributes (after a space, or right
#: after a quoted value), and its value (the closing quote may be missing in a cut tag).
HTML_VALUE_ATTRIBUTE = re.compile(
    rb"""((?:\s|(?<=["']))(?:[Vv][Aa][Ll][Uu][Ee]|[Cc][Oo][Nn][Tt][Ee][Nn][Tt])\s*=\s*)"""
    rb"""("[^"]+"?|'[^']+'?|[^\s"'<>`]+)"""
)
#: A ``data-*`` attribute (found in the page lowercased): the rest of its name and its value.
HTML_DATA_ATTRIBUTE = re.compile(
    rb"""data-(?<=[\s"']data-)([\w.:-]{1,256})\s*=\s*("[^"]*"|'[^']*'|[^\s"'<>`=]+)"""
)
#: A link, a form's action or a source, htmx's requests, a field's value (a sign-in form's
#: ``next``), found in the page lowercased (``formaction`` too), and its URL. What comes
#: before the name is checked apart (it is an attribute's name when a space or a quote does).
#: A quoted URL cut by the end of the body (at the capture limit) is read to there.
HTML_LINK_ATTRIBUTE = re.compile(
    rb"""(?:href|action|src|hx-get|hx-post|hx-put|hx-patch|hx-delete|value)\s*=\s*"""
    rb"""("[^"<>]*(?:"|\Z)|'[^'<>]*(?:'|\Z)|[^\s"'<>`=]+)"""
)
#: An element's text that is one URL alone, a path or an absolute URL (a redirect's page writes
#: its target as its link's text), the spaces around it apart; or cut by the end of the body.
HTML_TEXT_URL = re.compile(rb""">\s*((?:https?:)?/[^\s"'<>`]{0,4096})\s*(?:<|\Z)""")
#: The URL of a refresh (``<meta http-equiv="refresh" content="0; url=/next">``: a redirect
#: written in the page), its quotes apart.
HTML_REFRESH_URL = re.compile(
    rb"""content\s*=\s*["']?\s*[0-9.]*\s*[;,]\s*(?:url\s*=\s*)?['"]?"""
    rb"""((?:https?:)?/[^\s"'<>`]{0,4096})""",
    re.IGNORECASE,
)
#: An attribute's value holding a ``{`` (JSON written into an attribute), quotes and all.
HTML_JSON_ATTRIBUTE = re.compile(rb"""=\s*("[^"<>{]*\{[^"<>]*"|'[^'<>{]*\{[^'<>]*')""")
# A quote written as an entity: ``&quot;``, ``&#34;`` and ``&#39;`` (markupsafe's, Jinja's),
# ``&#x22;`` and ``&#x27;`` (Python's html.escape).
_QUOTE_ENTITY = rb"""&quot;|&\#3[49];|&\#[xX]2[27];"""
#: The colon between a key and its value (a quote or a number after it), looked for first:
#: the search begins with a literal.
HTML_PAIR_COLON = re.compile(rb""":\s*(?:"|'|""" + _QUOTE_ENTITY + rb"""|-?[0-9])""")
#: A string in a script that is a URL (a path or an absolute URL), its quotes around it.
SCRIPT_URL_STRING = re.compile(rb"""(["'`])((?:https?:)?/[^"'`\s<>\\]{0,4096})\1""")
#: Where a ``<textarea>``'s text ends.
HTML_TEXTAREA_END = re.compile(rb"</textarea", re.IGNORECASE)
#: A ``<pre>`` or ``<code>`` start tag (text shown as written: JSON a page shows), and where
#: such an element's text ends.
HTML_TEXT_START = re.compile(rb"<(?:pre|code)\b[^<>]*>", re.IGNORECASE)
HTML_TEXT_END = re.compile(rb"</(?:pre|code)", re.IGNORECASE)
#: A ``<script>`` start tag (read no further than the next ``<``), and where its text ends.
HTML_SCRIPT_START = re.compile(rb"<script\b[^<>]*>", re.IGNORECASE)
HTML_SCRIPT_END = re.compile(rb"</script", re.IGNORECASE)
# A value in a script or in JSON written into an attribute: a string (its quotes written as
# entities, ``&quot;``, or escaped themselves: JSON written into a JS string, ``\"``) or a
# number. Code (``e.key``, ``null``) is no value.
_SCRIPT_VALUE = (
    rb"""(?:(?P<quote>\\"|\\'|"|'|`|""" + _QUOTE_ENTITY + rb""")"""
    rb"""(?P<text>(?:(?!(?P=quote))(?:\\.|[^\\\r\n]))*)(?P=quote)"""
    rb"""|(?P<number>-?[0-9][0-9.]*)(?![\w$.]))"""
)
#: A quoted key and its value, anywhere in a page: ``"apiToken": "..."`` (JSON in a script or
#: in an attribute, htmx's ``hx-headers``), ``['X-CSRFToken'] = '...'``, and a call's first
#: two arguments, ``setRequestHeader("X-CSRFToken", "...")``.
HTML_QUOTED_PAIR = re.compile(
    rb"""(?P<call>\(\s*)?(?P<keyquote>\\"|\\'|"|'|""" + _QUOTE_ENTITY + rb""")"""
    rb"""(?P<key>[^"'<>&\\\s]{1,256}?)"""
    rb"""(?P=keyquote)\s*(?:\]\s*)?(?(call),|[:=](?![=>]))\s*""" + _SCRIPT_VALUE
)
#: A key written as a name in a script, and its value: ``csrfToken: '...'``,
#: ``var pin = 1234``, ``config.apiKey = "..."``.
SCRIPT_NAMED_PAIR = re.compile(
    rb"""(?<![\w$])(?P<key>[A-Za-z_$][\w$]{0,255})\s*[:=](?![=>])\s*""" + _SCRIPT_VALUE
)


def multipart_boundary(content_type: str) -> bytes | None:
    """The ``boundary`` parameter of a multipart Content-Type as Werkzeug reads it (the last
    one given; not ``x-boundary``), or None when it has none."""
    boundary = parse_options_header(content_type)[1].get("boundary")
    return boundary.encode("latin-1", "replace") if boundary else None


#: A URL parameter inside markup (``?name=value``, ``&name=value``, ``&amp;name=value``,
#: ``#name=value``); its groups: the separator, the name and the value.
URL_PARAMETER = re.compile(rb"([?&#;])([\w.%+-]{1,200})=([^&#\"'<>\s]*)")
#: Where a URL parameter's value holds a query or a fragment of its own, raw or encoded.
QUERY_MARK = re.compile(r"[?#]|%3[fF]|%23")
QUERY_MARK_BYTES = re.compile(QUERY_MARK.pattern.encode())
#: A parameter's name in the query or fragment held in a parameter's value, up to its ``=``:
#: after a separator (``?``, ``#``, ``&``, or one of them percent-encoded once), the name (1)
#: up to ``=`` or ``%3D``. The name stops at every separator, so a search that fails ends at
#: the next one: linear time.
NESTED_PARAMETER_NAME = re.compile(
    r"(?:[?#&]|%(?:3[fF]|23|26))((?:[^?#&=%]|%(?!3[fFdD]|23|26))*)(?:=|%3[dD])"
)
_PART_PARAMETER = re.compile(rb';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\\r\n]|\\.)*"?|[^;\r\n]*)')
_BACKSLASH_ESCAPE = re.compile(rb"\\(.)")
_FOLDED_LINE = re.compile(rb"(?:\r\n|\n|\r)(?=[ \t])")  # a header line continued on the next
_BLANK_LINE = re.compile(rb"\r\n\r\n|\r\r|\n\n")  # Werkzeug's end of a part's head


#: A key and what follows it up to its value, in any text: ``"key": value``, ``'key': value``,
#: ``key=value``, ``key: value``, a command line's ``--key=value`` (:func:`loose_key` reads the
#: key, :func:`loose_value_end` finds where the value ends).
LOOSE_PAIR = re.compile(
    r"""(?P<quoted>["'])(?P<key>(?:[^"'\\\n]|\\[^\n]){1,200})["']\s*:\s*"""
    r"""|(?<![\w.%-])-{0,2}(?P<key2>[A-Za-z_%][\w.%-]{0,199})\s*[=:]\s*"""
)


def loose_key(match: re.Match[str]) -> str:
    """The key of a :data:`LOOSE_PAIR` match, its escapes decoded."""
    key = match.group("key")
    if key is None:
        key = match.group("key2")
        return unquote_plus(key) if "%" in key else key
    if "\\" in key:
        try:
            return str(json.loads(f'"{key}"'))
        except ValueError:
            return _unescape(key)
    return key


def _unescape(key: str) -> str:
    """``key`` with its backslash escapes decoded as in a Python string (``\\x41``,
    ``\\u0041``, ``\\101``, ``\\n``); an unknown escape (``\\p``) is kept as it is, as Python
    keeps it, but without the DeprecationWarning Python emits (an error where warnings are)."""
    escaped = _ESCAPE.sub(_warningless, key.encode("latin-1", "backslashreplace"))
    return escaped.decode("unicode_escape", "replace")


def _warningless(match: re.Match[bytes]) -> bytes:
    """An escape the decoder reads without a warning, meaning the same: an unknown one with its
    backslash escaped, an octal one over 0o377 (a warning from Python 3.12) as ``\\u``."""
    octal, unknown = match.groups()
    if unknown is not None:
        return b"\\" + match.group(0)
    if octal is not None and int(octal, 8) > 0o377:
        return b"\\u%04x" % int(octal, 8)
    return match.group(0)


# An escape, read left to right as the decoder reads it: octal digits, a known letter, or
# (group 2) an unknown escape.
_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|[\n\\'\"abfnrtvxNuU]|(.))", re.DOTALL)


def loose_value_end(text: str, start: int) -> int:
    """Where the value starting at ``start`` in loose text (after a :data:`LOOSE_PAIR` match)
    ends: a quoted string (a GraphQL block string ``\"\"\"...\"\"\"`` to its closing quotes), a
    bracketed structure (to its matching bracket or the end of a cut body), or a bare token."""
    if start >= len(text):
        return start
    opener = text[start]
    for block in ('"""', '\\"\\"\\"'):  # a GraphQL block string, raw or inside a JSON string
        if text.startswith(block, start):
            closing = text.find(block, start + len(block))
            return len(text) if closing < 0 else closing + len(block)
    if opener in "\"'":
        index = start + 1
        while index < len(text):
            char = text[index]
            if char == "\\":
                index += 2
                continue
            if char == opener:
                return index + 1
            index += 1
        return len(text)
    if opener in "{[":
        return _bracket_end(text, start)
    if opener == "\\" and text[start + 1 : start + 2] in ('"', "'"):
        # A quoted value inside a JSON string: password:\"hunter2\" in a GraphQL query.
        closing = text.find(text[start : start + 2], start + 2)
        return len(text) if closing < 0 else closing + 2
    match = _BARE_VALUE.match(text, start)
    return match.end() if match else start


# A bare value runs to the end of its line or pair: "password: correct horse battery" keeps
# nothing of the passphrase, "Authorization: Bearer x" nothing of the token.
_BARE_VALUE = re.compile(r"[^\r\n,;&}\]\"']*")


def _bracket_end(text: str, start: int) -> int:
    depth = 0
    in_string = None
    index = start
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == in_string:
                in_string = None
        elif char in "\"'":
            in_string = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return len(text)


# What the objects of loose text are made of: a quoted string (to its closing quote, escapes
# skipped, or to the end of a cut text), an opening or a closing brace.
_OBJECT_TOKEN = re.compile(
    r""""[^"\\]*(?:\\.[^"\\]*)*"?|'[^'\\]*(?:\\.[^'\\]*)*'?|[{}]""", re.DOTALL
)


class LooseObjects:
    """The objects (``{...}``) of loose text, for :meth:`around`: braces inside quoted strings
    (``"a}"``, ``"\\"}"``) do not count, an object left open (a text cut short) runs to the
    end of the text. The text is read once, and only as far as the questions asked need,
    however many are asked."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _OBJECT_TOKEN.finditer(text)
        self._first_brace = text.find("{")
        self._last_brace = text.rfind("}")
        self._starts: list[int] = []  # where each token read starts
        self._string_ends: list[int] = []  # where a string token ends; -1 for a brace
        self._holders: list[int] = []  # the innermost object open after each token, or -1
        self._open: list[int] = []
        self._ends: dict[int, int] = {}  # where each object closed so far ends
        self._read_all = False

    def around(self, position: int) -> tuple[int, int]:
        """``(start, end)`` of the innermost object holding ``position``: from its ``{`` to
        just after its ``}``, or to the end of the text when it is left open. ``(start, -1)``
        when ``position`` is inside a quoted string (``start``: its quote), ``(-1, -1)`` when
        it is in no object (text without a brace before ``position`` is not read)."""
        if not 0 <= self._first_brace < position:
            return -1, -1
        if not self._read_all and (not self._starts or self._starts[-1] < position):
            self._read(position, -1)
        index = bisect_right(self._starts, position) - 1
        if index < 0:
            return -1, -1
        if self._starts[index] < position < self._string_ends[index]:
            return self._starts[index], -1
        start = self._holders[index]
        if start < 0:
            return -1, -1
        if position > self._last_brace:  # no brace after it: left open
            return start, len(self._text)
        if start not in self._ends and not self._read_all:
            self._read(-1, start)
        return start, self._ends.get(start, len(self._text))

    def _read(self, position: int, start: int) -> None:
        """Read tokens up to the first starting at or after ``position``, or (``position``
        -1) up to the ``}`` of the object at ``start``; to the end of the text if need be."""
        text = self._text
        starts, string_ends, holders = self._starts, self._string_ends, self._holders
        opened, ends = self._open, self._ends
        for token in self._tokens:
            at = token.start()
            char = text[at]
            closed = -1
            if char == "{":
                opened.append(at)
            elif char == "}" and opened:
                closed = opened.pop()
                ends[closed] = at + 1
            starts.append(at)
            string_ends.append(-1 if char in "{}" else token.end())
            holders.append(opened[-1] if opened else -1)
            if 0 <= position <= at or 0 <= start == closed:
                return
        self._read_all = True

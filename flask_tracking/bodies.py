"""The formats of bodies, filtered by the names of their fields: JSON, loose text (cut JSON,
plain text, strings inside JSON), multipart, and markup (XML and HTML, in
:mod:`flask_tracking.markup`); and JSON's credentials filtered by their look with its bytes
kept.

What a name is worth is not judged here: :class:`BodyFilters` is built once by
:class:`~flask_tracking.redact.Redactor` with its verdicts (:meth:`Redactor.is_secret_field
<flask_tracking.redact.Redactor.is_secret_field>`, its query-string, custom-data and mapping
filters, and its scrubbing of a body of a given type, for the parts of a multipart body). The
pre-filter, the content types and the public body API stay in :mod:`flask_tracking.redact`,
which only calls in here for a body that may name a secret or hold a credential.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from .content import HTML_KINDS, TEXT_KINDS, Unreadable, decode_content
from .credentials import FILTERED, FILTERED_BYTES, json_slashes_unescaped, scrub_values
from .markup import MarkupFilters
from .syntax import (
    LOOSE_PAIR,
    NAMING_KEYS,
    LooseObjects,
    loose_key,
    loose_value_end,
    multipart_boundary,
    part_head_end,
    part_header,
    part_names,
)

__all__ = ["NAMING_KEYS", "BodyFilters", "ObjectFilter", "PartScrubber", "by_look", "map_items"]

_NO_REGION = (sys.maxsize, sys.maxsize)  # past the last object known to name a secret


def map_items(value: list[Any], inner: Callable[[Any], Any]) -> list[Any]:
    """``inner`` of each item of a list; ``value`` itself when nothing changed."""
    items = [inner(item) for item in value]
    return items if any(a is not b for a, b in zip(items, value)) else value


class ObjectFilter(Protocol):
    """A mapping filtered by the names of its keys (the redactor's, for custom data too): the
    values of secret keys filtered, ``inner`` of the others; ``pairs``, when a key was
    repeated: every key and value the mapping was made of."""

    def __call__(
        self,
        value: Mapping[Any, Any],
        inner: Callable[[Any], Any],
        pairs: Iterable[tuple[Any, Any]] | None = None,
    ) -> Any: ...


class PartScrubber(Protocol):
    """The content of a multipart part, decoded from its Content-Encoding already, scrubbed as
    a body of its own type: ``(content, content type, max decoded bytes, outer)``; raises
    :class:`~flask_tracking.content.Unreadable` when it cannot be kept."""

    def __call__(self, body: bytes, content_type: str, limit: int, outer: bool) -> bytes: ...


class BodyFilters:
    """The filters of bodies by format, given the redactor's verdicts; built once per
    redactor. Each filter returns its body itself when nothing in it was filtered."""

    def __init__(
        self,
        is_secret_field: Callable[[str], bool],
        query: Callable[[str], str],
        data: Callable[[Any], Any],
        filter_object: ObjectFilter,
        scrub_part: PartScrubber,
        max_name_length: int,
        markup: MarkupFilters,
    ) -> None:
        """``is_secret_field``: whether a field name is secret; ``query``: a form body (query
        string) filtered; ``data``: a string value of parsed JSON filtered; ``filter_object``:
        a parsed JSON object filtered; ``scrub_part``: the content of a multipart part
        scrubbed; ``max_name_length``: names longer than this are secret whatever they say;
        ``markup``: the filters of XML and HTML."""
        self._is_secret_field = is_secret_field
        self._query = query
        self._data = data
        self._filter_object = filter_object
        self._scrub_part = scrub_part
        #: XML and HTML.
        self.markup = markup
        # Characters of a naming key's value read in loose text: a name and its quotes and
        # spaces.
        self._naming_value_window = max_name_length + 64

    def by_name(self, body: bytes, kind: str, shape: tuple[bool, bool, bool]) -> bytes:
        """``body`` (UTF-8) with the values of its secret fields filtered, read as its format:
        ``kind`` is its content type's kind (:class:`~flask_tracking.content.ContentKind`),
        ``shape`` whether it is declared JSON, a form, XML. Markup goes to :attr:`markup`, JSON
        to :meth:`json_body`, forms to the query filter, the rest to :meth:`loose`."""
        json_kind, form, xml = shape
        # The first KB of text, after blank lines (a template's sets and macros leave them).
        head = body[:1024].lstrip() or body.lstrip()[:1024]
        if xml or (kind in TEXT_KINDS and head[:1] == b"<"):
            return self.markup.xml(body, xhtml=kind in HTML_KINDS)
        if kind in HTML_KINDS and b"<" in head:
            return self.markup.html(body)
        # Markup without a tag (Flask answers a view's plain string as text/html) is text;
        # a tag further on may still be a link to a page with secret rule variables.
        if kind in HTML_KINDS:
            body = self.markup.html_links(body)
        text = body.decode("utf-8", "replace")
        # JSON sent as a form too: jQuery's default type, read by get_json(force=True).
        if json_kind or text.lstrip()[:1] in ("{", "["):
            scrubbed_json = self.json_body(body, text)
            if not form:
                return scrubbed_json
            # Werkzeug's request.form reads its key=value pairs all the same: the form's pass.
            if scrubbed_json is not body:
                body, text = scrubbed_json, scrubbed_json.decode("utf-8", "replace")
        if form or (not kind and "=" in text):
            scrubbed = self._query(text)
            return body if scrubbed == text else scrubbed.encode("utf-8")
        return self.loose(body, text)

    def json_body(self, body: bytes, text: str) -> bytes:
        """JSON filtered as :meth:`Redactor.data <flask_tracking.redact.Redactor.data>`
        filters it, while it is parsed: each object as the
        parser makes it (its objects inside are done by then), in one pass over the body."""
        changed = False

        def filtered(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            nonlocal changed
            parsed = dict(pairs)
            # A key repeated: the values dropped (the last one is kept) are in the bytes only.
            repeated = len(parsed) < len(pairs)
            kept: dict[str, Any] = self._filter_object(
                parsed, self._json_value, pairs if repeated else None
            )
            if kept is not parsed or repeated:
                changed = True
            return kept

        # Numbers a float would change (1.50, 1E5, 1e999, more digits than a float holds) are
        # read as their text, marked, and written back as they came; a body holding the mark
        # (as a character or an escape) gets floats instead.
        marked = _NUMBER_MARK not in text and _NUMBER_MARK_ESCAPE not in text.lower()
        # Integers are read as Python's, but for -0 (0 as an int): where one may be, each is.
        negative_zero = marked and _NEGATIVE_ZERO.search(text) is not None
        try:
            parsed = json.loads(
                text,
                object_pairs_hook=filtered,
                parse_float=_number_as_written if marked else _finite_float,
                parse_int=_integer_as_written if negative_zero else None,
            )
            if type(parsed) is not dict:  # an array or a string at the top
                kept = self._json_value(parsed)
                changed = changed or kept is not parsed
                parsed = kept
            if not changed:  # most bodies: keep the bytes exactly as they were
                return body
            serialized = _dumps(parsed)
            return _MARKED_NUMBER.sub(rb"\1", serialized) if marked else serialized
        except (ValueError, RecursionError):  # nested deeper than Python recurses
            return self.loose(body, text)

    def _json_value(self, value: Any) -> Any:
        """The data filter of a parsed JSON value whose objects are filtered already."""
        if type(value) is str:
            return self._data(value)
        if type(value) is list:
            return map_items(value, self._json_value)
        return value

    def loose(self, body: bytes, text: str) -> bytes:
        """Textual scrub of ``"key": value`` and ``key=value`` pairs (broken JSON, plain text)."""
        scrubbed = self.loose_text(text)
        return body if scrubbed is text else scrubbed.encode("utf-8")

    def loose_text(self, text: str) -> str:
        """:meth:`loose` on text; ``text`` itself when nothing was filtered. Keys may be
        escaped (``"pass\\u0077ord"``) or percent-encoded (``pass%77ord=``).

        An object that names a secret field (``{"value": ..., "name": "password"}``) keeps
        only its naming keys, as in parsed JSON: its values before the naming key too (the
        text is then read again, knowing which objects are named), and its values after a
        nested object (an object runs to its own closing brace, or to the end of a cut text).
        """
        objects = LooseObjects(text)
        named: list[tuple[int, int]] = []
        scrubbed, again = self._loose_pass(text, objects, named, ())
        if again:  # a named object held a value kept before its naming key was read
            scrubbed, _ = self._loose_pass(text, objects, [], _union(named))
        return scrubbed

    def _loose_pass(
        self,
        text: str,
        objects: LooseObjects,
        named: list[tuple[int, int]],
        known: Sequence[tuple[int, int]],
    ) -> tuple[str, bool]:
        """One pass of :meth:`loose_text`: the text filtered, and whether an object found to
        name a secret (appended to ``named``) held a value kept before; ``known``: the objects
        that name a secret, from an earlier pass (sorted, apart)."""
        pieces = []
        position = 0
        named_until = -1  # the end of the objects found naming a secret so far
        regions = iter(known)
        next_start, next_end = next(regions, _NO_REGION)
        kept = -1  # where the last pair kept starts
        again = False
        for match in LOOSE_PAIR.finditer(text):
            start = match.start()
            if start < position:  # inside a value already filtered
                continue
            while start >= next_start:  # in (or past) the next object known to be named
                named_until = max(named_until, next_end)
                next_start, next_end = next(regions, _NO_REGION)
            in_named = start < named_until
            key = loose_key(match)
            value_start = match.end()
            if key.lower() in NAMING_KEYS:
                if not in_named:  # not in an object that names a secret yet
                    value_end = self._naming_value_end(text, value_start)
                    if value_end >= 0:
                        first, last = _named_object(text, objects, start, value_end)
                        named.append((first, last))
                        named_until = max(named_until, last)
                        again = again or kept >= first
                if not self._is_secret_field(key):
                    continue
                # "key" is a secret field name too: its value is filtered, as in parsed JSON
            elif not in_named and not self._is_secret_field(key):
                kept = start
                continue
            value_end = loose_value_end(text, value_start)
            pieces.append(text[position:value_start])
            pieces.append(f'"{FILTERED}"' if match.group("quoted") else FILTERED)
            position = value_end
        if not pieces:
            return text, again
        pieces.append(text[position:])
        return "".join(pieces), again

    def _naming_value_end(self, text: str, start: int) -> int:
        """Where the value of a naming key at ``start`` ends when it names a secret field,
        else -1. Only as far as a name can run is read: a value running past that names one
        (a name over ``max_name_length`` does), and a text of many naming keys is not read
        to its end once for each of them."""
        window = text[start : start + self._naming_value_window]
        end = loose_value_end(window, 0)
        if (end == len(window) and start + end < len(text)) or self._is_secret_field(
            window[:end].strip("\"' ")
        ):
            return start + end
        return -1

    def multipart(self, body: bytes, content_type: str, limit: int) -> bytes:
        """Filter the content of every part whose field name is secret (text or file).

        Parts are split on the boundary of the Content-Type; a part cut at the body limit is
        filtered to its end. The parts a ``Content-Encoding`` of their own compresses are
        decoded to ``limit`` bytes in all; one beyond that is stored as ``[Omitted: ...]``.
        Part heads are read as Werkzeug reads them: lines may end in LF or CR alone, ``name``
        may be quoted or not, or given as ``name*=`` (RFC 2231).
        """
        boundary = multipart_boundary(content_type)
        if boundary is None:
            return scrub_values(self.loose(body, body.decode("utf-8", "replace")))
        delimiter = b"--" + boundary
        parts = body.split(delimiter)
        changed = False
        budget = limit  # what the parts' Content-Encoding may decode to, in all
        for index, part in enumerate(parts[1:], start=1):
            head_end, content_start = part_head_end(part)
            if head_end < 0:
                continue  # an empty part without a blank line, the closing "--", or cut early
            head = part[:head_end]
            tail = next((end for end in (b"\r\n", b"\n", b"\r") if part.endswith(end)), b"")
            content = part[content_start : len(part) - len(tail)]
            if any(map(self._is_secret_field, part_names(head))):
                scrubbed = FILTERED_BYTES
            else:
                # The content of a part is a body of its own type (a JSON or XML file...).
                part_type = part_header(head, b"content-type") or "text/plain"
                encoding = part_header(head, b"content-encoding")
                try:
                    read = content
                    if encoding:  # many small encoded parts decode to no more than one body
                        if budget <= 0:
                            raise Unreadable("encoded parts decoded beyond the body limit")
                        read = decode_content(content, encoding, budget)
                        budget -= len(read)
                    scrubbed = self._scrub_part(read, part_type, limit, False)
                except Unreadable as error:
                    scrubbed = f"[Omitted: {error.reason}]".encode()
                if scrubbed is content:
                    continue
            parts[index] = part[:content_start] + scrubbed + tail
            changed = True
        return delimiter.join(parts) if changed else body


def _named_object(text: str, objects: LooseObjects, start: int, value_end: int) -> tuple[int, int]:
    """Where the object named by the naming key at ``start`` (its value ending at
    ``value_end``) starts and ends in loose text: its braces, strings skipped. Never less than
    from the key to the first ``}`` after its value (or the end of the text): a naming key
    inside a string (GraphQL text in JSON) names from the string's start to there."""
    closing = text.find("}", value_end)
    first, last = objects.around(start)
    if first < 0:
        first = start
    return first, max(last, len(text) if closing < 0 else closing + 1)


def _union(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` (start, end) sorted, those that overlap joined."""
    joined: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if joined and first <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], last))
        else:
            joined.append((first, last))
    return joined


def _dumps(value: Any) -> bytes:
    """A filtered JSON value serialized again, as UTF-8."""
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from an escape): kept escaped
        return json.dumps(value).encode("ascii")


class _WrittenNumber(str):
    """A JSON number's text between marks (a ``str`` subclass, so no string filter reads it
    as a value): :func:`_dumps` writes it as a string, which :data:`_MARKED_NUMBER` unquotes."""

    __slots__ = ()


_NUMBER_MARK = "\ue000"  # a private-use character
_NUMBER_MARK_ESCAPE = "\\ue000"  # the same written as a JSON escape
#: A marked number as :func:`_dumps` writes it: the character itself, or its escape (the
#: ASCII fallback). A number's text is made of ``-+.0-9eE`` only.
_MARKED_NUMBER = re.compile(rb'"(?:\xee\x80\x80|\\ue000)([-+.0-9eE]+)(?:\xee\x80\x80|\\ue000)"')


def _number_as_written(token: str) -> Any:
    """A ``parse_float`` hook of ``json.loads``: the float when writing it again gives the
    same text, else the text itself, marked to be written back unquoted."""
    number = float(token)
    if number - number == 0 and repr(number) == token:
        return number
    return _WrittenNumber(_NUMBER_MARK + token + _NUMBER_MARK)


#: Where a JSON integer ``-0`` may be (a ``-0`` not going on as a number).
_NEGATIVE_ZERO = re.compile(r"-0(?![-+.0-9eE])")


def _integer_as_written(token: str) -> Any:
    """A ``parse_int`` hook of ``json.loads``: the integer, but for ``-0`` (``0`` as an
    ``int``), marked to be written back as it came."""
    return _WrittenNumber(_NUMBER_MARK + token + _NUMBER_MARK) if token == "-0" else int(token)


def _finite_float(token: str) -> Any:
    """A ``parse_float`` hook of ``json.loads``: a number beyond a float's range (``1e999``)
    is read as its text, serialized again as a JSON string (``Infinity`` is not JSON)."""
    number = float(token)
    return number if number - number == 0 else token


#: A JSON string (left as it is; one cut at the end of the body too) or a number with a card
#: number in it filtered (``[Filtered]``, ``-[Filtered]``, ``[Filtered].5``, ``1e[Filtered]``):
#: each byte is read once, so the time is linear in the body.
_JSON_STRING_OR_FILTERED_NUMBER = re.compile(
    rb'"[^"\\]*(?:\\.[^"\\]*)*"?'
    rb"|(?<![-+.0-9eE])[-+.0-9eE]*%(filtered)s(?:[-+.0-9eE]|%(filtered)s)*"
    % {b"filtered": re.escape(FILTERED_BYTES)},
    re.DOTALL,
)


#: A slash or plus sign escaped by JSON with any number of backslashes before it
#: (``\\\\/``, ``\\\\\\/``: JSON that escapes its slashes, written into a JSON string),
#: the whole run of backslashes (a run is matched from its start only: linear time).
_ESCAPED_SLASH_RUN = re.compile(rb"(?<!\\)\\+(?:/|u00(?:2[fFbB]))")


def _unescape_slash_run(match: re.Match[bytes]) -> bytes:
    """``/`` or ``+`` for an escaped one whatever the backslashes before it: the same
    character at every level of JSON written into JSON. The backslashes of a run are escapes
    or escaped backslashes: dropped whole, the string stays JSON."""
    return b"/" if match.group(0)[-1] in b"/fF" else b"+"


#: A JSON escape of a printable ASCII character (``\\u0041``) or of a control character that
#: has a short escape (``\\u0009``), or an escaped backslash (matched first, so the ``u0041`` of
#: ``\\\\u0041`` is not taken for an escape).
_JSON_PRINTABLE_OR_BACKSLASH = re.compile(rb"\\(?:\\|u00(?:[2-7][0-9A-Fa-f]|0[89ACDacd]))")


def _unescape_printable(match: re.Match[bytes]) -> bytes:
    """A printable ASCII character for its JSON escape; ``"`` and ``\\`` as their short escapes
    (``\\"``, ``\\\\``: unescaped, they would end or escape the string), and so the control
    characters that have one (``\\u0009`` as ``\\t``: its hex digits no longer join the
    digits after it); DEL as it is; ``\\\\`` as it is."""
    found = match.group(0)
    if len(found) == 2:
        return found
    character = int(found[4:], 16)
    if character == 0x7F:
        return found
    return _SHORT_ESCAPES.get(character) or bytes([character])


_SHORT_ESCAPES = {
    0x08: b"\\b",
    0x09: b"\\t",
    0x0A: b"\\n",
    0x0C: b"\\f",
    0x0D: b"\\r",
    0x22: b'\\"',
    0x5C: b"\\\\",
}


def _quote_filtered_number(match: re.Match[bytes]) -> bytes:
    """A JSON number with a card number filtered in it, as the string ``"[Filtered]"``."""
    found = match.group(0)
    return found if found[:1] == b'"' else b'"' + FILTERED_BYTES + b'"'


def _read_again(
    scrubbed: bytes, escapes: re.Pattern[bytes], unescape: Callable[[re.Match[bytes]], bytes]
) -> bytes:
    """``scrubbed`` read again with ``escapes`` unescaped: that reading, filtered, when it
    shows more than what was filtered already; else ``scrubbed`` as it is."""
    read = escapes.sub(unescape, scrubbed)
    if read != scrubbed:
        filtered = scrub_values(read)
        if filtered != read:
            return filtered
    return scrubbed


def by_look(body: bytes, json_shaped: bool) -> bytes:
    """``body`` with every credential recognised by its look filtered (:func:`scrub_values`),
    as bytes, so the rest of the body is kept exactly. In a JSON body, a card number written
    as a JSON number (replaced by a bare ``[Filtered]``, which is not JSON) becomes the
    string ``"[Filtered]"``; the rest of its bytes are kept too. JSON that escapes its
    slashes (``https:\\/\\/user:password@host``, as PHP's ``json_encode`` writes it), also
    when written into other text (a page's script, a log line), is read with them unescaped,
    and stored so when something was filtered; JSON written into a JSON string, with the
    backslashes of its escaped slashes escaped again (``https:\\\\/\\\\/``), is read with
    them as slashes too, and stored so when that shows more. What is left is read a second
    time with every JSON escape of a printable character unescaped (``\\u0034111...``,
    ``https\\u003a//``): when that shows a credential, the body is stored so, filtered. URL
    encoding is read through by :func:`scrub_values` itself.
    """
    # A backslash (a one-byte search, much faster than one for two bytes): JSON's escapes,
    # or JSON written into other text. Filtering adds none, so without one none is read.
    escaped = 92 in body
    readable = body
    if escaped and (b"\\/" in body or b"\\u00" in body):
        readable = json_slashes_unescaped(body)
    scrubbed = scrub_values(readable)
    if escaped and b"\\\\" in scrubbed:  # JSON in a JSON string: its escapes escaped again
        scrubbed = _read_again(scrubbed, _ESCAPED_SLASH_RUN, _unescape_slash_run)
    if escaped and b"\\u00" in scrubbed:  # a second reading, every printable one unescaped
        scrubbed = _read_again(scrubbed, _JSON_PRINTABLE_OR_BACKSLASH, _unescape_printable)
    if scrubbed is readable:
        return body  # nothing found: the bytes as they came
    if not json_shaped or FILTERED_BYTES not in scrubbed:
        return scrubbed
    quoted = _JSON_STRING_OR_FILTERED_NUMBER.sub(_quote_filtered_number, scrubbed)
    if quoted == scrubbed:
        return scrubbed
    try:
        json.loads(quoted)
    except (ValueError, RecursionError):  # not JSON before either: kept as filtered text
        return scrubbed
    return quoted

"""XML and HTML bodies, filtered by the names of their fields: XML elements and attributes,
the fields of a page's forms, the values in its scripts, the parameters of the URLs in both.

Bounded hand scanners over bytes, in linear time: nothing is parsed as XML or HTML, so no
entity is expanded and no external entity is fetched. What a name is worth is not judged
here: :class:`MarkupFilters` is given the redactor's verdicts by
:class:`~flask_tracking.bodies.BodyFilters`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from heapq import merge
from urllib.parse import unquote_plus

from .credentials import FILTERED_BYTES, group_replaced, splice
from .syntax import (
    HTML_DATA_ATTRIBUTE,
    HTML_JSON_ATTRIBUTE,
    HTML_LINK_ATTRIBUTE,
    HTML_NAME_ATTRIBUTE,
    HTML_PAIR_COLON,
    HTML_QUOTED_PAIR,
    HTML_REFRESH_URL,
    HTML_SCRIPT_END,
    HTML_SCRIPT_START,
    HTML_START_TAG,
    HTML_TEXT_END,
    HTML_TEXT_START,
    HTML_TEXT_URL,
    HTML_TEXTAREA_END,
    HTML_VALUE_ATTRIBUTE,
    NAMING_KEYS,
    QUERY_MARK_BYTES,
    SCRIPT_NAMED_PAIR,
    SCRIPT_URL_STRING,
    URL_PARAMETER,
    XML_ATTRIBUTE,
    XML_NAME_ATTRIBUTE,
    XML_TAG,
    xml_element_end,
)

__all__ = ["MarkupFilters"]


#: How many of the "<" before a secret ``name`` attribute are tried as its tag's start.
_TAG_STARTS_TRIED = 8


class MarkupFilters:
    """The filters of XML and HTML, given the redactor's verdicts. Each filter returns its
    body itself when nothing in it was filtered."""

    def __init__(
        self,
        is_secret_field: Callable[[str], bool],
        url_filter: Callable[[], Callable[[str], str] | None],
        query_value: Callable[[str], str] = str,
    ) -> None:
        """``is_secret_field``: whether a field name is secret; ``url_filter``: the filter of
        the URLs in a page of the moment (their paths by the app's rules with secret
        variables, their queries' values), or None while there is nothing to filter;
        ``query_value``: the filter of a URL parameter's value (as written) that holds a query
        or a fragment of its own (``next=%2Freset%3Ftoken%3D...``), which gives it back as it
        is when nothing in it is secret (default: kept as it is)."""
        self._is_secret_field = is_secret_field
        self._url_filter = url_filter
        self._query_value = query_value

    def xml(self, body: bytes, xhtml: bool = False) -> bytes:
        """XML and SOAP (:meth:`xml_elements`), then the URLs' parameters (:meth:`urls`); an
        XHTML page's values and links too (:meth:`html_values`, :meth:`html_links`)."""
        body = self.xml_elements(body)
        if xhtml:
            body = self.html_links(self.html_values(body))
        return self.urls(body)

    def html(self, body: bytes) -> bytes:
        """An HTML page: its fields (:meth:`html_fields`), its ``data-*`` attributes
        (:meth:`html_data`), the values of its scripts and of JSON in its attributes
        (:meth:`html_values`), its URLs' parameters (:meth:`urls`) and paths
        (:meth:`html_links`)."""
        return self.html_links(self.urls(self.html_values(self.html_data(self.html_fields(body)))))

    def xml_elements(self, body: bytes) -> bytes:
        """XML and SOAP: the content of every element whose (local) name is secret
        (``<password>``, ``<wsse:Password>``), of every element whose ``name`` attribute is
        (``<field name="password">``), and the value of every secret attribute are filtered.

        A bounded hand scanner over the tags, in one pass: nothing is parsed as XML, so no
        entity is expanded and no external entity is fetched. An element left open (a body
        cut at the limit) is filtered to the end.
        """
        pieces: list[bytes] = []
        position = 0
        search = XML_TAG.search
        match = search(body)
        while match is not None:
            closing, prefix, local, attributes, empty = match.groups()
            after = match.end()
            if closing:
                match = search(body, after)
                continue
            named = XML_NAME_ATTRIBUTE.search(attributes)
            secret_element = self._is_secret_field(local.decode("utf-8", "replace")) or (
                named is not None
                and self._is_secret_field(named.group(2).decode("utf-8", "replace"))
            )
            scrubbed = self._xml_attributes(attributes, filter_all=secret_element)
            if scrubbed is not attributes:
                pieces.append(body[position : match.start(4)])
                pieces.append(scrubbed)
                position = match.end(4)
            if secret_element and not empty:
                end, resume = xml_element_end(body, after, (prefix or b"") + local)
                pieces.append(body[position:after])
                pieces.append(FILTERED_BYTES)
                position = end
                after = resume
            match = search(body, after)
        if not pieces:
            return body
        pieces.append(body[position:])
        return b"".join(pieces)

    def _xml_attributes(self, attributes: bytes, filter_all: bool) -> bytes:
        if b"=" not in attributes:
            return attributes

        def scrub(match: re.Match[bytes]) -> bytes:
            name = match.group(1).decode("utf-8", "replace")
            if (filter_all and name.lower() not in NAMING_KEYS) or self._is_secret_field(name):
                quote = match.group(2)[:1]
                return match.group(1) + b"=" + quote + FILTERED_BYTES + quote
            return match.group(0)

        scrubbed = XML_ATTRIBUTE.sub(scrub, attributes)
        return attributes if scrubbed == attributes else scrubbed

    def html_fields(self, body: bytes) -> bytes:
        """HTML: the ``value`` and ``content`` of every element named secret by its ``name``
        (``<input name="csrf_token" value="...">``, ``<meta name="csrf-token" content="...">``)
        and the text of such a ``<textarea>`` are filtered; an empty value is kept.

        Only the ``name`` attributes are looked for (one C-level pass over the page lowercased);
        the tag around a secret one is then read, from its ``<``. No part of the body is read
        twice: the time is linear in its length. A tag cut by the end of the body is read to
        there; one that cannot be read (a ``<`` outside its quoted values) is left as it is."""
        return splice(body, self._secret_fields(body))

    def _secret_fields(self, body: bytes) -> Iterator[tuple[int, int, bytes]]:
        """The spans :meth:`html_fields` replaces, and with what, left to right."""
        done = 0  # no tag before it is read again
        for named in HTML_NAME_ATTRIBUTE.finditer(body.lower()):
            if named.start() < done:
                continue
            name = body[named.start(1) : named.end(1)].strip(b"\"'").decode("utf-8", "replace")
            if not self._is_secret_field(name):
                continue
            # The tag's own "<" may come before a "<" quoted in one of its values (a Vue or
            # Alpine.js expression, :disabled="left < 1"): the nearest "<"s are tried in turn,
            # a few only, so that the reading stays linear.
            tag = None
            start = named.start()
            for _ in range(_TAG_STARTS_TRIED):
                start = body.rfind(b"<", done, start)
                if start < 0:
                    break
                candidate = HTML_START_TAG.match(body, start)
                if candidate is not None and candidate.end() >= named.end():
                    tag = candidate
                    break
            done = named.end()
            if tag is None:
                continue
            done = tag.end()
            attributes = tag.group(2)
            scrubbed = HTML_VALUE_ATTRIBUTE.sub(_filtered_attribute, attributes)
            if scrubbed != attributes:
                yield tag.start(2), tag.end(2), scrubbed
            if tag.group(1).lower() == b"textarea":
                end = HTML_TEXTAREA_END.search(body, done)
                text_end = len(body) if end is None else end.start()
                if text_end > done:
                    yield done, text_end, FILTERED_BYTES
                done = text_end

    def html_data(self, body: bytes) -> bytes:
        """HTML: the value of every ``data-*`` attribute named secret (``data-csrf-token``,
        ``data-api-key``; an empty value is kept). One C-level pass over the page lowercased."""
        return splice(body, self._secret_data(body))

    def _secret_data(self, body: bytes) -> Iterator[tuple[int, int, bytes]]:
        """The values :meth:`html_data` filters, left to right."""
        for attribute in HTML_DATA_ATTRIBUTE.finditer(body.lower()):
            start, end = _unquoted(body, attribute.span(2))
            name = body[attribute.start(1) : attribute.end(1)].decode("utf-8", "replace")
            if start < end and self._is_secret_field(name):
                yield start, end, FILTERED_BYTES

    def html_values(self, body: bytes) -> bytes:
        """HTML: the string and number values of secret keys in a page's scripts and wherever
        it writes JSON (:func:`_value_regions`): ``"apiToken": "..."`` (a state object, htmx's
        ``hx-headers='{"X-CSRFToken": "..."}'``, quotes written ``&quot;`` too), and in scripts
        ``var csrfToken = "..."``, ``headers['X-CSRFToken'] = '...'``,
        ``setRequestHeader("X-CSRFToken", "...")``. Code is no value (``token == null``,
        ``key = e.key`` are kept)."""
        return splice(body, self._values_filtered(body))

    def _values_filtered(self, body: bytes) -> Iterator[tuple[int, int, bytes]]:
        """Each region :meth:`html_values` reads (a script's text, an attribute's JSON), with
        its values filtered, when that changes it."""
        for start, end, script in _value_regions(body):
            region = body[start:end]
            scrubbed = HTML_QUOTED_PAIR.sub(self._value, region)
            if script:
                scrubbed = SCRIPT_NAMED_PAIR.sub(self._value, scrubbed)
            if scrubbed != region:
                yield start, end, scrubbed

    def _value(self, match: re.Match[bytes]) -> bytes:
        """A pair of :data:`HTML_QUOTED_PAIR` or :data:`SCRIPT_NAMED_PAIR`, its value filtered
        when its key is secret (an empty string is kept)."""
        value = "text" if match.group("quote") is not None else "number"
        start, end = match.span(value)
        if start == end or not self._is_secret_field(match.group("key").decode("utf-8", "replace")):
            return match.group(0)
        return group_replaced(match, value, FILTERED_BYTES)

    def html_links(self, body: bytes) -> bytes:
        """HTML: the path of every link, form action and source (``href``, ``action``,
        ``formaction``, ``src``, htmx's requests), of a field's value that is a URL (a sign-in
        form's ``next``), of every URL written alone as an
        element's text (a redirect's page writes its target so), of a refresh's URL
        (``<meta http-equiv="refresh" content="0; url=...">``) and of a script's strings that
        are URLs (``location.href = "/confirm/<token>"``), filtered as the app's rules with
        secret variables filter a URL naming one of its pages (``<form
        action="/reset/<the token>">``)."""
        url_filter = self._url_filter()
        if url_filter is None:
            return body
        texts = (text.span(1) for text in HTML_TEXT_URL.finditer(body))
        refreshes = (refresh.span(1) for refresh in HTML_REFRESH_URL.finditer(body))
        spans = merge(_link_spans(body), texts, refreshes, _script_urls(body))
        return splice(body, _urls_filtered(body, spans, url_filter))

    def urls(self, body: bytes) -> bytes:
        """Markup (HTML, XML): filter secret parameters of the URLs in it (links, redirects),
        and the queries of their values that hold one (``query_value``), with one regex pass
        that only stops at ``?``, ``&`` and ``#``."""

        def scrub(match: re.Match[bytes]) -> bytes:
            name = match.group(2).decode("utf-8", "replace")
            if self._is_secret_field(unquote_plus(name)):
                return group_replaced(match, 3, FILTERED_BYTES)
            value = match.group(3)
            if QUERY_MARK_BYTES.search(value) is None:
                return match.group(0)
            text = value.decode("utf-8", "surrogateescape")
            filtered = self._query_value(text)
            if filtered == text:
                return match.group(0)
            return group_replaced(match, 3, filtered.encode("utf-8", "surrogateescape"))

        scrubbed = URL_PARAMETER.sub(scrub, body)
        return body if scrubbed == body else scrubbed


def _filtered_attribute(match: re.Match[bytes]) -> bytes:
    """A ``value=`` or ``content=`` attribute of :data:`HTML_VALUE_ATTRIBUTE` filtered, its
    quotes kept."""
    quote = match.group(2)[:1]
    quote = quote if quote in (b'"', b"'") else b""
    return group_replaced(match, 2, quote + FILTERED_BYTES + quote)


def _script_urls(body: bytes) -> Iterator[tuple[int, int]]:
    """Where the strings of a page's scripts that are URLs are, inside their quotes."""
    for start, end in _element_texts(body, HTML_SCRIPT_START, HTML_SCRIPT_END):
        for string in SCRIPT_URL_STRING.finditer(body, start, end):
            yield string.span(2)


def _link_spans(body: bytes) -> Iterator[tuple[int, int]]:
    """Where the URLs of :meth:`MarkupFilters.html_links` are (links, form actions, sources,
    htmx's requests), inside their quotes."""
    lowered = body.lower()
    for link in HTML_LINK_ATTRIBUTE.finditer(lowered):
        name_start = link.start()
        if lowered[name_start - 4 : name_start] == b"form":  # formaction
            name_start -= 4
        elif lowered[name_start - 5 : name_start] == b"data-":  # htmx's data-hx-post
            name_start -= 5
        if lowered[name_start - 1 : name_start] in _BEFORE_AN_ATTRIBUTE:
            yield _trimmed(body, _unquoted(body, link.span(1)))


def _urls_filtered(
    text: bytes, spans: Iterable[tuple[int, int]], url_filter: Callable[[str], str]
) -> Iterator[tuple[int, int, bytes]]:
    """The URLs at ``spans`` of ``text`` that ``url_filter`` changes, changed."""
    for start, end in spans:
        url = text[start:end].decode("utf-8", "surrogateescape")
        filtered = url_filter(url)
        if filtered != url:
            yield start, end, filtered.encode("utf-8", "surrogateescape")


def _unquoted(body: bytes, span: tuple[int, int]) -> tuple[int, int]:
    """The span of an attribute's value without its quotes, if it has them (the closing one
    may be missing: a value cut by the end of the body)."""
    start, end = span
    quote = body[start : start + 1]
    if quote not in (b'"', b"'"):
        return start, end
    return start + 1, end - 1 if end - start > 1 and body[end - 1 : end] == quote else end


def _trimmed(body: bytes, span: tuple[int, int]) -> tuple[int, int]:
    """The span of a URL without the spaces around it, which browsers drop."""
    start, end = span
    text = body[start:end]
    kept = text.lstrip()
    start += len(text) - len(kept)
    return start, start + len(kept.rstrip())


#: What comes before an attribute's name in a tag.
_BEFORE_AN_ATTRIBUTE = frozenset((b" ", b"\t", b"\n", b"\r", b"\f", b'"', b"'"))


def _value_regions(body: bytes) -> list[tuple[int, int, bool]]:
    """Where a page holds values, in order: the text of each script (True), of each
    ``<pre>`` and ``<code>`` (a page showing JSON), each attribute's value holding a ``{``
    (JSON: htmx's ``hx-headers``, ``data-props``), and any other text with a quoted key and
    its value."""
    scripts = list(_element_texts(body, HTML_SCRIPT_START, HTML_SCRIPT_END))
    regions = [(*span, True) for span in scripts]
    regions += [(*attribute.span(1), False) for attribute in HTML_JSON_ATTRIBUTE.finditer(body)]
    regions += [(*span, False) for span in _element_texts(body, HTML_TEXT_START, HTML_TEXT_END)]
    regions += [(*span, False) for span in _texts_with_pairs(body, scripts)]
    return sorted(regions)


def _texts_with_pairs(body: bytes, scripts: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The text between two tags (or in an attribute) that holds a quoted key and its value
    outside the scripts (``<td>"api_key": "..."</td>``, JSON shown as it is): found by its
    colon (a C-level search), a quote before it."""
    done = script = 0
    for colon in HTML_PAIR_COLON.finditer(body):
        at = colon.start()
        if at < done:
            continue
        while script < len(scripts) and scripts[script][1] <= at:
            script += 1
        if script < len(scripts) and scripts[script][0] <= at:  # a script's: read as such
            done = scripts[script][1]
            continue
        key_end = at
        while key_end > done and body[key_end - 1] in b" \t\r\n":
            key_end -= 1
        if key_end == done or body[key_end - 1] not in b"\"';":  # no quoted key (";": &quot;)
            done = colon.end()
            continue
        end = body.find(b"<", colon.end())
        end = len(body) if end < 0 else end
        yield max(done, body.rfind(b">", done, at) + 1), end
        done = end


def _element_texts(
    body: bytes, start_tag: re.Pattern[bytes], end_tag: re.Pattern[bytes]
) -> Iterator[tuple[int, int]]:
    """Where the text of each element opened by ``start_tag`` is, to ``end_tag`` or to the end
    of the body (cut at the capture limit); each byte is read once."""
    searched = 0
    while (start := start_tag.search(body, searched)) is not None:
        end = end_tag.search(body, start.end())
        yield start.end(), len(body) if end is None else end.start()
        if end is None:
            return
        searched = end.end()

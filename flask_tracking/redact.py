"""Pure scrubbing of secrets from headers, query strings, bodies and custom data.

Nothing here touches Flask, the request or the database: every function takes copies of captured
values and returns scrubbed values, with :data:`FILTERED` in place of each secret.

A *field* (a JSON key, a form or query parameter, a multipart part, a custom-data key) is secret
when its name, split into words (``user_password`` and ``userPassword`` give ``user`` and
``password``), contains a deny-listed term as one word or as consecutive words joined
(``card_number`` and ``cardNumber`` match ``cardnumber``). A *header* is secret when its name is
in the header deny-list or is a secret field name (``X-Auth-Token``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, unquote_plus

#: The value stored in place of a secret.
FILTERED = "[Filtered]"

#: Headers always stored as FILTERED (case-insensitive), unless TRACKING_REDACT_HEADERS replaces
#: the list.
DEFAULT_REDACT_HEADERS: tuple[str, ...] = (
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "X-Api-Key",
    "X-CSRF-Token",
    "X-CSRFToken",
    "X-XSRF-Token",
    "X-Auth-Token",
    "X-Access-Token",
    "X-Amz-Security-Token",
)

#: Field-name terms whose values are stored as FILTERED, matched word-wise (see module doc).
DEFAULT_REDACT_FIELDS: tuple[str, ...] = (
    "password",
    "passwd",
    "pass",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "credentials",
    "credential",
    "session",
    "sessionid",
    "csrf",
    "xsrf",
    "csrftoken",
    "csrfmiddlewaretoken",
    "cookie",
    "card number",
    "cardnumber",
    "ccnumber",
    "cvv",
    "cvc",
    "ssn",
    "pin",
    "otp",
    "private_key",
    "privatekey",
    "phpsessid",
    "connect.sid",
)

#: Headers that carry the client address; filtered too when TRACKING_ANONYMIZE_IP is on.
IP_HEADERS: tuple[str, ...] = (
    "X-Forwarded-For",
    "X-Real-IP",
    "Forwarded",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Client-IP",
    "Fastly-Client-IP",
)

#: Names (of fields, parameters, headers, parts) longer than this many characters are not
#: split into words: they are judged secret outright, so a name costs time linear in its length
#: and bounded (no real form field or header is this long).
MAX_NAME_LENGTH = 256

_MAX_REMEMBERED_HEADERS = 4096
_ATOMIC_TYPES = frozenset({str, int, float, bool, bytes})
#: Body types scrubbed by their look (besides JSON, forms and multipart).
_TEXT_KINDS = frozenset({"", "text/plain"})
#: Body types whose URLs are scrubbed (redirect pages, links with tokens).
_MARKUP_KINDS = frozenset({"text/html", "application/xhtml+xml", "text/xml", "application/xml"})
_URL_HEADERS = frozenset({"referer", "location", "http_referer"})
_ALPHANUMERIC = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NOT_ALPHANUMERIC = bytes(byte for byte in range(256) if byte not in _ALPHANUMERIC)
_LOWERCASE = bytes.maketrans(_ALPHANUMERIC[10:36], _ALPHANUMERIC[36:])
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _normalise(term: str) -> str:
    return "".join(_WORD.findall(term)).lower()


class Redactor:
    """Scrubs secrets; built once per app from the configured deny-lists."""

    def __init__(self, headers: Iterable[str], fields: Iterable[str]) -> None:
        self._fields = frozenset(_normalise(term) for term in fields if _normalise(term))
        # Every beginning of a term or of its plural: a run of words that is none of them
        # cannot grow into a match, so joining stops there.
        self._term_prefixes = frozenset(
            spelled[:end]
            for term in self._fields
            for spelled in (term, term + "s")
            for end in range(1, len(spelled) + 1)
        )
        self._headers = frozenset(name.lower() for name in headers)
        # Field and header names repeat endlessly; remember each verdict (bounded).
        self._field_verdict = lru_cache(maxsize=4096)(self._is_secret_field)
        self._header_verdicts: dict[str, bool] = {}
        # The same verdicts for WSGI environ keys, as sets for C-level set operations.
        self._environ_keys_seen: set[str] = set()
        self._environ_keys_secret: set[str] = set()
        # The shortest terms are enough to look for (a body naming "password" contains "pass").
        terms = sorted(self._fields, key=len)
        kept = [term for i, term in enumerate(terms) if not any(t in term for t in terms[:i])]
        self._term_search = (
            re.compile("|".join(map(re.escape, kept)).encode("ascii")).search if kept else None
        )

    def is_secret_header(self, name: str) -> bool:
        """Whether the header ``name`` (or WSGI environ key ``HTTP_...``) is filtered."""
        verdict = self._header_verdicts.get(name)
        if verdict is None:
            verdict = self._is_secret_header(name)
            if len(self._header_verdicts) < _MAX_REMEMBERED_HEADERS and len(name) <= 512:
                self._header_verdicts[name] = verdict
        return verdict

    def is_secret_field(self, name: str) -> bool:
        """Whether a field named ``name`` (JSON key, form or query parameter, multipart part,
        custom-data key) holds a secret; a name over :data:`MAX_NAME_LENGTH` always does."""
        if len(name) > MAX_NAME_LENGTH:
            return True
        return self._field_verdict(name)

    def _is_secret_field(self, name: str) -> bool:
        """Word-wise match. A run of words is joined only while it spells the beginning of a
        term, so each word starts a run of at most as many words as the longest term has
        letters: the time is linear in the length of the name."""
        fields, prefixes = self._fields, self._term_prefixes
        words = [word.lower() for word in _WORD.findall(name)]
        count = len(words)
        for start in range(count):
            joined = ""
            for end in range(start, count):
                joined += words[end]
                if joined not in prefixes:
                    break
                # A plural counts too: "passwords", "tokens", "api_keys".
                if joined in fields or (joined[-1:] == "s" and joined[:-1] in fields):
                    return True
        return False

    def _is_secret_header(self, name: str) -> bool:
        """``name`` as sent (``X-Api-Key``) or as a WSGI environ key (``HTTP_X_API_KEY``)."""
        if name.startswith("HTTP_"):
            name = name[5:]
        dashed = name.replace("_", "-")
        return dashed.lower() in self._headers or self.is_secret_field(dashed.replace("-", "_"))

    def headers(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """A new list of ``(name, value)`` with secret header values filtered; URLs in
        ``Referer`` and ``Location`` get their query strings scrubbed. Names may be header
        names or WSGI environ keys."""
        verdicts = self._header_verdicts
        scrubbed = []
        for name, value in pairs:
            secret = verdicts.get(name)
            if secret or (secret is None and self.is_secret_header(name)):
                value = FILTERED
            elif ("?" in value or "#" in value) and name.lower() in _URL_HEADERS:
                value = self.url(value)
            scrubbed.append((name, value))
        return scrubbed

    def environ(self, environ: dict[str, Any]) -> None:
        """Filter, in place, the secret headers and query parameters of a WSGI environ copy.

        Environ keys repeat from request to request, so their verdicts are remembered as two
        sets (keys seen, keys filtered) and a request with only known keys costs two C-level
        set operations instead of a Python loop over the environ.
        """
        seen, secret = self._environ_keys_seen, self._environ_keys_secret
        if not seen.issuperset(environ):
            for key in environ.keys() - seen:
                filtered = key[:5] == "HTTP_" and self.is_secret_header(key)
                if filtered:
                    environ[key] = FILTERED
                if len(seen) < _MAX_REMEMBERED_HEADERS and len(key) <= 512:
                    if filtered:  # before it counts as seen: another thread may look now
                        secret.add(key)
                    seen.add(key)
        for key in secret.intersection(environ):
            environ[key] = FILTERED
        referrer = environ.get("HTTP_REFERER")
        if referrer and ("?" in referrer or "#" in referrer) and referrer != FILTERED:
            environ["HTTP_REFERER"] = self.url(referrer)
        query = environ.get("QUERY_STRING")
        if query:
            environ["QUERY_STRING"] = self.query(query)

    def url(self, url: str) -> str:
        """A URL with the values of secret parameters filtered, in its query string and in its
        fragment (where OAuth's implicit flow puts ``access_token``)."""
        url, hash_mark, fragment = url.partition("#")
        if "?" in url:
            base, _, query = url.partition("?")
            url = f"{base}?{self.query(query)}"
        return f"{url}#{self.query(fragment)}" if hash_mark else url

    def query(self, query: str) -> str:
        """A query string (or form body) with the values of secret parameters filtered."""
        if not query:
            return query
        parts = query.split("&")
        for index, part in enumerate(parts):
            name, equals, _ = part.partition("=")
            if equals and self.is_secret_field(unquote_plus(name)):
                parts[index] = f"{name}={FILTERED}"
        return "&".join(parts)

    def data(self, value: Any) -> Any:
        """Custom data or parsed JSON with the values of secret keys filtered.

        Returns ``value`` itself when nothing in it is secret, else a filtered copy.
        """
        if value is None or type(value) in _ATOMIC_TYPES:
            return value
        if type(value) is dict or isinstance(value, Mapping):
            changed = False
            copy = {}
            for key, item in value.items():
                new = FILTERED if self.is_secret_field(str(key)) else self.data(item)
                changed = changed or new is not item
                copy[key] = new
            return copy if changed else value
        if type(value) is list or isinstance(value, list):
            items = [self.data(item) for item in value]
            return items if any(a is not b for a, b in zip(items, value)) else value
        return value

    def body(self, body: bytes | None, content_type: str) -> bytes | None:
        """A body with secret fields filtered, by its content type (or, without one, its look).

        JSON, form, multipart and plain-text bodies are scrubbed field by field; in HTML and XML
        the parameters of URLs are (redirect pages, links with tokens); other types (images,
        ...) are returned as they are. JSON that does not parse (cut at the body limit, or
        invalid) is scrubbed textually, so a truncated body keeps no secret either.
        """
        if not body or (b"=" not in body and b":" not in body):
            return body  # no "key": value, key=value or name="..." in it: nothing to filter
        kind = content_type.split(";", 1)[0].strip().lower()
        multipart = kind.startswith("multipart/")
        structured = "json" in kind or kind == "application/x-www-form-urlencoded"
        markup = not (multipart or structured or kind in _TEXT_KINDS)
        if (markup and kind not in _MARKUP_KINDS) or not self._may_name_a_secret(body):
            return body
        if multipart:
            return self._multipart(body, content_type)
        if markup and b"<" in body[:1024]:
            return self._urls(body)
        # Markup without a tag (Flask answers a view's plain string as text/html) is text.
        text = body.decode("utf-8", "replace")
        if "json" in kind or (not structured and text.lstrip()[:1] in ("{", "[")):
            return self._json(body, text)
        if kind == "application/x-www-form-urlencoded" or (not kind and "=" in text):
            scrubbed = self.query(text)
            return body if scrubbed == text else scrubbed.encode("utf-8")
        return self._loose(body, text)

    def _may_name_a_secret(self, body: bytes) -> bool:
        """False when no field name in ``body`` can be a secret one, found without parsing.

        Every scrubbing path matches names word-wise (:meth:`is_secret_field`): the words of a
        matching name, lowercased and joined, spell a deny-listed term (or its plural). Those
        words are ASCII letters and digits, so with every other byte deleted and the rest
        lowercased (one C-level ``bytes.translate``) the term is a substring of the body. The
        shortcut does not hold when names can be escaped (``\\u0070assword`` in JSON,
        ``pass%77ord`` in forms and URLs): bodies with a backslash or a percent sign are
        always parsed.
        """
        if self._term_search is None:
            return False
        if b"\\" in body or b"%" in body:
            return True
        return self._term_search(body.translate(_LOWERCASE, _NOT_ALPHANUMERIC)) is not None

    def _json(self, body: bytes, text: str) -> bytes:
        secret_seen = False

        def check_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            nonlocal secret_seen
            if not secret_seen:
                secret_seen = any(self.is_secret_field(key) for key, _ in pairs)
            return dict(pairs)

        try:
            parsed = json.loads(text, object_pairs_hook=check_keys)
        except (ValueError, RecursionError):
            return self._loose(body, text)
        if not secret_seen:  # most bodies: keep the bytes exactly as they were
            return body
        return json.dumps(self.data(parsed), ensure_ascii=False).encode("utf-8")

    def _loose(self, body: bytes, text: str) -> bytes:
        """Textual scrub of ``"key": value`` and ``key=value`` pairs (broken JSON, plain text)."""
        pieces = []
        position = 0
        for match in _LOOSE_PAIR.finditer(text):
            if match.start() < position:  # inside a value already filtered
                continue
            if not self.is_secret_field(match.group("key") or match.group("key2")):
                continue
            value_start = match.end()
            value_end = _value_end(text, value_start)
            pieces.append(text[position:value_start])
            pieces.append(f'"{FILTERED}"' if match.group("quoted") else FILTERED)
            position = value_end
        if not pieces:
            return body
        pieces.append(text[position:])
        return "".join(pieces).encode("utf-8")

    def _urls(self, body: bytes) -> bytes:
        """Markup (HTML, XML): filter secret parameters of the URLs in it (links, redirects),
        with one regex pass that only stops at ``?``, ``&`` and ``#``."""

        def scrub(match: re.Match[bytes]) -> bytes:
            name = match.group(2).decode("utf-8", "replace")
            if not self.is_secret_field(unquote_plus(name)):
                return match.group(0)
            return match.group(1) + match.group(2) + b"=" + FILTERED.encode()

        return _URL_PARAMETER.sub(scrub, body)

    def _multipart(self, body: bytes, content_type: str) -> bytes:
        """Filter the content of every part whose field name is secret (text or file).

        Parts are split on the boundary of the Content-Type; a part cut at the body limit is
        filtered to its end. Part heads are read as Werkzeug reads them: lines may end in LF
        alone, ``name`` may be quoted or not, or given as ``name*=`` (RFC 2231).
        """
        boundary = _boundary(content_type)
        if boundary is None:
            return self._loose(body, body.decode("utf-8", "replace"))
        delimiter = b"--" + boundary
        parts = body.split(delimiter)
        changed = False
        for index, part in enumerate(parts[1:], start=1):
            head_end, content_start = _part_head_end(part)
            if head_end < 0:
                continue  # an empty part without a blank line, the closing "--", or cut early
            if not any(map(self.is_secret_field, _part_names(part[:head_end]))):
                continue
            tail = b"\r\n" if part.endswith(b"\r\n") else b"\n" if part.endswith(b"\n") else b""
            parts[index] = part[:content_start] + FILTERED.encode() + tail
            changed = True
        return delimiter.join(parts) if changed else body


def _part_head_end(part: bytes) -> tuple[int, int]:
    """Where the head of a multipart part ends and its content starts (-1, -1: no blank line).
    The head ends at the first empty line, whether lines end in CRLF or in LF alone."""
    crlf, lf = part.find(b"\r\n\r\n"), part.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def _part_names(head: bytes) -> list[str]:
    """Every field name a part head gives in its Content-Disposition (``name="..."``, an
    unquoted ``name=...``, an RFC 2231 ``name*=charset'lang'...``); linear in the head."""
    names = []
    for line in head.split(b"\n"):
        header, colon, value = line.partition(b":")
        if not colon or header.strip().lower() != b"content-disposition":
            continue
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


def _boundary(content_type: str) -> bytes | None:
    match = _BOUNDARY.search(content_type)
    return match.group(1).strip('"').encode("latin-1", "replace") if match else None


# ?name=value / &name=value / &amp;name=value / #name=value inside markup.
_URL_PARAMETER = re.compile(rb"([?&#;])([\w.%+-]{1,200})=([^&#\"'<>\s]*)")
_BOUNDARY = re.compile(r"boundary=(\"[^\"]+\"|[^;\s]+)", re.IGNORECASE)
_PART_PARAMETER = re.compile(rb';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\\r\n]|\\.)*"?|[^;\r\n]*)')
_BACKSLASH_ESCAPE = re.compile(rb"\\(.)")


# "key": value  |  'key': value  |  key=value  |  key: value   (in any text)
_LOOSE_PAIR = re.compile(
    r"""(?P<quoted>["'])(?P<key>[^"'\\\n]{1,200})["']\s*:\s*"""
    r"""|(?<![\w.-])(?P<key2>[A-Za-z_][\w.-]{0,199})\s*[=:]\s*"""
)


def _value_end(text: str, start: int) -> int:
    """Where the value starting at ``start`` ends: a quoted string, a bracketed structure (to
    its matching bracket or the end of a cut body), or a bare token."""
    if start >= len(text):
        return start
    opener = text[start]
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


def anonymize_ip(address: str | None) -> str | None:
    """Zero the last octet of an IPv4 address, or the last 80 bits of an IPv6 address."""
    if not address:
        return address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return FILTERED  # not an address we can trim: keep none of it
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)

"""Pure scrubbing of secrets from headers, query strings, bodies and custom data.

Nothing here touches Flask, the request or the database: every function takes copies of captured
values and returns scrubbed values, with :data:`FILTERED` in place of each secret.

A *field* (a JSON key, a form or query parameter, a multipart part, a custom-data key) is secret
when its name, split into words (``user_password`` and ``userPassword`` give ``user`` and
``password``), contains a deny-listed term as one word or as consecutive words joined
(``card_number`` and ``cardNumber`` match ``cardnumber``). A *header* is secret when its name is
in the header deny-list or is a secret field name (``X-Auth-Token``).

A body is read by its format (JSON, loose text, XML and HTML, multipart) in
:mod:`flask_tracking.bodies`, given these verdicts, only when the pre-filter finds something
in it that can name a secret or look like a credential.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from .bodies import NAMING_KEYS, BodyFilters, by_look, map_items
from .content import HTML_KINDS, Unreadable, as_utf8, decode_content, describe_content_type
from .credentials import FILTERED, FILTERED_BYTES, group_replaced, scrub_text, scrub_values
from .markup import MarkupFilters
from .paths import URL_VALUE_STARTS, SecretPaths
from .prefilter import NAME_HINT, VALUE_HINT, body_scanners, hints_of
from .syntax import NESTED_PARAMETER_NAME, QUERY_MARK

__all__ = [
    "DEFAULT_ALLOWED_FIELDS",
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_REDACT_FIELDS",
    "DEFAULT_REDACT_HEADERS",
    "FILTERED",
    "FILTERED_BYTES",
    "IP_HEADERS",
    "MAX_NAME_LENGTH",
    "REDACTION_FAILED",
    "Redactor",
    "ScrubbedBody",
    "TruncatedBody",
    "Unreadable",
    "anonymize_ip",
    "decode_content",
    "scrub_text",
    "scrub_values",
]

#: Bytes a body encoded with Content-Encoding is decoded to at most, unless told otherwise.
DEFAULT_MAX_DECODED_BYTES = 65536

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
    "Cf-Access-Jwt-Assertion",
    "X-Goog-Iap-Jwt-Assertion",
    "X-Hub-Signature",
    "X-Hub-Signature-256",
    "X-Signature",
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
    "sig",
    "signature",
    "jwt",
    "access_key",
    "key",
    "card",
    "security code",
    "iban",
    "social security number",
    "totp",
    "passcode",
    "mfa code",
    "pw",
    "security answer",
    "recovery code",
    "backup code",
)

#: Names that contain a deny-listed word but hold no secret, kept as they are (matched as the
#: whole name, words joined and lowercased: ``token_type`` and ``tokenType`` alike).
DEFAULT_ALLOWED_FIELDS: tuple[str, ...] = (
    "token_type",
    "token_type_hint",
    "signature_method",
    "oauth_signature_method",
    "signature_version",
    "signature_algorithm",
    "key_type",
    "auth_type",
    "twitter_card",  # <meta name="twitter:card" content="summary">, on most public pages
    "access_control_allow_credentials",  # CORS (Flask-Cors): its one value is "true"
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

# Headers whose value is a URL (htmx's too: the page a request came from, where it sends the
# browser), and the WSGI environ keys of those a request may hold.
_URL_HEADERS = frozenset(
    {
        "referer",
        "location",
        "content-location",
        "hx-current-url",
        "hx-redirect",
        "hx-location",
        "hx-push-url",
        "hx-replace-url",
        "http_referer",
    }
)
_URL_ENVIRON_KEYS = ("HTTP_REFERER", "HTTP_HX_CURRENT_URL")
# Headers holding URLs among other text, and where those URLs are.
_HEADERS_WITH_URLS = frozenset({"refresh", "link"})
_EMBEDDED_URL = re.compile(
    r"<([^<>]*)>"  # Link: <...>; rel=...
    r"|\b[Uu][Rr][Ll]\s*=\s*['\"]?([^'\"\s;,<>]+)"  # Refresh: 0; url=...
    r'|"path"\s*:\s*"([^"\\]*)"'  # HX-Location: {"path": ...}
    # Refresh: 3; /path (browsers take what follows the delay as the URL, url= or not, after
    # a ";", a "," or whitespace alone: 3 /path)
    r"|^\s*[0-9]+(?:\.[0-9]*)?(?:\s*[;,]\s*|\s+)(?![Uu][Rr][Ll]\s*=)['\"]?([^'\"\s;,<>]+)"
)

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _normalise(term: str) -> str:
    return "".join(_WORD.findall(term)).lower()


def unmatchable_fields(fields: Iterable[str]) -> list[str]:
    """The names among ``fields`` that no field name could ever match: names are compared by
    their ASCII words (letters and digits), and these have none (пароль, 密码, ``--``)."""
    return [field for field in fields if not _normalise(field)]


_ALLOWED = frozenset(map(_normalise, DEFAULT_ALLOWED_FIELDS))
# Paths an OAuth authorization response comes back to.
_CALLBACK_PATH = re.compile(r"callback|oauth|authori[sz]|redirect|sso|signin|login", re.I)


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
        # The app's URL rules with secret variables, for its paths and the URLs naming them;
        # where to read all of them from until they are learnt (learn_rules_later).
        self._paths = SecretPaths(self.is_secret_field, FILTERED)
        self._rules_source: Callable[[], Iterable[str]] | None = None
        self._rules_lock = threading.Lock()
        #: Whether rules given to :meth:`learn_rules_later` are not learnt yet: a URL naming a
        #: page with a secret variable is then filtered without its path.
        self.rules_pending = False
        # The shortest terms are enough to look for (a body naming "password" contains "pass").
        terms = sorted(self._fields, key=len)
        kept = [term for i, term in enumerate(terms) if not any(t in term for t in terms[:i])]
        self._scan, self._scan_many = body_scanners([term.encode() for term in kept])
        # The body formats, given these verdicts; reached only by a body the pre-filter flags.
        self._formats = BodyFilters(
            self.is_secret_field,
            self.query,
            self.data,
            self._object,
            self._scrub,
            MAX_NAME_LENGTH,
            MarkupFilters(self.is_secret_field, self._url_filter, self.query_value),
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
        if count < 8 and "".join(words) in _ALLOWED:
            return False
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
        rules = self._paths.rules
        scrubbed = []
        for name, value in pairs:
            secret = verdicts.get(name)
            if secret or (secret is None and self.is_secret_header(name)):
                value = FILTERED
            elif rules is not None or "?" in value or "#" in value:
                lowered = name.lower()
                if lowered in _URL_HEADERS and value[:1] != "{":
                    value = self.url(value)
                elif lowered in _URL_HEADERS or lowered in _HEADERS_WITH_URLS:
                    # Refresh: 0; url=..., Link: <...>; rel=..., HX-Location: {"path": ...}
                    value = _EMBEDDED_URL.sub(self._embedded_url, value)
            scrubbed.append((name, value))
        return scrubbed

    def environ(self, environ: dict[str, Any], rule: str | None = None) -> None:
        """Filter, in place, the secret headers and query parameters of a WSGI environ copy,
        and its path when ``rule`` (the URL rule the request matched, ``/reset/<token>``) has
        secret variables: their values are filtered (``/reset/[Filtered]``; see
        :class:`flask_tracking.rules.SecretVariables`).

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
        # The keys view's "&" looks up each filtered key in the environ (usually none, or
        # one: Cookie); secret.intersection(environ) would hash every key of the environ.
        for key in environ.keys() & secret:
            environ[key] = FILTERED
        paths = self._paths
        secret_rules = paths.rules
        script_name = environ.get("SCRIPT_NAME")
        if script_name and script_name not in paths.script_names and script_name != "/":
            paths.learn_script_name(script_name)
        for key in _URL_ENVIRON_KEYS:
            url = environ.get(key)
            if url and (secret_rules is not None or "?" in url or "#" in url) and url != FILTERED:
                environ[key] = self.url(url)
        query = environ.get("QUERY_STRING")
        if query:
            environ["QUERY_STRING"] = self.query(query, environ.get("PATH_INFO", ""))
        path = environ.get("PATH_INFO")
        if path is None:
            return
        if rule is not None:
            try:
                variables = paths.variables[rule]
            except KeyError:
                variables = paths.variables_of(rule)
            if variables is not None:
                environ["PATH_INFO"] = variables.filter(path, FILTERED)
        elif secret_rules is not None:  # no rule matched (404, 405, a slash redirect)
            environ["PATH_INFO"] = paths.path_of_no_rule(path)

    def _embedded_url(self, match: re.Match[str]) -> str:
        """A URL of :data:`_EMBEDDED_URL` (whichever group holds it) filtered by :meth:`url`."""
        group = match.lastindex or 0
        return group_replaced(match, group, self.url(match.group(group)))

    def learn_rules(self, rules: Iterable[str]) -> None:
        """Know an app's URL rules, so that a URL naming one of its pages with a secret
        variable (``Referer: https://host/reset/<the token>``, a ``Location``) has its path
        filtered as :meth:`environ` filters the page's own (see :meth:`url` and
        :class:`flask_tracking.paths.SecretPaths`)."""
        self._paths.learn_rules(rules)

    def learn_rules_later(self, source: Callable[[], Iterable[str]]) -> None:
        """Learn the rules ``source()`` gives (as :meth:`learn_rules`) when
        :meth:`learn_pending_rules` is first called, on the writer thread: learning a large
        app's rules takes a while (a quarter of a second for 1,500 with secret variables),
        which no request should wait for. Until then :attr:`rules_pending` is True."""
        self._rules_source = source
        self.rules_pending = True

    def learn_pending_rules(self) -> None:
        """Learn the rules given to :meth:`learn_rules_later`, once; :attr:`rules_pending`
        turns False when they are learnt (or reading them raised: that error propagates, and
        the rules are not read again)."""
        if self._rules_source is None:
            return
        with self._rules_lock:
            source = self._rules_source
            if source is None:  # another thread learnt them meanwhile
                return
            try:
                self.learn_rules(source())
            finally:
                self._rules_source = None
                self.rules_pending = False

    def _url_filter(self) -> Callable[[str], str] | None:
        """:meth:`url` (a page's link: its path and its query's values) while the app has
        rules with secret variables, else None."""
        return self.url if self._paths.rules is not None else None

    def url(self, url: str) -> str:
        """A URL with the values of secret parameters filtered, in its query string and in its
        fragment (where OAuth's implicit flow puts ``access_token``), and in its path when it
        names a page of the app whose rule has secret variables (:meth:`learn_rules`). A
        parameter's value holding a query of its own is filtered too: see :meth:`query`."""
        url, hash_mark, fragment = url.partition("#")
        base = url
        if "?" in url:
            base, _, query = url.partition("?")
            url = f"{base}?{self.query(query, base)}"
        paths = self._paths
        if paths.rules is not None:
            url = paths.url_path(base) + url[len(base) :]
        return f"{url}#{self.query(fragment, base)}" if hash_mark else url

    def query(self, query: str, path: str = "") -> str:
        """A query string (or form body) with the values of secret parameters filtered; on
        ``path``, ``code`` is filtered too when it is an OAuth authorization code.

        A value holding a query or a fragment of its own (``next=/account?token=...``,
        ``redirect_uri=https%3A%2F%2Fapp%2Fcb%3Fcode%3D...``), raw or percent-encoded once,
        has the values of that query's secret parameters filtered too, ``code`` always
        (:meth:`query_value`)."""
        if not query:
            return query
        parts = query.split("&")
        oauth = None  # whether the query is an OAuth authorization response (asked once)
        paths = self._paths
        rules = paths.rules
        # One search of the whole query first: most hold no value with a query of its own.
        nested = "?" in query or "#" in query or ("%" in query and QUERY_MARK.search(query))
        for index, part in enumerate(parts):
            name, equals, value = part.partition("=")
            if not equals:
                continue
            decoded = unquote_plus(name)
            secret = self.is_secret_field(decoded)
            if not secret and decoded == "code":
                if oauth is None:  # a state beside the code, or a callback-looking path
                    oauth = "state=" in query or _CALLBACK_PATH.search(path) is not None
                secret = oauth
            if secret:
                parts[index] = f"{name}={FILTERED}"
                continue
            if nested:  # first: filtering the path may write the value encoded again
                value = self.query_value(value)
            if rules is not None and value[:1] in URL_VALUE_STARTS:
                value = paths.url_value(value)
            parts[index] = f"{name}={value}"
        return "&".join(parts)

    def query_value(self, value: str) -> str:
        """A parameter's value (as written) with what follows the first secret parameter of
        the query or fragment it holds filtered (to its end: the rest of the held URL);
        ``code`` there is secret too (a URL carried in a URL with a ``code`` is an
        authorization redirect's). The held URL's separators (``?``, ``#``, ``&``, ``=``)
        are read raw or percent-encoded once, as the server decodes the value once, from its
        first ``?`` or ``#``; its names are read decoded twice. ``value`` itself when nothing
        in it is secret."""
        mark = QUERY_MARK.search(value)  # where the held URL's query or fragment begins
        if mark is None:
            return value
        for match in NESTED_PARAMETER_NAME.finditer(value, mark.start()):
            name = unquote_plus(unquote_plus(match.group(1))).lstrip("?")
            if name == "code" or self.is_secret_field(name):
                return value[: match.end()] + FILTERED
        return value

    def data(self, value: Any) -> Any:
        """Custom data or parsed JSON with the values of secret keys filtered.

        A mapping that names a secret field through a naming key (``{"name": "password",
        "value": ...}``) keeps only its naming keys; a string of ``key: value`` or
        ``key=value`` text has its secret pairs filtered (a GraphQL query with a password
        literal). Returns ``value`` itself when nothing in it is secret, else a filtered copy.
        """
        if type(value) is str:
            if ("=" in value or ":" in value) and self._text_names_a_secret(value):
                return self._formats.loose_text(value)
            return value
        if type(value) is bytes:  # read as text; bytes that are not UTF-8 kept as they are
            text = value.decode("utf-8", "surrogateescape")
            filtered = self.data(text)
            return value if filtered is text else filtered.encode("utf-8", "surrogateescape")
        if value is None or type(value) in _ATOMIC_TYPES:
            return value
        if type(value) is dict or isinstance(value, Mapping):
            return self._object(value, self.data)
        if type(value) is list or isinstance(value, list):
            return map_items(value, self.data)
        return value

    def _object(
        self,
        value: Mapping[Any, Any],
        inner: Callable[[Any], Any],
        pairs: Iterable[tuple[Any, Any]] | None = None,
    ) -> Any:
        """A mapping with the values of secret keys filtered and ``inner`` of the others;
        ``value`` itself when nothing changed. One that names a secret field through a naming
        key keeps only its naming keys; ``pairs``: every key and value the mapping was made of,
        when a key was repeated (a name given twice names what either names)."""
        named = any(
            type(item) is str and str(key).lower() in NAMING_KEYS and self.is_secret_field(item)
            for key, item in (value.items() if pairs is None else pairs)
        )
        changed = False
        copy = {}
        for key, item in value.items():
            name = str(key)
            if (named and name.lower() not in NAMING_KEYS) or self.is_secret_field(name):
                new = FILTERED
            else:
                new = inner(item)
            changed = changed or new is not item
            copy[key] = new
        return copy if changed else value

    def message(self, text: str) -> str:
        """Free text (an exception's message, which quotes what failed: a URL, a header, a
        connection string) with its secret ``key=value`` and ``key: value`` pairs filtered
        (:meth:`data`) and credentials recognised by their look (:func:`scrub_text`)."""
        return scrub_text(self.data(text))

    def values(self, value: Any) -> Any:
        """Custom data with every string and bytes value scrubbed by its look
        (:func:`scrub_text`, :func:`scrub_values`), nested ones too; ``value`` itself when
        nothing was found, else a copy."""
        if type(value) is str:
            return scrub_text(value)
        if type(value) is bytes:
            return scrub_values(value)
        if type(value) is dict:
            copy = {key: self.values(item) for key, item in value.items()}
            return value if all(copy[k] is v for k, v in value.items()) else copy
        if type(value) is list:
            return map_items(value, self.values)
        return value

    def body(
        self, body: bytes | None, content_type: str, content_encoding: str = ""
    ) -> bytes | None:
        """The body as :meth:`scrub_body` stores it: scrubbed bytes, or None when omitted."""
        return self.scrub_body(body, content_type, content_encoding).body

    def scrub_body(
        self,
        body: bytes | None,
        content_type: str,
        content_encoding: str = "",
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> ScrubbedBody:
        """A body with its secrets filtered, or omitted with the reason when it cannot be read
        safely.

        A ``Content-Encoding`` (gzip, deflate; br when a Brotli decoder is installed) is
        decoded to at most ``max_decoded_bytes`` and the decoded body is what is kept; a
        declared charset other than UTF-8 (``utf-16`` JSON) is decoded and kept as UTF-8.
        JSON, form, multipart, plain-text, GraphQL and XML bodies are scrubbed field by field
        (XML elements and attributes by name); in HTML the parameters of URLs are. Credentials
        are then filtered by their look, whatever their name (:func:`scrub_values`). Media
        (images, audio, video, fonts) are kept as they are. A body of any other format (YAML,
        CSV, octet streams, ...), an unknown encoding or charset, or a compressed archive, is
        kept only when nothing in it can name a secret or look like a credential; otherwise
        it is omitted, with the reason.
        """
        return self._scrub_body(body, content_type, content_encoding, max_decoded_bytes, None)

    def scrub_bodies(self, bodies: Sequence[tuple[bytes, str, str, int]]) -> list[ScrubbedBody]:
        """:meth:`scrub_body` of each ``(body, content type, content encoding, max decoded
        bytes)``, at less cost than one by one: the pre-filter runs over the bodies together.
        Never raises: a body whose filtering fails is omitted as ``redaction failed`` (fail
        closed)."""
        try:
            # The batch pass reads the bodies as they came. One with a Content-Encoding (or a
            # charset, see _scrub) is decoded and pre-filtered on its own, when its turn comes:
            # the writer never holds more than one decoded body (each can be up to
            # max_decoded_bytes) at a time.
            scanned = []
            for index, (body, content_type, encoding, _) in enumerate(bodies):
                described = describe_content_type(content_type)
                if body and not encoding and not described.media and not described.archive:
                    scanned.append(index)
            found = dict(zip(scanned, self._scan_many([bodies[index][0] for index in scanned])))
        except Exception:  # each body is then pre-filtered on its own
            found = {}
        results = []
        for index, item in enumerate(bodies):
            try:
                body, content_type, encoding, limit = item
                kept = self._scrub_body(body, content_type, encoding, limit, found.get(index))
            except Exception:
                kept = REDACTION_FAILED
            results.append(kept)
        return results

    def _scrub_body(
        self, body: bytes | None, content_type: str, encoding: str, limit: int, found: int | None
    ) -> ScrubbedBody:
        if not body:
            return ScrubbedBody(body, None)
        try:
            cut = False
            if encoding:  # decoded here, one byte past the limit: a body cut there says so
                body = decode_content(body, encoding, limit + 1)
                cut = len(body) > limit
                body, found = body[:limit], None
            scrubbed = self._scrub(body, content_type, limit, True, found)
            return (TruncatedBody if cut else ScrubbedBody)(scrubbed, None)
        except Unreadable as error:
            return ScrubbedBody(None, error.reason)

    def _scrub(
        self,
        body: bytes,
        content_type: str,
        limit: int,
        outer: bool,
        found: int | None = None,
    ) -> bytes:
        """``body``, decoded from its Content-Encoding already, filtered as its
        ``content_type`` says; ``found``: what the pre-filter found in it (None: not run yet)."""
        described = describe_content_type(content_type)
        kind = described.kind
        read = body
        if described.media:
            return body
        if described.archive:
            raise Unreadable(f"compressed archive ({kind})")
        body = as_utf8(body, described)
        if found is None or body is not read:  # a charset decoded: not what it read
            found = self._scan(body)
        hints = hints_of(found, body, described.escapes) if found else 0
        # A page naming no secret field may still link to a page with secret rule variables
        # (a redirect's page names its target, /reset/<the token>): its links are read when it
        # holds the beginning of such a rule's paths.
        rules = self._paths.rules
        if (
            rules is not None
            and kind in HTML_KINDS
            and not hints & NAME_HINT
            and rules.named_in(body)
        ):
            body = self._formats.markup.html_links(body)
        if not hints:
            return body  # nothing in it can name a secret or look like a credential
        multipart, json_kind, form, xml = described.shape
        if not described.scrubbable:
            raise Unreadable(f"format not scrubbable ({kind})")
        if multipart:
            if not outer:
                raise Unreadable("nested multipart")
            # Part by part, names and values: a boundary (often a long run of digits) is never
            # mistaken for a credential.
            return self._formats.multipart(body, content_type, limit)
        if hints & NAME_HINT:
            body = self._formats.by_name(body, kind, (json_kind, form, xml))
        if hints & VALUE_HINT:
            json_shaped = json_kind or (not form and not xml and body.lstrip()[:1] in b"{[")
            body = by_look(body, json_shaped)
        return body

    def _hints(self, body: bytes, escapes: bool = True) -> int:
        """What ``body`` may hold, found without parsing: :data:`NAME_HINT` when a field
        name in it can be a secret one, :data:`VALUE_HINT` when a value can look like a
        credential (0: keep the body as it is).

        Every scrubbing path matches names word-wise (:meth:`is_secret_field`): the words of a
        matching name, lowercased and joined, spell a deny-listed term (or its plural). Those
        words are ASCII letters and digits, so with every other byte deleted and the rest
        lowercased the term is a substring of the body (google-re2 finds the same in the
        body itself, any bytes but letters and digits allowed between the letters). The
        shortcut does not hold when names can be escaped (``\\u0070assword`` in JSON,
        ``pass%77ord`` in forms and URLs): with ``escapes``, bodies with a backslash or a
        percent sign are always parsed. The same pass finds the words credentials begin with
        (``eyJ``, ``Bearer``, ``AKIA``, ...), ``://`` (a URL's password) and digits shaped like
        a card number's; only the last needs a closer look (:func:`may_hold_card`).
        """
        found = self._scan(body)
        return hints_of(found, body, escapes) if found else 0

    def _may_name_a_secret(self, body: bytes) -> bool:
        """Whether a field name in ``body`` can be a secret one (see :meth:`_hints`)."""
        return bool(self._hints(body) & NAME_HINT)

    def _text_names_a_secret(self, text: str) -> bool:
        return self._may_name_a_secret(text.encode("utf-8", "replace"))


class ScrubbedBody(NamedTuple):
    """What :meth:`Redactor.scrub_body` keeps of a body: the bytes to store, or None and the
    reason it is omitted."""

    body: bytes | None
    omitted: str | None


class TruncatedBody(ScrubbedBody):
    """A :class:`ScrubbedBody` of a body that decoded from its ``Content-Encoding`` to more
    than the limit: kept up to it, and the record says it was cut."""

    __slots__ = ()


#: What :meth:`Redactor.scrub_bodies` gives for a body whose filtering failed (fail closed).
REDACTION_FAILED = ScrubbedBody(None, "redaction failed")


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

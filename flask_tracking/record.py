"""Turn a finished request (as captured on the request thread) into the document to store.

Runs on the writer thread, so the request never pays for it: header names, the query string,
the host, the user agent (parsed by ``ua-parser``), the user reference, the status code. The
result is the schema that :class:`flask_tracking.documents.Tracking` reads.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from bson import DBRef
from ua_parser import Domain, Parser, PartialResult, Result, load_builtins

from .ids import new_object_id
from .layouts import remember_layout
from .redact import (
    DEFAULT_MAX_DECODED_BYTES,
    REDACTION_FAILED,
    Redactor,
    ScrubbedBody,
    TruncatedBody,
    anonymize_ip,
    scrub_text,
)

if TYPE_CHECKING:  # config imports this module, and capture imports config
    from .capture import BodyCapture, RequestState
from .policy import decode_wsgi, wsgi_path

_HOSTNAME = socket.gethostname()


def status_code_of(status: str | None) -> int | None:
    """The integer code of a WSGI status line such as ``"404 NOT FOUND"`` (0 for a malformed one);
    None for no status line (the app gave no response). An app answers with a few status
    lines: each is read once and remembered."""
    code = _STATUS_CODES.get(status)
    if code is None:
        if status is None:
            return None
        try:
            code = int(status.split(None, 1)[0])
        except (ValueError, IndexError):
            code = 0
        if len(_STATUS_CODES) >= _MAX_STATUS_LINES:
            _STATUS_CODES.clear()
        _STATUS_CODES[status] = code
    return code


_STATUS_CODES: dict[str | None, int] = {}
_MAX_STATUS_LINES = 256


def to_document(
    state: RequestState,
    redactor: Redactor | None = None,
    anonymize: bool = False,
    request_id_key: str | None = None,
    db_repeat_threshold: int = 5,
    *,
    bodies: tuple[ScrubbedBody | None, ScrubbedBody | None] | None = None,
) -> dict[str, Any]:
    """The document to insert for a finished request (a new dict with an ``_id``).

    The ``db`` sub-document (:mod:`flask_tracking.dbactivity`) is there only when the request
    ran a database command; it lists as repeated the shapes run ``db_repeat_threshold`` times
    or more.

    With a ``redactor``, secrets are filtered from headers, query string, custom data and
    bodies; with ``anonymize``, the client address is cut (see :func:`redact.anonymize_ip`).
    ``request_id_key`` is the environ key of the incoming request-id header: when nothing on
    the request thread needed the id, it is worked out here. ``bodies``: the request's and
    the response's bodies as :func:`scrub_bodies` filtered them (for many records at once).
    """
    if redactor is not None:
        _finish_scrubbing(state, redactor)
    environ = state.environ or {}
    names, values = _request_headers(environ)
    ip = environ.get("REMOTE_ADDR")
    if anonymize:
        ip = anonymize_ip(ip)
    response_headers = state.response_headers
    agent = environ.get("HTTP_USER_AGENT", "")
    if redactor is not None and agent and agent not in _CLEAN_TEXTS:
        agent = _looked_at(agent)  # its copy in user_agent.string, and what is parsed of it
    document: dict[str, Any] = {
        "_id": new_object_id(),
        "date_created": datetime.fromtimestamp(state.timestamp, timezone.utc),
        "host": environ.get("HTTP_HOST") or _server_host(environ),
        "scheme": environ.get("wsgi.url_scheme"),
        "method": environ.get("REQUEST_METHOD"),
        "path": wsgi_path(environ),
        "query_params": decode_wsgi(environ.get("QUERY_STRING", "")),
        "ip": ip,
        "endpoint": state.endpoint,
        "url_rule": state.url_rule,
        "referrer": environ.get("HTTP_REFERER"),
        "user": _user_reference(state.user_ref),
        "user_id": state.user_id,
        "user_agent": parse_user_agent(agent, environ.get("HTTP_ACCEPT_LANGUAGE", "")),
        "request_headers": [[name, value] for name, value in zip(names, values)],
        "response_headers": [[name, value] for name, value in response_headers],
        "status_code": status_code_of(state.status),
        "execution_time": state.execution_time,
        "total_time": state.total_time,
        "hostname": _HOSTNAME,
        "custom_data": state.custom_data,
        "exception": state.exception,
        "request_id": state.resolve_request_id(environ, request_id_key),
        "sample_rate": state.sample_rate,
    }
    if redactor is not None and bodies is None:
        bodies = scrub_bodies([state], redactor)[0]
    _add_bodies(document, state, bodies or (None, None))
    if state.db is not None:
        try:
            db = state.db.to_document(db_repeat_threshold)
        except Exception:  # the record matters more than its database summary
            db = None
        if db is not None:
            document["db"] = db
    if redactor is not None:
        scrub_values_by_look(document, redactor)
    return document


def scrub_bodies(
    states: Sequence[RequestState], redactor: Redactor
) -> list[tuple[ScrubbedBody | None, ScrubbedBody | None]]:
    """The request's and the response's bodies of each request with their secrets filtered,
    or omitted with the reason (None: no body to filter), for :func:`to_document`. The
    pre-filter reads the bodies of all the requests together (:meth:`Redactor.scrub_bodies`);
    a body whose scrubbing fails is not kept at all (fail closed)."""
    bodies: list[tuple[bytes, str, str, int]] = []
    places: list[tuple[int, int]] = []
    filtered: list[list[ScrubbedBody | None]] = []
    for index, state in enumerate(states):
        _finish_scrubbing(state, redactor)
        request, response = _captured(state.request_body), _captured(state.response_body)
        filtered.append([_until_filtered(request), _until_filtered(response)])
        if request:
            environ = state.environ or {}
            kind = environ.get("CONTENT_TYPE", "")
            coding = environ.get("HTTP_CONTENT_ENCODING", "")
            bodies.append((request, kind, coding, _limit(state.request_body)))
            places.append((index, 0))
        if response:
            kind = coding = ""
            for name, value in state.response_headers:
                lowered = name.lower()
                if lowered == "content-type":
                    kind = value
                elif lowered == "content-encoding":
                    coding = value
            bodies.append((response, kind, coding, _limit(state.response_body)))
            places.append((index, 1))
    results = redactor.scrub_bodies(bodies)
    if len(results) != len(bodies):  # a redactor that lost count: keep none of them
        results = [REDACTION_FAILED] * len(bodies)
    for (index, side), kept in zip(places, results):
        filtered[index][side] = kept
    return [(request, response) for request, response in filtered]


def _until_filtered(body: bytes | None) -> ScrubbedBody | None:
    """What is kept of a body until its filtering says otherwise: nothing (fail closed), but
    an empty body, kept as the copy made here (the bytes filtered are the bytes stored)."""
    if body is None:
        return None
    return REDACTION_FAILED if body else ScrubbedBody(body, None)


def _captured(capture: BodyCapture | None) -> bytes | None:
    """The bytes of a body as captured (None: not captured, or the capture failed)."""
    return None if capture is None or capture.failed else bytes(capture.buffer)


def _limit(capture: BodyCapture | None) -> int:
    """The most bytes a body's Content-Encoding is decoded to: its capture limit."""
    return max(capture.limit if capture is not None else DEFAULT_MAX_DECODED_BYTES, 1)


def scrub_request_side(state: RequestState, redactor: Redactor) -> None:
    """Filter the secrets of the headers, the query string, the path (the values of the URL
    rule's secret variables) and the custom data, on the tracker's own copies (the view saw
    the original request); bodies are left to :func:`to_document`. Runs on the request thread
    before a record is queued. Until the writer thread has learnt the app's URL rules
    (:attr:`Redactor.rules_pending`), URLs naming a page with a secret variable keep their path:
    the writer filters such a record again once it knows them (:func:`_finish_scrubbing`)."""
    state.scrubbed_without_rules = redactor.rules_pending
    if state.environ is not None:
        redactor.environ(state.environ, state.url_rule)
    # A tuple: the garbage collector stops tracking it, so a queued record holds one object less.
    state.response_headers = tuple(redactor.headers(state.response_headers))
    if state.custom_data is not None:
        state.custom_data = redactor.data(state.custom_data)
    state.scrubbed = True


def _finish_scrubbing(state: RequestState, redactor: Redactor) -> None:
    """On the writer thread: learn the app's URL rules if that is still to do, and filter the
    request side of ``state`` where the request thread did not (normally it did), or did
    before the rules were learnt (filtering again changes only the paths of URLs that name a
    page with a secret variable: what is filtered stays filtered)."""
    if redactor.rules_pending:
        redactor.learn_pending_rules()
    if not state.scrubbed or state.scrubbed_without_rules:
        scrub_request_side(state, redactor)


def _request_headers(environ: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The request headers of a WSGI environ: names (``Accept``) and values, in their order.

    The environ keys of one client repeat from request to request, so which keys are headers
    and what their names are is worked out once per key layout and remembered
    (:func:`flask_tracking.layouts.remember_layout`: bounded).
    """
    layout = tuple(environ)
    plan = _HEADER_PLANS.get(layout)
    if plan is None:
        header_keys = [key for key in layout if key[:5] == "HTTP_" or key in _CONTENT_KEYS]
        getter = itemgetter(*header_keys) if len(header_keys) > 1 else None
        plan = remember_layout(
            _HEADER_PLANS,
            layout,
            (tuple(header_keys), tuple(_header_name(key) for key in header_keys), getter),
        )
    keys, names, getter = plan
    values = getter(environ) if getter is not None else tuple(environ[key] for key in keys)
    if _CONTENT_KEYS.isdisjoint(keys) or all(values):
        return names, values
    # An empty Content-Type or Content-Length (servers set them always) is no header.
    kept = [
        (name, value)
        for key, name, value in zip(keys, names, values)
        if value or key not in _CONTENT_KEYS
    ]
    return tuple(name for name, _ in kept), tuple(value for _, value in kept)


_HEADER_PLANS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...], Any]] = {}


_LOOKED_AT = ("path", "query_params", "referrer")


def scrub_values_by_look(document: dict[str, Any], redactor: Redactor) -> None:
    """Filter credentials recognised by their look (:func:`redact.scrub_text`) in the header
    values, path, query string, referrer, custom data and exception of ``document``, whatever
    their names: a JWT in ``X-Debug``, a URL's password in ``Referer``, ``Location`` or
    ``Link``; the exception's message also has its secret ``key=value`` pairs filtered.
    On the writer thread, like the bodies: a request never pays for it.

    Header values, paths and query strings repeat from request to request: the texts found
    clean are remembered (a few thousand, each at most 1 KiB), and only new ones are looked
    at."""
    for key in ("request_headers", "response_headers"):
        for pair in document[key]:
            value = pair[1]
            if type(value) is str and value not in _CLEAN_TEXTS:
                pair[1] = _looked_at(value)
    for key in _LOOKED_AT:
        value = document[key]
        if type(value) is str and value not in _CLEAN_TEXTS:
            document[key] = _looked_at(value)
    if document["custom_data"] is not None:
        document["custom_data"] = redactor.values(document["custom_data"])
    exception = document["exception"]
    if exception is not None:  # a message quotes what failed: a URL, a header
        # "Type: message": the type is no key (TokenExpired, CSRFError), the message is read.
        name, colon, message = exception.partition(": ")
        document["exception"] = name + colon + redactor.message(message) if colon else exception


def _looked_at(text: str) -> str:
    """:func:`redact.scrub_text` of ``text``, remembering a clean one."""
    scrubbed = scrub_text(text)
    if scrubbed is text and len(text) <= _MAX_CLEAN_TEXT_LENGTH:
        if len(_CLEAN_TEXTS) >= _MAX_CLEAN_TEXTS:
            _CLEAN_TEXTS.clear()
        _CLEAN_TEXTS.add(text)
    return scrubbed


#: Texts :func:`redact.scrub_text` found nothing in (shared by every writer thread).
_CLEAN_TEXTS: set[str] = set()
_MAX_CLEAN_TEXTS = 4096
_MAX_CLEAN_TEXT_LENGTH = 1024


def _add_bodies(
    document: dict[str, Any],
    state: RequestState,
    filtered: tuple[ScrubbedBody | None, ScrubbedBody | None],
) -> None:
    """Set the body fields of ``document``, with the bodies as filtered where they were."""
    for keys, capture, omitted, kept in (
        (_REQUEST_BODY_KEYS, state.request_body, state.request_body_omitted, filtered[0]),
        (_RESPONSE_BODY_KEYS, state.response_body, state.response_body_omitted, filtered[1]),
    ):
        if capture is None:
            body, size, truncated = None, None, False
        elif capture.failed:
            body, size, truncated, omitted = None, None, False, "capture failed"
        else:
            size, truncated = capture.size, capture.truncated
            if kept is None:
                body = bytes(capture.buffer)
            else:
                body = kept.body
                omitted = kept.omitted if kept.omitted is not None else omitted
                truncated = truncated or isinstance(kept, TruncatedBody)
        body_key, size_key, truncated_key, omitted_key = keys
        document[body_key] = body
        document[size_key] = size
        document[truncated_key] = truncated
        document[omitted_key] = omitted


_REQUEST_BODY_KEYS = (
    "request_body",
    "request_body_size",
    "request_body_truncated",
    "request_body_omitted",
)
_RESPONSE_BODY_KEYS = (
    "response_body",
    "response_body_size",
    "response_body_truncated",
    "response_body_omitted",
)


def _header_name(environ_key: str) -> str:
    """``HTTP_X_FORWARDED_FOR`` -> ``X-Forwarded-For``."""
    return _CONTENT_HEADERS.get(environ_key) or environ_key[5:].replace("_", "-").title()


_CONTENT_HEADERS = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}
_CONTENT_KEYS = frozenset(_CONTENT_HEADERS)


def _server_host(environ: dict[str, Any]) -> str | None:
    name, port = environ.get("SERVER_NAME"), environ.get("SERVER_PORT")
    if not name:
        return None
    return name if port in (None, "", "80", "443") else f"{name}:{port}"


def _user_reference(user_ref: tuple[str, str, Any] | None) -> dict[str, Any] | None:
    """MongoEngine's GenericReferenceField layout: ``{"_cls": ..., "_ref": DBRef(...)}``."""
    if user_ref is None:
        return None
    class_name, collection, primary_key = user_ref
    return {"_cls": class_name, "_ref": DBRef(collection, primary_key)}


def parse_user_agent(user_agent: str, accept_language: str = "") -> dict[str, str | None]:
    """Browser, version, platform, device and language of a User-Agent header (a new dict).

    ``language`` comes from the first Accept-Language tag (user agents stopped naming it).
    Parsed agents are remembered (a few thousand distinct strings), as traffic repeats them.
    """
    key = user_agent[:_MAX_PARSED_AGENT_LENGTH]  # parse time grows with length: bound it
    parsed = _PARSED_AGENTS.get(key)
    if parsed is None:
        parsed = _parse_agent(key)
        if len(_PARSED_AGENTS) >= _MAX_PARSED_AGENTS:
            _PARSED_AGENTS.clear()
        _PARSED_AGENTS[key] = parsed
    language = accept_language.split(",", 1)[0].split(";", 1)[0].strip() or None
    return {**parsed, "string": user_agent, "language": language}


def prepare_user_agent_parser() -> None:
    """Build the user-agent parser now, at start-up. Its first use compiles ua-parser's
    expressions (a tenth of a second or more), and the Rust resolver does so without letting
    other threads run: done on the writer thread while the app serves requests, it would stall
    them once."""
    _resolve_agent(_WARM_UP_AGENT)


_WARM_UP_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
_PARSED_AGENTS: dict[str, dict[str, str | None]] = {}
_MAX_PARSED_AGENTS = 4096
#: Characters of a User-Agent that are parsed (the whole string is stored). ua-parser's time
#: grows with the length, and with words of real agents in random order most: bounded here.
#: The first 256 characters parse the same as the whole string for all but 4 of the 17,816
#: agents of ua-parser's test suite (uap-core), each of those 4 over 300 characters long.
_MAX_PARSED_AGENT_LENGTH = 256


def _parse_agent(user_agent: str) -> dict[str, str | None]:
    result = _resolve_agent(user_agent) if user_agent else None
    browser = result.user_agent if result else None
    system = result.os if result else None
    device = result.device if result else None
    return {
        "browser": browser.family if browser else None,
        "version": _version(browser.major, browser.minor, browser.patch) if browser else None,
        "platform": system.family if system else None,
        "device": device.family if device else None,
    }


def _pick_resolver(user_agent: str) -> Result | PartialResult:
    """ua-parser's answer for ``user_agent``, through its Rust resolver (``ua-parser-rs``)
    when it is installed, else its pure-Python one; the first call picks the resolver for the
    next ones (:data:`_resolve_agent`). The Rust resolver is called directly: its partial
    result for all domains holds the same families as a completed one, and no ua-parser cache
    sits in between (:func:`parse_user_agent` keeps its own)."""
    global _resolve_agent, _rebuild_after_fork
    try:
        from ua_parser.loaders import load_lazy_builtins
        from ua_parser.regex import Resolver
    except ImportError:  # no ua-parser-rs wheel for this platform: the pure-Python resolver
        _resolve_agent = Parser.from_matchers(load_builtins()).parse
        _rebuild_after_fork = True
    else:
        resolver = Resolver(load_lazy_builtins())

        def resolve(user_agent: str) -> PartialResult:
            return resolver(user_agent, Domain.ALL)

        _resolve_agent = resolve
        _rebuild_after_fork = False
    return _resolve_agent(user_agent)


#: Resolves a User-Agent with the resolver :func:`_pick_resolver` picked on the first call.
_resolve_agent: Callable[[str], Result | PartialResult] = _pick_resolver
#: Whether a forked child builds its own resolver. The Rust resolver keeps the GIL while it
#: runs, so no thread is inside it when another forks. ua-parser's other resolvers take a lock
#: (its cache's; google-re2's) that a thread of the parent may hold when another forks: the
#: child's writer would wait for it forever.
_rebuild_after_fork = False


def _after_fork_in_child() -> None:
    global _resolve_agent
    if _rebuild_after_fork:
        _resolve_agent = _pick_resolver


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _version(*parts: str | None) -> str | None:
    kept = [part for part in parts if part]
    return ".".join(kept) or None

"""MongoEngine documents used to *read* the tracking records.

The background writer inserts plain dicts with pymongo; this module only maps
them onto :class:`Tracking` so they can be queried, printed, inspected and
replayed.  Flask is imported lazily (only :meth:`Tracking.replay` needs it).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from mongoengine import (
    BinaryField,
    BooleanField,
    DateTimeField,
    Document,
    DynamicField,
    EmbeddedDocument,
    EmbeddedDocumentField,
    FloatField,
    GenericReferenceField,
    IntField,
    ListField,
    QuerySet,
    StringField,
)

from flask_tracking.redact import FILTERED

if TYPE_CHECKING:
    from collections.abc import Iterator

    from werkzeug.test import TestResponse

__all__ = ["Tracking", "TrackingQuerySet", "UserAgent"]

#: Control characters (C0, DEL, C1) and Unicode line/paragraph separators.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
#: Headers never resent by :meth:`Tracking.replay` (the test client sets them).
_REPLAY_SKIPPED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
_HEX_PREVIEW_BYTES = 32


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escape(value: object, keep: str = "") -> str:
    """Render ``value`` as text with control characters escaped.

    CR becomes the two characters ``\\r``, LF ``\\n``, TAB ``\\t`` and any other
    control character ``\\xNN``, so that untrusted values cannot forge log lines.
    Characters listed in ``keep`` are left untouched.
    """
    text = "" if value is None else str(value)
    return _CONTROL_RE.sub(lambda m: m.group() if m.group() in keep else _escape_char(m), text)


def _header_pairs(headers: Any) -> Iterator[tuple[str, str]]:
    """Yield ``(name, value)`` from a stored header list, skipping malformed entries."""
    for pair in headers or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            yield str(pair[0]), "" if pair[1] is None else str(pair[1])


def _find_header(headers: Any, name: str, default: str) -> str:
    wanted = name.lower()
    return next((v for k, v in _header_pairs(headers) if k.lower() == wanted), default)


def _decode(body: bytes | None) -> str | None:
    return None if body is None else bytes(body).decode("utf-8", errors="replace")


def _is_binary(body: bytes) -> bool:
    """True when ``body`` has NUL bytes or is not UTF-8 (a cut at the very end is fine)."""
    if b"\x00" in body:
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut_at_end = exc.reason == "unexpected end of data" and exc.start >= len(body) - 3
        return not cut_at_end
    return False


def _pretty_json(text: str, content_type: str) -> str | None:
    """Pretty-print ``text`` when it is JSON (declared, or looking like an object/array)."""
    looks_like_json = text.lstrip()[:1] in ("{", "[")
    if "json" not in content_type.lower() and not looks_like_json:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return None


def _body_lines(
    body: bytes | None,
    *,
    content_type: str,
    truncated: bool,
    omitted: str | None,
    size: int | None,
) -> list[str]:
    """Human-readable rendering of a stored request or response body."""
    if body is None:
        return [f"(body not recorded: {_escape(omitted)})" if omitted else "(no body)"]
    body = bytes(body)
    if not body:
        lines = ["(empty body)"]
    elif _is_binary(body):
        more = " ..." if len(body) > _HEX_PREVIEW_BYTES else ""
        preview = body[:_HEX_PREVIEW_BYTES].hex(" ")
        lines = [f"(binary, {len(body)} bytes) {preview}{more}"]
    else:
        text = (_decode(body) or "").replace("\r\n", "\n")
        lines = [_escape(_pretty_json(text, content_type) or text, keep="\n\t")]
    if truncated:
        lines.append(f"(truncated, {size} bytes in all)" if size is not None else "(truncated)")
    return lines


def _status_line(status: int | None) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status if status is not None else '-'}"


def _replay_headers(stored: Any, overrides: Any) -> list[tuple[str, str]]:
    """Stored headers fit to resend, with ``overrides`` replacing same-named ones."""
    extra = list(overrides.items() if hasattr(overrides, "items") else overrides or ())
    replaced = {str(name).lower() for name, _ in extra} | _REPLAY_SKIPPED_HEADERS
    kept = [(k, v) for k, v in _header_pairs(stored) if k.lower() not in replaced]
    return [(k, v) for k, v in kept if v != FILTERED] + extra


class UserAgent(EmbeddedDocument):
    """The parsed ``User-Agent`` of a request.

    Fields (all strings or ``None``): ``browser``, ``version``, ``platform``,
    ``language``, ``device`` and ``string`` (the raw header).
    """

    browser = StringField()
    version = StringField()
    platform = StringField()
    language = StringField()
    device = StringField()
    string = StringField()

    meta: ClassVar[dict[str, Any]] = {"strict": False}

    def __str__(self) -> str:
        """Short form such as ``"Firefox 120.0 on Linux"``; the raw string as a fallback."""
        name = " ".join(part for part in (self.browser, self.version) if part)
        if self.platform:
            name = f"{name} on {self.platform}" if name else self.platform
        return _escape(name or self.string or "unknown")


class TrackingQuerySet(QuerySet):
    """QuerySet of :class:`Tracking` records (query helpers will live here)."""


class Tracking(Document):
    """One recorded HTTP request/response, as stored in the ``tracking`` collection.

    This document is for *reading* only: records are inserted as plain dicts by
    the background writer with pymongo (into a capped collection it creates), so
    nothing here validates or saves them.  Records may be partial, so every
    field may be missing/``None`` and every helper copes with that.

    Fields:

    - ``date_created``: when the request started (UTC).
    - ``host``, ``scheme``, ``method``, ``path``: the request target;
      ``query_params`` is the decoded query string without ``?`` (``""`` if none).
    - ``ip``: ``REMOTE_ADDR``; ``endpoint`` and ``url_rule``: the matched Flask
      endpoint and rule; ``referrer``: the ``Referer`` header.
    - ``user``: generic reference to the Flask-Login user when it is a
      MongoEngine document; ``user_id``: ``current_user.get_id()``.
    - ``user_agent``: the parsed user agent (:class:`UserAgent`).
    - ``request_headers`` / ``response_headers``: ``[name, value]`` pairs in
      order (secrets stored as ``FILTERED``).
    - ``request_body`` / ``response_body``: the first bytes of each body;
      ``*_body_size`` the total size in bytes; ``*_body_truncated`` whether only
      a prefix was kept; ``*_body_omitted`` why no body was kept.
    - ``status_code``; ``execution_time``: ms until the app returned its
      response; ``total_time``: ms until the body was fully sent.
    - ``hostname``: the worker host; ``custom_data``: any BSON value set by the
      app; ``exception``: ``"Type: message"`` when the view raised.

    Meta: ``collection`` is ``"tracking"``; ``auto_create_index`` is off (the
    writer owns the collection); ``queryset_class`` is :class:`TrackingQuerySet`;
    ``strict`` is off so records carrying fields added later still load.  There
    is deliberately no ``max_size``/``max_documents``: the writer creates the
    capped collection itself.

    To read through a connection other than ``"default"`` use
    ``Tracking.objects.using(alias)`` or
    ``with mongoengine.context_managers.switch_db(Tracking, alias) as T: ...``.
    """

    date_created = DateTimeField()
    host = StringField()
    scheme = StringField()
    method = StringField()
    path = StringField()
    query_params = StringField()
    ip = StringField()
    endpoint = StringField()
    url_rule = StringField()
    referrer = StringField()
    user = GenericReferenceField()
    user_id = StringField()
    user_agent = EmbeddedDocumentField(UserAgent)
    request_headers = ListField(ListField(StringField()))
    request_body = BinaryField()
    request_body_size = IntField()
    request_body_truncated = BooleanField(default=False)
    request_body_omitted = StringField()
    response_headers = ListField(ListField(StringField()))
    response_body = BinaryField()
    response_body_size = IntField()
    response_body_truncated = BooleanField(default=False)
    response_body_omitted = StringField()
    status_code = IntField()
    execution_time = FloatField()
    total_time = FloatField()
    hostname = StringField()
    custom_data = DynamicField()
    exception = StringField()

    meta: ClassVar[dict[str, Any]] = {
        "collection": "tracking",
        "auto_create_index": False,
        "queryset_class": TrackingQuerySet,
        "strict": False,
    }

    def __str__(self) -> str:
        """One log line: ``"<date> <METHOD> <user id or -> <path>[?query] <status> <ms>ms"``."""
        date = self.date_created.isoformat(timespec="seconds") if self.date_created else "-"
        took = f"{self.execution_time:.1f}ms" if self.execution_time is not None else "-"
        status = self.status_code if self.status_code is not None else "-"
        parts = (date, self.method or "-", self.user_id or "-", self._target(), status, took)
        return " ".join(_escape(part) for part in parts)

    def _target(self) -> str:
        """``path[?query]`` (unescaped)."""
        path = self.path or "/"
        return f"{path}?{self.query_params}" if self.query_params else path

    def get_header(self, name: str, default: str = "") -> str:
        """Value of the first request header called ``name`` (case-insensitive)."""
        return _find_header(self.request_headers, name, default)

    def get_response_header(self, name: str, default: str = "") -> str:
        """Value of the first response header called ``name`` (case-insensitive)."""
        return _find_header(self.response_headers, name, default)

    def request_body_text(self) -> str | None:
        """The stored request body decoded as UTF-8 (with replacement), or ``None``."""
        return _decode(self.request_body)

    def response_body_text(self) -> str | None:
        """The stored response body decoded as UTF-8 (with replacement), or ``None``."""
        return _decode(self.response_body)

    def debug(self) -> str:
        """Multi-line dump of the request, the response and the context, for humans.

        Values coming from the request (path, query, headers, bodies...) have
        their control characters escaped; only the layout's own newlines (and
        newlines inside bodies) are real ones.
        """
        origin = f"{self.scheme or 'http'}://{self.host}" if self.host else ""
        request_line = f"{self.method or '-'} {origin}{self._target()}"
        return "\n".join(
            [
                *self._message_lines("request", request_line),
                "",
                *self._message_lines("response", _status_line(self.status_code)),
                "",
                *self._context_lines(),
            ]
        )

    def _message_lines(self, prefix: str, first_line: str) -> list[str]:
        """First line, headers, blank line and body of the request or the response."""
        headers = getattr(self, f"{prefix}_headers")
        body = _body_lines(
            getattr(self, f"{prefix}_body"),
            content_type=_find_header(headers, "content-type", ""),
            truncated=bool(getattr(self, f"{prefix}_body_truncated")),
            omitted=getattr(self, f"{prefix}_body_omitted"),
            size=getattr(self, f"{prefix}_body_size"),
        )
        header_lines = [f"{_escape(k)}: {_escape(v)}" for k, v in _header_pairs(headers)]
        return [_escape(first_line), *header_lines, "", *body]

    def _context_lines(self) -> list[str]:
        """Date, client, endpoint, user, timing, exception and custom data."""
        fields = [
            ("Date", self.date_created.isoformat() if self.date_created else None),
            ("Client IP", self.ip),
            ("Endpoint", f"{self.endpoint} ({self.url_rule})" if self.endpoint else None),
            ("Worker", self.hostname),
            ("User", self._user_label()),
            ("Timing", self._timing_label()),
            ("Exception", self.exception),
        ]
        lines = [f"{label}: {_escape(value)}" for label, value in fields if value]
        if self.custom_data is not None:
            dumped = json.dumps(self.custom_data, indent=2, default=str, ensure_ascii=False)
            lines.append("Custom data: " + _escape(dumped, keep="\n"))
        return lines

    def _user_label(self) -> str | None:
        """User id plus the stored reference, read raw so printing never dereferences."""
        ref = self._data.get("user")
        if isinstance(ref, dict) and "_ref" in ref:
            ref = f"{ref.get('_cls')} {getattr(ref['_ref'], 'id', ref['_ref'])}"
        elif isinstance(ref, Document):
            ref = f"{ref._class_name} {ref.pk}"
        parts = [part for part in (self.user_id, f"({ref})" if ref else None) if part]
        return " ".join(parts) or None

    def _timing_label(self) -> str | None:
        timings = ((self.execution_time, "in the app"), (self.total_time, "in all"))
        parts = [f"{ms:.1f} ms {label}" for ms, label in timings if ms is not None]
        return ", ".join(parts) or None

    def replay(self, *, allow_truncated: bool = False, **kwargs: Any) -> TestResponse:
        """Re-issue this request through ``flask.current_app.test_client()``.

        Headers stored as ``FILTERED`` are never resent, nor ``Host``,
        ``Content-Length`` and ``Transfer-Encoding``.  The environ gets
        ``flask_tracking.skip = True`` so the replay itself is not tracked.
        ``kwargs`` override or extend the arguments of ``client.open``;
        ``headers`` and ``environ_overrides`` are merged into the stored ones.

        Raises ``ValueError`` when the stored body is truncated, or was not
        recorded although the request had one, unless ``allow_truncated``.
        Must run inside an application context.
        """
        self._check_replayable(allow_truncated)
        from flask import current_app

        environ = {"flask_tracking.skip": True, **(kwargs.pop("environ_overrides", None) or {})}
        options: dict[str, Any] = {
            "method": self.method or "GET",
            "query_string": self.query_params or "",
            "headers": _replay_headers(self.request_headers, kwargs.pop("headers", None)),
            "environ_overrides": environ,
        }
        if "json" not in kwargs:
            options["data"] = bytes(self.request_body or b"")
        options.update(kwargs)
        path = options.pop("path", quote(self.path or "/", safe="/:@!$&'()*+,;="))
        return current_app.test_client().open(path, **options)

    def _check_replayable(self, allow_truncated: bool) -> None:
        if allow_truncated:
            return
        if self.request_body_truncated:
            raise ValueError(
                "The stored request body was truncated; the replay would not be faithful "
                "(pass allow_truncated=True to replay it anyway)."
            )
        if self.request_body is None and self.request_body_omitted and self.request_body_size != 0:
            raise ValueError(
                f"The request body was not recorded ({self.request_body_omitted}); the replay "
                "would not be faithful (pass allow_truncated=True to replay it anyway)."
            )

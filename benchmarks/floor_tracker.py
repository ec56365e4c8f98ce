"""The minimal tracker: the floor of what capturing every request into MongoDB costs.

The same capture as flask_tracking (the request headers, both bodies teed up to the body limit
as the app reads and sends them, the timing, the status and response headers, the endpoint),
and nothing else: no policy, no redaction, no user, no parsing, no bounds on the queue, no
error handling, no retries. On the request thread it keeps a copy of the environ and a tuple
in a :class:`collections.deque`; a thread turns each tuple into one flat dict and writes them
with ``insert_many`` in batches of 1,000.

Whatever flask_tracking costs above this tracker is the price of its features and of its
safety, not of capturing at all. Used by ``bench_overhead.py`` and ``bench_gunicorn.py``::

    tracker = FloorTracker(app, collection)  # a pymongo Collection
    ...
    tracker.flush()

With ``schema=True`` the thread writes flask_tracking's documented schema instead of the flat
dict (the same fields, header pairs, the user agent parsed by ua-parser's Rust resolver and
remembered per string, an ObjectId and a request id): the floor of storing that document,
written as plainly (``bench_instructions.py minimal-schema``).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Callable

from bson import ObjectId
from flask import Flask, request

#: Records per ``insert_many``.
BATCH = 1000
#: The body limit, TRACKING_MAX_BODY_LENGTH's default (bytes).
BODY_LIMIT = 65536

WSGIEnviron = dict[str, Any]

#: Environ keys holding objects, not request data: a queued record does not keep them alive.
_OBJECTS = frozenset(
    (
        "wsgi.input",
        "wsgi.errors",
        "wsgi.file_wrapper",
        "werkzeug.request",
        "gunicorn.socket",
        "wsgi.early_hints",  # gunicorn's function bound to the connection
    )
)


class _InputTee:
    """``wsgi.input`` for the app, keeping the first ``BODY_LIMIT`` bytes it reads."""

    __slots__ = ("_stream", "kept", "size")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.kept = bytearray()
        self.size = 0

    def _keep(self, data: bytes) -> bytes:
        self.size += len(data)
        room = BODY_LIMIT - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        return data

    def read(self, *args: Any) -> bytes:
        return self._keep(self._stream.read(*args))

    def readline(self, *args: Any) -> bytes:
        return self._keep(self._stream.readline(*args))

    def readlines(self, *args: Any) -> list[bytes]:
        return [self._keep(line) for line in self._stream.readlines(*args)]

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            yield self._keep(line)


class _Response:
    """The response iterable for the server: tees the body; the record is queued on close."""

    __slots__ = ("_finish", "_result", "kept", "size")

    def __init__(self, result: Iterable[bytes], finish: Callable[[_Response], None]) -> None:
        self._result = result
        self._finish = finish
        self.kept = bytearray()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        kept = self.kept
        for chunk in self._result:
            self.size += len(chunk)
            room = BODY_LIMIT - len(kept)
            if room > 0:
                kept += chunk[:room]
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(self)


class FloorTracker:
    """Wraps ``app.wsgi_app`` and ``app.process_response``; writes to ``collection``."""

    def __init__(
        self, app: Flask, collection: Any, batch: int = BATCH, schema: bool = False
    ) -> None:
        self.collection = collection
        self.batch = batch
        self._document = _documented if schema else _flat
        if schema and not _RESOLVER:
            _RESOLVER.append(_rust_resolver())
        self.queue: deque[tuple[Any, ...]] = deque()
        self.written = 0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._wrapped = app.wsgi_app
        app.wsgi_app = self  # type: ignore[method-assign]
        process_response = app.process_response

        def keep_endpoint(response: Any) -> Any:
            request.environ["floor.endpoint"] = request.endpoint
            return process_response(response)

        def keep_endpoint_and_rule(response: Any) -> Any:  # the document has the URL rule too
            current = request._get_current_object()  # type: ignore[attr-defined]
            rule = current.url_rule
            current.environ["floor.endpoint"] = None if rule is None else rule.endpoint
            current.environ["floor.rule"] = None if rule is None else rule.rule
            return process_response(response)

        app.process_response = (  # type: ignore[method-assign]
            keep_endpoint_and_rule if schema else keep_endpoint
        )
        threading.Thread(target=self._run, name="floor-writer", daemon=True).start()

    def __call__(self, environ: WSGIEnviron, start_response: Any) -> Iterable[bytes]:
        started = time.time()
        clock = time.perf_counter()
        tee = environ["wsgi.input"] = _InputTee(environ["wsgi.input"])
        seen: list[Any] = []

        def capture_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen.append(status)
            seen.append(headers)
            return start_response(status, headers, exc_info)

        result = self._wrapped(environ, capture_start_response)
        copy = environ.copy()
        for key in _OBJECTS.intersection(copy):  # keep no streams, sockets or request objects
            del copy[key]
        queue = self.queue
        batch = self.batch

        def finish(response: _Response) -> None:
            queue.append(
                (
                    copy,
                    started,
                    time.perf_counter() - clock,
                    seen,
                    tee.kept,
                    tee.size,
                    response.kept,
                    response.size,
                )
            )
            if len(queue) >= batch:
                self._wake.set()

        return _Response(result, finish)

    def _run(self) -> None:
        queue = self.queue
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            while queue:
                self._idle.clear()
                records = []
                while queue and len(records) < self.batch:
                    records.append(self._document(queue.popleft()))
                self.collection.insert_many(records, ordered=False)
                self.written += len(records)
            self._idle.set()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued record is written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if not self.queue and self._idle.wait(0.01) and not self.queue:
                return True
            time.sleep(0.001)
        return False


def _flat(record: tuple[Any, ...]) -> dict[str, Any]:
    """One flat dict: the request line, every header of the environ, bodies, status, timing."""
    environ, started, duration, seen, request_body, request_size, response_body, response_size = (
        record
    )
    document: dict[str, Any] = {
        key: value
        for key, value in environ.items()
        if key[:5] == "HTTP_" or key == "CONTENT_TYPE" or key == "CONTENT_LENGTH"
    }
    document["date"] = datetime.fromtimestamp(started, timezone.utc)
    document["method"] = environ.get("REQUEST_METHOD")
    document["path"] = environ.get("PATH_INFO")
    document["query"] = environ.get("QUERY_STRING")
    document["ip"] = environ.get("REMOTE_ADDR")
    document["endpoint"] = environ.get("floor.endpoint")
    document["status"] = int(seen[0][:3]) if seen else None
    document["response_headers"] = seen[1] if seen else None
    document["request_body"] = bytes(request_body)
    document["request_body_size"] = request_size
    document["response_body"] = bytes(response_body)
    document["response_body_size"] = response_size
    document["duration"] = duration
    return document


_HOSTNAME = socket.gethostname()
_AGENTS: dict[str, dict[str, str | None]] = {}
_HEADER_NAMES: dict[str, str] = {}
_random_bits = random.Random().getrandbits


def _documented(record: tuple[Any, ...]) -> dict[str, Any]:
    """flask_tracking's documented schema, as plainly as :func:`_flat` builds its dict."""
    environ, started, duration, seen, request_body, request_size, response_body, response_size = (
        record
    )
    agent = environ.get("HTTP_USER_AGENT", "")
    language = environ.get("HTTP_ACCEPT_LANGUAGE", "").split(",", 1)[0].split(";", 1)[0]
    return {
        "_id": ObjectId(),
        "date_created": datetime.fromtimestamp(started, timezone.utc),
        "host": environ.get("HTTP_HOST"),
        "scheme": environ.get("wsgi.url_scheme"),
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "query_params": environ.get("QUERY_STRING"),
        "ip": environ.get("REMOTE_ADDR"),
        "endpoint": environ.get("floor.endpoint"),
        "url_rule": environ.get("floor.rule"),
        "referrer": environ.get("HTTP_REFERER"),
        "user": None,
        "user_id": None,
        "user_agent": {
            **_agent(agent[:256]),
            "string": agent,
            "language": language.strip() or None,
        },
        "request_headers": [
            [_header_name(key), value]
            for key, value in environ.items()
            if key[:5] == "HTTP_" or key == "CONTENT_TYPE" or key == "CONTENT_LENGTH"
        ],
        "response_headers": [[name, value] for name, value in seen[1]] if seen else [],
        "status_code": int(seen[0][:3]) if seen else None,
        "execution_time": duration * 1000.0,
        "total_time": duration * 1000.0,
        "hostname": _HOSTNAME,
        "custom_data": None,
        "exception": None,
        "request_id": _random_bits(128).to_bytes(16, "big").hex(),
        "sample_rate": 1.0,
        "request_body": bytes(request_body),
        "request_body_size": request_size,
        "request_body_truncated": request_size > len(request_body),
        "request_body_omitted": None,
        "response_body": bytes(response_body),
        "response_body_size": response_size,
        "response_body_truncated": response_size > len(response_body),
        "response_body_omitted": None,
    }


def _agent(agent: str) -> dict[str, str | None]:
    """Browser, version, platform and device of a User-Agent, remembered per string."""
    parsed = _AGENTS.get(agent)
    if parsed is None:
        result = _RESOLVER[0](agent)
        browser, system, device = result.user_agent, result.os, result.device
        version = (
            [part for part in (browser.major, browser.minor, browser.patch) if part]
            if browser
            else []
        )
        parsed = _AGENTS[agent] = {
            "browser": browser.family if browser else None,
            "version": ".".join(version) or None,
            "platform": system.family if system else None,
            "device": device.family if device else None,
        }
    return parsed


def _header_name(key: str) -> str:
    """``HTTP_ACCEPT_LANGUAGE`` -> ``Accept-Language``, remembered per key."""
    name = _HEADER_NAMES.get(key)
    if name is None:
        name = _HEADER_NAMES[key] = key.removeprefix("HTTP_").replace("_", "-").title()
    return name


def _rust_resolver() -> Callable[[str], Any]:
    """ua-parser's Rust resolver (ua-parser-rs), as flask_tracking calls it."""
    from ua_parser import Domain
    from ua_parser.loaders import load_lazy_builtins
    from ua_parser.regex import Resolver

    resolver = Resolver(load_lazy_builtins())
    return lambda agent: resolver(agent, Domain.ALL)


_RESOLVER: list[Callable[[str], Any]] = []

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
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Callable

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

    def __init__(self, app: Flask, collection: Any, batch: int = BATCH) -> None:
        self.collection = collection
        self.batch = batch
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

        app.process_response = keep_endpoint  # type: ignore[method-assign]
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
                    records.append(_flat(queue.popleft()))
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

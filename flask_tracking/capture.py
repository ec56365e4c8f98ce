"""Capture of one request on the request thread: timing, bounded bodies, status and headers.

Everything here is cheap and copies only what it must: the first ``max_body_length`` bytes of
each body (teed as the app reads and sends them, never read ahead), header pairs, a few
strings. Parsing and conversion happen later on the writer thread (:mod:`flask_tracking.record`).

The pieces:

- :class:`TrackingMiddleware` wraps ``app.wsgi_app``: it starts the clock before Flask does
  anything, tees ``wsgi.input``, sees the final status and headers through ``start_response``,
  sees exceptions that escape Flask (testing and debug mode), and finishes the record when the
  app returned, or, for a streamed response, when the server closes the response iterable
  (after the last byte went out, or the client left).
- :func:`snapshot_request` runs in ``after_request`` (or, when the view raised, on the
  ``got_request_exception`` signal) and copies what only the request context knows
  (endpoint, rule, user, custom data) plus the request fields of the environ.
- :func:`tee_response_body` runs in ``after_request`` and tees the response body.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Callable

from .policy import Policy, wsgi_path
from .sanitize import bson_safe

#: WSGI environ key holding the :class:`RequestState` of a tracked request.
ENVIRON_KEY = "flask_tracking.state"

_EXTRA_HEADER_KEYS = ("CONTENT_TYPE", "CONTENT_LENGTH")

StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class BodyCapture:
    """The first ``limit`` bytes of a body, and how many bytes went by in all."""

    __slots__ = ("buffer", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.size = 0

    def add(self, chunk: bytes | str | memoryview) -> None:
        """Count ``chunk`` and copy what still fits."""
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "replace")
        self.size += len(chunk)
        room = self.limit - len(self.buffer)
        if room > 0:
            self.buffer += chunk[:room]

    @property
    def truncated(self) -> bool:
        """Whether bytes went by that were not kept."""
        return self.size > len(self.buffer)


class InputTee:
    """A ``wsgi.input`` stand-in that copies what the app reads, and reads nothing itself.

    The app (Werkzeug) still decides how much to read from the real stream, so chunked input,
    malformed Content-Length and MAX_CONTENT_LENGTH behave exactly as without the tracker.
    """

    __slots__ = ("_capture", "_stream")

    def __init__(self, stream: Any, capture: BodyCapture) -> None:
        self._stream = stream
        self._capture = capture

    def read(self, *args: Any) -> bytes:
        data = self._stream.read(*args)
        self._capture.add(data)
        return data

    def readinto(self, buffer: Any) -> int | None:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            data = self._stream.read(len(buffer))
            count: int | None = len(data)
            buffer[: len(data)] = data
        else:
            count = readinto(buffer)
        if count:
            self._capture.add(memoryview(buffer).cast("B")[:count])
        return count

    def readline(self, *args: Any) -> bytes:
        data = self._stream.readline(*args)
        self._capture.add(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines = self._stream.readlines(*args)
        for line in lines:
            self._capture.add(line)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._capture.add(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class RequestState:
    """What is known of one tracked request so far (one per request, in the WSGI environ)."""

    __slots__ = (
        "custom_data",
        "custom_data_size",
        "date_created",
        "exception",
        "execution_time",
        "finished",
        "request",
        "request_body",
        "request_body_omitted",
        "response_body",
        "response_body_omitted",
        "response_headers",
        "started",
        "status",
        "streamed",
        "total_time",
        "user_id",
        "user_ref",
    )

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.date_created = datetime.now(timezone.utc)
        self.request: dict[str, Any] | None = None
        self.request_body: BodyCapture | None = None
        self.request_body_omitted: str | None = None
        self.response_body: BodyCapture | None = None
        self.response_body_omitted: str | None = None
        self.status = "500 INTERNAL SERVER ERROR"
        self.response_headers: list[tuple[str, str]] = []
        self.execution_time: float | None = None
        self.total_time: float | None = None
        self.exception: str | None = None
        self.user_id: str | None = None
        self.user_ref: tuple[str, str, Any] | None = None
        self.custom_data: Any = None
        self.custom_data_size = 0
        self.streamed = False
        self.finished = False

    def elapsed_ms(self) -> float:
        """Milliseconds since the request reached the middleware."""
        return (time.perf_counter() - self.started) * 1000.0

    def note_exception(self, error: BaseException) -> None:
        """Remember the first unhandled exception as ``"Type: message"``."""
        if self.exception is None:
            self.exception = describe_exception(error)


def describe_exception(error: BaseException) -> str:
    """``"Type: message"`` for an exception, never raising."""
    try:
        message = str(error)
    except Exception:
        message = "<unprintable>"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class TrackingMiddleware:
    """Wraps ``app.wsgi_app``; calls ``finish(state)`` once per tracked request.

    ``finish`` runs on the request thread: for a streamed response when the server closes the
    response iterable (after the last byte, or when the client left); otherwise as soon as the
    app returned (or raised), so the response goes out unwrapped. ``on_error()`` is called
    (inside ``except``) when the tracker's own code fails; the app's errors always propagate
    untouched.
    """

    def __init__(
        self,
        wsgi_app: WSGIApp,
        policy: Policy,
        max_body_length: int,
        finish: Callable[[RequestState], None],
        on_error: Callable[[], None],
    ) -> None:
        self.wsgi_app = wsgi_app
        self._policy = policy
        self._max_body_length = max_body_length
        self._finish = finish
        self._on_error = on_error

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            state = self._start(environ)
        except Exception:
            self._on_error()
            state = None
        if state is None:
            return self.wsgi_app(environ, start_response)

        def tracking_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            state.status = status
            state.response_headers = headers
            return start_response(status, headers, exc_info)

        try:
            app_iter = self.wsgi_app(environ, tracking_start_response)
        except BaseException as error:
            state.note_exception(error)
            state.status = "500 INTERNAL SERVER ERROR"
            self._close(state, environ)
            raise
        state.execution_time = state.elapsed_ms()
        if not state.streamed:  # the whole body is known already: finish now, unwrapped
            self._close(state, environ)
            return app_iter
        return _ClosingIterable(app_iter, lambda: self._close(state, environ))

    def _start(self, environ: dict[str, Any]) -> RequestState | None:
        if not self._policy.should_track(environ):
            return None
        state = RequestState()
        environ[ENVIRON_KEY] = state
        if not self._policy.should_keep_bodies(environ):
            state.request_body_omitted = state.response_body_omitted = "excluded"
        elif _may_have_body(environ):
            state.request_body = BodyCapture(self._max_body_length)
            environ["wsgi.input"] = InputTee(environ["wsgi.input"], state.request_body)
        return state

    def _close(self, state: RequestState, environ: dict[str, Any]) -> None:
        if state.finished:
            return
        state.finished = True
        try:
            state.total_time = state.elapsed_ms()
            if state.execution_time is None:
                state.execution_time = state.total_time
            if state.request is None:  # Flask never ran our hooks with a request context
                state.request = snapshot_environ(environ)
        except Exception:
            self._on_error()
        self._finish(state)


class _ClosingIterable:
    """Passes the app's iterable through untouched; runs ``on_close`` after it is closed."""

    __slots__ = ("_app_iter", "_on_close")

    def __init__(self, app_iter: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._app_iter = app_iter
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._app_iter)

    def close(self) -> None:
        try:
            close = getattr(self._app_iter, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def _may_have_body(environ: dict[str, Any]) -> bool:
    length = environ.get("CONTENT_LENGTH")
    if length and length != "0":
        return True
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def snapshot_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The request fields the WSGI environ holds (after any ProxyFix inside the app ran)."""
    headers = [item for item in environ.items() if item[0][:5] == "HTTP_"]
    for key in _EXTRA_HEADER_KEYS:
        value = environ.get(key)
        if value:
            headers.append((key, value))
    return {
        "method": environ.get("REQUEST_METHOD", "GET"),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": wsgi_path(environ),
        "query_string": environ.get("QUERY_STRING", ""),
        "ip": environ.get("REMOTE_ADDR"),
        "server": (environ.get("SERVER_NAME"), environ.get("SERVER_PORT")),
        "environ_headers": headers,
    }


def snapshot_request(
    state: RequestState, request: Any, login_user: Any, custom_data_max_bytes: int
) -> None:
    """Copy what only the request context knows into ``state`` (after the view ran).

    ``login_user`` is Flask-Login's already loaded user (``g._login_user``) or None: the
    tracker never loads a user itself, which would run the app's user_loader (a database query)
    and touch the session.
    """
    fields = state.request = snapshot_environ(request.environ)
    rule = request.url_rule
    fields["endpoint"] = request.endpoint
    fields["url_rule"] = rule.rule if rule is not None else None
    if state.request_body is not None:
        _top_up_request_body(state, request)
    custom_data = getattr(request, "_tracking_data", None)
    if custom_data is not None:
        state.custom_data, state.custom_data_size = bson_safe(custom_data, custom_data_max_bytes)
    if login_user is not None:
        _snapshot_user(state, login_user)


def _top_up_request_body(state: RequestState, request: Any) -> None:
    """Read up to the body limit when the app read less (never more than the limit)."""
    capture = state.request_body
    assert capture is not None
    missing = capture.limit - len(capture.buffer)
    if missing <= 0 or capture.truncated:
        return
    try:
        request.stream.read(missing)  # through the tee; Werkzeug bounds it by Content-Length
    except Exception as error:  # e.g. RequestEntityTooLarge: behave as the app did
        state.request_body_omitted = f"unreadable ({type(error).__name__})"


def _snapshot_user(state: RequestState, user: Any) -> None:
    if not getattr(user, "is_authenticated", False):
        return
    user_id = user.get_id()
    state.user_id = None if user_id is None else str(user_id)
    user_class = type(user)
    collection_name = getattr(user_class, "_get_collection_name", None)
    primary_key = getattr(user, "pk", None)
    if collection_name is not None and primary_key is not None:
        # A MongoEngine Document: kept as (class name, collection, pk) for a GenericReference.
        state.user_ref = (user._class_name, collection_name(), primary_key)


def tee_response_body(state: RequestState, response: Any, limit: int) -> None:
    """Tee the body of ``response`` (runs in after_request; never consumes a stream)."""
    if state.response_body_omitted == "excluded":
        return
    if response.direct_passthrough:  # send_file: reading it would read the file
        state.response_body = None
        state.response_body_omitted = "passthrough"
        return
    capture = state.response_body = BodyCapture(limit)
    body = response.response
    if isinstance(body, (list, tuple)):
        for chunk in body:
            capture.add(chunk)
    else:
        response.response = _tee_stream(body, capture, state)
        state.streamed = True


def _tee_stream(
    iterable: Iterable[bytes | str], capture: BodyCapture, state: RequestState
) -> Iterator[bytes | str]:
    """Yield the stream unchanged, copying its first bytes; note an exception mid-stream."""
    try:
        for chunk in iterable:
            capture.add(chunk)
            yield chunk
    except Exception as error:
        state.note_exception(error)
        raise
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()

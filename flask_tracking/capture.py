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

import inspect
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any, Callable

from .dbactivity import attach, detach
from .policy import SKIP, TRACK_WITH_BODIES, Policy
from .request_ids import environ_key, request_id_for
from .sanitize import bson_safe

#: WSGI environ key holding the :class:`RequestState` of a tracked request.
ENVIRON_KEY = "flask_tracking.state"


StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class BodyCapture:
    """The first ``limit`` bytes of a body, and how many bytes went by in all."""

    __slots__ = ("buffer", "exhausted", "failed", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.size = 0
        self.exhausted = False  # a read came back empty: the body has been read to its end
        self.failed = False  # copying raised once (e.g. MemoryError): stop, and say so

    def add(self, chunk: bytes | str | memoryview) -> None:
        """Count ``chunk`` and copy what still fits. Never raises: it sits in the data path
        of the app's reads and of the response stream."""
        if self.failed:
            return
        try:
            if isinstance(chunk, str):
                chunk = chunk.encode("utf-8", "replace")
            self.size += len(chunk)
            room = self.limit - len(self.buffer)
            if room > 0:
                self.buffer += chunk[:room]
        except Exception:
            self.failed = True

    @classmethod
    def whole(cls, body: bytes, limit: int) -> BodyCapture:
        """A finished capture of a whole body that fits in ``limit``, sharing the (immutable)
        bytes instead of copying them."""
        capture = cls.__new__(cls)
        capture.limit = limit
        capture.buffer = body  # type: ignore[assignment]  # read-only from here on
        capture.size = len(body)
        capture.exhausted = True
        capture.failed = False
        return capture

    @property
    def truncated(self) -> bool:
        """Whether bytes went by that were not kept."""
        return self.size > len(self.buffer)

    def wants_more(self, declared_length: int | None) -> bool:
        """Whether unread body bytes could still fill the buffer."""
        if self.exhausted or len(self.buffer) >= self.limit:
            return False
        return declared_length is None or self.size < declared_length


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
        data: bytes = self._stream.read(*args)
        if data:
            self._capture.add(data)
        elif not args or args[0] != 0:
            self._capture.exhausted = True
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
        elif len(buffer):
            self._capture.exhausted = True
        return count

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._capture.add(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
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
    """What is known of one tracked request so far (one per request, in the WSGI environ).

    Attributes default at class level and are set only when known, so creating one per request
    costs two clock readings.
    """

    # Set by the middleware.
    timestamp = 0.0  #: time.time() when the request arrived (the writer makes it a datetime)
    # Worked out on first use (resolve_request_id): by the echo header, request_id(), sampling,
    # or else on the writer thread, so a request that needs none of them never pays for it.
    request_id: str | None = None
    status = "500 INTERNAL SERVER ERROR"
    response_headers: list[tuple[str, str]] = []  # noqa: RUF012 (replaced, never mutated)
    execution_time: float | None = None
    total_time: float | None = None
    finished = False
    streamed = False
    declared_length: int | None = None
    # A copy of the WSGI environ without its objects (snapshot_environ); the writer reads it.
    environ: dict[str, Any] | None = None
    snapshot_failed = False
    scrubbed = False  # headers, query and custom data already filtered on the request thread
    # Set by record.to_document on the writer thread: the document's size estimate.
    document_bytes = 0
    # Known only inside the request context (snapshot_request).
    endpoint: str | None = None
    url_rule: str | None = None
    user_id: str | None = None
    user_ref: tuple[str, str, Any] | None = None
    custom_data: Any = None
    custom_data_size = 0
    exception: str | None = None
    # Policy outcomes: set when the view, a skip_if predicate or flask_tracking.skip() says the
    # request is not recorded (nothing more is copied, nothing is queued); and the sample rate
    # the record is stored with.
    skipped = False
    predicates_passed = False
    sample_rate = 1.0
    # Bodies.
    request_body: BodyCapture | None = None
    request_body_omitted: str | None = None
    response_body: BodyCapture | None = None
    response_body_omitted: str | None = None
    # Database work (flask_tracking.dbactivity): made on the first command, None without one;
    # the token that attributes the context's commands to this request until it is finished.
    db: Any = None
    db_token: Any = None

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.timestamp = time.time()

    def resolve_request_id(self, environ: Mapping[str, Any], key: str | None) -> str:
        """The request id: the valid incoming one (``key`` is its environ key), or a new one;
        worked out once, the first time it is asked for."""
        request_id = self.request_id
        if request_id is None:
            request_id = self.request_id = request_id_for(environ, key)
        return request_id

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
        *,
        request_id_header: str | None = None,
        request_id_response_header: str | None = None,
        watch_db: bool = False,
    ) -> None:
        """``request_id_header``: the request header an incoming id is taken from (when valid);
        ``request_id_response_header``: the response header that echoes the id (unless the app
        set that header itself). None: no incoming id, no echo. ``watch_db``: attribute the
        database commands run while a tracked request is served to it
        (:mod:`flask_tracking.dbactivity`)."""
        self.wsgi_app = wsgi_app
        self._policy = policy
        self._max_body_length = max_body_length
        self._finish = finish
        self._on_error = on_error
        self._request_id_key = None if request_id_header is None else environ_key(request_id_header)
        self._echo_header = request_id_response_header
        self._echo_header_lower = (request_id_response_header or "").lower()
        self._watch_db = watch_db

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            state = self._start(environ)
        except Exception:
            self._on_error()
            state = None
        if state is None:
            return self.wsgi_app(environ, start_response)

        echo_header = self._echo_header

        def tracking_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            if echo_header is not None:
                headers = self._with_request_id(headers, state, environ)
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
        state.execution_time = (time.perf_counter() - state.started) * 1000.0
        top_up = (
            None
            if state.request_body is None or state.skipped
            else self._top_up_after_response(state, environ)
        )
        if top_up is None and not state.streamed:  # nothing left to wait for: finish now
            self._close(state, environ)
            return app_iter

        def on_close() -> None:
            if top_up is not None:
                top_up()
            self._close(state, environ)

        return _ClosingIterable(app_iter, on_close)

    def _top_up_after_response(
        self, state: RequestState, environ: dict[str, Any]
    ) -> Callable[[], None] | None:
        """When the app left body bytes unread that would fit, a callable that reads at most
        what fits, to run after the response went out (so it never delays the answer)."""
        capture = state.request_body
        if capture is None or not capture.wants_more(state.declared_length):
            return None
        if state.declared_length is None and "wsgi.input_terminated" not in environ:
            return None  # chunked without server support: no way to find the end safely
        if state.status[:3] == "413":
            return None  # the app refused this body as too large
        stream = environ["wsgi.input"]
        if not isinstance(stream, InputTee) or stream._capture is not capture:
            return None  # something inside the app replaced wsgi.input: leave it alone

        def top_up() -> None:
            missing = capture.limit - len(capture.buffer)
            if state.declared_length is not None:
                missing = min(missing, state.declared_length - capture.size)
            try:
                while missing > 0 and not capture.exhausted:
                    before = capture.size
                    stream.read(missing)
                    if capture.size == before:
                        break  # no progress (the copy failed, or nothing came): stop
                    missing -= capture.size - before
            except Exception as error:  # a client gone: keep what was read
                state.request_body_omitted = f"unreadable ({type(error).__name__})"

        return top_up

    def _with_request_id(self, headers: Any, state: RequestState, environ: dict[str, Any]) -> Any:
        """The response headers with the request id added, unless the app set that header."""
        try:
            wanted = self._echo_header_lower
            for name, _ in headers:
                if name.lower() == wanted:
                    return headers
            request_id = state.resolve_request_id(environ, self._request_id_key)
            return [*headers, (self._echo_header, request_id)]
        except Exception:
            self._on_error()
            return headers

    def _start(self, environ: dict[str, Any]) -> RequestState | None:
        decision = self._policy.decide(environ)
        if decision == SKIP:
            return None
        state = RequestState()
        environ[ENVIRON_KEY] = state
        if decision != TRACK_WITH_BODIES:
            state.request_body_omitted = state.response_body_omitted = "excluded"
        elif _may_have_body(environ):
            state.declared_length = _content_length(environ)
            state.request_body = BodyCapture(self._max_body_length)
            environ["wsgi.input"] = InputTee(environ["wsgi.input"], state.request_body)
        if self._watch_db:  # last: a state that is returned is always closed, and detached
            state.db_token = attach(state)
        return state

    def _close(self, state: RequestState, environ: dict[str, Any]) -> None:
        if state.finished:
            return
        state.finished = True  # from here on, no command counts for this request
        if state.db_token is not None:
            detach(state.db_token)
        try:
            state.total_time = (time.perf_counter() - state.started) * 1000.0
            if state.execution_time is None:
                state.execution_time = state.total_time
            if state.environ is None and not state.skipped:  # Flask never ran our hooks
                snapshot_environ(state, environ)
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


def _content_length(environ: dict[str, Any]) -> int | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return length if length >= 0 else None


def snapshot_environ(state: RequestState, environ: dict[str, Any]) -> None:
    """Keep a shallow copy of the WSGI environ for the writer, which reads the request fields
    and headers from it (a C-level copy is several times cheaper than picking them out here).

    The objects a server or Werkzeug put in the environ are dropped from the copy, so a queued
    record does not keep streams, sockets or the request object alive. Runs after the view, so
    a ProxyFix inside the app has already corrected REMOTE_ADDR.
    """
    copy = environ.copy()
    for key in _ENVIRON_OBJECTS.intersection(copy):
        del copy[key]
    state.environ = copy


#: Environ keys holding objects (not request data) that a queued record must not keep alive.
_ENVIRON_OBJECTS = frozenset(
    (
        ENVIRON_KEY,
        "wsgi.input",
        "wsgi.errors",
        "wsgi.file_wrapper",
        "werkzeug.request",
        "werkzeug.socket",
        "werkzeug.server.shutdown",
        "werkzeug.debug.preserve_context",
        "gunicorn.socket",
        "uwsgi.core",
    )
)


def snapshot_request(
    state: RequestState, request: Any, login_user: Any, custom_data_max_bytes: int
) -> None:
    """Copy what only the request context knows into ``state`` (after the view ran).

    ``login_user`` is Flask-Login's already loaded user (``g._login_user``) or None: the
    tracker never loads a user itself, which would run the app's user_loader (a database query)
    and touch the session.
    """
    snapshot_environ(state, request.environ)
    rule = request.url_rule
    if rule is not None:
        state.endpoint = rule.endpoint
        state.url_rule = rule.rule
    custom_data = request.__dict__.get("_tracking_data")
    if custom_data is not None:
        state.custom_data, state.custom_data_size = bson_safe(custom_data, custom_data_max_bytes)
    if login_user is not None:
        _snapshot_user(state, login_user)


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
    state.response_body_omitted = None
    body = response.response
    if not isinstance(body, (list, tuple)):
        capture = state.response_body = BodyCapture(limit)
        response.response = _TeeStream(body, capture, state)
        state.streamed = True
    elif len(body) == 1 and type(body[0]) is bytes and len(body[0]) <= limit:
        state.response_body = BodyCapture.whole(body[0], limit)  # the usual case: no copy
    else:
        capture = state.response_body = BodyCapture(limit)
        for chunk in body:
            capture.add(chunk)


class _TeeStream:
    """:func:`_tee_stream` with a ``close()`` that also closes the app's iterable when
    iteration never started (HEAD, 204/304, a client gone before the first byte)."""

    __slots__ = ("_generator", "_iterable")

    def __init__(
        self, iterable: Iterable[bytes | str], capture: BodyCapture, state: RequestState
    ) -> None:
        self._iterable = iterable
        self._generator = _tee_stream(iterable, capture, state)

    def __iter__(self) -> Iterator[bytes | str]:
        return self._generator

    def close(self) -> None:
        started = inspect.getgeneratorstate(self._generator) != inspect.GEN_CREATED
        self._generator.close()  # when started, its finally closes the app's iterable
        if not started:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()


def _tee_stream(
    iterable: Iterable[bytes | str], capture: BodyCapture, state: RequestState
) -> Generator[bytes | str, None, None]:
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

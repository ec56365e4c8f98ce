"""Capture of one request on the request thread: timing, bounded bodies, status and headers.

Everything here is cheap and copies only what it must: the first ``max_body_length`` bytes of
each body (teed as the app reads and sends them, never read ahead), header pairs, a few
strings. Parsing and conversion happen later on the writer thread (:mod:`flask_tracking.record`).

The pieces:

- :class:`TrackingMiddleware` wraps ``app.wsgi_app``: it starts the clock before Flask does
  anything, tees ``wsgi.input``, sees the final status and headers through ``start_response``,
  sees exceptions that escape Flask (testing and debug mode), accounts for a request body the
  app left unread (:func:`settle_unread_body`, never blocking; for a streamed response once it
  was sent, as its generator may read the body; for the server's file wrapper, which reads
  none, when the app returned), and finishes the record when
  the app returned, or, for a streamed response, when it was read to its end or closed (the
  client left).
- :func:`snapshot_request` runs in ``after_request`` (or, when the view raised, on the
  ``got_request_exception`` signal, or in ``should_ignore_error`` for a SystemExit or
  KeyboardInterrupt) and copies what only the request context knows
  (endpoint, rule, user, custom data) plus the request fields of the environ.
- :func:`tee_response_body` runs in ``after_request`` and copies a complete response body; a
  streamed one the middleware copies as the server reads it, never changing the app's
  ``Response``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

from werkzeug.wrappers import Response as WerkzeugResponse
from werkzeug.wsgi import ClosingIterator

from .dbactivity import attach, detach
from .ids import request_id_for
from .layouts import remember_layout
from .policy import SKIP, TRACK_WITH_BODIES, Policy
from .sanitize import bson_safe

#: WSGI environ key holding the :class:`RequestState` of a tracked request.
ENVIRON_KEY = "flask_tracking.state"


StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class BodyCapture:
    """The first ``limit`` bytes of a body, and how many bytes went by in all."""

    __slots__ = ("buffer", "exhausted", "failed", "incomplete", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.size = 0
        self.exhausted = False  # a read came back empty: the body has been read to its end
        self.failed = False  # copying raised once (e.g. MemoryError): stop, and say so
        self.incomplete = False  # bytes of the body never went by (the app left them unread)

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
        capture.failed = capture.incomplete = False
        return capture

    @property
    def truncated(self) -> bool:
        """Whether the body has bytes that were not kept (went by, or were never read)."""
        return self.incomplete or self.size > len(self.buffer)

    def wants_more(self, declared_length: int | None) -> bool:
        """Whether unread body bytes could still fill the buffer."""
        if self.exhausted or self.failed or len(self.buffer) >= self.limit:
            return False
        return declared_length is None or self.size < declared_length


class InputTee:
    """A ``wsgi.input`` stand-in that copies what the app reads, and reads nothing itself.

    The app (Werkzeug) still decides how much to read from the real stream, so chunked input,
    malformed Content-Length and MAX_CONTENT_LENGTH behave exactly as without the tracker.
    The tee knows where in the body each read starts: bytes read again after the app seeks
    back (a webhook's signature check reads the body, rewinds, and lets Flask parse it) were
    copied the first time, and are not copied twice.
    """

    __slots__ = ("_capture", "_position", "_stream")

    def __init__(self, stream: Any, capture: BodyCapture) -> None:
        self._stream = stream
        self._capture = capture
        self._position = 0  # of the next read, from where the body began

    def _keep(self, data: bytes | memoryview, size: Any = None) -> None:
        """Copy what ``data``, read at the tee's position, adds to the body; an empty read
        (but for a read of 0 bytes, ``size``) means the body was read to its end."""
        capture = self._capture
        position = self._position
        self._position = position + len(data)
        if not data:
            if size != 0 and position <= capture.size:  # past bytes never copied: not the end
                capture.exhausted = True
        elif position == capture.size:
            capture.add(data)
        elif position < capture.size < self._position:
            capture.add(data[capture.size - position :])
        # else read past bytes never copied (a forward seek): not copied out of their place

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        data: bytes = self._stream.read(*args, **kwargs)
        self._keep(data, args[0] if args else kwargs.get("size"))
        return data

    def read1(self, *args: Any, **kwargs: Any) -> bytes:
        """The buffered streams' read1 (io.TextIOWrapper reads with it when it exists), teed
        like read; read (at most as many bytes) for a stream without one."""
        read1 = getattr(self._stream, "read1", None)
        data: bytes = (self._stream.read if read1 is None else read1)(*args, **kwargs)
        self._keep(data, args[0] if args else kwargs.get("size"))
        return data

    def readinto(self, buffer: Any) -> int | None:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            data = self._stream.read(len(buffer))
            count: int | None = len(data)
            buffer[: len(data)] = data
        else:
            count = readinto(buffer)
        if count is not None:
            self._keep(memoryview(buffer).cast("B")[:count], len(buffer))
        return count

    def readline(self, *args: Any, **kwargs: Any) -> bytes:
        data: bytes = self._stream.readline(*args, **kwargs)
        self._keep(data, 0)  # an empty line read says nothing of the body's end
        return data

    def readlines(self, *args: Any, **kwargs: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args, **kwargs)
        for line in lines:
            self._keep(line)
        return lines

    def seek(self, *args: Any, **kwargs: Any) -> Any:
        """The stream's seek, its answer returned as it is; the tee's position follows it."""
        before = self._tell()
        answer = self._stream.seek(*args, **kwargs)
        after = answer if type(answer) is int else self._tell()  # FileWrapper's seek: None
        if after is not None:
            # May go below 0: bytes read before the tee wrapped the stream are not the body's.
            self._position = after if before is None else self._position + after - before
        return answer

    def _tell(self) -> int | None:
        """The stream's position, or None when it cannot tell (never raises)."""
        try:
            position = self._stream.tell()
        except Exception:
            return None
        return position if type(position) is int else None

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._keep(line)
            yield line

    # Looked up on the type, never through __getattr__: the stream's own protocol, teed.
    def __next__(self) -> bytes:
        line: bytes = next(self._stream)
        self._keep(line)
        return line

    def __enter__(self) -> InputTee:
        enter = getattr(type(self._stream), "__enter__", None)
        if enter is None:
            raise TypeError(
                f"{type(self._stream).__name__!r} object does not support the context manager "
                "protocol"
            )
        enter(self._stream)
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return type(self._stream).__exit__(self._stream, *exc_info)

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
    #: The WSGI status line as the app started its response; None when it gave none (see
    #: :meth:`TrackingMiddleware.__call__`).
    status: str | None = "500 INTERNAL SERVER ERROR"
    response_headers: Sequence[tuple[str, str]] = ()
    execution_time: float | None = None
    total_time: float | None = None
    finished = False
    streamed = False  # the body is copied by the middleware as the server reads it
    declared_length: int | None = None
    # A copy of the WSGI environ without its objects (snapshot_environ); the writer reads it.
    environ: dict[str, Any] | None = None
    environ_key_bytes = 0  # characters of the copy's keys (for the queued size)
    snapshot_failed = False
    scrubbed = False  # headers, query and custom data already filtered on the request thread
    scrubbed_without_rules = False  # ... before the app's URL rules were learnt
    # Known only inside the request context (snapshot_request).
    endpoint: str | None = None
    url_rule: str | None = None
    user_id: str | None = None
    user_ref: tuple[str, str, Any] | None = None
    # The user the request signed out (Flask-Login's logout_user), as (user_id, user_ref): the
    # record's user when the request ends with nobody signed in.
    signed_out: tuple[str, tuple[str, str, Any] | None] | None = None
    custom_data: Any = None
    custom_data_size = 0
    exception: str | None = None
    # The first HTTP error sent by got_request_exception, untrapped: an exception of the app's
    # only if the request is not answered with its status (Flask answers 500 for one that
    # escaped its handling; flask-restx sends the signal for the errors it answers).
    http_error: BaseException | None = None
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

    ``finish`` runs on the request thread: for a streamed response when it was read to its end
    or the server closed the response iterable (when the client left), whichever comes first;
    otherwise as soon as the app returned (or raised), so the response goes out unwrapped.
    ``on_error()`` is called (inside ``except``) when the tracker's own code fails; the app's
    errors always propagate untouched.
    """

    def __init__(
        self,
        wsgi_app: WSGIApp,
        policy: Policy,
        max_body_length: int,
        finish: Callable[[RequestState], None],
        on_error: Callable[[], None],
        *,
        request_id_key: str | None = None,
        request_id_response_header: str | None = None,
        watch_db: bool = False,
        flush_before_exit: Callable[[], None] | None = None,
    ) -> None:
        """``request_id_key``: the WSGI environ key of the request header an incoming id is
        taken from (when valid; ``TrackingConfig.request_id_environ_key``);
        ``request_id_response_header``: the response header that echoes the id (unless the app
        set that header itself). None: no incoming id, no echo. ``watch_db``: attribute the
        database commands run while a tracked request is served to it
        (:mod:`flask_tracking.dbactivity`). ``flush_before_exit``: writes what is queued, for
        a request served in a child the server forked for it (see
        :meth:`_flush_in_a_forked_child`), once the server closed its response."""
        self.wsgi_app = wsgi_app
        self._policy = policy
        self._max_body_length = max_body_length
        self._finish = finish
        self._on_error = on_error
        self._request_id_key = request_id_key
        self._echo_header = request_id_response_header
        self._echo_header_lower = (request_id_response_header or "").lower()
        self._watch_db = watch_db
        self._flush_before_exit = flush_before_exit
        self._pid = os.getpid()  # of the process that set the app up

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
            if exc_info is None:  # called as the app called it: some take no exc_info at all
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        try:
            app_iter = self.wsgi_app(environ, tracking_start_response)
        except BaseException as error:
            state.note_exception(error)
            # The server answers an Exception with a 500. Any other BaseException (SystemExit:
            # a view's sys.exit, gunicorn's worker timeout; KeyboardInterrupt) leaves no
            # response of the app's: most servers then close the connection, some answer it
            # on their own, so no status is known.
            state.status = _status_after(error)
            self._close(state, environ, settle=False)
            flush = self._flush_in_a_forked_child(environ)
            if flush is not None:
                flush()  # the server answers, then the child exits at once
            raise
        state.execution_time = (time.perf_counter() - state.started) * 1000.0
        if state.streamed:
            file_wrapper = state.response_body_omitted == "passthrough" and _from_file_wrapper(
                app_iter, environ
            )
            if file_wrapper:
                # Nothing reads the request body from here on, and the server may close its
                # input before the file was sent (waitress sends it from its I/O thread).
                self._settle(state, environ)

            def finish() -> None:  # also inside the server's iteration: must not raise
                try:
                    self._close(state, environ, settle=not file_wrapper)
                except Exception:
                    self._on_error()

            if not file_wrapper:
                app_iter = _StreamedBody(app_iter, state, finish)
            elif not _finish_when_closed(app_iter, finish):
                finish()
        else:  # nothing left to wait for: finish now
            self._close(state, environ)
        flush = self._flush_in_a_forked_child(environ)
        return app_iter if flush is None else _FlushedOnClose(app_iter, flush)

    def _flush_in_a_forked_child(self, environ: Mapping[str, Any]) -> Callable[[], None] | None:
        """``flush_before_exit`` when this request runs in a child process forked for it
        alone, which ends with ``os._exit`` (no exit hook) once the response is sent:
        Werkzeug's development server with ``processes=N`` (``ForkingWSGIServer``:
        multiprocess, not multithread), in a process other than the one that set the app up.
        None otherwise: a gunicorn or uWSGI worker serves many requests and exits through
        Python, its records written by the writer thread and at exit."""
        flush = self._flush_before_exit
        if (
            flush is not None
            and "werkzeug.socket" in environ
            and environ.get("wsgi.multiprocess")
            and not environ.get("wsgi.multithread")
            and os.getpid() != self._pid
        ):
            return flush
        return None

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

    def _close(self, state: RequestState, environ: dict[str, Any], *, settle: bool = True) -> None:
        """Finish the record of ``state`` once (``settle``: account for the body bytes the app
        left unread, the app having returned a response, sent when it streams; False: the app
        raised and nothing more is read, or the body was settled when it returned)."""
        if state.finished:
            return
        state.finished = True  # from here on, no command counts for this request
        if state.db_token is not None:
            detach(state.db_token)
            state.db_token = None  # a queued record keeps no context (fewer objects for the GC)
        if settle and state.request_body is not None:
            # Now, not when the app returned: a streamed response's generator may read the
            # body as it goes (an echo, a proxy passing the upload on).
            self._settle(state, environ)
        try:
            state.total_time = (time.perf_counter() - state.started) * 1000.0
            if state.execution_time is None:
                state.execution_time = state.total_time
            if state.environ is None and not state.skipped:  # Flask never ran our hooks
                snapshot_environ(state, environ)
        except Exception:
            self._on_error()
        self._finish(state)

    def _settle(self, state: RequestState, environ: dict[str, Any]) -> None:
        """:func:`settle_unread_body`, for a request that is recorded; never raises."""
        try:
            if state.request_body is not None and not state.skipped:
                settle_unread_body(state, environ)
        except Exception:
            self._on_error()


def _status_after(error: BaseException) -> str | None:
    """The status of a request whose app raised ``error`` before any of its response went
    out: the 500 a server answers an Exception with; None for any other BaseException
    (SystemExit, KeyboardInterrupt), which leaves no response (see
    :meth:`TrackingMiddleware.__call__`)."""
    return "500 INTERNAL SERVER ERROR" if isinstance(error, Exception) else None


class _StreamedBody:
    """A streamed response's iterable, passed to the server unchanged: its chunks are copied
    as the server reads them (the app's Response object is never touched, so one served to
    several requests at once is served as without the tracker). ``finish`` ends the record
    once the body was read to its end or raised (the test client reads a response without
    closing it), when the server closes it (a client that left), or when the server drops
    its iterator unfinished (see :func:`_copied`)."""

    __slots__ = ("_app_iter", "_finish", "_state")

    def __init__(
        self, app_iter: Iterable[bytes], state: RequestState, finish: Callable[[], None]
    ) -> None:
        self._app_iter = app_iter
        self._state = state
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return _copied(self._app_iter, self._state, self._finish)

    def close(self) -> None:
        _close_then(getattr(self._app_iter, "close", None), self._finish)


class _FlushedOnClose:
    """A response iterable, passed through, whose close() also runs ``flush`` (after the
    iterable's own close): the server closes it once the response was sent, and the process
    may end right after, without an exit hook."""

    __slots__ = ("_app_iter", "_flush")

    def __init__(self, app_iter: Iterable[bytes], flush: Callable[[], None]) -> None:
        self._app_iter = app_iter
        self._flush = flush

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._app_iter)

    def close(self) -> None:
        _close_then(getattr(self._app_iter, "close", None), self._flush)


def _close_then(close: Callable[[], object] | None, then: Callable[[], None]) -> None:
    """Call ``close`` (a response iterable's ``close``, when it has one), then ``then``, even
    when closing raised (the error still propagates to the server)."""
    try:
        if close is not None:
            close()
    finally:
        then()


def _from_file_wrapper(app_iter: Iterable[bytes], environ: Mapping[str, Any]) -> bool:
    """Whether ``app_iter`` is what the server's ``wsgi.file_wrapper`` made (``send_file``
    under gunicorn, wsgiref, uWSGI): the server recognises it to send the file with
    ``sendfile()``, so it must reach the server as it is. A wrapper that is a class (gunicorn,
    wsgiref) says so by type; one that is a function (uWSGI) may return the file itself, so
    then anything but a generator is taken for its result (asked of a response in direct
    passthrough only: any other stream is Werkzeug's, and copied)."""
    file_wrapper = environ.get("wsgi.file_wrapper")
    if file_wrapper is None:
        return False
    if isinstance(file_wrapper, type):
        return isinstance(app_iter, file_wrapper)
    return not isinstance(app_iter, Generator)


def _finish_when_closed(app_iter: Any, finish: Callable[[], None]) -> bool:
    """Make the ``close()`` of ``app_iter``, the server's file wrapper, call ``finish`` after
    its own close (PEP 3333: the server calls it once the file was sent, or the client left).
    The wrapper is made by the server for this response alone. False when it takes no new
    attribute: then nothing is changed."""
    close = getattr(app_iter, "close", None)
    try:
        app_iter.close = lambda: _close_then(close, finish)
    except Exception:
        return False
    return True


def _copied(
    app_iter: Iterable[bytes], state: RequestState, finish: Callable[[], None]
) -> Generator[bytes, None, None]:
    """Yield the body unchanged, copying its first bytes; note an exception mid-stream (an
    Exception, or a SystemExit or KeyboardInterrupt that cut the stream short).

    The record is finished when the body ends, raises, or is left unread: a server that stops
    iterating and never closes the response (asgiref's ``WsgiToAsgi`` once Content-Length
    bytes went out) drops this generator, and Python closes it. ``finish`` ends a record once
    only, so a server's close() as well is harmless."""
    capture = state.response_body
    started = False  # servers send the status line with the first chunk, never before
    try:
        for chunk in app_iter:
            if capture is not None:
                capture.add(chunk)
            started = True
            yield chunk
    except GeneratorExit:  # closed at the yield: the server stopped reading, nothing raised
        raise
    except BaseException as error:
        state.note_exception(error)
        if not started:  # nothing went out: recorded as when the app raised
            state.status = _status_after(error)
            state.response_headers = ()
            state.response_body = None
        raise
    finally:
        finish()


def settle_unread_body(state: RequestState, environ: dict[str, Any]) -> None:
    """Once the request is over (the app returned; a streamed response was sent or closed):
    account for the body bytes the app left unread, never blocking.

    The tracker never reads the input on its own, except when the stream can be read and put
    back without waiting for a client: a seekable stream (the in-memory body of Werkzeug's test
    client, or a body a server spooled to memory or disk). Then the missing bytes that fit are
    copied and the position is restored, so the input is left exactly as the app left it.
    Otherwise a body the app never touched is stored as None with ``request_body_omitted =
    "unread"``, and one it read in part keeps those bytes, marked truncated.
    """
    capture = state.request_body
    if capture is None or not capture.wants_more(state.declared_length):
        return
    stream = environ.get("wsgi.input")
    tee = stream if isinstance(stream, InputTee) and stream._capture is capture else None
    if tee is not None and _seekable(tee._stream):
        # The app may have sought back (read, rewound, left): copy from the first byte not copied.
        _copy_and_rewind(tee._stream, capture, state, capture.size - tee._position)
    elif capture.size == 0:
        state.request_body = None
        state.request_body_omitted = "unread"
    else:
        capture.incomplete = True


def _seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable())
    except Exception:
        return False  # no seekable() (a socket, gunicorn's Body): never read it


def _copy_and_rewind(
    stream: Any, capture: BodyCapture, state: RequestState, ahead: int = 0
) -> None:
    """Copy the unread bytes that fit from a seekable ``stream`` (the first of them ``ahead``
    bytes from where it stands), then seek back."""
    missing = capture.limit - len(capture.buffer)
    declared = state.declared_length
    if declared is not None:
        missing = min(missing, declared - capture.size)
    try:
        position = stream.tell()
        try:
            if ahead:
                stream.seek(position + ahead)
            data = stream.read(missing)
        finally:
            stream.seek(position)
    except Exception as error:
        state.request_body_omitted = f"unreadable ({type(error).__name__})"
        return
    capture.add(data)
    if len(data) < missing:
        capture.exhausted = True
    elif declared is None or capture.size < declared:
        capture.incomplete = True  # more bytes follow that would not fit


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
    layout = tuple(copy)
    plan = _SNAPSHOT_PLANS.get(layout)
    if plan is None:
        plan = remember_layout(_SNAPSHOT_PLANS, layout, _snapshot_plan(layout))
    objects, state.environ_key_bytes = plan
    for key in objects:
        del copy[key]
    state.environ = copy


def _snapshot_plan(layout: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """The keys of ``layout`` that hold objects, and the characters of the others (a key that
    is no string, which WSGI has none of, counts none)."""
    objects = tuple(key for key in layout if key in _ENVIRON_OBJECTS)
    characters = sum(len(key) for key in layout if type(key) is str and key not in _ENVIRON_OBJECTS)
    return objects, characters


_SNAPSHOT_PLANS: dict[tuple[str, ...], tuple[tuple[str, ...], int]] = {}


#: Environ keys holding objects (not request data) that a queued record must not keep alive,
#: and the WSGI flags that are not text (so that every value of a copy is normally a string).
_ENVIRON_OBJECTS = frozenset(
    (
        ENVIRON_KEY,
        "wsgi.input",
        "wsgi.errors",
        "wsgi.file_wrapper",
        "wsgi.version",
        "wsgi.multithread",
        "wsgi.multiprocess",
        "wsgi.run_once",
        "wsgi.input_terminated",
        "werkzeug.request",
        "werkzeug.socket",
        "werkzeug.server.shutdown",
        "werkzeug.debug.preserve_context",
        "werkzeug.proxy_fix.orig",  # ProxyFix's dict of the values it replaced
        "gunicorn.socket",
        "wsgi.early_hints",  # gunicorn's (a function bound to the connection)
        "gunicorn.http2.priority_weight",  # integers, under HTTP/2
        "gunicorn.http2.priority_depends_on",
        "waitress.client_disconnected",
        "uwsgi.core",
        "uwsgi.node",
        "uwsgi.version",
    )
)


def snapshot_request(
    state: RequestState,
    request: Any,
    login_user: Any,
    custom_data_max_bytes: int,
    session_user_id: Callable[[], Any] | None = None,
) -> None:
    """Copy what only the request context knows into ``state`` (after the view ran).

    ``login_user`` is Flask-Login's already loaded user (``g._login_user``) or None: the
    tracker never loads a user itself, which would run the app's user_loader (a database query)
    and touch the session. ``session_user_id`` reads Flask-Login's ``_user_id`` in the session
    (None when there is none); it is called only when needed. The user id is the loaded user's
    ``get_id()``, but for a SQLAlchemy user a view's commit expired (reading its id would load
    it again): then the session's, when it is there. Without a loaded user, the session's.
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
        _snapshot_user(state, login_user, session_user_id)
    elif session_user_id is not None:
        user_id = session_user_id()
        if user_id is not None:
            state.user_id = str(user_id)
    if state.user_id is None and state.signed_out is not None:
        # The view signed its user out (a logout, an account deleted): that user did it.
        state.user_id, state.user_ref = state.signed_out


def note_signed_out(state: RequestState, user: Any) -> None:
    """Remember ``user``, whom the request is signing out (Flask-Login's ``user_logged_out``
    signal), as the request's user should it end with nobody signed in. An expired SQLAlchemy
    user is left out: reading its id would run a query of the app's."""
    if not getattr(user, "is_authenticated", False) or _expired(user):
        return
    user_id = user.get_id()
    if user_id is not None:
        state.signed_out = (str(user_id), _user_reference(user))


def _snapshot_user(
    state: RequestState, user: Any, session_user_id: Callable[[], Any] | None
) -> None:
    if not getattr(user, "is_authenticated", False):
        return
    # An expired user's get_id() would load it again, a query of the app's: the session says.
    user_id = session_user_id() if session_user_id is not None and _expired(user) else None
    if user_id is None:
        user_id = user.get_id()
    state.user_id = None if user_id is None else str(user_id)
    reference = _user_reference(user)
    if reference is not None:
        state.user_ref = reference


def _user_reference(user: Any) -> tuple[str, str, Any] | None:
    """A MongoEngine Document user as (class name, collection, pk), for a GenericReference;
    None for any other user."""
    collection_name = getattr(type(user), "_get_collection_name", None)
    primary_key = getattr(user, "pk", None)
    if collection_name is None or primary_key is None:
        return None
    return (user._class_name, collection_name(), primary_key)


def _expired(user: Any) -> bool:
    """Whether ``user`` is a SQLAlchemy instance with expired attributes (a view's commit
    expires what its session loaded): reading one of them runs a query. SQLAlchemy is never
    imported here."""
    sqlalchemy = sys.modules.get("sqlalchemy")
    if sqlalchemy is None:
        return False
    state = sqlalchemy.inspect(user, raiseerr=False)
    return bool(getattr(state, "expired_attributes", None))


def tee_response_body(state: RequestState, response: Any, limit: int) -> None:
    """Copy the body of ``response`` when it is complete; for a stream, make the copy the
    middleware fills as the server reads it. Runs in after_request; never consumes a stream
    and never changes ``response``."""
    if state.response_body_omitted == "excluded":
        return
    sends_no_body = _sends_no_body(state, response)
    state.streamed = False  # a second pass (a raising after_request hook) tees another response
    if response.direct_passthrough and not sends_no_body:
        # send_file, a proxy: reading it would read the file. Sent as it is, so recorded once
        # it was sent, like any stream: the middleware passes it on uncopied (or, for the
        # server's own file wrapper, untouched). Sent without a body (HEAD, 304), it is
        # recorded below like any other bodiless answer: empty, size 0.
        state.response_body = None
        state.response_body_omitted = "passthrough"
        state.streamed = True
        return
    state.response_body_omitted = None
    if sends_no_body:
        # Werkzeug never iterates the body (HEAD, 1xx, 204, 304), complete or streamed: nothing
        # goes by, nothing to wait for; the response's close() still closes the app's
        # iterable, untouched.
        state.response_body = BodyCapture.whole(b"", limit)
        return
    body = response.response
    if not isinstance(body, (list, tuple)):
        body = _sequence_behind(body)
    if body is None:
        state.response_body = BodyCapture(limit)  # filled by the middleware's _StreamedBody
        state.streamed = True
    elif len(body) == 1 and type(body[0]) is bytes and len(body[0]) <= limit:
        state.response_body = BodyCapture.whole(body[0], limit)  # the usual case: no copy
    else:
        capture = state.response_body = BodyCapture(limit)
        for chunk in body:
            capture.add(chunk)


def _sends_no_body(state: RequestState, response: Any) -> bool:
    """Whether Werkzeug answers ``response`` without a body (``Response.get_app_iter``)."""
    status = getattr(response, "status_code", 200)
    method = (state.environ or {}).get("REQUEST_METHOD")
    return method == "HEAD" or 100 <= status < 200 or status in (204, 304)


def _sequence_behind(body: Any, depth: int = 3) -> list[Any] | tuple[Any, ...] | None:
    """The complete body behind a Werkzeug ``ClosingIterator``, when it is known; else None.

    Flask turns an ``abort()`` page, a 404/405 and its own 500 page into a response by running
    the exception as a WSGI app (``Response.force_type``): the (already complete) body of the
    exception's own response comes back wrapped in one or two ``ClosingIterator`` objects, whose
    close callbacks lead to that response. Its chunks are copied without iterating anything,
    so such a response is recorded when the app returns, like any other complete body, instead
    of when the response is closed. Anything else (a real stream) gives None.
    """
    if depth == 0 or not isinstance(body, ClosingIterator):
        return None
    for callback in getattr(body, "_callbacks", ()):
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, ClosingIterator):
            return _sequence_behind(owner, depth - 1)
        if isinstance(owner, WerkzeugResponse) and owner.is_sequence:
            return owner.response  # type: ignore[return-value]
    return None

"""Unit tests of flask_tracking.capture: body capture, the input tee, the WSGI middleware, the
environ/request snapshots and the response tee (plain WSGI callables and fakes; no MongoDB)."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from flask import Flask
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import ClosingIterator, LimitedStream

from flask_tracking.capture import (
    ENVIRON_KEY,
    BodyCapture,
    InputTee,
    RequestState,
    TrackingMiddleware,
    describe_exception,
    snapshot_environ,
    snapshot_request,
    tee_response_body,
)
from flask_tracking.config import load_config
from flask_tracking.extension import Tracking, _AppTracking
from flask_tracking.policy import SKIP, TRACK, TRACK_WITH_BODIES, Policy
from flask_tracking.record import to_document
from flask_tracking.scope import EndpointVerdicts

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class RecordingStream:
    """A ``wsgi.input`` over ``data`` without ``readinto``; records every call and its size."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)
        self.calls: list[tuple[str, Any]] = []
        self.custom_attribute = "passed through"

    def read(self, *args: Any) -> bytes:
        self.calls.append(("read", args[0] if args else None))
        return self._io.read(*args)

    def readline(self, *args: Any) -> bytes:
        self.calls.append(("readline", args[0] if args else None))
        return self._io.readline(*args)

    def readlines(self, *args: Any) -> list[bytes]:
        self.calls.append(("readlines", args[0] if args else None))
        return self._io.readlines(*args)

    def __iter__(self) -> Iterator[bytes]:
        self.calls.append(("iter", None))
        return iter(self._io)

    def close(self) -> None:
        self.calls.append(("close", None))

    def largest_read(self) -> int:
        sizes = [size for name, size in self.calls if name in ("read", "readinto")]
        assert all(size is not None and size >= 0 for size in sizes), self.calls
        return max(sizes, default=0)


class RecordingReadintoStream(RecordingStream):
    """The same, with a ``readinto`` of its own."""

    def readinto(self, buffer: Any) -> int | None:
        self.calls.append(("readinto", len(buffer)))
        return self._io.readinto(buffer)


class FakePolicy:
    def __init__(self, track: bool = True, keep_bodies: bool = True) -> None:
        self.track = track
        self.keep_bodies = keep_bodies

    def decide(self, environ: Any) -> int:
        if not self.track:
            return SKIP
        return TRACK_WITH_BODIES if self.keep_bodies else TRACK


class RaisingPolicy:
    """A policy that raises (a bug in the tracker, not in the app)."""

    def decide(self, environ: Any) -> int:
        raise RuntimeError("policy bug")


class OnError:
    """Like ``Tracking._count_error``: must be called inside ``except``; records the error."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(self) -> None:
        error = sys.exc_info()[1]
        assert error is not None, "on_error was called outside an except block"
        self.errors.append(error)


class Finish:
    """A fake ``finish``: records each state it is given; raises ``error`` when set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.states: list[RequestState] = []
        self.error = error

    def __call__(self, state: RequestState) -> None:
        self.states.append(state)
        if self.error is not None:
            raise self.error


class StartResponse:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.written: list[bytes] = []

    def __call__(self, status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
        self.calls.append((status, headers, exc_info))
        return self.written.append


class Body:
    """A response iterable that records how it is used (iteration, close)."""

    def __init__(self, chunks: list[bytes], close_error: Exception | None = None) -> None:
        self.chunks = chunks
        self.yielded = 0
        self.closed = 0
        self.close_error = close_error

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.yielded += 1
            yield chunk

    def close(self) -> None:
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error


def make_environ(
    path: str = "/path", method: str = "GET", body: bytes | None = None, **extra: Any
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "a=1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "10.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": RecordingReadintoStream(body or b""),
        "HTTP_HOST": "localhost",
    }
    if body is not None:
        environ["CONTENT_LENGTH"] = str(len(body))
    environ.update(extra)
    return environ


def middleware(
    app: Any,
    policy: Any = None,
    finish: Finish | None = None,
    on_error: OnError | None = None,
    limit: int = 100,
) -> TrackingMiddleware:
    return TrackingMiddleware(
        app, policy or FakePolicy(), limit, finish or Finish(), on_error or OnError()
    )


def serve(app: Any, environ: dict[str, Any], start: StartResponse | None = None) -> bytes:
    """What a WSGI server does: call, iterate, close."""
    result = app(environ, start or StartResponse())
    try:
        return b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def simple_app(body: list[bytes] | None = None) -> Callable[..., Any]:
    result = body if body is not None else [b"hello", b" world"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("201 CREATED", [("Content-Type", "text/plain"), ("X-A", "1")])
        return result

    return app


def streaming_app(body: Body) -> Callable[..., Any]:
    """Answers ``body`` and marks the request streamed, as ``tee_response_body`` does (its
    copy of at most 100 bytes made by the middleware as the server reads the body)."""

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        state = environ.get(ENVIRON_KEY)
        if state is not None:
            state.streamed = True
            state.response_body = BodyCapture(100)
        return body

    return app


# --------------------------------------------------------------------------------------------
# BodyCapture
# --------------------------------------------------------------------------------------------


def test_body_capture_keeps_the_first_limit_bytes_and_counts_all() -> None:
    capture = BodyCapture(5)
    capture.add(b"abc")
    assert (bytes(capture.buffer), capture.size, capture.truncated) == (b"abc", 3, False)
    capture.add(b"defgh")
    assert bytes(capture.buffer) == b"abcde"
    assert capture.size == 8
    assert capture.truncated is True
    capture.add(b"ij")
    assert bytes(capture.buffer) == b"abcde"
    assert capture.size == 10


def test_body_capture_exactly_at_the_limit_is_not_truncated() -> None:
    capture = BodyCapture(4)
    capture.add(b"ab")
    capture.add(b"cd")
    assert bytes(capture.buffer) == b"abcd"
    assert capture.truncated is False
    capture.add(b"")
    assert capture.truncated is False
    capture.add(b"e")
    assert capture.truncated is True


def test_body_capture_str_chunks_are_utf8_encoded_and_counted_in_bytes() -> None:
    capture = BodyCapture(3)
    capture.add("é")  # 2 bytes in UTF-8
    capture.add("ab")
    assert capture.size == 4
    assert bytes(capture.buffer) == "é".encode() + b"a"
    assert capture.truncated is True
    lone = BodyCapture(10)
    lone.add("\ud800")  # a lone surrogate does not raise
    assert bytes(lone.buffer) == b"?"


def test_body_capture_memoryview_and_bytearray_chunks_are_copied() -> None:
    source = bytearray(b"hello world")
    capture = BodyCapture(8)
    capture.add(memoryview(source)[:5])
    capture.add(bytearray(b" wo"))
    capture.add(memoryview(b"rld!"))
    assert bytes(capture.buffer) == b"hello wo"
    assert capture.size == 12
    source[:] = b"XXXXXXXXXXX"  # the caller reuses its buffer: the copy is unaffected
    assert bytes(capture.buffer) == b"hello wo"


def test_body_capture_limit_zero_keeps_nothing_but_counts() -> None:
    capture = BodyCapture(0)
    assert capture.truncated is False
    capture.add(b"abc")
    capture.add("de")
    assert bytes(capture.buffer) == b""
    assert capture.size == 5
    assert capture.truncated is True


def test_body_capture_never_raises_and_remembers_a_failed_copy() -> None:
    capture = BodyCapture(10)
    capture.add(b"ok")
    capture.add(12345)  # type: ignore[arg-type]  # not a chunk: the copy fails, quietly
    assert capture.failed is True
    capture.add(b"more")
    assert bytes(capture.buffer) == b"ok"
    assert capture.size == 2


def test_body_capture_wants_more() -> None:
    capture = BodyCapture(10)
    assert capture.wants_more(None) is True
    assert capture.wants_more(0) is False
    assert capture.wants_more(5) is True
    capture.add(b"12345")
    assert capture.wants_more(5) is False  # the whole declared body went by
    assert capture.wants_more(6) is True
    assert capture.wants_more(None) is True
    capture.exhausted = True
    assert capture.wants_more(None) is False
    full = BodyCapture(3)
    full.add(b"abc")
    assert full.wants_more(None) is False
    assert full.wants_more(100) is False
    assert BodyCapture(0).wants_more(100) is False


# --------------------------------------------------------------------------------------------
# InputTee
# --------------------------------------------------------------------------------------------

DATA = b"line one\nline two\nthird line\nlast"


def test_input_tee_read_all() -> None:
    stream = RecordingStream(DATA)
    capture = BodyCapture(1000)
    tee = InputTee(stream, capture)
    assert tee.read() == DATA
    assert bytes(capture.buffer) == DATA
    assert capture.size == len(DATA)
    assert stream.calls == [("read", None)]  # no size was invented
    assert tee.read() == b""
    assert capture.size == len(DATA)


class SeekWithoutAnswer(io.BytesIO):
    """A file-like whose seek answers None (as some wrappers do), and one that cannot tell."""

    def seek(self, *args: Any) -> None:  # type: ignore[override]
        super().seek(*args)


class SeekWithoutTell(io.BytesIO):
    def tell(self) -> int:
        raise OSError("cannot tell")


@pytest.mark.parametrize("stream_type", [io.BytesIO, SeekWithoutAnswer, SeekWithoutTell])
def test_input_tee_follows_a_seek_and_copies_each_byte_once(stream_type: type) -> None:
    stream = stream_type(DATA)
    capture = BodyCapture(1000)
    tee = InputTee(stream, capture)
    assert tee.read(9) == DATA[:9]
    assert tee.seek(0) == stream_type(DATA).seek(0)  # answered as the stream answers
    assert tee.read() == DATA  # read again from the start: copied once
    assert bytes(capture.buffer) == DATA
    assert capture.size == len(DATA)
    tee.seek(-4, io.SEEK_END)
    assert tee.read() == b"last"
    assert capture.size == len(DATA)


def test_input_tee_counts_from_where_the_body_began() -> None:
    stream = io.BytesIO(b"HEAD" + DATA)
    stream.read(4)  # a middleware before the tracker read a part
    capture = BodyCapture(1000)
    tee = InputTee(stream, capture)
    assert tee.read(5) == DATA[:5]
    tee.seek(4)
    assert tee.read() == DATA
    assert bytes(capture.buffer) == DATA


def test_input_tee_read_n_reads_exactly_what_was_asked() -> None:
    stream = RecordingStream(DATA)
    capture = BodyCapture(6)
    tee = InputTee(stream, capture)
    assert tee.read(4) == DATA[:4]
    assert tee.read(5) == DATA[4:9]
    assert stream.calls == [("read", 4), ("read", 5)]
    assert bytes(capture.buffer) == DATA[:6]
    assert capture.size == 9
    assert capture.truncated is True


def test_input_tee_readline() -> None:
    stream = RecordingStream(DATA)
    capture = BodyCapture(1000)
    tee = InputTee(stream, capture)
    assert tee.readline() == b"line one\n"
    assert tee.readline(4) == b"line"
    assert stream.calls == [("readline", None), ("readline", 4)]
    assert bytes(capture.buffer) == b"line one\nline"


def test_input_tee_readlines() -> None:
    stream = RecordingStream(DATA)
    capture = BodyCapture(1000)
    tee = InputTee(stream, capture)
    assert tee.readlines(5) == [b"line one\n"]
    assert tee.readlines() == [b"line two\n", b"third line\n", b"last"]
    assert stream.calls == [("readlines", 5), ("readlines", None)]
    assert bytes(capture.buffer) == DATA
    assert capture.size == len(DATA)


def test_input_tee_iteration() -> None:
    stream = RecordingStream(DATA)
    capture = BodyCapture(12)
    tee = InputTee(stream, capture)
    assert list(tee) == DATA.splitlines(keepends=True)
    assert bytes(capture.buffer) == DATA[:12]
    assert capture.size == len(DATA)


def test_input_tee_readinto_uses_the_streams_readinto() -> None:
    stream = RecordingReadintoStream(DATA)
    capture = BodyCapture(1000)
    tee = InputTee(stream, capture)
    buffer = bytearray(8)
    assert tee.readinto(buffer) == 8
    assert bytes(buffer) == DATA[:8]
    view = memoryview(bytearray(100))
    count = tee.readinto(view)
    assert count == len(DATA) - 8
    assert bytes(view[:count]) == DATA[8:]
    assert tee.readinto(bytearray(8)) == 0
    assert stream.calls == [("readinto", 8), ("readinto", 100), ("readinto", 8)]
    assert bytes(capture.buffer) == DATA
    assert capture.size == len(DATA)


def test_input_tee_readinto_without_the_streams_readinto_reads_the_buffer_size() -> None:
    stream = RecordingStream(DATA)
    capture = BodyCapture(1000)
    tee = InputTee(stream, capture)
    buffer = bytearray(10)
    assert tee.readinto(buffer) == 10
    assert bytes(buffer) == DATA[:10]
    view = memoryview(bytearray(100))
    count = tee.readinto(view)
    assert count == len(DATA) - 10
    assert bytes(view[:count]) == DATA[10:]
    assert tee.readinto(bytearray(5)) == 0
    assert stream.calls == [("read", 10), ("read", 100), ("read", 5)]
    assert bytes(capture.buffer) == DATA
    assert capture.size == len(DATA)


def test_input_tee_readinto_returning_none_copies_nothing() -> None:
    class NonBlocking:
        def readinto(self, buffer: Any) -> None:
            return None

    capture = BodyCapture(10)
    assert InputTee(NonBlocking(), capture).readinto(bytearray(4)) is None
    assert capture.size == 0


def test_input_tee_readinto_copies_only_the_bytes_read() -> None:
    stream = RecordingReadintoStream(b"abc")
    capture = BodyCapture(100)
    buffer = bytearray(b"zzzzzzzz")
    assert InputTee(stream, capture).readinto(buffer) == 3
    assert bytes(capture.buffer) == b"abc"  # not the stale "zzzzz" after them


def test_input_tee_marks_the_body_exhausted_on_an_empty_read() -> None:
    capture = BodyCapture(10)
    tee = InputTee(RecordingStream(b"ab"), capture)
    assert tee.read(0) == b""
    assert capture.exhausted is False  # asking for nothing says nothing about the end
    assert tee.read(2) == b"ab"
    assert capture.exhausted is False
    assert tee.read(5) == b""
    assert capture.exhausted is True
    at_end = BodyCapture(10)
    InputTee(RecordingStream(b""), at_end).read()
    assert at_end.exhausted is True


@pytest.mark.parametrize("stream_class", [RecordingStream, RecordingReadintoStream])
def test_input_tee_readinto_marks_the_body_exhausted(stream_class: type) -> None:
    capture = BodyCapture(10)
    tee = InputTee(stream_class(b"ab"), capture)
    assert tee.readinto(bytearray(0)) == 0
    assert capture.exhausted is False
    assert tee.readinto(bytearray(5)) == 2
    assert capture.exhausted is False
    assert tee.readinto(bytearray(5)) == 0
    assert capture.exhausted is True


def test_input_tee_seek_passes_through_a_stream_whose_seek_returns_none() -> None:
    """A stream whose seek() returns None (as Werkzeug's FileWrapper's does) seeks as
    untracked: the tee follows it through tell()."""

    class OldStyle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._io = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self._io.readinto(buffer)

        def seek(self, *args: Any) -> None:  # type: ignore[override]
            self._io.seek(*args)

        def tell(self) -> int:
            return self._io.tell()

    capture = BodyCapture(100)
    tee = InputTee(OldStyle(b"a=1&b=2"), capture)
    assert tee.read() == b"a=1&b=2"
    assert tee.seek(0) is None
    assert tee.read() == b"a=1&b=2"
    assert bytes(capture.buffer) == b"a=1&b=2"
    assert capture.size == 7


def test_input_tee_copies_bytes_at_their_place_after_a_forward_seek() -> None:
    """Bytes read after a seek past what was copied are not copied as the body's start."""
    capture = BodyCapture(100)
    tee = InputTee(io.BytesIO(b"0123456789"), capture)
    assert tee.read(3) == b"012"
    tee.seek(-2, 2)
    assert tee.read() == b"89"
    tee.seek(0)
    assert tee.read() == b"0123456789"
    assert bytes(capture.buffer) == b"0123456789"
    assert capture.size == 10


def test_input_tee_seek_back_before_where_the_tee_began() -> None:
    """A middleware read the first bytes before the tracker wrapped the stream; the app seeks
    back to the stream's start and reads it all: the bytes the tee copied are not copied
    again."""
    stream = io.BytesIO(b"HEADbody")
    assert stream.read(4) == b"HEAD"
    capture = BodyCapture(100)
    tee = InputTee(stream, capture)
    assert tee.read() == b"body"
    tee.seek(0)
    assert tee.read() == b"HEADbody"
    assert bytes(capture.buffer) == b"body"
    assert capture.size == 4


def test_input_tee_gives_the_app_its_data_even_when_the_copy_failed() -> None:
    capture = BodyCapture(10)
    capture.failed = True
    tee = InputTee(RecordingStream(DATA), capture)
    assert tee.read(4) == DATA[:4]
    assert tee.readline() == DATA[4:9]
    assert bytes(capture.buffer) == b""


def test_input_tee_passes_other_attributes_through() -> None:
    stream = RecordingStream(DATA)
    tee = InputTee(stream, BodyCapture(10))
    assert tee.custom_attribute == "passed through"
    tee.close()
    assert stream.calls == [("close", None)]
    with pytest.raises(AttributeError):
        _ = tee.no_such_attribute


@pytest.mark.parametrize("stream_class", [RecordingStream, RecordingReadintoStream])
def test_input_tee_never_reads_more_than_the_caller_asked(stream_class: type) -> None:
    stream = stream_class(b"x" * 10_000)
    tee = InputTee(stream, BodyCapture(10))
    tee.read(3)
    tee.readinto(bytearray(7))
    tee.readline(5)
    assert stream.largest_read() <= 7
    assert [size for name, size in stream.calls if name == "readline"] == [5]
    assert tee.read(0) == b""
    assert stream.calls[-1] == ("read", 0)


@pytest.mark.parametrize("stream_class", [RecordingStream, RecordingReadintoStream])
def test_limited_stream_over_the_tee_copies_exactly_what_the_app_read(stream_class: type) -> None:
    body = b"0123456789" * 30
    underlying = stream_class(body + b"EXTRA-BEYOND-CONTENT-LENGTH")
    capture = BodyCapture(1000)
    stream = LimitedStream(InputTee(underlying, capture), len(body))  # as Flask builds it
    assert stream.read(7) == body[:7]
    assert bytes(capture.buffer) == body[:7]
    assert stream.readline() == body[7:]  # no newline: up to the limit
    assert stream.read() == b""
    assert bytes(capture.buffer) == body
    assert capture.size == len(body)
    assert underlying.largest_read() <= len(body)


def test_werkzeug_request_stream_over_the_tee() -> None:
    body = b"a=1&b=" + b"x" * 500
    underlying = RecordingReadintoStream(body + b"garbage")
    capture = BodyCapture(50)
    environ = make_environ(method="POST", body=body)
    environ["wsgi.input"] = InputTee(underlying, capture)
    request = Request(environ)
    first = request.stream.read(10)
    rest = request.stream.read()
    assert first + rest == body
    assert bytes(capture.buffer) == body[:50]
    assert capture.size == len(body)
    assert capture.truncated is True
    assert underlying.largest_read() <= len(body)


# --------------------------------------------------------------------------------------------
# TrackingMiddleware
# --------------------------------------------------------------------------------------------


def test_middleware_normal_response_finishes_once_before_returning() -> None:
    finish = Finish()
    body = [b"hello", b" world"]
    tracked = middleware(simple_app(body), finish=finish)
    environ = make_environ()
    start = StartResponse()
    result = tracked(environ, start)
    assert result is body  # unwrapped: the app's own iterable
    assert len(finish.states) == 1
    state = finish.states[0]
    assert environ[ENVIRON_KEY] is state
    assert state.finished is True
    assert state.status == "201 CREATED"
    assert state.response_headers == [("Content-Type", "text/plain"), ("X-A", "1")]
    assert start.calls == [("201 CREATED", state.response_headers, None)]
    assert state.exception is None
    assert state.execution_time is not None and state.execution_time >= 0
    assert state.total_time is not None and state.total_time >= state.execution_time
    assert state.environ is not None and state.environ is not environ
    assert state.environ["PATH_INFO"] == "/path"
    assert state.environ["REQUEST_METHOD"] == "GET"
    assert "wsgi.input" not in state.environ and ENVIRON_KEY not in state.environ


def test_middleware_start_response_passes_write_and_exc_info_through() -> None:
    exc_info = (ValueError, ValueError("x"), None)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("500 OOPS", [("X-B", "2")], exc_info)
        write(b"legacy write")
        return []

    finish = Finish()
    start = StartResponse()
    assert middleware(app, finish=finish)(make_environ(), start) == []
    assert start.calls == [("500 OOPS", [("X-B", "2")], exc_info)]
    assert start.written == [b"legacy write"]
    assert finish.states[0].status == "500 OOPS"


def test_middleware_app_exception_is_reraised_untouched_and_finished_once() -> None:
    error = ValueError("it broke")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        raise error

    finish = Finish()
    on_error = OnError()
    with pytest.raises(ValueError) as excinfo:
        middleware(app, finish=finish, on_error=on_error)(make_environ(), StartResponse())
    assert excinfo.value is error
    assert len(finish.states) == 1
    state = finish.states[0]
    assert state.status == "500 INTERNAL SERVER ERROR"
    assert state.exception == "ValueError: it broke"
    assert state.total_time is not None and state.execution_time == state.total_time
    assert on_error.errors == []


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (SystemExit(1), "SystemExit: 1"),  # gunicorn's worker timeout; a view's sys.exit(1)
        (SystemExit(), "SystemExit"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (GeneratorExit(), "GeneratorExit"),
    ],
)
@pytest.mark.parametrize("started", [False, True], ids=["before", "after-start-response"])
def test_middleware_base_exception_is_reraised_untouched_and_recorded_without_a_status(
    error: BaseException, described: str, started: bool
) -> None:
    """A BaseException that is no Exception ends the request with no response from the app
    (servers close the connection, or answer on their own): no status is recorded, not the
    500 a server answers for an Exception, and the exception is named."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if started:
            start_response("200 OK", [("Content-Type", "text/plain")])
        raise error

    finish = Finish()
    on_error = OnError()
    with pytest.raises(BaseException) as excinfo:
        middleware(app, finish=finish, on_error=on_error)(make_environ(), StartResponse())
    assert excinfo.value is error
    [state] = finish.states
    assert (state.status, state.exception) == (None, described)
    assert state.total_time is not None and state.execution_time == state.total_time
    assert on_error.errors == []


def test_middleware_streamed_response_finishes_once_read_to_its_end() -> None:
    body = Body([b"a", b"bb", b"ccc"])
    finish = Finish()
    result = middleware(streaming_app(body), finish=finish)(make_environ(), StartResponse())
    assert finish.states == []
    iterator = iter(result)
    assert next(iterator) == b"a"
    assert finish.states == []
    assert list(iterator) == [b"bb", b"ccc"]
    assert len(finish.states) == 1  # read to its end: the test client may never close it
    assert body.closed == 0
    result.close()  # type: ignore[attr-defined]
    assert body.closed == 1
    assert len(finish.states) == 1
    state = finish.states[0]
    assert bytes(state.response_body.buffer) == b"abbccc"
    assert state.execution_time is not None and state.total_time is not None
    assert state.total_time >= state.execution_time


def test_middleware_streamed_response_closed_before_its_end_finishes_on_close() -> None:
    body = Body([b"a", b"b"])
    finish = Finish()
    result = middleware(streaming_app(body), finish=finish)(make_environ(), StartResponse())
    iterator = iter(result)
    assert next(iterator) == b"a"
    result.close()  # type: ignore[attr-defined]  # the client left
    assert body.closed == 1 and len(finish.states) == 1
    assert bytes(finish.states[0].response_body.buffer) == b"a"


def test_middleware_streamed_response_closed_before_iterating_closes_the_app_iterable() -> None:
    body = Body([b"a"])
    finish = Finish()
    result = middleware(streaming_app(body), finish=finish)(make_environ(), StartResponse())
    result.close()  # type: ignore[attr-defined]
    assert (body.closed, body.yielded, len(finish.states)) == (1, 0, 1)


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (ValueError("mid-stream"), "ValueError: mid-stream"),
        (SystemExit(1), "SystemExit: 1"),  # gunicorn's worker timeout while it streams
        (KeyboardInterrupt(), "KeyboardInterrupt"),
    ],
)
def test_middleware_streamed_exception_is_noted_reraised_and_ends_the_record(
    error: BaseException, described: str
) -> None:
    """The status went out with the first chunk and stays; the record names what cut the body
    short, an Exception or not."""

    class Broken(Body):
        def __iter__(self) -> Iterator[bytes]:
            yield b"first"
            raise error

    finish = Finish()
    result = middleware(streaming_app(Broken([])), finish=finish)(make_environ(), StartResponse())
    stream = iter(result)
    assert next(stream) == b"first"
    with pytest.raises(BaseException) as excinfo:
        next(stream)
    assert excinfo.value is error
    [state] = finish.states
    assert (state.status, state.exception) == ("200 OK", described)
    assert bytes(state.response_body.buffer) == b"first"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValueError("before any byte"), "500 INTERNAL SERVER ERROR"),
        (SystemExit(1), None),  # gunicorn's worker timeout before the stream's first chunk
        (KeyboardInterrupt(), None),
    ],
)
def test_middleware_stream_that_raised_before_its_first_byte_keeps_no_status_it_never_sent(
    error: BaseException, status: str | None
) -> None:
    """A server sends the status line with the body's first chunk (with its first non-empty
    one, says PEP 3333, as waitress does): a stream that raised before yielding any sent no
    200. As when the app raised before returning, the server answers an Exception with a 500,
    and a SystemExit or KeyboardInterrupt with nothing."""

    class Broken(Body):
        def __iter__(self) -> Iterator[bytes]:
            raise error
            yield b"never"

    finish = Finish()
    result = middleware(streaming_app(Broken([])), finish=finish)(make_environ(), StartResponse())
    with pytest.raises(BaseException) as excinfo:
        list(result)
    assert excinfo.value is error
    [state] = finish.states
    assert (state.status, state.response_headers, state.response_body) == (status, (), None)
    assert state.exception is not None


@pytest.mark.parametrize("how", ["closed", "dropped"])
def test_middleware_streamed_response_left_by_the_server_is_no_exception(how: str) -> None:
    """A server that stops reading a stream (the client left) closes the response, or drops
    its iterator, which Python closes with GeneratorExit at the tee's yield: the client got
    what was sent, and nothing raised in the app."""
    body = Body([b"a", b"b"])
    finish = Finish()
    result = middleware(streaming_app(body), finish=finish)(make_environ(), StartResponse())
    stream = iter(result)
    assert next(stream) == b"a"
    if how == "closed":
        result.close()  # type: ignore[attr-defined]
    stream.close()  # type: ignore[attr-defined]  # what dropping the iterator does
    [state] = finish.states
    assert (state.status, state.exception) == ("200 OK", None)
    assert bytes(state.response_body.buffer) == b"a"


def test_middleware_streamed_chunks_are_the_apps_own() -> None:
    chunks = [b"one", bytearray(b"two"), b"three"]
    body = Body(chunks)
    result = middleware(streaming_app(body))(make_environ(), StartResponse())
    received = list(result)
    assert received == chunks
    assert all(got is sent for got, sent in zip(received, chunks))


def test_middleware_close_twice_finishes_once() -> None:
    finish = Finish()
    result = middleware(streaming_app(Body([b"x"])), finish=finish)(make_environ(), StartResponse())
    list(result)
    result.close()  # type: ignore[attr-defined]
    result.close()  # type: ignore[attr-defined]
    assert len(finish.states) == 1


def test_middleware_client_disconnect_mid_stream_finishes_once() -> None:
    body = Body([b"a", b"b", b"c"])
    finish = Finish()
    result = middleware(streaming_app(body), finish=finish)(make_environ(), StartResponse())
    iterator = iter(result)
    assert next(iterator) == b"a"
    result.close()  # type: ignore[attr-defined]
    assert body.yielded == 1
    assert body.closed == 1
    assert len(finish.states) == 1


def test_middleware_app_iterable_close_error_propagates_and_still_finishes() -> None:
    error = OSError("close failed")
    body = Body([b"a"], close_error=error)
    finish = Finish()
    on_error = OnError()
    result = middleware(streaming_app(body), finish=finish, on_error=on_error)(
        make_environ(), StartResponse()
    )
    list(result)
    with pytest.raises(OSError) as excinfo:
        result.close()  # type: ignore[attr-defined]
    assert excinfo.value is error
    assert len(finish.states) == 1
    assert on_error.errors == []


def test_middleware_snapshot_error_in_close_is_reported_and_still_finishes() -> None:
    class UncopyableEnviron(dict):  # type: ignore[type-arg]
        def copy(self) -> dict[str, Any]:
            raise RuntimeError("no copy")

    on_error = OnError()
    finish = Finish()
    environ = UncopyableEnviron(make_environ())  # snapshot_environ fails inside _close
    body = Body([b"a"])
    result = middleware(streaming_app(body), finish=finish, on_error=on_error)(
        environ, StartResponse()
    )
    assert list(result) == [b"a"]
    result.close()  # type: ignore[attr-defined]
    assert body.closed == 1
    assert [str(error) for error in on_error.errors] == ["no copy"]
    assert len(finish.states) == 1
    assert finish.states[0].total_time is not None


class BrokenWriter:
    def __init__(self) -> None:
        self.calls = 0

    def submit(self, state: Any, size: int) -> bool:
        self.calls += 1
        raise RuntimeError("writer bug")


def wired_middleware(app: Any) -> tuple[TrackingMiddleware, Any]:
    """The middleware wired as ``init_app`` does, to the real ``finish`` and ``on_error``."""
    tracking = Tracking()
    verdicts = EndpointVerdicts(Flask("wired"), {}, track_by_default=True)
    tracked = _AppTracking(load_config({}), BrokenWriter(), verdicts)  # type: ignore[arg-type]
    tracked_middleware = TrackingMiddleware(
        app,
        tracked.policy,
        100,
        finish=tracking._finisher(tracked),
        on_error=lambda: tracking._count_error(tracked),
    )
    return tracked_middleware, tracked


def test_wired_finish_error_in_close_is_swallowed_and_counted() -> None:
    body = Body([b"a", b"b"])
    tracked_middleware, tracked = wired_middleware(streaming_app(body))
    result = tracked_middleware(make_environ(), StartResponse())
    assert list(result) == [b"a", b"b"]
    result.close()  # type: ignore[attr-defined]  # does not raise
    result.close()  # type: ignore[attr-defined]  # not retried
    assert body.closed == 2
    assert tracked.writer.calls == 1
    assert tracked.capture_errors == 1


def test_wired_finish_error_on_a_normal_response_is_swallowed_and_counted() -> None:
    body = [b"ok"]
    tracked_middleware, tracked = wired_middleware(simple_app(body))
    start = StartResponse()
    assert tracked_middleware(make_environ(), start) is body
    assert start.calls[0][0] == "201 CREATED"
    assert tracked.capture_errors == 1


def test_wired_finish_error_after_an_app_exception_keeps_the_apps_exception() -> None:
    app_error = ValueError("app")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise app_error

    tracked_middleware, tracked = wired_middleware(app)
    with pytest.raises(ValueError) as excinfo:
        tracked_middleware(make_environ(), StartResponse())
    assert excinfo.value is app_error
    assert excinfo.value.__context__ is None
    assert tracked.capture_errors == 1


def test_middleware_excluded_request_goes_straight_to_the_app() -> None:
    seen: dict[str, Any] = {}
    body = [b"untracked"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["environ"] = environ
        seen["start_response"] = start_response
        seen["input"] = environ["wsgi.input"]
        start_response("200 OK", [])
        return body

    finish = Finish()
    environ = make_environ(method="POST", body=b"payload")
    original_input = environ["wsgi.input"]
    start = StartResponse()
    result = middleware(app, policy=FakePolicy(track=False), finish=finish)(environ, start)
    assert result is body
    assert seen["start_response"] is start
    assert seen["environ"] is environ
    assert seen["input"] is original_input
    assert ENVIRON_KEY not in environ
    assert finish.states == []


def untracked_answer(app: Callable[..., Any], environ: dict[str, Any]) -> tuple[Any, ...]:
    start = StartResponse()
    result = app(environ, start)
    return start.calls, b"".join(result)


@pytest.mark.parametrize("kind", ["fake", "real"])
def test_middleware_policy_error_is_swallowed_and_the_app_answers_as_untracked(kind: str) -> None:
    app = simple_app()
    expected = untracked_answer(app, make_environ(method="POST", body=b"data"))
    finish = Finish()
    on_error = OnError()
    if kind == "fake":
        policy: Any = RaisingPolicy()
    else:  # a real Policy that fails on a non-WSGI PATH_INFO
        policy = Policy(load_config({"TRACKING_EXCLUDE": ["/x"]}))
    environ = make_environ(method="POST", body=b"data")
    environ["PATH_INFO"] = 123
    tracked = middleware(app, policy=policy, finish=finish, on_error=on_error)
    start = StartResponse()
    result = tracked(environ, start)
    assert (start.calls, b"".join(result)) == expected
    assert finish.states == []
    assert len(on_error.errors) == 1
    assert ENVIRON_KEY not in environ


def test_middleware_start_error_is_swallowed_and_the_app_gets_the_original_start_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_start(self: TrackingMiddleware, environ: dict[str, Any]) -> None:
        raise RuntimeError("start bug")

    monkeypatch.setattr(TrackingMiddleware, "_start", broken_start)
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(start_response)
        start_response("200 OK", [("X", "y")])
        return [b"fine"]

    finish = Finish()
    on_error = OnError()
    start = StartResponse()
    result = middleware(app, finish=finish, on_error=on_error)(make_environ(), start)
    assert result == [b"fine"]
    assert seen == [start]
    assert start.calls == [("200 OK", [("X", "y")], None)]
    assert finish.states == []
    assert len(on_error.errors) == 1


def test_middleware_tees_the_request_body_as_the_app_reads_it() -> None:
    body = b"x" * 30 + b"y" * 30

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        got = stream.read(20) + stream.read(40)
        start_response("200 OK", [])
        return [str(len(got)).encode()]

    finish = Finish()
    environ = make_environ(method="POST", body=body)
    underlying = environ["wsgi.input"]
    result = middleware(app, finish=finish, limit=25)(environ, StartResponse())
    assert result == [b"60"]
    assert isinstance(environ["wsgi.input"], InputTee)
    capture = finish.states[0].request_body
    assert capture is not None
    assert bytes(capture.buffer) == body[:25]
    assert capture.size == 60
    assert underlying.calls == [("read", 20), ("read", 40)]


@pytest.mark.parametrize(
    ("extra", "wrapped"),
    [
        ({}, False),
        ({"CONTENT_LENGTH": ""}, False),
        ({"CONTENT_LENGTH": "0"}, False),
        ({"CONTENT_LENGTH": "12"}, True),
        ({"CONTENT_LENGTH": "abc"}, True),  # Werkzeug decides what malformed means
        ({"HTTP_TRANSFER_ENCODING": "Chunked"}, True),
        ({"HTTP_TRANSFER_ENCODING": "gzip, chunked"}, True),
        ({"HTTP_TRANSFER_ENCODING": "gzip"}, False),
    ],
)
def test_middleware_tees_wsgi_input_only_when_a_body_may_come(
    extra: dict[str, str], wrapped: bool
) -> None:
    environ = make_environ(method="POST", **extra)
    original = environ["wsgi.input"]
    finish = Finish()
    serve(middleware(simple_app(), finish=finish), environ)
    assert (environ["wsgi.input"] is not original) is wrapped
    assert (finish.states[0].request_body_omitted == "unread") is wrapped  # the app read none


def test_middleware_bodies_excluded_by_policy() -> None:
    environ = make_environ(method="POST", body=b"secret")
    original = environ["wsgi.input"]
    finish = Finish()
    middleware(simple_app(), policy=FakePolicy(keep_bodies=False), finish=finish)(
        environ, StartResponse()
    )
    state = finish.states[0]
    assert environ["wsgi.input"] is original
    assert state.request_body is None
    assert state.request_body_omitted == state.response_body_omitted == "excluded"


def test_middleware_keeps_a_snapshot_taken_inside_the_app() -> None:
    snapshot = {"PATH_INFO": "/from-after-request"}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ[ENVIRON_KEY].environ = snapshot
        start_response("200 OK", [])
        return []

    finish = Finish()
    middleware(app, finish=finish)(make_environ(), StartResponse())
    assert finish.states[0].environ is snapshot


def test_middleware_response_bytes_equal_the_untracked_apps() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        state = environ.get(ENVIRON_KEY)
        if state is not None:
            state.streamed = True
        return (bytes([i]) * i for i in range(1, 50))

    plain_start = StartResponse()
    plain = b"".join(app(make_environ(), plain_start))
    tracked_start = StartResponse()
    result = middleware(app)(make_environ(), tracked_start)
    assert b"".join(result) == plain
    result.close()  # type: ignore[attr-defined]
    assert tracked_start.calls == plain_start.calls


# --------------------------------------------------------------------------------------------
# snapshot_environ, snapshot_request, describe_exception
# --------------------------------------------------------------------------------------------


def test_snapshot_environ_copies_the_environ_without_its_objects() -> None:
    environ = make_environ(method="POST", body=b"x", HTTP_X_CUSTOM="v", CONTENT_TYPE="text/plain")
    environ.update(
        {
            ENVIRON_KEY: RequestState(),
            "wsgi.errors": io.StringIO(),
            "wsgi.file_wrapper": object,
            "werkzeug.request": object(),
            "werkzeug.socket": object(),
            "werkzeug.proxy_fix.orig": {"REMOTE_ADDR": "10.0.0.1"},
            "gunicorn.socket": object(),
            "wsgi.early_hints": lambda headers: None,
            "gunicorn.http2.priority_weight": 16,
            "gunicorn.http2.priority_depends_on": 0,
            "waitress.client_disconnected": lambda: False,
            "uwsgi.core": 1,
            "uwsgi.node": b"host",
            "uwsgi.version": b"2.0.28",
        }
    )
    dropped = [
        ENVIRON_KEY,
        "wsgi.input",
        "wsgi.errors",
        "wsgi.file_wrapper",
        "werkzeug.request",
        "werkzeug.socket",
        "werkzeug.proxy_fix.orig",
        "gunicorn.socket",
        "wsgi.early_hints",
        "gunicorn.http2.priority_weight",
        "gunicorn.http2.priority_depends_on",
        "waitress.client_disconnected",
        "uwsgi.core",
        "uwsgi.node",
        "uwsgi.version",
    ]
    before = dict(environ)
    state = RequestState()
    snapshot_environ(state, environ)
    copy = state.environ
    assert copy is not None and copy is not environ
    assert environ == before  # the app's environ is untouched
    assert copy == {key: value for key, value in before.items() if key not in dropped}
    assert all(type(value) is str for value in copy.values())  # counted by one join
    environ["HTTP_LATER"] = "added after the snapshot"
    assert "HTTP_LATER" not in copy


def test_snapshot_environ_learns_a_layout_once_and_counts_its_keys() -> None:
    from flask_tracking import capture

    environ = make_environ(HTTP_X_LAYOUT_ONCE="v")
    kept = [key for key in environ if key not in capture._ENVIRON_OBJECTS]
    for _ in range(2):  # learnt, then remembered: the same copy and count
        state = RequestState()
        snapshot_environ(state, dict(environ))
        assert state.environ is not None and list(state.environ) == kept
        assert state.environ_key_bytes == sum(len(key) for key in kept)
    assert tuple(environ) in capture._SNAPSHOT_PLANS
    # A key that is no string (not WSGI, but an app's middleware may add one) is kept and
    # not counted; such a layout is not remembered.
    odd: dict[Any, Any] = {"PATH_INFO": "/", 7: "seven", "wsgi.input": io.BytesIO()}
    state = RequestState()
    snapshot_environ(state, odd)
    assert state.environ == {"PATH_INFO": "/", 7: "seven"}
    assert state.environ_key_bytes == len("PATH_INFO")
    assert tuple(odd) not in capture._SNAPSHOT_PLANS


def test_snapshot_environ_keeps_a_non_ascii_path_raw_and_the_record_decodes_it() -> None:
    raw = "/café/日本".encode().decode("latin-1")  # how a WSGI server passes it
    state = RequestState()
    snapshot_environ(state, make_environ(path=raw))
    assert state.environ is not None and state.environ["PATH_INFO"] == raw
    assert to_document(state)["path"] == "/café/日本" == Request(make_environ(path=raw)).path


def test_snapshot_environ_with_missing_keys() -> None:
    state = RequestState()
    snapshot_environ(state, {})
    assert state.environ == {}
    document = to_document(state)
    assert document["path"] == "/"
    assert document["ip"] is None
    assert document["request_headers"] == []


def test_describe_exception() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    assert describe_exception(ValueError("bad value")) == "ValueError: bad value"
    assert describe_exception(KeyError("k")) == "KeyError: 'k'"
    assert describe_exception(RuntimeError()) == "RuntimeError"
    assert describe_exception(Unprintable()) == "Unprintable: <unprintable>"


def test_note_exception_keeps_the_first() -> None:
    state = RequestState()
    state.note_exception(ValueError("first"))
    state.note_exception(TypeError("second"))
    assert state.exception == "ValueError: first"


class FakeUser:
    def __init__(self, authenticated: bool, user_id: Any) -> None:
        self.is_authenticated = authenticated
        self._id = user_id

    def get_id(self) -> Any:
        return self._id


class FakeDocumentUser(FakeUser):
    _class_name = "User"
    pk = "abc123"

    @classmethod
    def _get_collection_name(cls) -> str:
        return "users"


def fake_request(environ: dict[str, Any], **attributes: Any) -> SimpleNamespace:
    """A stand-in for a Flask request; like Flask's, its endpoint is its url_rule's."""
    rule, endpoint = attributes.pop("rule", None), attributes.pop("endpoint", None)
    url_rule = None if rule is None else SimpleNamespace(rule=rule, endpoint=endpoint)
    return SimpleNamespace(environ=environ, url_rule=url_rule, endpoint=endpoint, **attributes)


def test_snapshot_request_fields_custom_data_and_user() -> None:
    state = RequestState()
    request = fake_request(
        make_environ(path="/items/3"),
        rule="/items/<int:id>",
        endpoint="item",
        _tracking_data={"order": 42},
    )
    snapshot_request(state, request, FakeDocumentUser(True, 7), 1000)
    assert state.environ is not None
    assert state.environ["PATH_INFO"] == "/items/3"
    assert state.endpoint == "item"
    assert state.url_rule == "/items/<int:id>"
    assert state.custom_data == {"order": 42}
    assert state.custom_data_size > 0
    assert state.user_id == "7"
    assert state.user_ref == ("User", "users", "abc123")


def test_snapshot_request_without_rule_data_or_user() -> None:
    state = RequestState()
    snapshot_request(state, fake_request(make_environ()), None, 1000)
    assert state.environ is not None
    assert state.endpoint is None and state.url_rule is None
    assert state.custom_data is None and state.custom_data_size == 0
    assert state.user_id is None and state.user_ref is None


def test_snapshot_request_reads_no_body() -> None:
    environ = make_environ(method="POST", body=b"unread body")
    underlying = environ["wsgi.input"]
    snapshot_request(RequestState(), fake_request(environ), None, 1000)
    assert underlying.calls == []


def test_snapshot_request_anonymous_and_plain_users() -> None:
    anonymous = RequestState()
    snapshot_request(anonymous, fake_request(make_environ()), FakeUser(False, 1), 1000)
    assert anonymous.user_id is None
    plain = RequestState()
    snapshot_request(plain, fake_request(make_environ()), FakeUser(True, None), 1000)
    assert plain.user_id is None and plain.user_ref is None
    named = RequestState()
    snapshot_request(named, fake_request(make_environ()), FakeUser(True, "bob"), 1000)
    assert named.user_id == "bob" and named.user_ref is None


# --------------------------------------------------------------------------------------------
# A request body the app left unread
# --------------------------------------------------------------------------------------------


def body_app(read: int | None = 0, status: str = "200 OK") -> Callable[..., Any]:
    """An app that reads ``read`` bytes of the request body (None: all of it)."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        if read is None:
            stream.read()
        elif read:
            stream.read(read)
        start_response(status, [])
        return [b"done"]

    return app


class SeekableStream(RecordingStream):
    """An in-memory ``wsgi.input`` that can seek, like the test client's; records its calls."""

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._io.tell()

    def seek(self, position: int) -> int:
        self.calls.append(("seek", position))
        return self._io.seek(position)


def test_an_unread_body_on_a_stream_that_cannot_seek_is_never_read() -> None:
    environ = make_environ(method="POST", body=b"z" * 1000)
    environ["wsgi.input"] = underlying = RecordingStream(b"z" * 1000)
    finish = Finish()
    result = middleware(body_app(), finish=finish, limit=10)(environ, StartResponse())
    assert result == [b"done"] and isinstance(result, list)  # finished at once, unwrapped
    assert underlying.calls == []
    (state,) = finish.states
    assert state.request_body is None and state.request_body_omitted == "unread"


def test_a_partly_read_body_keeps_what_the_app_read_marked_truncated() -> None:
    environ = make_environ(method="POST", body=b"0123456789abcdef")
    environ["wsgi.input"] = underlying = RecordingStream(b"0123456789abcdef")
    finish = Finish()
    assert serve(middleware(body_app(read=4), finish=finish, limit=10), environ) == b"done"
    assert underlying.calls == [("read", 4)]
    capture = finish.states[0].request_body
    assert capture is not None and bytes(capture.buffer) == b"0123" and capture.truncated
    assert finish.states[0].request_body_omitted is None


def test_an_unread_seekable_body_is_copied_and_the_position_put_back() -> None:
    environ = make_environ(method="POST", body=b"0123456789abcdef")
    environ["wsgi.input"] = underlying = SeekableStream(b"0123456789abcdef")
    positions: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read(4)
        start_response("200 OK", [])
        return [b"done"]

    finish = Finish()
    assert serve(middleware(app, finish=finish, limit=10), environ) == b"done"
    positions.append(underlying.tell())
    assert underlying.calls == [("read", 4), ("read", 6), ("seek", 4)]
    assert positions == [4]  # where the app left it
    capture = finish.states[0].request_body
    assert capture is not None and bytes(capture.buffer) == b"0123456789"
    assert capture.truncated  # 16 bytes declared, 10 kept


def test_a_seekable_body_that_fits_is_whole_and_never_read_past_its_length() -> None:
    body = b"short"
    environ = make_environ(method="POST", body=body)
    environ["wsgi.input"] = underlying = SeekableStream(body + b"NEXT REQUEST")
    finish = Finish()
    serve(middleware(body_app(), finish=finish, limit=100), environ)
    assert underlying.calls == [("read", 5), ("seek", 0)]
    capture = finish.states[0].request_body
    assert capture is not None and bytes(capture.buffer) == body and not capture.truncated


def test_a_seekable_chunked_body_is_copied_up_to_the_limit() -> None:
    environ = make_environ(method="POST", HTTP_TRANSFER_ENCODING="chunked")
    environ["wsgi.input"] = SeekableStream(b"7 bytes")
    finish = Finish()
    serve(middleware(body_app(), finish=finish, limit=100), environ)
    capture = finish.states[0].request_body
    assert capture is not None and bytes(capture.buffer) == b"7 bytes" and capture.exhausted
    assert not capture.truncated


def test_a_seekable_read_error_is_noted_and_the_position_put_back() -> None:
    class Failing(SeekableStream):
        def read(self, *args: Any) -> bytes:
            raise OSError("gone")

    environ = make_environ(method="POST", body=b"x" * 50)
    environ["wsgi.input"] = underlying = Failing(b"x" * 50)
    finish = Finish()
    on_error = OnError()
    assert serve(middleware(body_app(), finish=finish, on_error=on_error), environ) == b"done"
    assert finish.states[0].request_body_omitted == "unreadable (OSError)"
    assert underlying.calls == [("seek", 0)]
    assert on_error.errors == []


def test_a_stream_whose_seekable_raises_is_not_read() -> None:
    class Odd(RecordingStream):
        def seekable(self) -> bool:
            raise ValueError("I/O operation on closed file")

    environ = make_environ(method="POST", body=b"x" * 50)
    environ["wsgi.input"] = underlying = Odd(b"x" * 50)
    finish = Finish()
    serve(middleware(body_app(), finish=finish), environ)
    assert underlying.calls == []
    assert finish.states[0].request_body_omitted == "unread"


@pytest.mark.parametrize(
    ("content_length", "body", "read", "status", "extra"),
    [
        ("100", b"x" * 100, 12, "200 OK", {}),  # the capture is full
        ("8", b"x" * 8, None, "200 OK", {}),  # the app read the whole body
        ("100", b"x" * 100, 0, "413 REQUEST ENTITY TOO LARGE", {}),  # the app refused it
        (None, b"x" * 100, 0, "200 OK", {"HTTP_TRANSFER_ENCODING": "chunked"}),
    ],
    ids=["capture-full", "whole-body-read", "413", "chunked"],
)
def test_the_tracker_never_reads_a_socket_like_input_and_finishes_at_once(
    content_length: str | None,
    body: bytes,
    read: int | None,
    status: str,
    extra: dict[str, str],
) -> None:
    environ = make_environ(method="POST", **extra)
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    environ["wsgi.input"] = underlying = RecordingStream(body)
    calls_by_app: list[int] = []
    inner = body_app(read=read, status=status)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        result = inner(environ, start_response)
        calls_by_app.append(len(underlying.calls))
        return result

    finish = Finish()
    result = middleware(app, finish=finish, limit=10)(environ, StartResponse())
    assert result == [b"done"] and isinstance(result, list)  # unwrapped
    assert len(finish.states) == 1
    assert len(underlying.calls) == calls_by_app[0]  # the tracker read nothing


def test_no_body_copy_when_the_app_raised() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("no")

    environ = make_environ(method="POST", body=b"x" * 50)
    environ["wsgi.input"] = underlying = SeekableStream(b"x" * 50)
    finish = Finish()
    with pytest.raises(ValueError):
        middleware(app, finish=finish)(environ, StartResponse())
    assert underlying.calls == []
    assert len(finish.states) == 1


def test_an_unread_body_and_a_streamed_response_finish_once() -> None:
    body = Body([b"a", b"b"])
    environ = make_environ(method="POST", body=b"q" * 30)
    environ["wsgi.input"] = underlying = RecordingStream(b"q" * 30)
    finish = Finish()
    result = middleware(streaming_app(body), finish=finish, limit=8)(environ, StartResponse())
    assert finish.states == []
    assert list(result) == [b"a", b"b"]
    result.close()  # type: ignore[attr-defined]
    result.close()  # type: ignore[attr-defined]
    assert body.closed == 2
    assert underlying.calls == []
    assert len(finish.states) == 1 and finish.states[0].request_body_omitted == "unread"


class ForeignStream:
    """A stream that is not the tracker's tee (an inner middleware replaced wsgi.input)."""

    def __init__(self) -> None:
        self.reads = 0

    def seekable(self) -> bool:
        return True

    def read(self, *args: Any) -> bytes:
        self.reads += 1
        return b""


def test_a_replaced_wsgi_input_is_left_alone() -> None:
    foreign = ForeignStream()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"] = foreign  # e.g. a middleware that swapped the body
        start_response("200 OK", [])
        return [b"done"]

    environ = make_environ(method="POST", body=b"original body")
    finish = Finish()
    assert serve(middleware(app, finish=finish, limit=8), environ) == b"done"
    assert foreign.reads == 0
    assert finish.states[0].request_body_omitted == "unread"


def test_no_body_copy_after_a_failed_copy() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ[ENVIRON_KEY].request_body.failed = True  # as after a MemoryError in add()
        start_response("200 OK", [])
        return [b"done"]

    environ = make_environ(method="POST", body=b"x" * 1000)
    environ["wsgi.input"] = underlying = SeekableStream(b"x" * 1000)
    finish = Finish()
    assert serve(middleware(app, finish=finish, limit=10), environ) == b"done"
    assert len(finish.states) == 1
    assert underlying.calls == []


# --------------------------------------------------------------------------------------------
# tee_response_body
# --------------------------------------------------------------------------------------------


class Untouchable:
    """A response body that fails the test if anyone looks at it."""

    def __iter__(self) -> Iterator[bytes]:
        raise AssertionError("the body was iterated")

    def __len__(self) -> int:
        raise AssertionError("the body was measured")


def test_tee_list_body() -> None:
    response = Response(b"hello world")
    body = response.response
    state = RequestState()
    tee_response_body(state, response, 5)
    assert response.response is body
    assert state.streamed is False
    capture = state.response_body
    assert capture is not None
    assert bytes(capture.buffer) == b"hello"
    assert capture.size == 11
    assert capture.truncated is True


def test_tee_one_chunk_body_that_fits_is_shared_not_copied() -> None:
    response = Response(b"hello world")
    state = RequestState()
    tee_response_body(state, response, 11)
    capture = state.response_body
    assert capture is not None
    assert capture.buffer is response.response[0]  # bytes are immutable: no copy needed
    assert (capture.size, capture.truncated, capture.failed) == (11, False, False)
    assert not capture.wants_more(None)


def test_tee_tuple_of_str_and_bytes() -> None:
    response = SimpleNamespace(response=("é", b"ab"), direct_passthrough=False)
    state = RequestState()
    tee_response_body(state, response, 100)
    assert bytes(state.response_body.buffer) == "é".encode() + b"ab"
    assert state.streamed is False


def test_tee_of_a_stream_touches_neither_the_response_nor_the_stream() -> None:
    produced: list[int] = []

    def generate() -> Iterator[bytes]:
        for i in range(4):
            produced.append(i)
            yield f"chunk{i}".encode()

    response = Response(generate())
    body = response.response
    state = RequestState()
    tee_response_body(state, response, 8)
    assert response.response is body  # copied by the middleware as the server reads it
    assert produced == []
    assert state.streamed is True
    capture = state.response_body
    assert capture is not None and capture.size == 0 and capture.limit == 8


def test_tee_direct_passthrough_never_touches_the_body() -> None:
    body = Untouchable()
    response = SimpleNamespace(response=body, direct_passthrough=True)
    state = RequestState()
    state.response_body = BodyCapture(5)  # from an earlier after_request pass
    tee_response_body(state, response, 100)
    assert response.response is body
    assert state.response_body is None
    assert state.response_body_omitted == "passthrough"
    assert state.streamed is True  # recorded once sent, its body passed on uncopied


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 304), ("GET", 204)])
def test_tee_direct_passthrough_sent_without_a_body_records_an_empty_body(
    method: str, status: int
) -> None:
    """send_file answering HEAD, or 304 to a conditional GET: Werkzeug sends no body, so the
    record says so (empty, size 0) like any other HEAD or 304, not "passthrough"."""
    response = SimpleNamespace(response=Untouchable(), direct_passthrough=True, status_code=status)
    state = RequestState()
    state.environ = {"REQUEST_METHOD": method}
    tee_response_body(state, response, 100)
    assert state.response_body_omitted is None
    assert state.response_body is not None
    assert state.response_body.size == 0 and bytes(state.response_body.buffer) == b""
    assert state.streamed is False  # nothing goes by: recorded when the app returns


def test_tee_excluded_never_touches_the_body() -> None:
    body = Untouchable()
    response = SimpleNamespace(response=body, direct_passthrough=False)
    state = RequestState()
    state.response_body_omitted = "excluded"
    tee_response_body(state, response, 100)
    assert response.response is body
    assert state.response_body is None
    assert state.response_body_omitted == "excluded"
    assert state.streamed is False


def test_tee_again_after_passthrough_clears_the_omitted_mark() -> None:
    state = RequestState()
    tee_response_body(state, SimpleNamespace(response=Untouchable(), direct_passthrough=True), 10)
    tee_response_body(state, Response(b"Internal Server Error"), 10)
    assert state.response_body is not None
    assert bytes(state.response_body.buffer) == b"Internal S"
    assert state.response_body_omitted is None
    assert state.streamed is False  # the 500 page is complete: recorded when the app returns


def test_an_error_page_wrapped_by_werkzeug_is_a_complete_body_not_a_stream() -> None:
    from werkzeug.exceptions import Forbidden

    environ = make_environ()
    page = Response.force_type(Forbidden(), environ)  # what Flask does with abort(403)
    assert not page.is_sequence
    state = RequestState()
    tee_response_body(state, page, 10_000)
    assert state.streamed is False
    assert state.response_body is not None
    assert bytes(state.response_body.buffer) == page.get_data()


def test_a_wsgi_app_response_that_streams_stays_a_stream() -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"one"
        yield b"two"

    response = Response.force_type(streaming, make_environ())  # type: ignore[arg-type]
    state = RequestState()
    tee_response_body(state, response, 100)
    assert state.streamed is True
    assert list(response.response) == [b"one", b"two"]  # untouched: the middleware copies
    assert state.response_body is not None and state.response_body.size == 0


def test_a_finished_record_keeps_no_database_context_token() -> None:
    finish = Finish()
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ[ENVIRON_KEY].db_token)
        return simple_app()(environ, start_response)

    tracked = TrackingMiddleware(app, FakePolicy(), 100, finish, OnError(), watch_db=True)
    serve(tracked, make_environ())
    assert seen[0] is not None  # attributed while it ran
    assert finish.states[0].db_token is None  # the queued record no longer holds the context


def uwsgi_file_wrapper(filelike: Any, blksize: int = 8192) -> Any:
    """uWSGI's ``wsgi.file_wrapper``: a function (``uwsgi.sendfile``), not a class; it hands
    the file back and sends it with sendfile() when the app returns that very object."""
    return filelike


def test_a_streamed_response_under_a_function_file_wrapper_is_still_copied() -> None:
    """Under uWSGI every environ has a function ``wsgi.file_wrapper``. A streamed Flask
    response is no file: Werkzeug returns it as a ``ClosingIterator`` (not a generator), and
    ``_from_file_wrapper`` takes anything but a generator for the wrapper's result. The
    stream is then passed on uncopied: its record says 0 bytes went out where 9 did."""
    body = Body([b"one", b"two", b"six"])

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        state = environ[ENVIRON_KEY]
        state.streamed = True  # as tee_response_body marks a stream
        state.response_body = BodyCapture(100)
        return ClosingIterator(iter(body), body.close)  # what Response.get_app_iter returns

    finish = Finish()
    tracked = middleware(app, finish=finish)
    assert serve(tracked, make_environ(**{"wsgi.file_wrapper": uwsgi_file_wrapper})) == (
        b"onetwosix"
    )
    (state,) = finish.states
    assert (state.response_body.size, bytes(state.response_body.buffer)) == (9, b"onetwosix")

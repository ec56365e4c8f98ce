"""Bad input, end to end: awkward custom data, hostile requests, odd responses, Flask-Login.

For every request the app must answer exactly as an untracked twin app answers, and the tracker
must store exactly one record that ``bson.encode`` accepts and that stays within
TRACKING_MAX_RECORD_BYTES (well under MongoDB's 16 MiB), without raising into the app.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import os
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any, Callable

import bson
import pytest
from flask import Flask, Response, abort, g, request, send_file
from werkzeug.test import EnvironBuilder
from werkzeug.wsgi import FileWrapper

from flask_tracking import record_written
from flask_tracking.documents import Tracking as TrackingDocument
from flask_tracking.sanitize import CIRCULAR, TOO_DEEP, TRUNCATED
from flask_tracking.store import CUSTOM_DATA_CUT

from .conftest import add_routes, stored

MB = 1024 * 1024
BODY_LIMIT = 65536  # TRACKING_MAX_BODY_LENGTH default
MONGODB_MAX_BSON = 16 * MB

VARYING = ("Set-Cookie", "Date")

Build = Callable[[Flask], None]
Outcome = tuple[Any, ...]


# ---------------------------------------------------------------------------------- helpers


@pytest.fixture
def twins(make_app: Callable[..., Flask]) -> Callable[..., tuple[Flask, Flask]]:
    """A tracked app and an untracked twin with the same config and views."""

    def factory(
        build: Build | None = None, testing: bool = True, **config: Any
    ) -> tuple[Flask, Flask]:
        tracked = make_app(testing=testing, **config)
        plain = Flask("plain_twin")
        plain.config.update(TESTING=testing, **config)
        add_routes(plain)
        if build is not None:
            build(tracked)
            build(plain)
        return tracked, plain

    return factory


def wsgi_call(app: Flask, environ: dict[str, Any]) -> Outcome:
    """Call the app as a server would (iterate, then close); never raises."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"] = status
        # Set-Cookie (signed with a timestamp) and Date may differ between two runs
        seen["headers"] = [(name, value) for name, value in headers if name not in VARYING]
        seen["cookies"] = sum(1 for name, _ in headers if name == "Set-Cookie")
        return lambda data: None

    try:
        app_iter = app.wsgi_app(environ, start_response)
        try:
            body = b"".join(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
    except Exception as error:  # the app's own error (TESTING propagates): compare it too
        return ("raised", type(error).__name__, str(error))
    return (seen["status"], seen["headers"], seen["cookies"], body)


def same_as_untracked(
    tracked: Flask, plain: Flask, make_environ: Callable[[], dict[str, Any]]
) -> Outcome:
    """Run one request through both apps; assert identical outcomes; return it."""
    outcome = wsgi_call(tracked, make_environ())
    assert outcome == wsgi_call(plain, make_environ())
    return outcome


def assert_storable(app: Flask, doc: dict[str, Any]) -> int:
    """The stored document encodes and respects the per-record byte cap."""
    size = len(bson.encode(doc))
    cap = app.config["TRACKING_MAX_RECORD_BYTES"]
    assert size <= cap < MONGODB_MAX_BSON, f"record of {size} bytes over the cap of {cap}"
    return size


def assert_clean_stats(app: Flask, capture_errors: int = 0) -> None:
    stats = app.extensions["tracking"].stats(app)
    drops = {key: value for key, value in stats.items() if key.startswith("dropped_") and value}
    assert drops == {}, stats
    assert stats["capture_errors"] == capture_errors, stats


def only_record(app: Flask, mongo: Any, capture_errors: int = 0) -> dict[str, Any]:
    docs = stored(app, mongo)
    assert len(docs) == 1, [doc.get("path") for doc in docs]
    assert_storable(app, docs[0])
    assert_clean_stats(app, capture_errors)
    return docs[0]


def environ_for(path: str = "/", **kwargs: Any) -> Callable[[], dict[str, Any]]:
    """A factory of fresh environs (input streams are consumed by each call)."""
    overrides = kwargs.pop("environ_overrides", {})
    raw_body = kwargs.pop("raw_body", None)

    def make() -> dict[str, Any]:
        if raw_body is not None:
            kwargs["input_stream"] = io.BytesIO(raw_body)
        environ = EnvironBuilder(path=path, **kwargs).get_environ()
        for key, value in overrides.items():
            if value is None:  # EnvironBuilder sets CONTENT_LENGTH even for a stream
                environ.pop(key, None)
            else:
                environ[key] = value
        return environ

    return make


# ------------------------------------------------------------------- awkward custom data


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(levels):
        value = {"down": value}
    return value


def self_referencing() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop", "items": []}
    value["self"] = value
    value["items"].append(value["items"])
    return value


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


CUSTOM_UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def check_nested(data: Any) -> None:
    depth = 0
    while isinstance(data, dict) and "down" in data:
        data, depth = data["down"], depth + 1
    assert data == TOO_DEEP
    assert depth <= 40


def check_big_text(data: Any) -> None:
    assert data["blob"].endswith(TRUNCATED)
    assert len(data["blob"]) <= 256 * 1024 + len(TRUNCATED)


def check_big_bytes(data: Any) -> None:
    assert isinstance(data["raw"], bytes)
    assert 0 < len(data["raw"]) <= 256 * 1024


CUSTOM_CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "set": (lambda: {"s": {3, 1, 2}, "mixed": {1, "a"}}, lambda d: d["s"] == [1, 2, 3]),
    "top_level_set": (lambda: {"b", "a"}, lambda d: d == ["a", "b"]),
    "decimal": (lambda: {"price": decimal.Decimal("1.10")}, lambda d: d == {"price": "1.10"}),
    "date": (lambda: {"day": dt.date(2024, 1, 2)}, lambda d: d == {"day": "2024-01-02"}),
    "uuid": (lambda: {"id": CUSTOM_UUID}, lambda d: d == {"id": str(CUSTOM_UUID)}),
    "object": (
        lambda: {"obj": object(), "opaque": Opaque()},
        lambda d: d["obj"].startswith("<object object at") and d["opaque"] == "<Opaque thing>",
    ),
    "int_2_70": (lambda: {"big": 2**70, "neg": -(2**70)}, lambda d: d["big"] == str(2**70)),
    "lone_surrogates": (
        lambda: {"text": "a\ud800b\udfff", "k\udc80": 1},
        lambda d: d == {"text": "a\\ud800b\\udfff", "k\\udc80": 1},
    ),
    "self_reference": (
        self_referencing,
        lambda d: d == {"name": "loop", "items": [CIRCULAR], "self": CIRCULAR},
    ),
    "nesting_150": (lambda: nested(150), check_nested),
    "int_keys": (
        lambda: {1: "one", 2**70: "big", (1, 2): "tuple", None: "none"},
        lambda d: d == {"1": "one", str(2**70): "big", "(1, 2)": "tuple", "None": "none"},
    ),
    "nul_in_keys": (lambda: {"a\x00b": 1, "\x00": 2}, lambda d: d == {"a\\x00b": 1, "\\x00": 2}),
    "dollar_and_dot_keys": (
        lambda: {"$where": 1, "a.b.c": 2, "$": 3, "nested": {"$gt": {"x.y": 4}}},
        lambda d: (
            d
            == {
                "\uff04where": 1,
                "a\uff0eb\uff0ec": 2,
                "\uff04": 3,
                "nested": {"\uff04gt": {"x\uff0ey": 4}},
            }
        ),
    ),
    "text_100_mb": (lambda: {"blob": "x" * (100 * MB)}, check_big_text),
    "bytes_100_mb": (lambda: {"raw": bytes(100 * MB)}, check_big_bytes),
    "everything_at_once": (
        lambda: {
            "set": {1, 2},
            "dec": decimal.Decimal("NaN"),
            "when": dt.datetime(2024, 1, 2, 3, 4, 5),
            "obj": object(),
            "big": 2**70,
            "sur\ud800": "\udfff",
            "loop": self_referencing(),
            "deep": nested(150),
            7: "int key",
            "n\x00ul": 1,
            "$op": {"a.b": 1},
            "blob": "y" * (100 * MB),
        },
        lambda d: d["big"] == str(2**70) and d["7"] == "int key" and d["blob"].endswith(TRUNCATED),
    ),
}


@pytest.mark.parametrize("case", list(CUSTOM_CASES))
def test_awkward_custom_data_is_stored_with_its_batch(
    make_app: Callable[..., Flask], mongo: Any, case: str
) -> None:
    make_value, check = CUSTOM_CASES[case]
    app = make_app(TRACKING_FLUSH_INTERVAL_SECONDS=3600.0)

    @app.get("/awkward")
    def awkward() -> str:
        request._tracking_data = make_value()
        return "awkward"

    batches: list[int] = []
    with record_written.connected_to(lambda sender, count: batches.append(count), app):
        client = app.test_client()
        assert client.get("/hello?n=1").data == b"Hello"
        assert client.get("/awkward").data == b"awkward"
        assert client.get("/hello?n=2").data == b"Hello"
        assert list(mongo["tracking"].find()) == [], "written before the flush: not one batch"
        docs = stored(app, mongo)
    assert batches == [3], "the three records were not written as one batch"
    assert [doc["path"] for doc in docs] == ["/hello", "/awkward", "/hello"]
    for doc in docs:
        assert_storable(app, doc)
    assert_clean_stats(app)
    custom = docs[1]["custom_data"]
    assert check(custom) is not False, custom if len(repr(custom)) < 2000 else case
    # and it reads back through the MongoEngine document
    assert TrackingDocument.objects.get(id=docs[1]["_id"]).custom_data is not None


def test_custom_data_over_the_record_cap_is_replaced_by_a_marker(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # A custom-data budget above the record cap: the record must still fit, with a marker.
    app = make_app(TRACKING_MAX_CUSTOM_DATA_BYTES=8 * MB, TRACKING_FLUSH_INTERVAL_SECONDS=3600.0)

    @app.get("/huge")
    def huge() -> str:
        request._tracking_data = {"blob": "z" * (100 * MB), "also": list(range(10))}
        return "huge"

    client = app.test_client()
    client.get("/hello")
    client.get("/huge")
    hello_doc, huge_doc = stored(app, mongo)
    assert hello_doc["path"] == "/hello"
    assert huge_doc["custom_data"] == CUSTOM_DATA_CUT
    assert huge_doc["response_body"] == b"huge"
    for doc in (hello_doc, huge_doc):
        assert_storable(app, doc)
    assert_clean_stats(app)


# -------------------------------------------------------------------------- bad requests


class LazyZeroInput:
    """A ``wsgi.input`` of ``size`` zero bytes made while it is read (no per-read buffers)."""

    block = bytes(MB)

    def __init__(self, size: int) -> None:
        self.remaining = size

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.remaining
        size = min(size, self.remaining)
        self.remaining -= size
        return self.block if size == MB else bytes(size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self.remaining)
        source = memoryview(self.block)
        done = 0
        while done < count:
            step = min(MB, count - done)
            view[done : done + step] = source[:step]
            done += step
        self.remaining -= count
        return count


def add_mb_counter(app: Flask) -> None:
    @app.post("/count-mb")
    def count_mb() -> str:
        total = 0
        while chunk := request.stream.read(MB):
            total += len(chunk)
        return str(total)


def upload_peak(app: Flask, size: int) -> tuple[Outcome, int, float]:
    """Upload ``size`` bytes through the app; its answer, traced memory peak, and seconds."""
    stream = LazyZeroInput(size)
    environ = EnvironBuilder(path="/count-mb", method="POST").get_environ()
    environ.update({"wsgi.input": stream, "CONTENT_LENGTH": str(size)})
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome = wsgi_call(app, environ)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert stream.remaining == 0, "the upload was not read to its end"
    return outcome, peak, elapsed


def test_2_gb_streamed_upload_keeps_tracker_memory_near_max_body_length(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any
) -> None:
    size = 2 * 1024 * MB
    tracked, plain = twins(add_mb_counter)
    plain_outcome, plain_peak, _ = upload_peak(plain, size)
    outcome, peak, elapsed = upload_peak(tracked, size)
    print(
        f"\n2 GiB upload: tracked {elapsed:.2f}s, traced peak {peak} B (untracked {plain_peak} B)"
    )
    assert outcome == plain_outcome
    assert outcome[-1] == str(size).encode()
    # What the view's 1 MB reads cost is the same with and without the tracker; the tracker
    # adds its 64 KiB body copy and bookkeeping only.
    assert peak - plain_peak < 4 * BODY_LIMIT, (peak, plain_peak)
    assert peak < 6 * MB, peak
    assert elapsed < 30, f"2 GB upload took {elapsed:.1f}s"
    doc = only_record(tracked, mongo)
    assert doc["request_body_size"] == size
    assert doc["request_body"] == bytes(BODY_LIMIT)
    assert doc["request_body_truncated"] is True


def add_upload_views(app: Flask) -> None:
    @app.post("/upload")
    def upload() -> str:
        files = {name: len(f.read()) for name, f in request.files.items()}
        fields = {name: value for name, value in request.form.items()}
        return repr((sorted(fields.items()), sorted(files.items())))

    @app.post("/raw-form")
    def raw_form() -> str:
        return repr(sorted(request.form.items(multi=True)))


CHUNKED = {"Transfer-Encoding": "chunked"}
TERMINATED = {"wsgi.input_terminated": True, "CONTENT_LENGTH": None}
NOT_TERMINATED = {"CONTENT_LENGTH": None}
LATIN1_FORM = b"a=\xff\xfe&b=%ff%00&password=\xe9"
LATIN1_JSON = b'{"k": "\xff\xfe"}'
BIG = bytes(range(256)) * 400  # 102,400 bytes, not valid UTF-8
FORM = "application/x-www-form-urlencoded"
MULTIPART_BODY = (
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="field"\r\n\r\n'
    b"caf\xe9\r\n"
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="f"; filename="bin.dat"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n" + BIG + b"\r\n"
    b"--XyZ--\r\n"
)


# Werkzeug gives up on the whole form (silently, tracked or not) for a non-UTF-8 filename.
MULTIPART_LATIN1_FILENAME = MULTIPART_BODY.replace(b'"bin.dat"', b'"b\xffd.bin"')


def many_headers(count: int, value_size: int) -> dict[str, str]:
    return {f"HTTP_X_HEADER_{i}": f"{i}:" + "v" * value_size for i in range(count)}


REQUEST_CASES: dict[str, tuple[dict[str, Any], Callable[[], dict[str, Any]]]] = {
    "chunked_read": (
        {},
        environ_for(
            "/count", method="POST", raw_body=BIG, headers=CHUNKED, environ_overrides=TERMINATED
        ),
    ),
    "chunked_unread": (
        {},
        environ_for(
            "/ignore", method="POST", raw_body=BIG, headers=CHUNKED, environ_overrides=TERMINATED
        ),
    ),
    "chunked_not_terminated": (
        {},
        environ_for(
            "/count",
            method="POST",
            raw_body=BIG,
            headers=CHUNKED,
            environ_overrides=NOT_TERMINATED,
        ),
    ),
    "chunked_over_max_content_length_read": (
        {"MAX_CONTENT_LENGTH": 1000},
        environ_for(
            "/count", method="POST", raw_body=BIG, headers=CHUNKED, environ_overrides=TERMINATED
        ),
    ),
    "chunked_over_max_content_length_unread": (
        {"MAX_CONTENT_LENGTH": 1000},
        environ_for(
            "/ignore", method="POST", raw_body=BIG, headers=CHUNKED, environ_overrides=TERMINATED
        ),
    ),
    "chunked_over_max_content_length_form": (
        {"MAX_CONTENT_LENGTH": 1000},
        environ_for(
            "/raw-form",
            method="POST",
            raw_body=b"a=" + b"x" * 5000,
            content_type=FORM,
            headers=CHUNKED,
            environ_overrides=TERMINATED,
        ),
    ),
    "over_max_content_length_multipart": (
        {"MAX_CONTENT_LENGTH": 1000},
        environ_for(
            "/upload",
            method="POST",
            raw_body=MULTIPART_BODY,
            content_type="multipart/form-data; boundary=XyZ",
            content_length=len(MULTIPART_BODY),
        ),
    ),
    **{
        f"content_length_{label}_{view.strip('/')}": (
            {},
            environ_for(
                view,
                method="POST",
                raw_body=b"a=1&b=2",
                content_type=FORM,
                environ_overrides={"CONTENT_LENGTH": value},
            ),
        )
        for label, value in (("abc", "abc"), ("negative", "-5"), ("empty", ""))
        for view in ("/ignore", "/raw-form", "/echo", "/count")
    },
    "form_parsed_by_view": (
        {},
        environ_for("/raw-form", method="POST", data={"a": "1", "b": "caf\u00e9", "c": ["x", "y"]}),
    ),
    "multipart_parsed_by_view": (
        {},
        environ_for(
            "/upload",
            method="POST",
            raw_body=MULTIPART_BODY,
            content_type="multipart/form-data; boundary=XyZ",
            content_length=len(MULTIPART_BODY),
        ),
    ),
    "multipart_latin1_filename": (
        {},
        environ_for(
            "/upload",
            method="POST",
            raw_body=MULTIPART_LATIN1_FILENAME,
            content_type="multipart/form-data; boundary=XyZ",
            content_length=len(MULTIPART_LATIN1_FILENAME),
        ),
    ),
    "non_utf8_raw_body": (
        {},
        environ_for("/count", method="POST", raw_body=BIG, content_length=len(BIG)),
    ),
    "non_utf8_form": (
        {},
        environ_for(
            "/raw-form",
            method="POST",
            raw_body=LATIN1_FORM,
            content_type=FORM,
            content_length=len(LATIN1_FORM),
        ),
    ),
    "non_utf8_json": (
        {},
        environ_for(
            "/echo",
            method="POST",
            raw_body=LATIN1_JSON,
            content_type="application/json",
            content_length=len(LATIN1_JSON),
        ),
    ),
    "nul_in_path": ({}, environ_for("/", environ_overrides={"PATH_INFO": "/hello\x00"})),
    "ff_in_path": ({}, environ_for("/", environ_overrides={"PATH_INFO": "/h\xffllo/\x00\xff"})),
    "percent_nul_ff_in_query": ({}, environ_for("/hello", query_string="a=%00&b=%ff&%ff=%00")),
    "raw_nul_ff_in_query": (
        {},
        environ_for("/hello", environ_overrides={"QUERY_STRING": "a=\x00&b=\xff&\xff\xfe=\xe9"}),
    ),
    "latin1_headers": (
        {},
        environ_for(
            "/hello",
            environ_overrides={
                "HTTP_X_LATIN": "caf\xe9 \xff\x80\x00",
                "HTTP_USER_AGENT": "Mozilla/5.0 (\xe9\xff) Gecko/20100101 Firefox/120.0",
                "HTTP_REFERER": "http://r\xe9/?password=\xff&q=\xe9",
                "HTTP_ACCEPT_LANGUAGE": "\xe9\xff;q=0.9",
                "HTTP_COOKIE": "s=\xff",
            },
        ),
    ),
    "10000_headers": ({}, environ_for("/hello", environ_overrides=many_headers(10_000, 8))),
    "10000_headers_of_300_bytes": (
        {},
        environ_for("/hello", environ_overrides=many_headers(10_000, 300)),
    ),
}


@pytest.mark.parametrize("case", list(REQUEST_CASES))
def test_bad_requests_answer_as_untracked_and_yield_one_record(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any, case: str
) -> None:
    config, make_environ = REQUEST_CASES[case]
    tracked, plain = twins(add_upload_views, **config)
    outcome = same_as_untracked(tracked, plain, make_environ)
    doc = only_record(tracked, mongo)
    if outcome[0] != "raised":
        assert doc["status_code"] == int(outcome[0].split()[0])
    for prefix in ("request", "response"):
        body = doc[f"{prefix}_body"]
        assert body is None or len(body) <= BODY_LIMIT
    if case == "chunked_read":
        assert outcome[-1] == str(len(BIG)).encode()
        assert doc["request_body"] == BIG[:BODY_LIMIT]
        assert doc["request_body_size"] == len(BIG)
    elif case == "non_utf8_raw_body":
        assert doc["request_body"] == BIG[:BODY_LIMIT]
    elif case == "multipart_parsed_by_view":
        assert outcome[-1] == repr(([("field", "caf\ufffd")], [("f", len(BIG))])).encode()
        assert doc["request_body"] == MULTIPART_BODY[:BODY_LIMIT]
        assert doc["request_body_size"] == len(MULTIPART_BODY)
    elif case == "form_parsed_by_view":
        assert doc["request_body"] == b"a=1&b=caf%C3%A9&c=x&c=y"
    elif case == "10000_headers":
        assert len(doc["request_headers"]) >= 10_000
    elif case == "10000_headers_of_300_bytes":
        assert 0 < len(doc["request_headers"]) < 10_000  # cut to fit the record cap
    elif case == "latin1_headers":
        assert ["X-Latin", "caf\xe9 \xff\x80\x00"] in doc["request_headers"]
    elif case.endswith("in_path"):
        assert doc["status_code"] == 404
        assert "\ufffd" in doc["path"] or "\x00" in doc["path"]


OVERSIZED = 3 * MB


def add_boom_view(app: Flask) -> None:
    @app.get("/huge-error")
    def huge_error() -> str:
        raise ValueError("x" * OVERSIZED)


# (A multi-megabyte User-Agent is left out: parsing it alone keeps the writer busy for 20+ s,
# see test_long_user_agents_do_not_stall_the_writer.)
@pytest.mark.parametrize(
    "make_environ",
    [
        pytest.param(environ_for("/hello", query_string="q=" + "a" * OVERSIZED), id="query"),
        pytest.param(environ_for("/hello", headers={"Referer": "r" * OVERSIZED}), id="referer"),
        pytest.param(environ_for("/" + "p" * OVERSIZED), id="path"),
        pytest.param(environ_for("/huge-error"), id="exception"),
    ],
)
def test_oversized_request_fields_are_cut_not_dropped(
    twins: Callable[..., tuple[Flask, Flask]],
    mongo: Any,
    make_environ: Callable[[], dict[str, Any]],
) -> None:
    tracked, plain = twins(add_boom_view, testing=False)
    same_as_untracked(tracked, plain, make_environ)
    only_record(tracked, mongo)


def test_long_user_agents_do_not_stall_the_writer(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app()
    client = app.test_client()
    for i in range(6):  # 64 KiB: what Werkzeug's own server accepts in one header line
        user_agent = f"Mozilla/5.0 (X11; {i}) " + "(compatible; " * 5000
        assert client.get("/hello", headers={"User-Agent": user_agent}).data == b"Hello"
    started = time.perf_counter()
    docs = stored(app, mongo, timeout=60)
    elapsed = time.perf_counter() - started
    assert len(docs) == 6
    for doc in docs:
        assert_storable(app, doc)
    assert elapsed < 1.0, f"the writer needed {elapsed:.1f}s for 6 records"


class StalledInput:
    """A client that sent its headers (Content-Length: 1 MB) and then nothing: each read waits
    for the server's socket timeout, then fails."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        time.sleep(self.timeout)
        raise TimeoutError("timed out")

    def readinto(self, buffer: Any) -> int:
        return len(self.read(len(buffer)))


def test_a_rejected_upload_is_answered_before_the_tracker_reads_its_body(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any
) -> None:
    """The tracker never reads a body the view left unread from a stream that cannot seek, so
    a stalled client never delays the answer, nor the next request."""

    def build(app: Flask) -> None:
        @app.post("/reject")
        def reject() -> tuple[str, int]:
            return "unauthorized", 401

    tracked, plain = twins(build)
    for app in (plain, tracked):
        stream = StalledInput(timeout=0.2)
        environ = EnvironBuilder(path="/reject", method="POST").get_environ()
        environ.update({"wsgi.input": stream, "CONTENT_LENGTH": str(MB)})
        statuses: list[str] = []
        started = time.perf_counter()
        app_iter = app.wsgi_app(
            environ, lambda status, headers, *rest, seen=statuses: seen.append(status)
        )
        body = b"".join(app_iter)
        answered = time.perf_counter() - started
        assert (statuses, body) == (["401 UNAUTHORIZED"], b"unauthorized")
        assert stream.reads == 0, "the body was read before the answer was complete"
        assert answered < 0.1
        close = getattr(app_iter, "close", None)
        if close is not None:
            close()
    assert stream.reads == 0  # not even after the answer
    doc = only_record(tracked, mongo)
    assert doc["status_code"] == 401
    assert doc["request_body"] is None and doc["request_body_omitted"] == "unread"


# ------------------------------------------------------------------------- odd responses


def test_ten_1_mb_chunks_stream_through_before_the_generator_finishes(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any
) -> None:
    produced: list[int] = []

    def build(app: Flask) -> None:
        @app.get("/big-stream")
        def big_stream() -> Response:
            def generate() -> Iterator[bytes]:
                for i in range(10):
                    produced.append(i)
                    yield bytes([65 + i]) * MB

            return Response(generate(), mimetype="application/octet-stream")

    tracked, plain = twins(build)
    statuses: list[str] = []
    environ = EnvironBuilder(path="/big-stream").get_environ()
    app_iter = tracked.wsgi_app(environ, lambda status, headers, *rest: statuses.append(status))
    try:
        iterator = iter(app_iter)
        first = next(iterator)
        assert statuses == ["200 OK"]
        assert first == b"A" * MB
        assert produced == [0], "the tracker read ahead of the client"
        assert tracked.extensions["tracking"].flush(2)
        assert list(mongo["tracking"].find()) == [], "recorded before the stream ended"
        rest = b"".join(iterator)
        assert produced == list(range(10))
    finally:
        app_iter.close()
    produced.clear()
    untracked = wsgi_call(plain, EnvironBuilder(path="/big-stream").get_environ())
    assert (statuses[0], first + rest) == (untracked[0], untracked[-1])
    doc = only_record(tracked, mongo)
    assert doc["response_body"] == b"A" * BODY_LIMIT
    assert doc["response_body_size"] == 10 * MB
    assert doc["response_body_truncated"] is True
    assert doc["total_time"] >= doc["execution_time"]


def test_client_disconnect_mid_stream_still_yields_one_record(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app()
    produced: list[int] = []
    closed: list[bool] = []

    @app.get("/abandoned")
    def abandoned() -> Response:
        def generate() -> Iterator[bytes]:
            try:
                for i in range(10):
                    produced.append(i)
                    yield b"z" * MB
            finally:
                closed.append(True)

        return Response(generate())

    environ = EnvironBuilder(path="/abandoned").get_environ()
    app_iter = app.wsgi_app(environ, lambda *args: None)
    assert next(iter(app_iter)) == b"z" * MB
    app_iter.close()  # the client went away: the server closes the iterable
    app_iter.close()  # some servers close twice
    assert produced == [0]
    assert closed == [True], "the app's generator was not closed"
    doc = only_record(app, mongo)
    assert doc["status_code"] == 200
    assert doc["response_body_size"] == MB
    assert doc["exception"] is None


@pytest.mark.parametrize("variant", ["plain", "file_wrapper", "range", "head", "not_modified"])
def test_send_file_from_disk_is_passed_through(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any, tmp_path: Any, variant: str
) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(300_000))

    def build(app: Flask) -> None:
        @app.route("/download", methods=["GET", "HEAD"])
        def download() -> Response:
            return send_file(path, mimetype="application/octet-stream", conditional=True)

    tracked, plain = twins(build)
    kwargs: dict[str, Any] = {}
    if variant == "file_wrapper":
        kwargs["environ_overrides"] = {"wsgi.file_wrapper": FileWrapper}
    elif variant == "range":
        kwargs["headers"] = {"Range": "bytes=100-199"}
    elif variant == "head":
        kwargs["method"] = "HEAD"
    elif variant == "not_modified":
        kwargs["headers"] = {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
    outcome = same_as_untracked(tracked, plain, environ_for("/download", **kwargs))
    expected = {"plain": path.read_bytes(), "file_wrapper": path.read_bytes()}
    expected.update(range=path.read_bytes()[100:200], head=b"", not_modified=b"")
    assert outcome[-1] == expected[variant]
    doc = only_record(tracked, mongo)
    statuses = {"range": 206, "not_modified": 304}
    assert doc["status_code"] == statuses.get(variant, 200)
    if variant in ("head", "not_modified"):
        # No body was sent, so none went by uncopied: an empty body, like any HEAD or 304.
        assert (doc["response_body"], doc["response_body_size"]) == (b"", 0)
        assert doc["response_body_omitted"] is None
    else:
        assert doc["response_body"] is None
        assert doc["response_body_omitted"] == "passthrough"


@pytest.mark.parametrize("testing", [True, False], ids=["testing", "production"])
@pytest.mark.parametrize("code", [400, 403, 404, 500])
def test_abort_pages_are_recorded_once(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any, code: int, testing: bool
) -> None:
    def build(app: Flask) -> None:
        @app.get("/abort/<int:code>")
        def abort_with(code: int) -> str:
            request._tracking_data = {"aborting": code}
            abort(code)

    tracked, plain = twins(build, testing=testing)
    outcome = same_as_untracked(tracked, plain, environ_for(f"/abort/{code}"))
    assert outcome[0].startswith(str(code))
    doc = only_record(tracked, mongo)
    assert doc["status_code"] == code
    assert doc["response_body"] == outcome[-1]
    assert doc["custom_data"] == {"aborting": code}
    assert doc["endpoint"] == "abort_with"


def test_unknown_route_404_is_recorded_once(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any
) -> None:
    tracked, plain = twins()
    outcome = same_as_untracked(tracked, plain, environ_for("/no/such/route"))
    doc = only_record(tracked, mongo)
    assert doc["status_code"] == 404
    assert doc["response_body"] == outcome[-1]


def test_async_view(twins: Callable[..., tuple[Flask, Flask]], mongo: Any) -> None:
    pytest.importorskip(
        "asgiref", reason="asgiref (flask[async]) is not installed; async views cannot run"
    )

    def build(app: Flask) -> None:
        @app.get("/async")
        async def async_view() -> str:
            await asyncio.sleep(0)
            request._tracking_data = {"async": True}
            return "async ok"

    tracked, plain = twins(build)
    outcome = same_as_untracked(tracked, plain, environ_for("/async"))
    assert outcome[-1] == b"async ok"
    doc = only_record(tracked, mongo)
    assert doc["custom_data"] == {"async": True}
    assert doc["endpoint"] == "async_view"


def app_with_login(make_app: Callable[..., Flask]) -> tuple[Flask, Any, Any]:
    """A tracked app with Flask-Login's LoginManager: the app, flask_login, the manager."""
    flask_login = pytest.importorskip("flask_login")
    app = make_app()
    app.secret_key = "login"
    return app, flask_login, flask_login.LoginManager(app)


def test_16_concurrent_requests_keep_their_own_user_and_custom_data(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app, flask_login, manager = app_with_login(make_app)

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    @manager.request_loader
    def load_from_header(req: Any) -> User | None:
        user_id = req.headers.get("X-User")
        return User(user_id) if user_id else None

    barrier = threading.Barrier(16)

    @app.get("/who")
    def who() -> str:
        query_id = request.args["id"]
        user_id = flask_login.current_user.id
        barrier.wait(timeout=20)  # all 16 requests are inside their views at once
        request._tracking_data = {"query": query_id, "user": user_id}
        barrier.wait(timeout=20)
        return f"{query_id}:{user_id}"

    answers: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            response = app.test_client().get(f"/who?id=q{n}", headers={"X-User": f"u{n}"})
            answers[n] = response.data
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert answers == {n: f"q{n}:u{n}".encode() for n in range(16)}
    docs = stored(app, mongo)
    assert len(docs) == 16
    for doc in docs:
        n = doc["query_params"].removeprefix("id=q")
        assert doc["custom_data"] == {"query": f"q{n}", "user": f"u{n}"}
        assert doc["user_id"] == f"u{n}"
        assert doc["response_body"] == f"q{n}:u{n}".encode()
        assert_storable(app, doc)
    assert_clean_stats(app)


# ---------------------------------------------------------------------------- Flask-Login


def add_login_views(app: Flask) -> None:
    @app.get("/uses-user")
    def uses_user() -> str:
        from flask_login import current_user

        return f"authenticated={current_user.is_authenticated}"

    @app.get("/ignores-user")
    def ignores_user() -> str:
        return "no user needed"


def login_client(app: Flask, user_id: str | None) -> Any:
    client = app.test_client()
    if user_id is not None:
        with client.session_transaction() as session:
            session["_user_id"] = user_id
            session["_fresh"] = True
    return client


def client_outcome(client: Any, path: str) -> Outcome:
    try:
        response = client.get(path, buffered=True)
    except Exception as error:
        return ("raised", type(error).__name__, str(error))
    names = sorted(name for name, _ in response.headers if name != "Set-Cookie")
    return (response.status, names, "Set-Cookie" in response.headers, response.data)


def test_without_flask_login_installed(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "flask_login", None)
    with pytest.raises(ImportError):
        import flask_login  # noqa: F401
    tracked, plain = twins()
    assert client_outcome(tracked.test_client(), "/hello") == client_outcome(
        plain.test_client(), "/hello"
    )
    doc = only_record(tracked, mongo)
    assert doc["user_id"] is None and doc["user"] is None


LOGIN_CASES = ["no_user_loader", "loader_raises", "anonymous", "logged_in"]


@pytest.mark.parametrize("testing", [True, False], ids=["testing", "production"])
@pytest.mark.parametrize("path", ["/uses-user", "/ignores-user"])
@pytest.mark.parametrize("case", LOGIN_CASES)
def test_flask_login_states_never_break_the_tracker(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any, case: str, path: str, testing: bool
) -> None:
    flask_login = pytest.importorskip("flask_login")
    loads: dict[str, int] = {}

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    def build(app: Flask) -> None:
        app.secret_key = "login"
        add_login_views(app)
        manager = flask_login.LoginManager(app)
        if case == "no_user_loader":
            return

        @manager.user_loader
        def load_user(user_id: str) -> User | None:
            loads[app.name] = loads.get(app.name, 0) + 1
            if case == "loader_raises":
                raise RuntimeError("user store is down")
            return User(user_id) if case == "logged_in" else None

    tracked, plain = twins(build, testing=testing)
    session_user = None if case == "no_user_loader" else "42"
    outcome = client_outcome(login_client(tracked, session_user), path)
    assert outcome == client_outcome(login_client(plain, session_user), path)
    assert loads.get(tracked.name, 0) == loads.get(plain.name, 0), "the tracker loaded a user"
    doc = only_record(tracked, mongo)
    touches_user = path == "/uses-user"
    if touches_user and case in ("no_user_loader", "loader_raises"):
        assert outcome[0] == "raised" if testing else outcome[0].startswith("500")
        assert doc["status_code"] == 500
        assert doc["exception"].startswith(("Exception: Missing user_loader", "RuntimeError"))
    else:
        assert doc["status_code"] == 200
    # Without a loaded user, the id Flask-Login keeps in the session is recorded (the user
    # loader is never called to check it); a loader that said "no such user" wins.
    rejected = session_user is None or (touches_user and case == "anonymous")
    assert doc["user_id"] == (None if rejected else "42")


class HostileUser:
    """A user object whose every attribute blows up."""

    @property
    def is_authenticated(self) -> bool:
        raise RuntimeError("is_authenticated exploded")

    def get_id(self) -> str:
        raise RuntimeError("get_id exploded")


class AuthenticatedWithoutId:
    is_authenticated = True

    def get_id(self) -> str:
        raise NotImplementedError("No `id` attribute - override `get_id`")


@pytest.mark.parametrize("user", [HostileUser, AuthenticatedWithoutId])
def test_hostile_user_objects_cost_the_user_field_only(
    twins: Callable[..., tuple[Flask, Flask]], mongo: Any, user: type
) -> None:
    def build(app: Flask) -> None:
        @app.get("/weird-user")
        def weird_user() -> str:
            g._login_user = user()  # where Flask-Login keeps the loaded user
            request._tracking_data = {"kept": True}
            return "fine"

    tracked, plain = twins(build)
    outcome = same_as_untracked(tracked, plain, environ_for("/weird-user"))
    assert outcome[-1] == b"fine"
    # The tracker's own error is counted (and logged), never raised into the app.
    doc = only_record(tracked, mongo, capture_errors=1)
    assert doc["status_code"] == 200
    assert doc["user_id"] is None
    assert doc["custom_data"] == {"kept": True}


def test_a_user_whose_id_cannot_be_read_costs_only_the_user(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # A request_loader's user (no id in the session) whose get_id() raises (a row the view
    # deleted): the capture error is counted, and the rest of the record, its body too, kept.
    app, flask_login, manager = app_with_login(make_app)

    class Gone(flask_login.UserMixin):
        def get_id(self) -> str:
            raise LookupError("the row was deleted")

    manager.request_loader(lambda req: Gone())

    @app.get("/me")
    def me() -> str:
        return f"authenticated={flask_login.current_user.is_authenticated}"

    assert app.test_client().get("/me").data == b"authenticated=True"
    doc = only_record(app, mongo, capture_errors=1)
    assert doc["response_body"] == b"authenticated=True"
    assert doc["user_id"] is None
    assert doc["endpoint"] == "me"


def test_a_request_loader_user_is_recorded_over_a_stale_session_id(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # The session names a user the user_loader no longer finds (deleted); the request_loader
    # authenticates another: the user recorded is the one the view saw.
    app, flask_login, manager = app_with_login(make_app)

    class Member(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager.user_loader(lambda user_id: None)
    manager.request_loader(lambda req: Member("api-7"))

    @app.get("/me")
    def me() -> str:
        return str(flask_login.current_user.get_id())

    client = login_client(app, "gone-3")
    assert client.get("/me").data == b"api-7"
    assert only_record(app, mongo)["user_id"] == "api-7"

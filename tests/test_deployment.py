"""Deployment conditions: real WSGI servers over real sockets (Werkzeug's development server,
gunicorn), forking, and what is stored for what the server really sent."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from wsgiref.util import FileWrapper

import pymongo
import pytest
from flask import Flask, Response, make_response, request, send_file, stream_with_context
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

from flask_tracking import Tracking
from flask_tracking.asgi import CloseAtShutdown

from .conftest import FAST_WRITER, REAL, add_routes, stored

ROOT = Path(__file__).resolve().parents[1]


def raw_exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw`` on a new connection and read the whole answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def serve(app: Flask, **options: Any) -> Any:
    """Werkzeug's development server for ``app`` on an ephemeral port, in a thread."""
    server = make_server("127.0.0.1", 0, app, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Bodies the server never sends
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["HEAD", "304"])
def test_a_body_the_server_never_sends_is_not_stored_as_sent(
    make_app: Callable[..., Flask], mongo: Any, case: str
) -> None:
    """Werkzeug sends no body for HEAD and 304 (``Response.get_app_iter``); the record must say
    so (``response_body_size``: "bytes that went through in all"), as it already does for a
    streamed response to HEAD."""
    app = make_app(testing=False)

    @app.get("/page")
    def page() -> Any:
        response = make_response("x" * 1000)
        response.add_etag()
        return response.make_conditional(request)

    server = serve(app, threaded=True)
    try:
        if case == "HEAD":
            raw = b"HEAD /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        else:
            etag = app.test_client().get("/page").headers["ETag"]
            raw = (
                f"GET /page HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        answer = raw_exchange(server.server_port, raw)
    finally:
        server.shutdown()
        server.server_close()
    _, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"", answer  # the server sent no body at all
    record = stored(app, mongo)[-1]
    assert record["status_code"] == (200 if case == "HEAD" else 304)
    # "bytes that went through in all" (stored.md); "counts the bytes sent" (production.md)
    assert record["response_body_size"] == 0, record.get("response_body", b"")[:20]


# --------------------------------------------------------------------------------------------
# Forking servers
# --------------------------------------------------------------------------------------------


@REAL
def test_werkzeugs_forking_server_loses_no_record_silently(real_db: Any) -> None:
    """``make_server(processes=N)`` (``run_simple(processes=N)``) serves each request in a
    forked child that ends with ``os._exit`` once the answer is sent: no atexit hook runs
    there. Every request served must still be written (or at least counted somewhere)."""
    app = Flask("forking")
    app.config.update(TESTING=False, **FAST_WRITER)

    @app.get("/hello")
    def hello() -> str:
        return "Hello"

    tracking = Tracking(app)
    server = serve(app, processes=2)
    try:
        for _ in range(3):
            answer = raw_exchange(
                server.server_port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"Hello")
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and real_db["tracking"].count_documents({}) < 3:
            time.sleep(0.1)
        in_parent = tracking.stats(app)
    finally:
        server.shutdown()
        server.server_close()
        tracking.close(1.0)
    assert real_db["tracking"].count_documents({}) == 3, in_parent


@REAL
def test_werkzeugs_forking_server_writes_the_record_of_a_request_that_raised(
    real_db: Any,
) -> None:
    """Under ``make_server(processes=N)`` with exceptions propagated (``app.run(debug=True,
    threaded=False, processes=N)``, TESTING or PROPAGATE_EXCEPTIONS), a view that raises makes
    ``app.wsgi_app`` raise: the server answers 500 itself and the child ends with
    ``os._exit``. The failed request is the one most worth its record; it is queued by the
    middleware's except branch, but only a response's close() flushes the child's writer
    (``_FlushedOnClose``), and there is no response to close: the record is lost, uncounted."""
    app = Flask("forking_raise")
    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=True, **FAST_WRITER)

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("kaboom")

    tracking = Tracking(app)
    server = serve(app, processes=2)
    try:
        answer = raw_exchange(
            server.server_port, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 500"), answer[:100]
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and real_db["tracking"].count_documents({}) < 1:
            time.sleep(0.1)
    finally:
        server.shutdown()
        server.server_close()
        tracking.close(1.0)
    records = list(real_db["tracking"].find({}, {"path": 1, "exception": 1, "_id": 0}))
    assert records == [{"path": "/boom", "exception": "ValueError: kaboom"}]


PRODUCTION_APP = """
import os
import time

from flask import Flask

from flask_tracking import Tracking

tracking = Tracking()


def create_app():
    app = Flask("production")
    app.config["TRACKING_MONGODB_URI"] = os.environ["MONGODB_URI"]
    app.config["TRACKING_FLUSH_INTERVAL_SECONDS"] = 0.05

    @app.get("/hello")
    def hello():
        return "Hello"

    @app.get("/stuck")
    def stuck():
        time.sleep(30)
        return "late"

    tracking.init_app(app)
    return app
"""


def run_gunicorn(
    tmp_path: Path, module: str, source: str, args: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start gunicorn serving ``module`` (written from ``source``), importing this worktree's
    flask_tracking; return the process once it answers, and its port."""
    pytest.importorskip("gunicorn")
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if accepts(port):
        return process, port
    process.kill()
    raise AssertionError(process.communicate()[1].decode())


def accepts(port: int, seconds: float = 15.0) -> bool:
    """Whether a server accepts connections on ``port`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@REAL
def test_preloaded_gunicorn_workers_each_use_a_client_of_their_own(
    real_server: Any, tmp_path: Path
) -> None:
    """production.md: ``gunicorn --workers 4 --preload "myapp:create_app()"`` with
    TRACKING_MONGODB_URI; "after a fork the child starts with ... its own client". The
    MongoClient init_app connects in the master must not be the one the workers write with
    (pymongo: clients "must not be copied from a parent process to a child process"; it warns
    "MongoClient opened before fork" when one is)."""
    database = f"deploy_{uuid.uuid4().hex[:12]}"
    process, port = run_gunicorn(
        tmp_path,
        "production_app",
        PRODUCTION_APP,
        ["-w", "1", "--preload", "--log-level", "warning", "production_app:create_app()"],
        {"MONGODB_URI": real_server.uri.rstrip("/") + "/" + database},
    )
    try:
        for _ in range(3):
            answer = raw_exchange(
                port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert answer.endswith(b"Hello"), answer
    finally:
        process.send_signal(signal.SIGTERM)  # graceful stop: the worker writes at exit
        try:
            _, errors = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
    client: Any = pymongo.MongoClient(real_server.uri, serverSelectionTimeoutMS=5000)
    try:
        written = client[database]["tracking"].count_documents({})
        client.drop_database(database)
    finally:
        client.close()
    assert written == 3, errors.decode()
    assert b"MongoClient opened before fork" not in errors, errors.decode()


@REAL
def test_a_gunicorn_worker_timeout_is_recorded_as_no_response_of_the_app(
    real_server: Any, tmp_path: Path
) -> None:
    """gunicorn's sync worker, past ``--timeout``, gets SIGABRT and raises SystemExit(1) inside
    the request (``handle_abort``); the app sends nothing (gunicorn 27 answers 500 on its own;
    older versions close the connection). The record names the SystemExit, has no status
    code, keeps the endpoint, and is written before the worker exits."""
    database = f"deploy_{uuid.uuid4().hex[:12]}"
    process, port = run_gunicorn(
        tmp_path,
        "production_app",
        PRODUCTION_APP,
        [
            "-w",
            "1",
            "-k",
            "sync",
            "--timeout",
            "1",
            "--log-level",
            "warning",
            "production_app:create_app()",
        ],
        {"MONGODB_URI": real_server.uri.rstrip("/") + "/" + database},
    )
    client: Any = pymongo.MongoClient(real_server.uri, serverSelectionTimeoutMS=5000)
    try:
        answer = raw_exchange(
            port, b"GET /stuck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=20
        )
        assert b"late" not in answer, answer
        records = client[database]["tracking"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and records.count_documents({}) == 0:
            time.sleep(0.1)
        found = list(records.find({}, {"_id": 0, "status_code": 1, "exception": 1, "endpoint": 1}))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
        client.drop_database(database)
        client.close()
    assert found == [{"endpoint": "stuck", "status_code": None, "exception": "SystemExit: 1"}], (
        errors.decode()
    )
    assert b"WORKER TIMEOUT" in errors, errors.decode()


# --------------------------------------------------------------------------------------------
# Streamed responses in direct passthrough
# --------------------------------------------------------------------------------------------


def test_a_streamed_passthrough_response_is_recorded_when_it_ends(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """A generator response with ``direct_passthrough=True`` (a proxy view streaming what it
    fetches, untouched by Werkzeug's encoding) is a streamed response: "recorded once it has
    been read to the end or closed, so its body and total_time are known" (capture.md);
    ``total_time`` runs "until a streamed response finished" and ``exception`` is set when it
    raised (stored.md), as for the same generator without direct_passthrough."""
    app = make_app(testing=False)

    def upstream(fail: bool) -> Any:
        yield b"first;"
        time.sleep(0.3)
        if fail:
            raise RuntimeError("upstream went away")
        yield b"second;"

    @app.get("/proxy/<int:fail>")
    def proxy(fail: int) -> Any:
        return Response(upstream(bool(fail)), direct_passthrough=True)

    server = serve(app, threaded=True)
    try:
        for fail in (0, 1):
            raw_exchange(
                server.server_port,
                f"GET /proxy/{fail} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            )
    finally:
        server.shutdown()
        server.server_close()
    finished, failed = stored(app, mongo)
    assert (finished["total_time"] >= 300, failed["exception"]) == (
        True,
        "RuntimeError: upstream went away",
    ), (finished["total_time"], failed["total_time"])


def test_the_servers_file_wrapper_reaches_it_and_is_recorded_when_closed(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """``send_file`` under a server with a ``wsgi.file_wrapper`` (gunicorn, wsgiref): the
    server must get its own wrapper back to send the file with ``sendfile()``; the record
    waits for the server's close() (PEP 3333) instead of the app's return."""

    class ServerFileWrapper(FileWrapper):
        """The server's class: it sends a response of this type with sendfile()."""

    app = make_app(testing=False)

    @app.get("/sent-file")
    def sent_file() -> Response:
        return send_file(io.BytesIO(b"x" * 100), mimetype="text/plain")

    environ = EnvironBuilder(path="/sent-file").get_environ()
    environ["wsgi.file_wrapper"] = ServerFileWrapper
    app_iter = app.wsgi_app(environ, lambda status, headers, exc_info=None: None)
    assert isinstance(app_iter, ServerFileWrapper)
    assert b"".join(app_iter) == b"x" * 100
    assert stored(app, mongo) == []  # sent, not closed yet
    time.sleep(0.05)
    app_iter.close()
    (record,) = stored(app, mongo)
    assert record["response_body_omitted"] == "passthrough"
    assert record["total_time"] >= record["execution_time"] + 50


# --------------------------------------------------------------------------------------------
# Under an ASGI server, through asgiref's WsgiToAsgi
# --------------------------------------------------------------------------------------------


def serve_asgi(app: Flask, path: str, wrap: Callable[[Any], Any] = lambda asgi: asgi) -> bytes:
    """One GET through ``asgiref.wsgi.WsgiToAsgi`` (Flask's documented way to run under an
    ASGI server such as uvicorn or hypercorn), wrapped by ``wrap``, driven as the ASGI server
    drives it; the body the client received."""
    import asyncio

    from asgiref.wsgi import WsgiToAsgi

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(wrap(WsgiToAsgi(app))(scope, receive, send))
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_stream_with_a_content_length_is_recorded_under_asgiref(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """WsgiToAsgi stops reading the response iterable once Content-Length bytes went out and
    never calls its close() (asgiref/wsgi.py, ``run_wsgi_app``): a streamed response with a
    known length (a proxied download) is still a request served, and must be written or
    counted, not lost."""
    app = make_app(testing=False)

    @app.get("/download")
    def download() -> Response:
        def chunks() -> Any:
            yield b"first;"
            yield b"second"

        return Response(chunks(), headers={"Content-Length": "12"})

    assert serve_asgi(app, "/download") == b"first;second"
    tracking = app.extensions["tracking"]
    assert tracking.flush(5)
    counters = tracking.stats(app)
    assert len(stored(app, mongo)) == 1, counters


def test_close_at_shutdown_writes_what_is_queued_at_the_lifespan_shutdown(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """CloseAtShutdown hands each request to the app it wraps and answers the server's
    lifespan itself: the startup at once; at the shutdown it closes the tracker, the records
    queued written, before it says the shutdown is complete."""
    import asyncio

    app = make_app(testing=False, TRACKING_FLUSH_INTERVAL_SECONDS=60.0)
    tracking = app.extensions["tracking"]
    wrapped: list[CloseAtShutdown] = []

    def wrap(asgi: Any) -> CloseAtShutdown:
        wrapped.append(CloseAtShutdown(asgi, tracking))
        return wrapped[0]

    assert serve_asgi(app, "/hello", wrap) == b"Hello"
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[tuple[str, int]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append((message["type"], tracking.stats(app)["written"]))

    asyncio.run(wrapped[0]({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert sent == [("lifespan.startup.complete", 0), ("lifespan.shutdown.complete", 1)]
    assert [record["path"] for record in mongo["tracking"].find()] == ["/hello"]


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "dropped"])
def test_a_stream_left_unfinished_is_recorded_once(
    make_app: Callable[..., Flask], mongo: Any, closed: bool
) -> None:
    """A server that stops reading a stream part way either closes it (PEP 3333) or drops it
    (asgiref): one record either way, with what was sent."""
    app = make_app(testing=False)

    @app.get("/parts")
    def parts() -> Response:
        return Response(iter([b"a", b"b", b"c"]))

    environ = EnvironBuilder(path="/parts").get_environ()
    app_iter: Any = app.wsgi_app(environ, lambda status, headers, exc_info=None: None)
    iterator = iter(app_iter)
    assert next(iterator) == b"a"
    if closed:
        app_iter.close()
    del iterator, app_iter
    (record,) = stored(app, mongo)
    assert (record["response_body"], record["response_body_size"]) == (b"a", 1)


# --------------------------------------------------------------------------------------------
# The first request of each worker
# --------------------------------------------------------------------------------------------


def first_request_seconds(make_app: Callable[..., Flask] | None, rules: int) -> float:
    """How long the first request of a fresh app (tracked when ``make_app`` is given) with
    ``rules`` URL rules that have a secret variable takes over a socket, as each new gunicorn
    worker's first request does."""
    app = make_app(testing=False) if make_app is not None else Flask("untracked")
    for number in range(rules):
        app.add_url_rule(
            f"/api/v1/resource{number}/<int:item>/reset/<token>",
            f"reset{number}",
            lambda item, token: "reset",
        )
    app.add_url_rule("/first", "first", lambda: "Hello")
    server = serve(app, threaded=True)
    try:
        started = time.perf_counter()
        raw_exchange(
            server.server_port, b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        return time.perf_counter() - started
    finally:
        server.shutdown()
        server.server_close()


def test_the_first_request_of_a_worker_is_not_held_up_by_the_tracker(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """Promised: "The request thread never talks to MongoDB ... nothing blocks"
    (reliability.md); "On the request thread: a clock before and after, a copy of the first
    bytes of each body, a shallow copy of the WSGI environ, the filtering of secret headers
    by name, and an append to the queue" (performance.md). The first request of every
    process (each gunicorn worker, again after each max-requests restart) also learns all the
    app's URL rules on the request thread (``Redactor.learn_rules`` from ``_response_hook``):
    with 1,500 rules that have a secret variable, about a quarter of a second."""
    untracked = min(first_request_seconds(None, 1500) for _ in range(2))
    tracked = min(first_request_seconds(make_app, 1500) for _ in range(2))
    assert tracked - untracked < 0.05, (round(untracked, 3), round(tracked, 3))


def test_the_rules_learnt_on_the_writer_filter_the_first_requests_too(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """A request that finished before the writer thread learnt the app's URL rules is
    filtered again once it knows them; later ones know them on the request thread: the same
    ``Referer`` naming a page with a secret variable is stored filtered either way."""
    app = make_app(testing=False)
    app.add_url_rule("/reset/<token>", "reset_token", lambda token: "reset")
    app.add_url_rule("/landing", "landing", lambda: "landing")
    client = app.test_client()
    referer = {"Referer": "https://app.example/reset/s3cr3t-t0ken"}
    client.get("/landing", headers=referer)
    first = stored(app, mongo)
    client.get("/landing", headers=referer)
    second = stored(app, mongo)[-1]
    assert [first[0]["referrer"], second["referrer"]] == [
        "https://app.example/reset/[Filtered]"
    ] * 2


# --------------------------------------------------------------------------------------------
# A body read while the response streams
# --------------------------------------------------------------------------------------------


def test_a_body_read_while_the_response_streams_is_recorded(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """A view that streams its answer as it reads the upload (an echo, a proxy passing the
    body on) reads the body after it returned its response. capture.md: the body is copied
    "as the view reads it"; "unread" is for "a body the view did not read". On a socket
    (Werkzeug's server, gunicorn: not seekable) the record must hold the bytes read, not say
    the body was never read."""
    app = make_app(testing=False)

    @app.post("/shout")
    def shout() -> Response:
        def chunks() -> Any:
            while chunk := request.stream.read(4):
                yield chunk.upper()

        return Response(stream_with_context(chunks()))

    server = serve(app, threaded=True)
    try:
        answer = raw_exchange(
            server.server_port,
            b"POST /shout HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
            b"hello world",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert b"HELL" in answer and b"RLD" in answer, answer  # the view read the whole body
    (record,) = stored(app, mongo)
    assert (record.get("request_body"), record.get("request_body_omitted")) == (
        b"hello world",
        None,
    ), record.get("request_body_size")


# --------------------------------------------------------------------------------------------
# waitress: the file wrapper is sent, and closed, from the server's I/O thread
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_waitress(app: Flask) -> Iterator[int]:
    """waitress serving ``app`` on an ephemeral port, in a thread; yields the port."""
    import waitress

    server: Any = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(5)


def add_waitress_routes(app: Flask, download: Path) -> None:
    @app.post("/partial")
    def partial() -> bytes:
        return request.stream.read(10)

    @app.get("/download")
    def download_file() -> Response:
        return send_file(download, mimetype="application/octet-stream", conditional=True)

    @app.get("/stream-forever")
    def stream_forever() -> Response:
        def chunks() -> Iterator[bytes]:
            for _ in range(200):
                yield b"s" * 65536
                time.sleep(0.01)

        return Response(chunks())


def http(method: str, path: str, headers: str = "", body: bytes = b"") -> bytes:
    """A request that asks the server to close the connection after its answer."""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode() + body
    )


WAITRESS_REQUESTS = [
    http("GET", "/hello"),
    http("HEAD", "/hello"),
    http("POST", "/count", "Content-Length: 100000\r\n", b"c" * 100_000),
    http("POST", "/partial", "Content-Length: 5000\r\n", b"p" * 5000),
    http("POST", "/ignore", "Content-Length: 5000\r\n", b"i" * 5000),
    http(
        "POST",
        "/count",
        "Transfer-Encoding: chunked\r\n",
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ),
    http("GET", "/stream"),
    http("GET", "/file"),
    http("GET", "/download"),
    http("HEAD", "/download"),
    http("GET", "/download", "Range: bytes=100-1099\r\n"),
    http("GET", "/download", "Range: bytes=90000000-\r\n"),
    http("GET", "/download", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n"),
    http("GET", "/boom"),
]


def test_waitress_answers_tracked_and_untracked_apps_alike_and_every_request_is_recorded(
    make_app: Callable[..., Flask],
    mongo: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under waitress (its own ``wsgi.file_wrapper``, sent and closed from its I/O thread)
    the tracked app answers byte for byte as its untracked twin (but for ``Date``), for
    bodies read, read in part, unread or chunked, streams, files with or without a range or
    a condition, HEAD; each request, and each of two clients that leave mid-answer, is
    recorded once, as it was answered; waitress logs no exception, and no file is left open."""
    download = tmp_path / "download.bin"
    download.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: sent from the I/O thread
    tracked = make_app(testing=False)
    untracked = Flask("untracked")
    add_routes(untracked)
    for app in (tracked, untracked):
        add_waitress_routes(app, download)
    caplog.set_level(logging.ERROR, logger="waitress")
    answers: dict[Flask, list[bytes]] = {}
    for app in (untracked, tracked):
        with serve_waitress(app) as port:
            answers[app] = [
                re.sub(rb"Date: [^\r]*\r\n", b"", raw_exchange(port, raw, 10))
                for raw in WAITRESS_REQUESTS
            ]
            for path in ("/stream-forever", "/download"):  # clients that leave mid-answer
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    sock.recv(100)
            time.sleep(0.5)
    assert answers[tracked] == answers[untracked]
    records = stored(tracked, mongo)
    assert [(r["method"], r["path"], r["status_code"]) for r in records[:-2]] == [
        (raw.split()[0].decode(), raw.split()[1].decode(), int(answer.split()[1]))
        for raw, answer in zip(WAITRESS_REQUESTS, answers[tracked])
    ]
    assert sorted(r["path"] for r in records[-2:]) == ["/download", "/stream-forever"]
    sent = [answer.partition(b"\r\n\r\n")[2] for answer in answers[tracked]]
    assert [r["response_body_size"] for r in records[:6]] == [len(body) for body in sent[:6]]
    assert records[6]["response_body"] == b"chunk0;chunk1;chunk2;chunk3;chunk4;"  # sent chunked
    # read, read 10 bytes of, left unread (the rest copied from waitress's spooled input), chunked
    assert [r["request_body_size"] for r in records[2:6]] == [100_000, 5000, 5000, 11]
    logged = [r for r in caplog.records if r.name.startswith("waitress")]
    assert [r.getMessage() for r in logged if r.levelno >= logging.ERROR] == []
    assert open_descriptors_of(download) == 0


def open_descriptors_of(path: Path) -> int:
    """How many file descriptors of this process are open on ``path`` (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used, closed now
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


def test_an_unread_body_is_recorded_alike_however_waitress_sends_the_file(
    make_app: Callable[..., Flask], mongo: Any, tmp_path: Path
) -> None:
    """waitress spools a request body to memory or a file (seekable), so the bytes a view left
    unread are copied when the request is over (capture.md). A ``send_file`` answer goes to
    waitress's own ``wsgi.file_wrapper``, which it closes once the file was sent: from the
    request's thread when the file fits in the socket's buffers, else from its I/O thread
    later, after it closed the request's input. The same request must be recorded the same
    way whichever happens: with its body, not as "unread"."""
    sizes = (1_000, 16_000_000)  # sent at once; sent from the I/O thread
    for size in sizes:
        (tmp_path / f"{size}.bin").write_bytes(b"d" * size)
    app = make_app(testing=False)

    @app.post("/export/<int:size>")
    def export(size: int) -> Response:
        return send_file(tmp_path / f"{size}.bin", mimetype="application/octet-stream")

    with serve_waitress(app) as port:
        for size in sizes:
            answer = raw_exchange(
                port,
                f"POST /export/{size} HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
                "Connection: close\r\n\r\nhello world".encode(),
                timeout=10,
            )
            assert len(answer.partition(b"\r\n\r\n")[2]) == size
    records = stored(app, mongo)
    assert [(r["request_body"], r.get("request_body_omitted")) for r in records] == [
        (b"hello world", None)
    ] * 2


# --------------------------------------------------------------------------------------------
# gunicorn's gevent workers (gunicorn -k gevent): threading, sockets and time monkey-patched
# --------------------------------------------------------------------------------------------

#: A writer made before gevent monkey-patches ``threading`` (as by an app that gunicorn
#: ``--preload`` loads in its master, before the gevent worker patches), then fed by
#: greenlets: argv = batch size, greenlets, records each. Prints the records written.
WRITER_BEFORE_PATCHING = """
import faulthandler
import sys
import time

from flask_tracking.writer import BatchOutcome, BatchWriter

batch, greenlets, records = map(int, sys.argv[1:4])
writer = BatchWriter(
    lambda entries: BatchOutcome(written=len(entries)),
    batch_max_records=batch,
    flush_interval_seconds=0.02,
)

from gevent import monkey  # noqa: E402

monkey.patch_all()
import gevent  # noqa: E402

faulthandler.dump_traceback_later(8, exit=True)  # a blocked hub: where, then exit


def submit():
    for number in range(records):
        writer.submit({"number": number}, 10)
        gevent.sleep(0)


gevent.joinall([gevent.spawn(submit) for _ in range(greenlets)])
deadline = time.monotonic() + 5
while writer.stats()["written"] < greenlets * records and time.monotonic() < deadline:
    gevent.sleep(0.01)
print(writer.stats()["written"])
"""


@pytest.mark.parametrize(
    ("batch", "greenlets", "records"),
    [(500, 1, 1), (2, 4, 50)],
    ids=["first-record", "full-batches"],
)
def test_a_writer_made_before_gevent_patches_serves_greenlets(
    batch: int, greenlets: int, records: int
) -> None:
    """Under ``gunicorn -k gevent --preload`` the app, and its writer with its lock, is made
    in the master; the worker monkey-patches ``threading`` after the fork, so the writer's
    lock is a real one while its worker thread is a greenlet. A greenlet that waits for a
    real lock another greenlet holds blocks the whole process: nothing the writer does under
    its lock may let another greenlet run (starting the thread; checking that it still runs,
    on each full batch, which concurrent requests reach together)."""
    pytest.importorskip("gevent")
    done = subprocess.run(
        [sys.executable, "-c", WRITER_BEFORE_PATCHING, str(batch), str(greenlets), str(records)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=30,
    )
    assert done.stdout.split() == [str(greenlets * records).encode()], done.stderr.decode()


#: The app the gevent workers, uWSGI and the ASGI servers serve: tracked when TRACKED is set,
#: with the settings of the JSON in TRACKING_SETTINGS (FAST_WRITER's by default); /download
#: sends the file named by DOWNLOAD; /long-stream streams for half a second.
SERVED_APP = """
import io
import json
import os
import time

from flask import Flask, Response, abort, request, send_file, stream_with_context

from flask_tracking import Tracking

tracking = Tracking()


def create_app():
    app = Flask("gevent_app")

    @app.get("/hello")
    def hello():
        return "Hello"

    @app.post("/echo")
    def echo():
        return request.get_json()

    @app.get("/stream")
    def stream():
        def chunks():
            for number in range(5):
                yield f"chunk{number};".encode()

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    @app.get("/long-stream")
    def long_stream():
        def chunks():
            for _ in range(50):
                yield b"s" * 1000
                time.sleep(0.01)

        return Response(chunks(), mimetype="text/plain")

    @app.get("/file")
    def file():
        return send_file(io.BytesIO(b"file-content" * 100), mimetype="application/octet-stream")

    @app.get("/boom")
    def boom():
        raise ValueError("kaboom")

    @app.get("/missing")
    def missing():
        abort(404)

    @app.get("/nap")
    def nap():
        time.sleep(0.2)  # a greenlet waiting (an API called, a query): the others go on
        return "rested"

    @app.get("/download")
    def download():
        return send_file(
            os.environ["DOWNLOAD"], mimetype="application/octet-stream", conditional=True
        )

    @app.get("/stats")
    def stats():
        return {**tracking.stats(app), "pid": os.getpid()}

    if os.environ.get("TRACKED"):
        app.config["TRACKING_MONGODB_URI"] = os.environ["MONGODB_URI"]
        app.config.update(json.loads(os.environ["TRACKING_SETTINGS"]))
        tracking.init_app(app)
    return app
"""


#: gunicorn's settings file for the gevent tests: each worker, once it handles signals,
#: says so with an empty file named after its process id in READY_DIR.
READY_HOOK = """
import os


def post_worker_init(worker):
    open(os.path.join(os.environ["READY_DIR"], str(worker.pid)), "w").close()
"""


#: The start of a gunicorn settings file that monkey-patches the master before it loads the
#: app (``--preload``), as deployment.md advises.
PATCH_FIRST = """
from gevent import monkey

monkey.patch_all()
"""


def run_gevent_workers(
    tmp_path: Path,
    args: list[str],
    uri: str,
    tracked: bool = True,
    patch_first: bool = False,
    **settings: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn with gevent workers serving SERVED_APP (tracked into ``uri`` with
    FAST_WRITER and ``settings``), once its first worker is ready (see :func:`wait_ready`);
    ``args`` come before the app. ``patch_first``: its settings file starts with PATCH_FIRST."""
    pytest.importorskip("gevent")
    (tmp_path / "ready_hook.py").write_text((PATCH_FIRST if patch_first else "") + READY_HOOK)
    (tmp_path / "ready").mkdir()
    env = {
        "MONGODB_URI": uri,
        "TRACKING_SETTINGS": json.dumps({**FAST_WRITER, **settings}),
        "READY_DIR": str(tmp_path / "ready"),
    }
    if tracked:
        env["TRACKED"] = "1"
    process, port = run_gunicorn(
        tmp_path,
        "gevent_app",
        SERVED_APP,
        [
            "-k",
            "gevent",
            "-c",
            "ready_hook.py",
            "--log-level",
            "warning",
            *args,
            "gevent_app:create_app()",
        ],
        env,
    )
    wait_ready(process, tmp_path, 1)
    return process, port


def wait_ready(process: subprocess.Popen[bytes], tmp_path: Path, workers: int) -> None:
    """Wait until ``workers`` workers (in all, replacements included) have been ready.
    gunicorn's socket accepts before its workers are, and a worker that gets SIGTERM before
    it set its signal handlers misses it and serves on, until the master's graceful timeout
    (gunicorn's behaviour, tracked or not): the tests stop gunicorn once all are ready."""
    deadline = time.monotonic() + 15
    while len(list((tmp_path / "ready").iterdir())) < workers:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(process.communicate()[1].decode())
        time.sleep(0.05)


def stop_gunicorn(process: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    """Stop gunicorn gracefully (SIGTERM: the workers finish and exit, writing what they
    have queued); what it logged. A gunicorn still running after ``timeout`` is killed, its
    workers first, and the test fails."""
    process.send_signal(signal.SIGTERM)
    try:
        _, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
        for worker in children.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(worker), signal.SIGKILL)
        process.kill()
        _, errors = process.communicate()
        raise AssertionError(f"gunicorn did not stop in {timeout} s:\n{errors.decode()}") from None
    return errors.decode()


def logged_errors(log: str) -> list[str]:
    """The lines of gunicorn's log that report an error (gunicorn's own, or a traceback: of
    the app, of the tracker, of a greenlet that failed)."""
    return [
        line
        for line in log.splitlines()
        if "[ERROR]" in line or "[CRITICAL]" in line or line.startswith("Traceback")
    ]


def exchange_all(port: int, requests: list[bytes], clients: int = 16) -> list[bytes]:
    """Send ``requests`` from ``clients`` threads at once, each on a connection of its own,
    and return the answers in order. A server that stops answering (a blocked gevent hub)
    fails the call after the generous timeout of each exchange."""
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda raw: raw_exchange(port, raw, timeout=10), requests))


def database_uri(real_server: Any) -> tuple[str, str]:
    """A database name of its own for a test, and the URI that names it."""
    database = f"deploy_{uuid.uuid4().hex[:12]}"
    return database, real_server.uri.rstrip("/") + "/" + database


def stored_records(real_server: Any, database: str) -> list[dict[str, Any]]:
    """What was stored in ``database`` (then dropped), in the order it was queued."""
    client: Any = pymongo.MongoClient(real_server.uri, serverSelectionTimeoutMS=5000)
    try:
        records = list(client[database]["tracking"].find({}, {"_id": 0}).sort("_id", 1))
        client.drop_database(database)
    finally:
        client.close()
    return records


def assert_each_hello_answered_and_recorded_once(
    answers: list[bytes], real_server: Any, database: str, count: int, log: str
) -> None:
    """The ``count`` requests of ``/hello?n=0`` to ``n=count - 1`` were each answered, and
    each is stored in ``database`` once (then dropped), with a request id of its own."""
    assert [answer.endswith(b"Hello") for answer in answers] == [True] * count, log
    records = stored_records(real_server, database)
    assert sorted(record["query_params"] for record in records) == sorted(
        f"n={n}" for n in range(count)
    ), log
    assert len({record["request_id"] for record in records}) == count


@REAL
@pytest.mark.parametrize(
    ("preload", "patch_first"),
    [(False, False), (True, False), (True, True)],
    ids=["loaded-by-worker", "preload", "preload-patched-first"],
)
def test_a_gevent_worker_answers_concurrent_requests_and_records_each_once(
    real_server: Any, tmp_path: Path, preload: bool, patch_first: bool
) -> None:
    """``gunicorn -k gevent``, the app loaded by the worker (after gevent patched it) or by
    the master (``--preload``: before, unless the settings file patched the master first).
    300 requests from 32 clients at once are answered, and each is recorded once (by the
    graceful stop at the latest); nothing is logged as an error.

    With ``--preload`` the MongoClient that TRACKING_MONGODB_URI connects must not be made in
    the master: its locks would be real ones, and pymongo's greenlets (its monitors, the
    writer selecting a server) wait for them while another holds one and lets them run (a
    thread it starts): the worker blocked for good, under such a load, in every run."""
    database, uri = database_uri(real_server)
    process, port = run_gevent_workers(
        tmp_path,
        ["-w", "1", *(["--preload"] if preload else [])],
        uri,
        patch_first=patch_first,
        TRACKING_FLUSH_INTERVAL_SECONDS=0.05,  # the first write while the requests come
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS=5.0,
    )
    try:
        answers = exchange_all(port, [http("GET", f"/hello?n={n}") for n in range(300)], 32)
    finally:
        log = stop_gunicorn(process)
    assert_each_hello_answered_and_recorded_once(answers, real_server, database, 300, log)
    assert logged_errors(log) == []


@pytest.mark.parametrize(
    "uri", ["mongodb://127.0.0.1:9/lazy", "mongodb+srv://cluster0.example.com/lazy?tls=false"]
)
def test_init_app_leaves_the_client_of_the_uri_to_the_process_that_uses_it(uri: str) -> None:
    """The MongoClient that TRACKING_MONGODB_URI connects is made where it is first used (a
    worker), not by init_app: under ``gunicorn -k gevent --preload`` init_app runs in the
    master, before the worker monkey-patches ``threading``, and a client made then has real
    locks, which its greenlets (the writer, pymongo's monitors) would wait for while another
    greenlet holds them, blocking the worker (see the test above; it hangs there in most
    runs, here every time)."""
    import mongoengine
    from mongoengine.connection import _connections

    app = Flask("lazy_client")
    app.config.update(TRACKING_MONGODB_URI=uri, TRACKING_DB_ALIAS="lazy_client")
    try:
        Tracking(app)
        assert "lazy_client" not in _connections
    finally:
        mongoengine.disconnect("lazy_client")


#: Requests gevent workers and uWSGI answer alike, tracked or not.
SERVED_REQUESTS = [
    http("GET", "/hello"),
    http("HEAD", "/hello"),
    http(
        "POST",
        "/echo",
        "Content-Type: application/json\r\nContent-Length: 13\r\n",
        b'{"order": 42}',
    ),
    http(
        "POST",
        "/echo",
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        b'd\r\n{"order": 42}\r\n0\r\n\r\n',
    ),
    http("GET", "/stream"),
    http("GET", "/file"),
    http("GET", "/boom"),
    http("GET", "/missing"),
]


@REAL
def test_a_gevent_worker_answers_tracked_and_untracked_apps_alike(
    real_server: Any, tmp_path: Path
) -> None:
    """Under ``gunicorn -k gevent --preload`` the tracked app answers byte for byte as its
    untracked twin (but for ``Date``): bodies read from a length or chunks, a stream, a file,
    HEAD, an error, a 404; each request is recorded once, with the status it was answered."""
    database, uri = database_uri(real_server)
    answers: dict[bool, list[bytes]] = {}
    logs = []
    for tracked in (False, True):
        directory = tmp_path / str(tracked)
        directory.mkdir()
        process, port = run_gevent_workers(directory, ["--preload"], uri, tracked)
        try:
            answers[tracked] = [
                re.sub(rb"Date: [^\r]*\r\n", b"", raw_exchange(port, raw, 10))
                for raw in SERVED_REQUESTS
            ]
        finally:
            logs.append(stop_gunicorn(process))
    assert answers[True] == answers[False]
    records = stored_records(real_server, database)
    assert [(r["method"], r["path"], r["status_code"]) for r in records] == [
        (raw.split()[0].decode(), raw.split()[1].decode(), int(answer.split()[1]))
        for raw, answer in zip(SERVED_REQUESTS, answers[True])
    ]
    # the view's ValueError, logged by Flask as the app's error: the only one
    assert [line for log in logs for line in logged_errors(log)] == [
        "Traceback (most recent call last):"
    ] * 2


@contextlib.contextmanager
def slow_inserts(server: Any, milliseconds: int) -> Iterator[None]:
    """The real ``server`` keeps the next ``insert`` (of any client) waiting ``milliseconds``
    before it answers, through a ``failCommand`` fail point switched off afterwards."""
    admin: Any = pymongo.MongoClient(server.uri)
    admin.admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": 1},
        data={"failCommands": ["insert"], "blockConnection": True, "blockTimeMS": milliseconds},
    )
    try:
        yield
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")
        admin.close()


def stats_of(port: int) -> dict[str, Any]:
    """``Tracking.stats(app)`` in the worker that answers, and the time it answered."""
    answer = raw_exchange(port, http("GET", "/stats"))
    return {**json.loads(answer.partition(b"\r\n\r\n")[2]), "time": time.monotonic()}


def worker_cpu_seconds(pid: int) -> float:
    """The CPU time process ``pid`` used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_seconds(tmp_path: Path, seconds: float = 1.0) -> float:
    """The CPU time the gevent workers of the test used in ``seconds`` with no request."""
    pids = [int(path.name) for path in (tmp_path / "ready").iterdir()]
    pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    before = sum(map(worker_cpu_seconds, pids))
    time.sleep(seconds)
    return sum(map(worker_cpu_seconds, pids)) - before


@REAL
def test_a_slow_database_holds_up_no_request_of_a_gevent_worker(
    real_server: Any, tmp_path: Path
) -> None:
    """The writer of a gevent worker is a greenlet: while MongoDB keeps its insert waiting
    (2 s), 40 requests that each wait 0.2 s themselves are answered together, as the worker
    answers them untracked, and the writer writes every record once the database answers,
    at the graceful stop at the latest."""
    database, uri = database_uri(real_server)
    process, port = run_gevent_workers(
        tmp_path, ["-w", "1", "--preload"], uri, TRACKING_SHUTDOWN_TIMEOUT_SECONDS=10.0
    )
    try:
        raw_exchange(port, http("GET", "/hello"))  # the collection is made, its first batch
        before = stats_of(port)
        while time.monotonic() < before["time"] + 10 and not before["written"]:
            time.sleep(0.05)
            before = stats_of(port)
        with slow_inserts(real_server, 2000):
            raw_exchange(port, http("GET", "/hello"))  # its insert waits 2 s on the server
            time.sleep(0.2)  # taken by the writer
            answers = exchange_all(port, [http("GET", "/nap")] * 40, 40)
            during = stats_of(port)
    finally:
        log = stop_gunicorn(process)
    assert [answer.endswith(b"rested") for answer in answers] == [True] * 40, log
    # All answered while the insert still waited: the /hello it writes is not written yet
    # (had the worker waited with the writer, or served the naps one after the other, the
    # insert would be over, and the /hello written, by the time they were all answered).
    assert during["enqueued"] == before["enqueued"] + 42, (before, during)
    assert during["written"] <= before["enqueued"] + 1, (before, during)
    records = stored_records(real_server, database)
    assert len(records) == during["enqueued"] + 1, log  # and the last /stats
    assert logged_errors(log) == []


def test_a_gevent_worker_serves_on_while_the_database_never_answers(tmp_path: Path) -> None:
    """TRACKING_MONGODB_URI names a server that takes connections and never answers (a hung
    mongod, a black-holed network): three waves of 100 requests from 32 clients are answered
    (full batches of 3 wake the writer again and again), the writer retrying with its backoff
    does not spin the CPU, and the graceful stop ends within TRACKING_SHUTDOWN_TIMEOUT_SECONDS,
    the records left counted and warned about, not logged as an error."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)  # never accepts: the handshake is never answered
        uri = f"mongodb://127.0.0.1:{black_hole.getsockname()[1]}/nowhere"
        process, port = run_gevent_workers(
            tmp_path,
            ["-w", "1", "--preload"],
            uri,
            TRACKING_BATCH_MAX_RECORDS=3,
            TRACKING_WRITE_TIMEOUT_SECONDS=1.0,
        )
        try:
            answers = []
            for _ in range(3):
                answers += exchange_all(port, [http("GET", "/hello")] * 100, 32)
                time.sleep(0.3)
            idle = idle_cpu_seconds(tmp_path)
            counters = stats_of(port)
        finally:
            log = stop_gunicorn(process)
    assert [answer.endswith(b"Hello") for answer in answers] == [True] * 300, log
    assert (counters["enqueued"], counters["written"]) == (300, 0), counters
    assert idle < 0.5, f"the idle worker used {idle:.2f} s of CPU in 1 s"
    assert "dropped_shutdown" in log, log
    assert logged_errors(log) == []


@REAL
def test_gevent_workers_restarted_for_max_requests_write_their_records(
    real_server: Any, tmp_path: Path
) -> None:
    """``--max-requests 25``: each gevent worker exits after 25 requests and a new one takes
    over; with a flush interval longer than the test, the records are written only as each
    worker exits (and at the graceful stop): all 60 of them, once each."""
    database, uri = database_uri(real_server)
    process, port = run_gevent_workers(
        tmp_path,
        ["-w", "1", "--preload", "--max-requests", "25"],
        uri,
        TRACKING_FLUSH_INTERVAL_SECONDS=60.0,
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS=5.0,
    )
    try:
        answers = []
        for first, workers in ((0, 2), (25, 3), (50, None)):
            answers += [
                raw_exchange(port, http("GET", f"/hello?n={n}"), 10)
                for n in range(first, first + (25 if workers else 10))
            ]
            if workers:  # the worker stops once it sees it served 25 (within 1 s): its
                wait_ready(process, tmp_path, workers)  # successor is up
        idle = idle_cpu_seconds(tmp_path)
    finally:
        log = stop_gunicorn(process)
    assert_each_hello_answered_and_recorded_once(answers, real_server, database, 60, log)
    assert idle < 0.5, f"the idle worker used {idle:.2f} s of CPU in 1 s"
    assert logged_errors(log) == []


# --------------------------------------------------------------------------------------------
# uWSGI (the pyuwsgi wheel): workers forked from C, exit hooks run by uWSGI's Python plugin
# --------------------------------------------------------------------------------------------


def run_uwsgi(
    tmp_path: Path, args: list[str], uri: str, tracked: bool = True, **settings: Any
) -> tuple[subprocess.Popen[bytes], int]:
    """uWSGI with a master, serving SERVED_APP (tracked into ``uri`` with FAST_WRITER and
    ``settings``; /download sends ``tmp_path/download.bin``), ``args`` added; the process
    (see :func:`start_served`) and its port. ``--binary-path`` names this Python, which a
    reload runs again: uWSGI's own guess is the interpreter a virtual environment links to,
    without pyuwsgi."""
    pytest.importorskip("pyuwsgi", reason="uWSGI is not installed (pip install pyuwsgi)")
    port = free_port()
    command = [
        *(sys.executable, "-c", "import pyuwsgi; pyuwsgi.run()"),
        *("--http-socket", f"127.0.0.1:{port}", "--master"),
        *("--module", "served_app:create_app()", "--binary-path", sys.executable),
        *args,
    ]
    download = tmp_path / "download.bin"
    return start_served(tmp_path, command, port, uri, tracked, settings, download), port


def stop_uwsgi(
    process: subprocess.Popen[bytes], tmp_path: Path, how: signal.Signals = signal.SIGINT
) -> str:
    """Stop uWSGI with the signal ``how`` and return its log. First a pause: uWSGI stops a
    worker it finds inside a request, even in its own work after the answer was sent, without
    any exit hook (see deployment.md); the tests stop idle workers. A uWSGI still running after
    20 s is killed, workers and all, and the test fails."""
    time.sleep(0.3)
    process.send_signal(how)
    return server_log_at_exit(process, tmp_path)


def start_served(
    tmp_path: Path,
    command: list[str],
    port: int,
    uri: str,
    tracked: bool,
    settings: dict[str, Any],
    download: Path,
) -> subprocess.Popen[bytes]:
    """``command`` serving SERVED_APP from ``tmp_path`` (tracked into ``uri`` with FAST_WRITER
    and ``settings``, or not; /download sends ``download``), in its own process group, logging
    into ``tmp_path/server.log``; returned once its socket on ``port`` accepts."""
    (tmp_path / "served_app.py").write_text(SERVED_APP)
    env = {
        "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
        "MONGODB_URI": uri,
        "TRACKING_SETTINGS": json.dumps({**FAST_WRITER, **settings}),
        "DOWNLOAD": str(download),
    }
    if tracked:
        env["TRACKED"] = "1"
    with open(tmp_path / "server.log", "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    if not accepts(port):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError((tmp_path / "server.log").read_text())
    return process


def server_log_at_exit(process: subprocess.Popen[bytes], tmp_path: Path) -> str:
    """The log of a server of :func:`start_served` once it exited; one still running after
    20 s is killed, with its workers, and the test fails."""
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError((tmp_path / "server.log").read_text()) from None
    return (tmp_path / "server.log").read_text()


@REAL
def test_uwsgi_workers_forked_by_the_master_record_each_request_once(
    real_server: Any, tmp_path: Path
) -> None:
    """``uwsgi --master --processes 2`` (without ``--lazy-apps``) loads the app in the master
    and forks the workers from C: none of Python's at-fork hooks runs in them. 60 requests
    from 8 clients at once are answered; each worker writes with a writer of its own while it
    serves (without ``--enable-threads``: uWSGI 2.0.27 and later run Python threads anyway);
    each request is recorded once, with a request id of its own (the workers must not both
    make their ids from the random state they copied from the master)."""
    database, uri = database_uri(real_server)
    process, port = run_uwsgi(tmp_path, ["--processes", "2"], uri, TRACKING_EXCLUDE=["^/stats$"])
    try:
        answers = exchange_all(port, [http("GET", f"/hello?n={n}") for n in range(60)], 8)
        workers: dict[int, dict[str, Any]] = {}  # the last counters of each worker, by pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            len(workers) < 2 or sum(w["written"] for w in workers.values()) < 60
        ):
            counters = stats_of(port)
            workers[counters["pid"]] = counters
    finally:
        log = stop_uwsgi(process, tmp_path)
    assert [(w["enqueued"] > 0, w["written"]) for w in workers.values()] == [
        (True, w["enqueued"]) for w in workers.values()
    ], workers
    assert sum(w["enqueued"] for w in workers.values()) == 60, workers
    assert_each_hello_answered_and_recorded_once(answers, real_server, database, 60, log)
    assert "MongoClient opened before fork" not in log, log
    assert "without Python threads" not in log, log  # uwsgi.has_threads, not uwsgi.opt
    assert "Traceback" not in log, log


@REAL
@pytest.mark.parametrize(
    ("args", "reload", "stop"),
    [
        (["--max-requests", "5"], False, signal.SIGINT),
        (["--lazy-apps", "--max-requests", "5"], False, signal.SIGQUIT),
        (["--die-on-term"], True, signal.SIGTERM),
        (["--skip-atexit-teardown"], False, signal.SIGINT),
    ],
    ids=["max-requests", "lazy-apps", "reload", "skip-atexit-teardown"],
)
def test_uwsgi_workers_write_their_records_as_they_exit(
    real_server: Any, tmp_path: Path, args: list[str], reload: bool, stop: signal.Signals
) -> None:
    """With a flush interval longer than the test, the records are written only as each uWSGI
    worker exits: recycled after 5 requests (``--max-requests``), its app loaded by itself
    (``--lazy-apps``), at a graceful reload (SIGHUP to the master: the workers finish, the
    master runs again) and at the stop (SIGINT, SIGQUIT, or SIGTERM with ``--die-on-term``),
    where uWSGI's Python plugin runs the exit hooks (``uwsgi.atexit``, then Python's own,
    which ``--skip-atexit-teardown`` skips). All 24 records are written, once each."""
    database, uri = database_uri(real_server)
    process, port = run_uwsgi(
        tmp_path,
        ["--processes", "2", *args],
        uri,
        TRACKING_FLUSH_INTERVAL_SECONDS=60.0,
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS=5.0,
    )
    try:
        answers = [raw_exchange(port, http("GET", f"/hello?n={n}"), 10) for n in range(12)]
        if reload:
            time.sleep(0.3)  # the workers idle (see stop_uwsgi)
            process.send_signal(signal.SIGHUP)
        answers += [raw_exchange(port, http("GET", f"/hello?n={n}"), 10) for n in range(12, 24)]
    finally:
        log = stop_uwsgi(process, tmp_path, stop)
    assert_each_hello_answered_and_recorded_once(answers, real_server, database, 24, log)
    assert "Traceback" not in log, log


def test_uwsgi_with_skip_atexit_warns_that_what_a_worker_leaves_is_lost(tmp_path: Path) -> None:
    """``--skip-atexit``: a uWSGI worker exits with ``_exit()``, without any exit hook, so
    what it queued and did not write is lost with it: the tracker warns at start-up (once:
    the master loaded the app), reading ``uwsgi.opt`` as uWSGI fills it."""
    process, port = run_uwsgi(
        tmp_path, ["--processes", "2", "--skip-atexit"], "mongodb://127.0.0.1:9/nowhere"
    )
    try:
        assert raw_exchange(port, http("GET", "/hello"), 10).endswith(b"Hello")
    finally:
        log = stop_uwsgi(process, tmp_path)
    assert log.count("uWSGI runs with --skip-atexit") == 1, log


@REAL
@pytest.mark.parametrize("stop", ["fifo", "sigterm"])
def test_a_graceful_uwsgi_stop_records_the_requests_in_progress(
    real_server: Any, tmp_path: Path, stop: str
) -> None:
    """uWSGI's graceful stop (``q`` written to its ``--master-fifo``, or SIGTERM mapped to it
    with ``--hook-master-start "unix_signal:15 gracefully_kill_them_all"``) lets each worker
    finish the request it serves (0.2 s), then exit through its exit hooks: those requests
    are answered and recorded with the ones before. (SIGINT, SIGQUIT, and SIGTERM with
    ``--die-on-term``, end a worker at once, and one inside a request without any exit
    hook: deployment.md.)"""
    database, uri = database_uri(real_server)
    fifo = tmp_path / "master.fifo"
    process, port = run_uwsgi(
        tmp_path,
        [
            *("--processes", "2", "--master-fifo", str(fifo)),
            *("--hook-master-start", "unix_signal:15 gracefully_kill_them_all"),
        ],
        uri,
        TRACKING_FLUSH_INTERVAL_SECONDS=60.0,
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS=5.0,
    )
    try:
        answers = [raw_exchange(port, http("GET", f"/hello?n={n}"), 10) for n in range(6)]
        with ThreadPoolExecutor(2) as pool:
            napping = [pool.submit(raw_exchange, port, http("GET", "/nap"), 10) for _ in "ab"]
            time.sleep(0.1)  # both workers are inside the view
            if stop == "fifo":
                fifo.write_text("q")
            else:
                process.send_signal(signal.SIGTERM)
            naps = [future.result() for future in napping]
    finally:
        log = server_log_at_exit(process, tmp_path)
    assert [nap.endswith(b"rested") for nap in naps] == [True, True], log
    records = stored_records(real_server, database)
    assert sorted(record["path"] for record in records) == ["/hello"] * 6 + ["/nap"] * 2, log
    assert [answer.endswith(b"Hello") for answer in answers] == [True] * 6, log


#: send_file of a file on disk under uWSGI (which sends it with sendfile(), offloaded): whole,
#: to HEAD, a range of it, not modified.
UWSGI_FILE_REQUESTS = [
    http("GET", "/download"),
    http("HEAD", "/download"),
    http("GET", "/download", "Range: bytes=100-1099\r\n"),
    http("GET", "/download", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n"),
]


def offloaded_requests(stats_port: int) -> int:
    """The requests uWSGI's workers handed to its offload threads, from its stats server."""
    with socket.create_connection(("127.0.0.1", stats_port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    workers = json.loads(data)["workers"]
    return sum(core["offloaded_requests"] for worker in workers for core in worker["cores"])


@REAL
def test_uwsgi_answers_tracked_and_untracked_apps_alike(real_server: Any, tmp_path: Path) -> None:
    """Under uWSGI the tracked app answers byte for byte as its untracked twin (but for
    ``Date``): bodies read from a length or chunks, a stream, HEAD, an error, a 404, files.
    uWSGI's ``wsgi.file_wrapper`` is a function that hands back the file itself, and uWSGI
    sends a response that is that very object with ``sendfile()``, here from an offload
    thread (``--offload-threads``): the file on disk is offloaded all the same. Each answer
    is recorded with the status and headers sent; a file's body passed on uncopied
    (``passthrough``), or none sent (HEAD, 304)."""
    database, uri = database_uri(real_server)
    requests = SERVED_REQUESTS + UWSGI_FILE_REQUESTS
    answers: dict[bool, list[bytes]] = {}
    offloaded: dict[bool, int] = {}
    (tmp_path / "download.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    for tracked in (False, True):
        stats_port = free_port()
        process, port = run_uwsgi(
            tmp_path,
            ["--processes", "1", "--offload-threads", "1", "--stats", f"127.0.0.1:{stats_port}"],
            uri,
            tracked,
        )
        try:
            answers[tracked] = [
                re.sub(rb"Date: [^\r]*\r\n", b"", raw_exchange(port, raw, 10)) for raw in requests
            ]
            offloaded[tracked] = offloaded_requests(stats_port)
        finally:
            log = stop_uwsgi(process, tmp_path)
    assert answers[True] == answers[False], log
    assert offloaded == {False: 1, True: 1}, log  # the whole file on disk
    records = stored_records(real_server, database)
    assert [(r["method"], r["path"], r["status_code"]) for r in records] == [
        (raw.split()[0].decode(), raw.split()[1].decode(), int(answer.split()[1]))
        for raw, answer in zip(requests, answers[True])
    ]
    assert [
        [f"{name}: {value}" for name, value in record["response_headers"] if name != "Date"]
        for record in records
    ] == [answer.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:] for answer in answers[True]]
    files = [r for r in records if r["path"] in ("/file", "/download")]
    assert [(r["response_body_omitted"], r["response_body_size"]) for r in files] == [
        ("passthrough", None),  # the file in memory, which uWSGI reads
        ("passthrough", None),
        (None, 0),  # HEAD
        ("passthrough", None),
        (None, 0),  # 304
    ]
    assert all(r["total_time"] >= r["execution_time"] for r in records), records


# --------------------------------------------------------------------------------------------
# ASGI servers serving the app through a WSGI adapter (a thread pool; the body fed from the loop)
# --------------------------------------------------------------------------------------------

#: What uvicorn serves: SERVED_APP through a2wsgi's WSGIMiddleware, the tracker closed at the
#: lifespan shutdown (uvicorn ends on SIGTERM without Python's exit hooks: deployment.md).
ASGI_APP = """
from a2wsgi import WSGIMiddleware

from flask_tracking.asgi import CloseAtShutdown
from served_app import create_app, tracking

app = CloseAtShutdown(WSGIMiddleware(create_app()), tracking)
"""

#: Each ASGI server: the modules it needs, and its command line but for where it listens.
ASGI_SERVERS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "uvicorn-a2wsgi": (("uvicorn", "a2wsgi"), ["uvicorn", "asgi_app:app"]),
    "uvicorn-a2wsgi-workers": (
        ("uvicorn", "a2wsgi"),
        ["uvicorn", "asgi_app:app", "--workers", "2"],
    ),
    "uvicorn-interface-wsgi": (
        ("uvicorn",),
        ["uvicorn", "--interface", "wsgi", "--factory", "served_app:create_app"],
    ),
    "hypercorn": (("hypercorn",), ["hypercorn", "served_app:create_app()"]),  # WSGI, directly
    "hypercorn-a2wsgi": (("hypercorn", "a2wsgi"), ["hypercorn", "asgi_app:app"]),
}


def run_asgi_server(
    tmp_path: Path, server: str, uri: str, tracked: bool = True, **settings: Any
) -> tuple[subprocess.Popen[bytes], int]:
    """The ASGI ``server`` (a key of ASGI_SERVERS) serving SERVED_APP, tracked into ``uri``
    with FAST_WRITER and ``settings``; the process (its own process group) once its socket
    accepts (see :func:`start_served`), and its port."""
    modules, command = ASGI_SERVERS[server]
    for module in modules:
        pytest.importorskip(module)
    (tmp_path / "asgi_app.py").write_text(ASGI_APP)
    port = free_port()
    if command[0] == "uvicorn":
        listen = ["--host", "127.0.0.1", "--port", str(port)]
    else:
        listen = ["--bind", f"127.0.0.1:{port}"]
    command = [sys.executable, "-m", *command, "--log-level", "warning", *listen]
    download = tmp_path / "served_app.py"
    return start_served(tmp_path, command, port, uri, tracked, settings, download), port


def stop_asgi_server(
    process: subprocess.Popen[bytes], tmp_path: Path, how: signal.Signals = signal.SIGTERM
) -> str:
    """Stop the server with the signal ``how`` and return its log. One still running after
    20 s is killed, with its workers, and the test fails."""
    process.send_signal(how)
    return server_log_at_exit(process, tmp_path)


@REAL
@pytest.mark.parametrize(
    ("server", "stop"),
    [
        ("uvicorn-a2wsgi", signal.SIGTERM),
        ("uvicorn-a2wsgi", signal.SIGINT),
        ("uvicorn-a2wsgi-workers", signal.SIGTERM),
        ("uvicorn-interface-wsgi", signal.SIGINT),
        ("hypercorn", signal.SIGTERM),
        ("hypercorn", signal.SIGINT),
        ("hypercorn-a2wsgi", signal.SIGTERM),
    ],
    ids=lambda value: getattr(value, "name", value),
)
def test_an_asgi_server_writes_what_is_queued_when_it_stops(
    real_server: Any, tmp_path: Path, server: str, stop: signal.Signals
) -> None:
    """With a flush interval longer than the test, the records are written only as the server
    stops. uvicorn ends on SIGTERM by raising it again once its graceful shutdown is over,
    with its default action: no exit hook runs, and the app's CloseAtShutdown writes them at
    the lifespan shutdown before. On SIGINT (KeyboardInterrupt), and for hypercorn's worker,
    Python's exit hooks run. All 6 are written, once each."""
    database, uri = database_uri(real_server)
    process, port = run_asgi_server(
        tmp_path,
        server,
        uri,
        TRACKING_FLUSH_INTERVAL_SECONDS=60.0,
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS=5.0,
    )
    try:
        answers = [raw_exchange(port, http("GET", f"/hello?n={n}"), 10) for n in range(6)]
    finally:
        log = stop_asgi_server(process, tmp_path, stop)
    assert_each_hello_answered_and_recorded_once(answers, real_server, database, 6, log)
    assert "Traceback" not in log, log


@REAL
@pytest.mark.parametrize("server", ["uvicorn-a2wsgi", "hypercorn", "hypercorn-a2wsgi"])
def test_an_asgi_server_answers_tracked_and_untracked_apps_alike(
    real_server: Any, tmp_path: Path, server: str
) -> None:
    """Through a WSGI adapter (the app in a thread pool, its body fed from the event loop)
    the tracked app answers byte for byte as its untracked twin (but for ``date``): bodies
    read from a length or chunks, a stream, a file, HEAD, an error, a 404. Each request is
    recorded once with the status answered, the body sent and its time; and so is a stream
    whose client leaves after its first bytes (the adapter cannot tell the app, which streams
    on: the record holds all it sent)."""
    database, uri = database_uri(real_server)
    answers: dict[bool, list[bytes]] = {}
    for tracked in (False, True):
        directory = tmp_path / str(tracked)
        directory.mkdir()
        process, port = run_asgi_server(directory, server, uri, tracked)
        try:
            answers[tracked] = [
                re.sub(rb"date: [^\r]*\r\n", b"", raw_exchange(port, raw, 10))
                for raw in SERVED_REQUESTS
            ]
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(http("GET", "/long-stream"))
                sock.recv(100)  # a client that leaves mid-answer
        finally:
            log = stop_asgi_server(process, directory)
    assert answers[True] == answers[False], log
    statuses = [int(answer.split()[1]) for answer in answers[True]]
    if server == "hypercorn":
        # Its WSGI mode sends no response start for a response without body bytes, and then
        # fails and answers 500 itself, tracked or not: the record keeps the app's 200.
        statuses[1] = 200
    records = stored_records(real_server, database)
    assert [(r["method"], r["path"], r["status_code"]) for r in records] == [
        (raw.split()[0].decode(), raw.split()[1].decode(), status)
        for raw, status in zip(SERVED_REQUESTS, statuses)
    ] + [("GET", "/long-stream", 200)], log
    sent = [answer.partition(b"\r\n\r\n")[2] for answer in answers[True]]
    assert [records[n]["response_body_size"] for n in (0, 2, 3, 6, 7)] == [
        len(sent[n]) for n in (0, 2, 3, 6, 7)
    ]
    assert (records[2]["request_body"], records[4]["response_body"]) == (
        b'{"order": 42}',
        b"chunk0;chunk1;chunk2;chunk3;chunk4;",
    )
    left = records[-1]
    assert (left["response_body_size"], left["total_time"] >= 490) == (50_000, True), left
    assert all(r["total_time"] >= r["execution_time"] for r in records), records

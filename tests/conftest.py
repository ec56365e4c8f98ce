"""Shared fixtures: a mongomock connection, an app factory, and a way to read what was stored."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import time
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import bson
import mongoengine
import mongomock
import pytest
from flask import Flask, Response, abort, request, send_file, stream_with_context

from flask_tracking import Tracking

FAST_WRITER = {
    "TRACKING_FLUSH_INTERVAL_SECONDS": 0.02,
    "TRACKING_RETRY_INITIAL_BACKOFF_SECONDS": 0.01,
    "TRACKING_RETRY_MAX_BACKOFF_SECONDS": 0.05,
    "TRACKING_SHUTDOWN_TIMEOUT_SECONDS": 1.0,
}


@pytest.fixture
def mongo() -> Iterator[Any]:
    """A fresh mongomock database behind MongoEngine's default alias."""
    mongoengine.connect(
        "flask_tracking_test",
        alias="default",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )
    yield mongoengine.get_db("default")
    mongoengine.disconnect("default")


def add_routes(app: Flask) -> None:
    """The views the end-to-end tests exercise."""

    @app.get("/hello")
    def hello() -> str:
        return "Hello"

    @app.post("/echo")
    def echo() -> Any:
        return request.get_json()

    @app.post("/count")
    def count() -> str:
        total = 0
        while chunk := request.stream.read(65536):
            total += len(chunk)
        return str(total)

    @app.post("/ignore")
    def ignore() -> str:
        return "ignored"

    @app.post("/form")
    def form() -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(request.form.items()))

    @app.get("/stream")
    def stream() -> Response:
        def generate() -> Iterator[bytes]:
            for i in range(5):
                yield f"chunk{i};".encode()

        return Response(stream_with_context(generate()), mimetype="text/plain")

    @app.get("/file")
    def file() -> Response:
        return send_file(io.BytesIO(b"file-content" * 100), mimetype="application/octet-stream")

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("kaboom")

    @app.get("/missing")
    def missing() -> str:
        abort(404)

    @app.get("/custom")
    def custom() -> str:
        request._tracking_data = {"order": 42, "tags": ["a", "b"]}
        return "ok"

    @app.get("/sleep/<float:seconds>")
    def sleep(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"


@pytest.fixture
def make_app(mongo: Any) -> Iterator[Callable[..., Flask]]:
    """Build a Flask app with the test views and Tracking; extra kwargs go to app.config."""
    made: list[Flask] = []

    def factory(testing: bool = True, **config: Any) -> Flask:
        app = Flask(f"tracked_{len(made)}")
        app.config.update(TESTING=testing, **FAST_WRITER)
        app.config.update(config)
        add_routes(app)
        Tracking(app)
        made.append(app)
        return app

    yield factory
    for app in made:
        tracking = app.extensions["tracking"]
        tracking._apps[app].writer.shutdown(1.0)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


def stored(app: Flask, mongo: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Flush the app's writer and return the raw stored documents, oldest first; each one is
    checked to encode with pymongo's own BSON encoder."""
    assert app.extensions["tracking"].flush(timeout), "the writer did not finish in time"
    documents = list(mongo["tracking"].find().sort("_id", 1))
    for document in documents:
        bson.encode(document)
    return documents


def fork_and_report(child: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Fork; in the child run ``child()`` and send back what it returns (as JSON) through a
    pipe, never returning into pytest; in the parent return it once the child exited cleanly.

    Python 3.12+ warns about forking a process that has threads: the tests fork on purpose.
    """
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(child()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.2)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return json.loads(b"".join(chunks))

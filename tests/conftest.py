"""Shared fixtures: a mongomock connection, an app factory, and a way to read what was stored."""

from __future__ import annotations

import io
import time
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

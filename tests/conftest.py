"""Shared fixtures: a mongomock connection, an app factory, and a way to read what was stored."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timezone
from typing import Any, Callable

import bson
import mongoengine
import mongomock
import pymongo
import pytest
from flask import Flask, Response, abort, request, send_file, stream_with_context
from hypothesis import settings

from flask_tracking import Tracking
from flask_tracking.aggregate import RollupAggregator
from flask_tracking.store import RollupSink
from flask_tracking.testing import accept_pymongo_bulk_updates

accept_pymongo_bulk_updates()  # rollups are written with bulk_write(UpdateOne(...))

# CI runs each property test on the same examples every time (a failure there is one anyone
# can run again); elsewhere Hypothesis explores new ones on every run.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

FAST_WRITER = {
    "TRACKING_FLUSH_INTERVAL_SECONDS": 0.02,
    "TRACKING_RETRY_INITIAL_BACKOFF_SECONDS": 0.01,
    "TRACKING_RETRY_MAX_BACKOFF_SECONDS": 0.05,
    "TRACKING_SHUTDOWN_TIMEOUT_SECONDS": 1.0,
}


#: Marks a test that runs on the real wire-protocol server (the ``real`` backend).
REAL = pytest.mark.real


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=("both", "mongomock", "real"),
        default=os.environ.get("TRACKING_TEST_BACKEND", "both"),
        help="run the storing tests on mongomock, on the real server, or on both (default)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real: runs against the real MongoDB-compatible server")
    config.addinivalue_line("markers", "mongomock: runs against mongomock, in process")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--backend mongomock|real`` keeps the tests of one backend (and those of neither)."""
    backend = config.getoption("--backend")
    if backend == "both":
        return
    other = "real" if backend == "mongomock" else "mongomock"
    kept = [item for item in items if item.get_closest_marker(other) is None]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (``CI`` set) a skipped real-server test is a failure: a broken install of the
    server must not pass silently."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("CI")
        and item.get_closest_marker("real") is not None
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"real-server test skipped in CI: {report.longrepr}"


@pytest.fixture(autouse=True)
def document_classes() -> Iterator[None]:
    """MongoEngine's registry of document classes as it was before each test: a class a test
    defines (a ``User`` of its own) must not stand in for another module's class of the same
    name when a later test dereferences a stored ``_cls``."""
    from mongoengine.base import common

    registry = dict(common._document_registry)
    yield
    common._document_registry.clear()
    common._document_registry.update(registry)


@pytest.fixture(scope="session")
def real_server() -> Iterator[Any]:
    """The real server's URI: ``TRACKING_TEST_MONGODB_URI`` when set (a real mongod), else one
    SecantusDB started for the whole test session, with fault injection enabled."""
    uri = os.environ.get("TRACKING_TEST_MONGODB_URI")
    if uri:
        yield RealServer(uri, None)
        return
    from example_app.mongo_server import LocalServer, ServerError

    server = LocalServer(test_commands=True)
    try:
        server.start()
    except ServerError as error:
        pytest.skip(f"could not start the real server: {error}")
    try:
        yield RealServer(server.uri, server)
    finally:
        server.stop()


class RealServer:
    """Where the real server listens; ``local`` is the process this test session started
    (None for a server given by ``TRACKING_TEST_MONGODB_URI``)."""

    def __init__(self, uri: str, local: Any) -> None:
        self.uri = uri
        self.local = local
        client: Any = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            #: True when the server says it is SecantusDB (its replica set is named so).
            self.is_secantus = client.admin.command("hello").get("setName") == "secantus"
        finally:
            client.close()


def connect_backend(backend: str, request: pytest.FixtureRequest, alias: str = "default") -> Any:
    """Connect ``alias`` to a fresh database on ``backend`` and return it; the database is
    dropped (real server) and the alias disconnected when the test ends."""
    if backend == "mongomock":
        mongoengine.connect(
            "flask_tracking_test",
            alias=alias,
            mongo_client_class=mongomock.MongoClient,
            uuidRepresentation="standard",
        )
        request.addfinalizer(lambda: mongoengine.disconnect(alias))
        return mongoengine.get_db(alias)
    server = request.getfixturevalue("real_server")
    mongoengine.connect(
        f"flask_tracking_test_{uuid.uuid4().hex[:12]}",
        alias=alias,
        host=server.uri,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=5000,
    )
    database = mongoengine.get_db(alias)

    def drop() -> None:
        # The URI may name a database, which MongoEngine then uses whatever name was asked
        # for: drop the database actually used.
        try:
            database.client.drop_database(database.name)
        finally:
            mongoengine.disconnect(alias)

    request.addfinalizer(drop)
    return database


@pytest.fixture(
    params=[
        pytest.param("mongomock", marks=pytest.mark.mongomock),
        pytest.param("real", marks=REAL),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of this test: ``"mongomock"`` or ``"real"``."""
    return str(request.param)


#: Pins a test that uses ``mongo`` (or ``make_app``) to mongomock: for what only an in-process
#: double can express (a simulated fork, patched internals, a server without capped support).
#: Each use says why.
MONGOMOCK_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("mongomock", marks=pytest.mark.mongomock)]
)


@pytest.fixture
def mongo(backend: str, request: pytest.FixtureRequest) -> Any:
    """A fresh database behind MongoEngine's default alias, on mongomock and on the real
    server (the test runs once on each)."""
    return connect_backend(backend, request)


@pytest.fixture
def mongomock_db(request: pytest.FixtureRequest) -> Any:
    """A fresh mongomock database behind the default alias, for tests about mongomock itself."""
    return connect_backend("mongomock", request)


@pytest.fixture
def real_db(real_server: Any, request: pytest.FixtureRequest) -> Any:
    """A fresh database on the real server behind the default alias (real server only)."""
    return connect_backend("real", request)


def secantus_differs(server: Any, reason: str) -> None:
    """Mark the running test xfail when the real server is SecantusDB, whose behaviour differs
    from mongod's here (``reason`` says how); on a real mongod the test must pass."""
    if server.is_secantus:
        pytest.xfail(f"SecantusDB differs from mongod: {reason}")


@contextmanager
def failing_once(server: Any, command: str, code: int) -> Iterator[None]:
    """The real ``server`` answers the next ``command`` (of any client) with the error
    ``code``, through a ``failCommand`` fail point that is switched off afterwards."""
    admin: Any = pymongo.MongoClient(server.uri)
    admin.admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": 1},
        data={"failCommands": [command], "errorCode": code},
    )
    try:
        yield
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")
        admin.close()


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


def store_rollups(
    database: Any,
    records: list[dict[str, Any]],
    collection: str = "tracking_rollups",
    retention_days: int = 90,
) -> None:
    """Add ``records`` (stored-record dicts) to the rollups in ``database``, through the
    writer's own aggregation and upserts, as if their requests had just been served (rollups
    older than ``retention_days`` expire at once)."""
    aggregator = RollupAggregator(
        RollupSink(
            lambda: database,
            retention_days=retention_days,
            write_timeout_seconds=10.0,
            collection_name=collection,
        )
    )
    for record in records:
        moment = record["date_created"]
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        status = record.get("status_code")
        aggregator.add(
            (
                moment.timestamp(),
                record.get("endpoint"),
                record.get("method"),
                f"{status} STATUS" if status is not None else "",
                record.get("execution_time"),
                record.get("exception") is not None,
                record.get("request_body_size") or 0,
                record.get("response_body_size") or 0,
            )
        )
    assert aggregator.write(), aggregator.stats()


def least_seconds(call: Callable[[], Any], repeats: int = 3) -> float:
    """The least time ``call()`` took in ``repeats`` runs (for growth checks: the cost at one
    size against the cost at four times that size)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


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

"""The database work of each request (flask_tracking.dbactivity): counting, attribution,
shapes, the tracker's own I/O left out, SQLAlchemy, and the stored ``db`` sub-document.

pymongo reports commands to listeners; mongomock runs no commands and reports none, so the
tests of attribution run on the real server (``real_db``); those of the stored document's
absence and of the reading helpers run on both backends.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import json
import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Callable

import mongoengine
import pymongo
import pytest
from flask import Flask, current_app
from pymongo import monitoring

from flask_tracking import Tracking, dbactivity
from flask_tracking.capture import RequestState
from flask_tracking.dbactivity import (
    LISTENER,
    MAX_SHAPE_CHARS,
    SLOWEST_KEPT,
    DbActivity,
    attach,
    detach,
    shape_of,
    sql_shape,
    uncounted,
)
from flask_tracking.documents import Tracking as Record

from .conftest import FAST_WRITER, store_rollups, stored

# --- shapes --------------------------------------------------------------------------------


def test_a_shape_keeps_keys_and_operators_and_replaces_every_value() -> None:
    query = {"email": "ann@example.com", "age": {"$gt": 30, "$lt": 40}, "tags": {"$in": [1, 2]}}
    assert shape_of(query) == '{"email":"?","age":{"$gt":"?","$lt":"?"},"tags":{"$in":"?"}}'


def test_a_list_of_documents_keeps_their_shapes_a_list_of_values_is_one_mark() -> None:
    assert shape_of({"$or": [{"a": 1}, {"b": "x"}]}) == '{"$or":[{"a":"?"},{"b":"?"}]}'
    assert shape_of({"ids": {"$in": list(range(100))}}) == shape_of({"ids": {"$in": [7]}})
    assert shape_of([{"$match": {"user": "bob"}}, {"$limit": 5}]) == (
        '[{"$match":{"user":"?"}},{"$limit":"?"}]'
    )


def test_a_shape_never_holds_a_value_of_any_type() -> None:
    from datetime import datetime

    from bson import Binary, Decimal128, ObjectId, Regex

    secrets = [
        "s3cret",
        123456789,
        1.5,
        True,
        None,
        ObjectId(),
        datetime(2024, 5, 1),
        Binary(b"xyz"),
        Decimal128("9.99"),
        Regex("^secret"),
        b"bytes",
    ]
    shape = shape_of({"k": {"$in": secrets}, "nested": {"deep": secrets[0]}, "v": secrets[1]})
    for value in ("s3cret", "123456789", "1.5", "9.99", "secret", "xyz", "true", "null"):
        assert value not in shape
    assert json.loads(shape) == {"k": {"$in": "?"}, "nested": {"deep": "?"}, "v": "?"}


def test_a_long_or_deep_shape_is_cut() -> None:
    wide = {f"field_{i}": i for i in range(200)}
    assert len(shape_of(wide)) == MAX_SHAPE_CHARS and shape_of(wide).endswith("...")
    deep: dict[str, Any] = {"v": 1}
    for _ in range(20):
        deep = {"d": deep}
    assert shape_of(deep).count("{") <= dbactivity.MAX_SHAPE_DEPTH


def test_remembered_sql_shapes_keep_no_statement_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many-row INSERTs render one long statement per batch size: 1,024 of them were kept.
    import tracemalloc

    monkeypatch.setattr(dbactivity, "_SQL_SHAPES", {})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        shapes = []
        for rows in range(30):  # about 16 KB each
            statement = "INSERT INTO t (a, b) VALUES " + ", ".join(["(?, ?)"] * (2000 + rows))
            shapes.append(sql_shape(statement))
        del statement
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert shapes[0][:2] == ("insert", "t")
    assert kept < 100_000
    again = "SELECT * FROM t WHERE a = ?"
    assert sql_shape(again) is sql_shape(again)  # remembered


def test_sql_shapes_keep_the_statement_and_drop_literals_and_parameters() -> None:
    name, table, shape = sql_shape(
        "SELECT users.id, users.name FROM users WHERE users.name = 'ann' AND users.age > 42 "
        "AND users.id IN (?, ?, ?) LIMIT ? OFFSET ?"
    )
    assert (name, table) == ("select", "users")
    assert "ann" not in shape and "42" not in shape
    assert "users.name = ? AND users.age > ? AND users.id IN (?) LIMIT ? OFFSET ?" in shape
    assert sql_shape("INSERT INTO orders (a, b) VALUES (%(a)s, %(b)s)")[:2] == ("insert", "orders")
    assert sql_shape('UPDATE "items" SET qty=:qty WHERE id = $1')[2] == (
        'UPDATE "items" SET qty=? WHERE id = ?'
    )


@pytest.mark.parametrize(
    "statement",
    [
        # MySQL escapes a quote in a string literal with a backslash
        "SELECT id FROM users WHERE name = 'O\\'Brien' AND api_key = 'sk_live_51Hx9secret'",
        # PostgreSQL dollar-quoted string literals
        "SELECT id FROM users WHERE api_key = $$sk_live_51Hx9secret$$",
        "SELECT id FROM users WHERE api_key = $k$sk_live_51Hx9secret$k$",
        # a PostgreSQL escape string
        "SELECT id FROM users WHERE name = E'O\\'Brien' AND api_key = 'sk_live_51Hx9secret'",
    ],
)
def test_sql_shapes_drop_quoted_literals_of_every_dialect(statement: str) -> None:
    assert "sk_live_51Hx9secret" not in sql_shape(statement)[2]


def test_sql_shapes_keep_identifiers_holding_dollar_signs() -> None:
    # PostgreSQL and MySQL identifiers may hold "$" (price$usd$net): no dollar quote opens
    # inside one, and the rest of the statement is kept.
    assert sql_shape("SELECT price$usd$net FROM orders WHERE id = $1 AND qty > 3")[2] == (
        "SELECT price$usd$net FROM orders WHERE id = ? AND qty > ?"
    )
    assert (
        sql_shape('SELECT "a$b$c" FROM t WHERE id = $1')[2] == 'SELECT "a$b$c" FROM t WHERE id = ?'
    )


# --- counting ------------------------------------------------------------------------------


def test_the_activity_counts_keeps_the_slowest_and_lists_repeated_shapes() -> None:
    activity = DbActivity()
    for i in range(7):
        activity.add("find", "items", '{"sku":"?"}', float(i))
    activity.add("insert", "orders", None, 10.0)
    activity.add("find", "users", '{"_id":"?"}', 0.5)
    document = activity.to_document(5)
    assert document is not None
    assert document["count"] == 9
    assert document["time_ms"] == pytest.approx(21 + 10.5)
    assert document["commands"] == {"find": 8, "insert": 1}
    assert [entry["ms"] for entry in document["slowest"]] == [10.0, 6.0, 5.0, 4.0, 3.0]
    assert len(document["slowest"]) == SLOWEST_KEPT
    assert document["slowest"][0] == {
        "command": "insert",
        "collection": "orders",
        "ms": 10.0,
        "shape": None,
    }
    assert document["repeated"] == [
        {"command": "find", "collection": "items", "shape": '{"sku":"?"}', "count": 7}
    ]
    assert activity.to_document(8)["repeated"] == []  # type: ignore[index]
    assert DbActivity().to_document(5) is None


class _Event:
    """A stand-in for pymongo's command events (only the attributes the listener reads)."""

    def __init__(self, request_id: int, command: dict[str, Any], database: str = "app") -> None:
        self.request_id = request_id
        self.command = command
        self.command_name = next(iter(command))
        self.database_name = database
        self.duration_micros = 1500


def _run_command(command: dict[str, Any], request_id: int, database: str = "app") -> None:
    event: Any = _Event(request_id, command, database)
    LISTENER.started(event)
    LISTENER.succeeded(event)


def test_commands_count_only_inside_a_tracked_request() -> None:
    _run_command({"find": "items", "filter": {}}, 1)  # no request: nothing to count into
    state = RequestState()
    token = attach(state)
    try:
        _run_command({"find": "items", "filter": {"a": 1}}, 2)
        with uncounted():
            _run_command({"insert": "items", "documents": []}, 3)
    finally:
        detach(token)
    _run_command({"find": "items", "filter": {}}, 4)
    assert state.db.to_document(5)["commands"] == {"find": 1}
    assert state.db.to_document(5)["time_ms"] == 1.5


def test_a_listener_registered_twice_counts_each_command_once() -> None:
    state = RequestState()
    token = attach(state)
    try:
        event: Any = _Event(7, {"find": "items", "filter": {}})
        LISTENER.started(event)
        LISTENER.started(event)  # globally registered and passed to the client as well
        LISTENER.succeeded(event)
        LISTENER.succeeded(event)
    finally:
        detach(token)
    assert state.db.count == 1


def test_commands_after_the_request_finished_or_was_skipped_are_not_counted() -> None:
    for flag in ("finished", "skipped"):
        state = RequestState()
        token = attach(state)
        try:
            setattr(state, flag, True)
            _run_command({"find": "items", "filter": {}}, 8)
        finally:
            detach(token)
        assert state.db is None


def test_the_trackers_collections_are_never_counted() -> None:
    dbactivity.ignore_collection("tracked_app", "tracking")
    state = RequestState()
    token = attach(state)
    try:
        _run_command({"find": "tracking", "filter": {}}, 9, database="tracked_app")
        _run_command({"find": "tracking", "filter": {}}, 10, database="other_app")
    finally:
        detach(token)
    assert state.db.count == 1  # the same name in another database is the app's own


def test_a_client_created_before_init_app_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    registered = monitoring._LISTENERS
    monitoring._LISTENERS = monitoring._Listeners([], [], [], [], [])  # before register()
    try:
        early: Any = pymongo.MongoClient("mongodb://127.0.0.1:9/", connect=False)
    finally:
        monitoring._LISTENERS = registered
    request.addfinalizer(early.close)
    monkeypatch.setattr(mongoengine.connection, "_connections", {"early": early})
    monkeypatch.setattr(dbactivity, "_warned_aliases", set())
    with caplog.at_level(logging.WARNING, "flask_tracking"):
        dbactivity.register()
        dbactivity.register()
    warnings = [r.getMessage() for r in caplog.records if "'early'" in r.getMessage()]
    assert len(warnings) == 1
    assert "event_listeners=[flask_tracking.dbactivity.LISTENER]" in warnings[0]


# --- the stored record, on both backends -----------------------------------------------------


def test_a_request_without_database_work_has_no_db_field(mongo: Any) -> None:
    app = _app("no_db")

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    _, document = _tracked_once(app, "/plain", mongo)
    assert "db" not in document
    assert Record.objects.get().db is None


def test_the_settings_are_checked_at_init_app(mongo: Any) -> None:
    for value in (1, "5", True):
        app = Flask("bad_threshold")
        app.config["TRACKING_DB_REPEAT_THRESHOLD"] = value
        with pytest.raises(ValueError, match="TRACKING_DB_REPEAT_THRESHOLD"):
            Tracking(app)
    app = Flask("bad_flag")
    app.config["TRACKING_DB_ACTIVITY"] = "yes"
    with pytest.raises(ValueError, match="TRACKING_DB_ACTIVITY"):
        Tracking(app)


# --- MongoDB commands on the real server -----------------------------------------------------


@pytest.fixture
def watched(real_db: Any) -> Iterator[Any]:
    """The real test database through a client that reports to the listener (passed to the
    client, so it does not matter when the global registration happened)."""
    client: Any = pymongo.MongoClient(
        real_db.client.address
        and f"mongodb://{real_db.client.address[0]}:{real_db.client.address[1]}/",
        event_listeners=[LISTENER],
        serverSelectionTimeoutMS=5000,
    )
    try:
        yield client[real_db.name]
    finally:
        client.close()


def _app(name: str = "db_app", **config: Any) -> Flask:
    app = Flask(f"{name}_{uuid.uuid4().hex[:6]}")
    app.config.update(TESTING=True, **FAST_WRITER)
    app.config.update(config)
    return app


def _finish(app: Flask) -> None:
    app.extensions["tracking"]._apps[app].writer.shutdown(1.0)


def _tracked_once(app: Flask, path: str, database: Any, **options: Any) -> tuple[bytes, Any]:
    """Track ``app``, request ``path`` once (status 200), and return the response body and
    the one stored document; the app's writer is shut down after."""
    Tracking(app)
    try:
        response = app.test_client().get(path, **options)
        assert response.status_code == 200
        (document,) = stored(app, database)
        return response.data, document
    finally:
        _finish(app)


def test_twelve_finds_in_a_loop_are_twelve_commands_of_one_repeated_shape(
    watched: Any, real_db: Any
) -> None:
    watched.items.insert_many([{"sku": f"sku-{i}", "price": i} for i in range(12)])
    app = _app()

    @app.get("/cart")
    def cart() -> str:
        total = 0
        for i in range(12):
            total += watched.items.find_one({"sku": f"secret-sku-{i}", "price": {"$gte": 0}}) or 0
        return str(total)

    _, document = _tracked_once(app, "/cart", real_db)
    db = document["db"]
    assert db["count"] == 12
    assert db["commands"] == {"find": 12}
    assert db["time_ms"] > 0
    assert db["repeated"] == [
        {
            "command": "find",
            "collection": "items",
            "shape": '{"sku":"?","price":{"$gte":"?"}}',
            "count": 12,
        }
    ]
    assert len(db["slowest"]) == SLOWEST_KEPT
    assert all(entry["collection"] == "items" and entry["ms"] > 0 for entry in db["slowest"])
    assert "secret" not in json.dumps(db)
    record = Record.objects.repeated_queries().get()
    assert record.db.count == 12
    assert Record.objects.db_heavy(min_commands=12).count() == 1
    assert Record.objects.db_heavy(min_commands=13).count() == 0


def test_each_of_eight_concurrent_requests_gets_exactly_its_own_commands(
    watched: Any, real_db: Any
) -> None:
    app = _app()
    barrier = threading.Barrier(8, timeout=10)

    @app.get("/work/<int:n>")
    def work(n: int) -> str:
        barrier.wait()  # all eight requests run their commands at the same time
        collection = watched[f"thread_{n}"]
        for i in range(n):
            collection.insert_one({"i": i})
            collection.find_one({"i": i})
        return str(n)

    Tracking(app)
    errors: list[BaseException] = []

    def call(n: int) -> None:
        try:
            assert app.test_client().get(f"/work/{n}").status_code == 200
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(1, 9)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        documents = stored(app, real_db)
    finally:
        _finish(app)
    assert len(documents) == 8
    for document in documents:
        n = int(document["path"].rsplit("/", 1)[1])
        db = document["db"]
        assert db["commands"] == {"insert": n, "find": n}, document["path"]
        assert db["count"] == 2 * n
        assert {entry["collection"] for entry in db["slowest"]} == {f"thread_{n}"}


def test_the_trackers_own_writes_and_reads_never_appear(
    real_server: Any, request: pytest.FixtureRequest
) -> None:
    """The tracker writes through a client that reports to the listener; its inserts (from
    the writer thread, and even run on a request thread) and its reads are never counted."""
    name = f"flask_tracking_test_{uuid.uuid4().hex[:12]}"
    mongoengine.connect(
        name,
        host=real_server.uri,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=5000,
        event_listeners=[LISTENER],
    )
    database = mongoengine.get_db()

    def drop() -> None:
        try:
            database.client.drop_database(database.name)
        finally:
            mongoengine.disconnect()

    request.addfinalizer(drop)
    app = _app(TRACKING_BATCH_MAX_RECORDS=1)

    @app.get("/app")
    def app_work() -> str:
        database.orders.find_one({"n": 1})
        return "ok"

    @app.get("/own")
    def own() -> str:
        tracked = current_app.extensions["tracking"]._apps[current_app._get_current_object()]
        tracked.writer._write_batch([{"path": "/written-on-the-request-thread"}])
        return str(Record.objects.count())

    Tracking(app)
    client = app.test_client()
    try:
        for _ in range(5):
            assert client.get("/app").status_code == 200
            assert client.get("/own").status_code == 200
        documents = stored(app, database)
    finally:
        _finish(app)
    own_records = [d for d in documents if d.get("path") == "/own"]
    app_records = [d for d in documents if d.get("path") == "/app"]
    assert len(own_records) == 5 and len(app_records) == 5
    assert all("db" not in document for document in own_records)
    for document in app_records:
        assert document["db"]["commands"] == {"find": 1}
        assert document["db"]["slowest"][0]["collection"] == "orders"


def test_a_client_created_after_init_app_is_watched_without_being_told(real_db: Any) -> None:
    app = _app()
    Tracking(app)  # registers the listener globally: clients created from now on report
    address = real_db.client.address
    client: Any = pymongo.MongoClient(f"mongodb://{address[0]}:{address[1]}/")

    @app.get("/late")
    def late() -> str:
        client[real_db.name].things.find_one({"a": 1})
        return "ok"

    try:
        assert app.test_client().get("/late").status_code == 200
        (document,) = stored(app, real_db)
    finally:
        _finish(app)
        client.close()
    assert document["db"]["commands"] == {"find": 1}


def test_failed_commands_count_too(watched: Any, real_db: Any) -> None:
    app = _app()

    @app.get("/bad")
    def bad() -> str:
        try:
            watched.items.find_one({"a": {"$nosuchoperator": 1}})
        except pymongo.errors.OperationFailure:
            return "failed"
        return "did not fail"

    body, document = _tracked_once(app, "/bad", real_db)
    assert body == b"failed"
    assert document["db"]["commands"] == {"find": 1}
    assert document["db"]["slowest"][0]["shape"] == '{"a":{"$nosuchoperator":"?"}}'


def test_asyncio_views_and_their_tasks_are_attributed(watched: Any, real_db: Any) -> None:
    app = _app()

    @app.get("/async")
    async def async_view() -> str:
        watched.items.find_one({"a": 1})
        await asyncio.gather(
            *(asyncio.to_thread(watched.items.find_one, {"b": i}) for i in range(3))
        )
        return "ok"

    _, document = _tracked_once(app, "/async", real_db)
    assert document["db"]["count"] == 4


def test_with_db_activity_off_nothing_is_watched(watched: Any, real_db: Any) -> None:
    app = _app(TRACKING_DB_ACTIVITY=False)
    states: list[Any] = []

    @app.get("/off")
    def off() -> str:
        from flask import request

        states.append(request.environ["flask_tracking.state"])
        watched.items.find_one({"a": 1})
        return "ok"

    _, document = _tracked_once(app, "/off", real_db)
    assert "db" not in document
    assert states[0].db_token is None and states[0].db is None


def test_the_db_field_can_be_left_out_like_any_other(watched: Any, real_db: Any) -> None:
    app = _app(TRACKING_EXCLUDE_FIELDS=["db"])

    @app.get("/left-out")
    def left_out() -> str:
        watched.items.find_one({"a": 1})
        return "ok"

    _, document = _tracked_once(app, "/left-out", real_db)
    assert "db" not in document and document["path"] == "/left-out"


def test_commands_of_a_streamed_response_count_until_it_is_closed(
    watched: Any, real_db: Any
) -> None:
    from flask import Response, stream_with_context

    app = _app()

    @app.get("/stream")
    def stream() -> Response:
        def rows() -> Iterator[str]:
            for i in range(3):
                watched.items.find_one({"i": i})
                yield f"{i};"

        return Response(stream_with_context(rows()))

    body, document = _tracked_once(app, "/stream", real_db, buffered=True)
    assert body == b"0;1;2;"
    assert document["db"]["count"] == 3


# --- SQLAlchemy -------------------------------------------------------------------------------


def test_a_flask_sqlalchemy_apps_statements_are_counted(mongo: Any) -> None:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import Column, Integer, String, select

    sql = SQLAlchemy()

    class User(sql.Model):  # type: ignore[name-defined,misc]
        __tablename__ = f"users_{uuid.uuid4().hex[:6]}"
        id = Column(Integer, primary_key=True)
        name = Column(String(50))

    app = _app(SQLALCHEMY_DATABASE_URI="sqlite:///:memory:")
    sql.init_app(app)
    with app.app_context():
        sql.create_all()
        sql.session.add(User(name="someone"))
        sql.session.commit()

    @app.get("/users")
    def users() -> str:
        found = [
            sql.session.execute(select(User).where(User.name == f"secret-name-{i}")).first()
            for i in range(6)
        ]
        return str(len(found))

    try:
        _, document = _tracked_once(app, "/users", mongo)
    finally:
        with app.app_context():
            sql.engine.dispose()
    db = document["db"]
    assert db["commands"] == {"select": 6}
    assert db["count"] == 6
    (repeated,) = db["repeated"]
    assert repeated["count"] == 6 and repeated["collection"] == User.__tablename__
    assert repeated["shape"].startswith("SELECT ")
    assert "secret" not in json.dumps(db)


class _NoSQLAlchemy(importlib.abc.MetaPathFinder):
    """Makes ``import sqlalchemy`` fail, as if it were not installed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "sqlalchemy" or name.startswith("sqlalchemy."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")


def test_nothing_breaks_and_nothing_is_imported_without_sqlalchemy(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "sqlalchemy" or m.startswith("sqlalchemy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoSQLAlchemy(), *sys.meta_path])
    monkeypatch.setattr(dbactivity, "_watching_sqlalchemy", False)
    app = _app()

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    _, document = _tracked_once(app, "/hello", mongo)
    assert "sqlalchemy" not in sys.modules
    assert not dbactivity._watching_sqlalchemy
    assert document["path"] == "/hello" and "db" not in document


# --- reading ---------------------------------------------------------------------------------


def _db(count: int, time_ms: float, repeated: int = 0) -> dict[str, Any]:
    shape = '{"sku":"?"}'
    return {
        "count": count,
        "time_ms": time_ms,
        "commands": {"find": count},
        "slowest": [{"command": "find", "collection": "items", "ms": time_ms, "shape": shape}],
        "repeated": [{"command": "find", "collection": "items", "shape": shape, "count": repeated}]
        if repeated
        else [],
    }


@pytest.fixture
def db_records(mongo: Any) -> Callable[[], None]:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    mongo.tracking.insert_many(
        [
            {"date_created": now, "path": "/a", "endpoint": "a", "execution_time": 100.0},
            {
                "date_created": now,
                "path": "/b",
                "endpoint": "a",
                "execution_time": 50.0,
                "db": _db(3, 20.0),
            },
            {
                "date_created": now,
                "path": "/c",
                "endpoint": "a",
                "execution_time": 50.0,
                "status_code": 200,
                "db": _db(12, 30.0, repeated=12),
                "sample_rate": 0.5,
            },
        ]
    )
    return lambda: None


def test_db_heavy_and_repeated_queries_select_records(mongo: Any, db_records: Any) -> None:
    assert {r.path for r in Record.objects.db_heavy(min_commands=3)} == {"/b", "/c"}
    assert {r.path for r in Record.objects.db_heavy(min_commands=10)} == {"/c"}
    assert {r.path for r in Record.objects.db_heavy(100, min_ms=20)} == {"/b", "/c"}
    assert [r.path for r in Record.objects.repeated_queries()] == ["/c"]
    record = Record.objects.get(path="/c")
    assert record.db.count == 12 and record.db.repeated[0]["count"] == 12


def test_db_summary_gives_the_share_of_time_in_the_database(mongo: Any, db_records: Any) -> None:
    summary = Record.objects.db_summary()
    # /c was kept with probability 0.5: it stands for two requests.
    assert summary["requests"] == 4
    assert summary["with_db"] == 3
    assert summary["commands"] == 3 + 24
    assert summary["time_ms"] == pytest.approx(20 + 60)
    assert summary["app_time_ms"] == pytest.approx(100 + 50 + 100)
    assert summary["share"] == pytest.approx(80 / 250)
    assert summary["mean_commands"] == pytest.approx(27 / 4)
    assert Record.objects.filter(path="/nothing").db_summary()["share"] is None


def test_debug_prints_the_database_section(mongo: Any, db_records: Any) -> None:
    text = Record.objects.get(path="/c").debug()
    assert "Database: 12 commands, 30.0 ms (find 12)" in text
    assert '  slow: 30.0 ms find items {"sku":"?"}' in text
    assert '  repeated 12x: find items {"sku":"?"}' in text
    assert "Database" not in Record.objects.get(path="/a").debug()


def test_list_db_adds_the_database_columns(make_app: Callable[..., Flask], db_records: Any) -> None:
    runner = make_app().test_cli_runner()
    plain = runner.invoke(args=["tracking", "list"])
    assert plain.exit_code == 0 and " db " not in plain.output
    result = runner.invoke(args=["tracking", "list", "--db"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[4]: line for line in result.output.splitlines()}
    assert lines["/a"].endswith("db -")
    assert lines["/b"].endswith("db 3 cmd 20.0ms")
    assert lines["/c"].endswith("db 12 cmd 30.0ms repeated 12x find items")


def test_show_prints_the_database_section(make_app: Callable[..., Flask], db_records: Any) -> None:
    record = Record.objects.get(path="/c")
    result = make_app().test_cli_runner().invoke(args=["tracking", "show", str(record.pk)])
    assert result.exit_code == 0, result.output
    assert "Database: 12 commands, 30.0 ms (find 12)" in result.output
    assert '  repeated 12x: find items {"sku":"?"}' in result.output


def test_the_dashboard_shows_database_time_and_count(
    make_app: Callable[..., Flask], db_records: Any, mongo: Any
) -> None:
    store_rollups(mongo, list(mongo["tracking"].find()))  # the endpoint page's request counts
    app = make_app(TRACKING_DASHBOARD=True, TRACKING_DASHBOARD_PUBLIC=True)
    client = app.test_client()
    listing = client.get("/tracking/requests").get_data(as_text=True)
    assert '<th scope="col" class="num optional">DB time</th>' in listing
    assert "30.0 ms" in listing and "(12x)" in listing
    record = Record.objects.get(path="/c")
    detail = client.get(f"/tracking/requests/{record.pk}").get_data(as_text=True)
    assert "12 commands, 30.0 ms in the database (60% of the time in the app)" in detail
    assert "<code>{&#34;sku&#34;:&#34;?&#34;}</code>" in detail
    endpoint = client.get("/tracking/endpoints/a").get_data(as_text=True)
    assert "Time in the database" in endpoint
    assert "32 %" in endpoint  # 80 ms of 250 ms (the sampled record counts twice)
    assert "6.8 commands, 20.0 ms per request" in endpoint
    live = client.get("/tracking/live.json").get_json()
    by_path = {row["target"]: row for row in live["records"]}
    assert by_path["/c"]["db_count"] == "12" and by_path["/c"]["db_repeated"] == "12x"
    assert by_path["/a"]["db_count"] == "-"


def test_the_connection_init_app_makes_is_watched_and_not_warned_about(real_server: Any) -> None:
    """TRACKING_MONGODB_URI: init_app registers the listener before it connects, so the
    client it makes (which the app may use too) reports, and no warning names it. In a fresh
    interpreter: this session registered the listener long ago."""
    script = textwrap.dedent(
        """
        import json, logging, sys
        import mongoengine
        from flask import Flask
        from flask_tracking import Tracking

        records = []
        logging.getLogger("flask_tracking").addHandler(logging.Handler())
        logging.getLogger("flask_tracking").handlers[0].emit = records.append
        app = Flask("uri_app")
        app.config.update(TRACKING_MONGODB_URI=sys.argv[1], TRACKING_DB_ALIAS="uri_alias")
        tracking = Tracking(app)

        @app.get("/find")
        def find():
            mongoengine.get_db("uri_alias")["things"].find_one({"a": 1})
            return "ok"

        app.test_client().get("/find")
        assert tracking.flush(10)
        database = mongoengine.get_db("uri_alias")
        document = database["tracking"].find_one({"path": "/find"})
        database.client.drop_database(database.name)
        print(json.dumps({
            "db": (document or {}).get("db", {}).get("commands"),
            "warnings": [r.getMessage() for r in records if "created before" in r.getMessage()],
        }))
        """
    )
    uri = f"{real_server.uri.rstrip('/')}/flask_tracking_test_{uuid.uuid4().hex[:12]}"
    done = subprocess.run(
        [sys.executable, "-c", script, uri], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"db": {"find": 1}, "warnings": []}

"""The storage modes (flask_tracking.storage): creation, expiry or eviction, mismatch warnings,
and the reading side (query helpers, CLI, dashboard) on each mode, on both backends.

Expiry on the real server: mongod's TTL monitor runs every 60 s (``ttlMonitorSleepSecs``, a
startup parameter). When the real server is the SecantusDB the session started, the expiry
tests start one more with a 1 s sweep; against a server given by TRACKING_TEST_MONGODB_URI
they wait up to 75 s for one monitor pass.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import mongoengine
import pymongo
import pytest
from flask import Flask

from flask_tracking import Tracking
from flask_tracking.documents import Tracking as TrackingDocument
from flask_tracking.migrate import migrate
from flask_tracking.storage import (
    GRANULARITY,
    SERIES_FIELD,
    CollectionSpec,
    _difference,
    ensure_collection,
    mode_of,
    tracking_spec,
    ttl_indexes,
)

from .conftest import FAST_WRITER, REAL, add_routes, failing_once, secantus_differs

LOGGER = "flask_tracking"
WEEK = 7 * 24 * 3600
MODES = ("capped", "ttl", "timeseries")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The tracker's warnings about storage (the database-activity notice at the process's
    first init_app, about clients created before it, is another matter)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno >= 30 and r.module != "dbactivity"
    ]


def tracked_app(mode: str, **config: Any) -> Flask:
    app = Flask(f"storage_{mode}_{uuid.uuid4().hex[:6]}")
    app.config.update(TESTING=True, TRACKING_STORAGE=mode, **FAST_WRITER)
    app.config.update(config)
    add_routes(app)
    tracking = Tracking()
    tracking.dashboard_access(lambda: True)
    tracking.init_app(app)
    return app


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["tracking"]._apps[app].writer.shutdown(1.0)


# --- creation ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_real_server_creates_each_mode_with_its_options(
    mode: str, real_db: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    app = tracked_app(mode, TRACKING_RETENTION_HOURS=2, TRACKING_TABLE_SIZE=1 << 20)
    apps.append(app)
    app.test_client().get("/hello")
    assert app.extensions["tracking"].flush(10)
    options = real_db["tracking"].options()
    indexes = real_db["tracking"].index_information()
    if mode == "capped":
        assert options["capped"] is True and options["size"] >= 1 << 20
    elif mode == "ttl":
        assert not options.get("capped") and "timeseries" not in options
        assert indexes["tracking_date_created"]["expireAfterSeconds"] == 7200
        assert indexes["tracking_date_created"]["key"] == [("date_created", -1)]
    else:
        wanted = {
            "timeField": "date_created",
            "metaField": SERIES_FIELD,
            "granularity": GRANULARITY,
        }
        assert options["timeseries"] | wanted == options["timeseries"]  # mongod adds bucket spans
        assert options["expireAfterSeconds"] == 7200
    assert warnings_of(caplog) == []
    [document] = list(real_db["tracking"].find())
    if mode == "timeseries":
        assert document[SERIES_FIELD] == {"endpoint": "hello", "method": "GET", "status_code": 200}
    else:
        assert SERIES_FIELD not in document


@pytest.mark.parametrize("mode", ["ttl", "timeseries"])
def test_mongomock_gets_a_plain_collection_with_the_ttl_index(
    mode: str, mongomock_db: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    app = tracked_app(mode, TRACKING_RETENTION_HOURS=1)
    apps.append(app)
    client = app.test_client()
    for _ in range(2):
        client.get("/hello")
        assert app.extensions["tracking"].flush(5)
    indexes = mongomock_db["tracking"].index_information()
    assert indexes["tracking_date_created"]["expireAfterSeconds"] == 3600
    warnings = warnings_of(caplog)
    if mode == "ttl":
        assert warnings == []
    else:
        [warning] = warnings
        assert "does not support timeseries collections" in warning


# --- expiry and eviction ----------------------------------------------------------------


def aged(hours: float) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A before_save hook dating records ``hours`` back when their query says ``old``."""

    def hook(document: dict[str, Any]) -> dict[str, Any]:
        if document.get("query_params") == "old":
            document["date_created"] -= timedelta(hours=hours)
        return document

    return hook


def write_old_and_new(app: Flask) -> None:
    app.extensions["tracking"].before_save(aged(3))
    client = app.test_client()
    for query in ("old", "new", "old"):
        client.get(f"/hello?{query}")
    assert app.extensions["tracking"].flush(10)


@pytest.mark.parametrize("mode", ["ttl", "timeseries"])
def test_mongomock_expires_records_older_than_the_retention(
    mode: str, mongomock_db: Any, apps: list[Flask]
) -> None:
    app = tracked_app(mode, TRACKING_RETENTION_HOURS=1)
    apps.append(app)
    write_old_and_new(app)  # mongomock applies TTL indexes when it reads
    assert [d["query_params"] for d in mongomock_db["tracking"].find()] == ["new"]


@pytest.fixture(scope="module")
def ttl_server(real_server: Any) -> Iterator[tuple[str, float]]:
    """(uri, seconds to wait for a TTL pass): a SecantusDB sweeping every second when the
    session runs its own, else the given server and one mongod monitor period."""
    if real_server.local is None:
        yield real_server.uri, 75.0
        return
    from example_app.mongo_server import LocalServer

    with LocalServer(ttl_sweep_seconds=1) as server:
        yield server.uri, 10.0


@pytest.fixture
def ttl_db(ttl_server: tuple[str, float]) -> Iterator[Any]:
    mongoengine.connect(
        f"flask_tracking_ttl_{uuid.uuid4().hex[:8]}",
        host=ttl_server[0],
        uuidRepresentation="standard",
    )
    database = mongoengine.get_db()
    yield database
    database.client.drop_database(database.name)
    mongoengine.disconnect()


@REAL
@pytest.mark.parametrize("mode", ["ttl", "timeseries"])
def test_real_server_expires_records_older_than_the_retention(
    mode: str, real_server: Any, ttl_server: tuple[str, float], ttl_db: Any, apps: list[Flask]
) -> None:
    if mode == "timeseries":
        secantus_differs(real_server, "expireAfterSeconds of a time-series collection is ignored")
    app = tracked_app(mode, TRACKING_RETENTION_HOURS=1)
    apps.append(app)
    write_old_and_new(app)
    assert ttl_db["tracking"].count_documents({}) == 3
    deadline = time.monotonic() + ttl_server[1]
    while ttl_db["tracking"].count_documents({}) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [d["query_params"] for d in ttl_db["tracking"].find()] == ["new"]


@REAL
def test_capped_mode_evicts_the_oldest_records(real_db: Any, apps: list[Flask]) -> None:
    app = tracked_app("capped", TRACKING_TABLE_SIZE=64 * 1024, TRACKING_MAX_DOCUMENTS=5)
    apps.append(app)
    client = app.test_client()
    for index in range(12):
        client.get(f"/hello?i={index}")
        assert app.extensions["tracking"].flush(10)
    queries = [d["query_params"] for d in real_db["tracking"].find().sort("$natural", 1)]
    assert queries == [f"i={index}" for index in range(7, 12)]


# --- the reading side on every mode -----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_reading_helpers_cli_and_dashboard_work_on_each_mode(
    mode: str, mongo: Any, backend: str, request: pytest.FixtureRequest, apps: list[Flask]
) -> None:
    app = tracked_app(mode, TRACKING_DASHBOARD=True, TESTING=False)
    apps.append(app)
    client = app.test_client()
    client.get("/hello", headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0"})
    client.post("/echo", json={"a": 1})
    client.get("/boom").close()  # the record is finished when the response is closed
    assert app.extensions["tracking"].flush(10)
    records = TrackingDocument.objects
    assert records.count() == 3
    assert [r.path for r in records.errors()] == ["/boom"]
    assert records.for_path("/echo").first().request_body == b'{"a": 1}'
    assert {row["endpoint"]: row["count"] for row in records.stats()} == {
        "hello": 1,
        "echo": 1,
        "boom": 1,
    }
    assert sum(row["count"] for row in records.timeline("hour")) == 3
    assert records.unique_visitors()["ips"] == 1
    assert len(records.execution_times()) == 3
    assert records.slow(0).count() == 3
    record = records.order_by("-date_created").first()
    assert TrackingDocument.objects.get(id=record.pk).path == record.path

    runner = app.test_cli_runner()
    listed = runner.invoke(args=["tracking", "list"])
    assert listed.exit_code == 0 and "/boom" in listed.output
    stats = runner.invoke(args=["tracking", "stats"])
    assert stats.exit_code == 0 and "echo" in stats.output
    info = runner.invoke(args=["tracking", "info"])
    assert info.exit_code == 0
    if backend == "real":
        assert f"Storage: {mode}" in " ".join(info.output.split())

    for page in ("/tracking/", "/tracking/requests", f"/tracking/requests/{record.pk}"):
        response = client.get(page)
        assert response.status_code == 200, page
    live = client.get("/tracking/live.json")
    assert live.status_code == 200 and live.is_json

    def write_later() -> None:
        time.sleep(0.3)
        client.get("/hello?after")
        app.extensions["tracking"].flush(5)

    writer = threading.Thread(target=write_later)
    writer.start()
    followed = next(iter(records.follow(interval=0.1, timeout=5)), None)  # polls unless capped
    writer.join()
    assert followed is not None and followed.query_params == "after"


# --- an existing collection that differs ------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "create", "expected"),
    [
        ("ttl", {"capped": True, "size": 1 << 20}, "flask tracking migrate --to ttl"),
        ("timeseries", {}, "flask tracking migrate --to timeseries"),
        ("capped", {}, "convertToCapped"),
        (
            "capped",
            {"timeseries": {"timeField": "date_created"}},
            "flask tracking migrate --to capped",
        ),
        (
            "timeseries",
            {
                "timeseries": {"timeField": "date_created", "metaField": SERIES_FIELD},
                "expireAfterSeconds": 60,
            },
            'db.runCommand({collMod: "tracking", expireAfterSeconds: 604800})',
        ),
    ],
    ids=["capped_for_ttl", "plain_for_timeseries", "plain_for_capped", "ts_for_capped", "ts_ttl"],
)
def test_real_server_warns_once_with_the_fixing_command(
    mode: str,
    create: dict[str, Any],
    expected: str,
    real_db: Any,
    apps: list[Flask],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    real_db.create_collection("tracking", **create)
    app = tracked_app(mode)
    apps.append(app)
    client = app.test_client()
    for _ in range(3):
        client.get("/hello")
        assert app.extensions["tracking"].flush(10)
    [warning] = warnings_of(caplog)
    assert expected in warning
    assert real_db["tracking"].count_documents({}) == 3  # used as it is
    assert mode_of(real_db["tracking"].options()) == mode_of(create)  # never converted
    assert "tracking_date_created" in real_db["tracking"].index_information()  # still read fast


def test_capped_writer_after_a_migration_to_ttl_says_it_is_a_ttl_collection(
    real_db: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """After ``flask tracking migrate --to ttl`` with TRACKING_STORAGE still "capped", the
    collection is bounded by its TTL index: the warning says so, and how to match it."""
    first = tracked_app("capped")
    apps.append(first)
    first.test_client().get("/hello")
    assert first.extensions["tracking"].flush(10)
    ttl = tracking_spec(
        "ttl", name="tracking", size_bytes=1, max_documents=0, retention_seconds=7200
    )
    migrate(real_db, ttl, drop_source=True)
    caplog.set_level(logging.WARNING, LOGGER)
    app = tracked_app("capped")
    apps.append(app)
    app.test_client().get("/hello")
    assert app.extensions["tracking"].flush(10)
    [warning] = warnings_of(caplog)
    assert "without bound" not in warning
    assert "TTL collection" in warning and "7200 seconds" in warning
    assert 'TRACKING_STORAGE = "ttl"' in warning and "TRACKING_RETENTION_HOURS = 2" in warning
    assert real_db["tracking"].count_documents({}) == 2  # used as it is


def capped_writer_on_a_ttl_collection(
    real_db: Any, apps: list[Flask], seconds: float, requests: int
) -> None:
    """A capped-mode app writing ``requests`` records to a plain collection whose date index
    expires after ``seconds``."""
    real_db.create_collection("tracking")
    real_db["tracking"].create_index(
        [("date_created", -1)], name="tracking_date_created", expireAfterSeconds=seconds
    )
    app = tracked_app("capped")
    apps.append(app)
    for _ in range(requests):
        app.test_client().get("/hello")
        assert app.extensions["tracking"].flush(10)


@REAL
@pytest.mark.parametrize("seconds", [float("nan"), float("inf")])
def test_a_ttl_index_with_an_odd_expiry_costs_a_capped_writer_no_record(
    seconds: Any, real_db: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """An index whose ``expireAfterSeconds`` is no whole number of seconds (a server may take
    NaN or infinity: MongoDB before 5.0 took NaN) tells the capped writer no age to suggest:
    the collection is used as it is, with the warning that it is not capped, and every record
    is written (reading the index's seconds as an integer raised, and each batch was dropped)."""
    caplog.set_level(logging.WARNING, LOGGER)
    capped_writer_on_a_ttl_collection(real_db, apps, seconds, requests=2)
    assert real_db["tracking"].count_documents({}) == 2
    [warning] = warnings_of(caplog)
    assert "not capped" in warning and "TTL collection" not in warning


@REAL
@pytest.mark.parametrize(
    ("seconds", "hours"),
    [(7200, "2"), (5400, "1.5"), (123456789, "34293.5525"), (2**31 - 1, "596523.2352777778")],
)
def test_the_retention_a_ttl_collection_s_warning_suggests_is_its_index_s(
    seconds: int, hours: str, real_db: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """The TRACKING_RETENTION_HOURS the warning suggests gives the index's seconds back
    (``34293.6`` hours would be 171 seconds more), so setting it changes no expiry."""
    caplog.set_level(logging.WARNING, LOGGER)
    capped_writer_on_a_ttl_collection(real_db, apps, seconds, requests=1)
    [warning] = warnings_of(caplog)
    assert f"TRACKING_RETENTION_HOURS = {hours});" in warning
    assert round(float(hours) * 3600) == seconds


@REAL
def test_a_ttl_index_of_0_seconds_gets_no_retention_the_setting_refuses(
    real_db: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """An index expiring records after 0 seconds (MongoDB takes it: a record goes at the TTL
    monitor's next pass) is named, but TRACKING_RETENTION_HOURS cannot say 0: the warning
    does not suggest it."""
    caplog.set_level(logging.WARNING, LOGGER)
    capped_writer_on_a_ttl_collection(real_db, apps, 0, requests=1)
    [warning] = warnings_of(caplog)
    assert "TTL collection" in warning and "after 0 seconds" in warning
    assert "TRACKING_RETENTION_HOURS = " not in warning
    assert "it cannot be 0" in warning


@REAL
def test_a_transient_error_listing_the_indexes_is_raised_not_taken_for_no_ttl_index(
    real_db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A time limit exceeded (past the driver's own retry) while the capped writer reads a TTL
    collection's indexes is raised, for the writer to set the collection up again later, as
    for any transient error: not taken for a collection without a TTL index, with a warning
    that it grows without bound."""
    real_db.create_collection("tracking")
    real_db["tracking"].create_index(
        [("date_created", -1)], name="tracking_date_created", expireAfterSeconds=7200
    )

    def exceeded(self: Any) -> Any:
        raise pymongo.errors.OperationFailure("operation exceeded time limit", 262)

    monkeypatch.setattr(pymongo.collection.Collection, "index_information", exceeded)
    caplog.set_level(logging.WARNING, LOGGER)
    spec = tracking_spec(
        "capped", name="tracking", size_bytes=2**20, max_documents=0, retention_seconds=0
    )
    with pytest.raises(pymongo.errors.OperationFailure):
        ensure_collection(real_db, spec, logging.getLogger(LOGGER))
    assert warnings_of(caplog) == []


@REAL
def test_a_transient_error_reading_the_collection_options_is_raised(
    real_db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A time limit exceeded while the options of an existing collection are read is raised,
    for the writer to set the collection up again later: not taken for a server without
    options (as mongomock is), which would skip the check of the collection's mode."""
    real_db.create_collection("tracking", capped=True, size=2**20)

    def exceeded(self: Any) -> Any:
        raise pymongo.errors.OperationFailure("operation exceeded time limit", 262)

    monkeypatch.setattr(pymongo.collection.Collection, "options", exceeded)
    caplog.set_level(logging.WARNING, LOGGER)
    spec = tracking_spec(
        "ttl", name="tracking", size_bytes=1, max_documents=0, retention_seconds=7200
    )
    with pytest.raises(pymongo.errors.OperationFailure):
        ensure_collection(real_db, spec, logging.getLogger(LOGGER))
    assert warnings_of(caplog) == []


@REAL
@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (pymongo.errors.OperationFailure("operation exceeded time limit", 262), True),
        (pymongo.errors.OperationFailure("not authorized", 13), False),
    ],
)
def test_the_ttl_index_reading_indexes_leave_alone_raises_a_transient_error(
    error: Exception, raised: bool, real_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TTL index that the reading indexes must leave alone is looked up as the capped
    writer's warning looks it up: a transient error (a time limit exceeded) is raised, for the
    setup to be tried again, not taken for no TTL index; a refusal means none to tell of."""
    real_db.create_collection("tracking")
    spec = tracking_spec(
        "ttl", name="tracking", size_bytes=1, max_documents=0, retention_seconds=7200
    )

    def refused(self: Any) -> Any:
        raise error

    monkeypatch.setattr(pymongo.collection.Collection, "index_information", refused)
    if raised:
        with pytest.raises(pymongo.errors.OperationFailure):
            ttl_indexes(real_db["tracking"], spec)
    else:
        assert ttl_indexes(real_db["tracking"], spec) == ()


@REAL
@pytest.mark.parametrize(
    "code",
    [
        262,  # ExceededTimeLimit: a mongos whose shard did not answer in time
        89,  # NetworkTimeout: the same, of a shard it could not reach in time
        6,  # HostUnreachable
    ],
)
def test_a_transient_error_creating_the_ttl_index_is_retried(
    code: int,
    real_server: Any,
    real_db: Any,
    apps: list[Flask],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A "try again later" answer to the TTL index's ``createIndexes`` sets the collection up
    again with the next batch, as for the other set-up commands (the "not primary" and
    "shutting down" codes, 91, 11600, 10107 and the like, pymongo raises as NotPrimaryError, a
    ConnectionFailure, and the writer has always retried). Taken for a refusal, the
    records would never expire: the writer would keep the collection without its TTL index,
    and the reading indexes would make ``tracking_date_created`` without an expiry, which
    every later start then finds and keeps."""
    caplog.set_level(logging.WARNING, LOGGER)
    # No rollups: their indexes would be created first, and take the error.
    app = tracked_app("ttl", TRACKING_RETENTION_HOURS=1, TRACKING_ROLLUPS=False)
    apps.append(app)
    with failing_once(real_server, "createIndexes", code):
        app.test_client().get("/hello")
        assert app.extensions["tracking"].flush(10)
    assert real_db["tracking"].count_documents({}) == 1
    index = real_db["tracking"].index_information().get("tracking_date_created") or {}
    assert index.get("expireAfterSeconds") == 3600
    assert not [w for w in warnings_of(caplog) if "will not expire" in w]


def test_ttl_index_with_another_retention_warns_with_coll_mod(
    mongo: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    mongo.create_collection("tracking")
    mongo["tracking"].create_index(
        [("date_created", -1)], name="tracking_date_created", expireAfterSeconds=60
    )
    app = tracked_app("ttl", TRACKING_RETENTION_HOURS=2)
    apps.append(app)
    app.test_client().get("/hello")
    assert app.extensions["tracking"].flush(10)
    index = mongo["tracking"].index_information()["tracking_date_created"]
    [warning] = warnings_of(caplog)
    assert (
        'db.runCommand({collMod: "tracking", index: {name: "tracking_date_created", '
        "expireAfterSeconds: 7200}})" in warning
    )
    assert index["expireAfterSeconds"] == 60  # never changed behind the user's back


@pytest.mark.parametrize(
    ("options", "spec", "expected"),
    [
        ({"capped": True, "size": 4096, "max": 5}, tracking_spec, None),
        ({}, tracking_spec, None),
        ({"capped": True, "size": 8192}, tracking_spec, "cappedSize: 4096"),
        (
            {"timeseries": {"timeField": "t", "metaField": SERIES_FIELD}, "expireAfterSeconds": 9},
            tracking_spec,
            "cannot be changed",
        ),
        (
            {
                "timeseries": {
                    "timeField": "date_created",
                    "metaField": SERIES_FIELD,
                    "granularity": "hours",
                },
                "expireAfterSeconds": WEEK,
            },
            tracking_spec,
            "granularity 'hours'",
        ),
    ],
    ids=["capped_same", "plain_for_ttl", "capped_size", "ts_fields", "ts_granularity"],
)
def test_difference_names_what_differs(
    options: dict[str, Any], spec: Callable[..., CollectionSpec], expected: str | None
) -> None:
    mode = "capped" if "capped" in options else "ttl" if not options else "timeseries"
    wanted = spec(mode, name="tracking", size_bytes=4096, max_documents=5, retention_seconds=WEEK)
    found = _difference(options, wanted)
    assert found is None if expected is None else expected in (found or "")


def test_spec_validates_and_prints_the_shell_command() -> None:
    with pytest.raises(ValueError, match="storage mode"):
        CollectionSpec("x", "plain")
    with pytest.raises(ValueError, match="size_bytes"):
        CollectionSpec("x", "capped")
    with pytest.raises(ValueError, match="retention_seconds"):
        CollectionSpec("x", "ttl")
    spec = tracking_spec(
        "ttl", name="tracking", size_bytes=1, max_documents=1, retention_seconds=60
    )
    assert spec.shell_create() == (
        'db.createCollection("tracking", {}); db.getCollection("tracking").createIndex('
        '{"date_created": -1}, {"name": "tracking_date_created", "expireAfterSeconds": 60})'
    )


def test_ensure_collection_is_generic(mongo: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Another collection (rollups, say) gets its own time field and TTL index."""
    spec = CollectionSpec("rollups", "ttl", retention_seconds=600, time_field="bucket")
    collection = ensure_collection(mongo, spec, logging.getLogger(LOGGER))
    again = ensure_collection(mongo, spec, logging.getLogger(LOGGER))
    assert collection.name == again.name == "rollups"
    index = collection.index_information()["rollups_bucket"]
    assert index["key"] == [("bucket", -1)] and index["expireAfterSeconds"] == 600
    assert warnings_of(caplog) == []


# --- a sharded cluster ------------------------------------------------------------------


@REAL
@pytest.mark.parametrize("mode", MODES)
def test_writer_commands_suit_a_sharded_collection(real_server: Any, mode: str) -> None:
    """Unordered, retryable inserts and nothing that needs one primary or a capped collection
    (no $natural, no convertToCapped, no server-status reads). A sharded cluster cannot run
    here; this checks what the writer sends."""
    from flask_tracking.store import MongoSink

    events: list[Any] = []

    class Listener(pymongo.monitoring.CommandListener):
        def started(self, event: Any) -> None:
            events.append(event)

        def succeeded(self, event: Any) -> None:
            pass

        def failed(self, event: Any) -> None:
            pass

    client: Any = pymongo.MongoClient(real_server.uri, event_listeners=[Listener()])
    database = client[f"flask_tracking_shard_{uuid.uuid4().hex[:8]}"]
    try:
        sink = MongoSink(
            lambda: database,
            capped_size_bytes=1 << 20,
            capped_max_documents=1000,
            max_record_bytes=1 << 20,
            write_timeout_seconds=5,
            storage_mode=mode,
            retention_seconds=3600,
        )
        now = datetime.now(timezone.utc)
        assert sink([{"date_created": now, "path": f"/{i}"} for i in range(3)]).written == 3
        inserts = [e.command for e in events if e.command_name == "insert"]
        assert inserts and all(command["ordered"] is False for command in inserts)
        assert client.options.retry_writes is True
        hello = client.admin.command("hello")
        if hello.get("setName") or hello.get("msg") == "isdbgrid":  # not on a standalone mongod
            assert all("txnNumber" in command for command in inserts)  # retried once if lost
        names = {e.command_name for e in events}
        assert names <= {
            "create",
            "listCollections",
            "createIndexes",
            "insert",
            "hello",
            "ismaster",
            "listIndexes",
        }
    finally:
        client.drop_database(database.name)
        client.close()


@REAL
def test_the_connection_init_app_makes_keeps_retryable_writes(real_server: Any) -> None:
    alias = f"retry_{uuid.uuid4().hex[:6]}"
    tracked_app("ttl", TRACKING_MONGODB_URI=real_server.uri, TRACKING_DB_ALIAS=alias)
    try:
        assert mongoengine.get_db(alias).client.options.retry_writes is True
    finally:
        mongoengine.disconnect(alias)


@REAL
def test_a_server_refusing_timeseries_options_still_expires_records(
    real_server: Any, real_db: Any, apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """MongoDB 4.4 (supported: docs/production.md) answers a ``create`` with time-series
    options with code 40415 ("BSON field 'create.timeseries' is an unknown field"). Where
    mongomock refuses the options, ``ensure_collection`` falls back to a plain collection with
    the TTL index, so records still leave after TRACKING_RETENTION_HOURS; a real server's refusal
    gets the same. Were it only logged, the first insert would make a plain collection and
    ``ensure_indexes`` add a ``tracking_date_created`` index without expiry: in the
    ``timeseries`` mode nothing would ever expire."""
    caplog.set_level(logging.WARNING, LOGGER)
    with failing_once(real_server, "create", 40415):
        app = tracked_app("timeseries", TRACKING_RETENTION_HOURS=1)
        apps.append(app)
        app.test_client().get("/hello")
        assert app.extensions["tracking"].flush(10)
    assert any("could not create the timeseries" in w for w in warnings_of(caplog))
    assert real_db["tracking"].count_documents({}) == 1
    index = real_db["tracking"].index_information().get("tracking_date_created") or {}
    assert index.get("expireAfterSeconds") == 3600

"""Faults on the wire: the real server refuses, drops, delays or loses writes.

The faults come from the server itself: ``configureFailPoint``/``failCommand`` (the session
server runs with test commands enabled) aimed at this test's client only through its
``appName``, a collection validator that refuses some documents, and a server process killed
and started again on the same port. Each test checks that requests answer exactly as without
the tracker and stay fast, that the writer recovers by itself, that no record is stored twice,
and that the writer's counters account for every record: ``enqueued == written + dropped`` by
reason, nothing pending, nothing unaccounted.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import mongoengine
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument
from flask import Flask
from pymongo import monitoring

from flask_tracking import Tracking
from flask_tracking.store import MongoSink
from flask_tracking.writer import BatchWriter

from .conftest import FAST_WRITER, REAL, add_routes
from .test_faults import (
    REQUESTS,
    check_invariant,
    expected_responses,
    fetch,
    untracked_app,
    wait_for,
)

pytestmark = REAL

#: The writer's per-attempt bound in these tests; a blocked server holds longer than this.
WRITE_TIMEOUT_SECONDS = 0.5
#: pymongo marks a server that answered "not primary" or "shutting down" unknown until its next
#: heartbeat (every 10 s by default, 0.5 s at least): the tests' clients check every 0.5 s, so
#: that each of those faults costs the writer half a second rather than ten.
HEARTBEAT_MS = 500
#: How long the writer may take to recover by itself once the fault is gone.
RECOVERY_SECONDS = 25.0
#: A request with the tracker must never take longer than this, whatever the database does.
SLOWEST_REQUEST_SECONDS = 0.5


class Inserts(monitoring.CommandListener):
    """What the server answered to each ``insert`` of one client: (monotonic time, ok, reply);
    and the name of every command the client sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bool, dict[str, Any]]] = []
        self.commands: list[str] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "insert":
            with self._lock:
                self.seen.append((time.monotonic(), True, dict(event.reply)))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name == "insert":
            with self._lock:
                self.seen.append((time.monotonic(), False, dict(event.failure)))

    def failures(self) -> int:
        return sum(1 for _, ok, _ in self.seen if not ok)


class Wire:
    """A Flask app tracked into a fresh database on the real server through a client of its own
    (``app_name``), plus an admin client for fail points and for reading what was stored."""

    def __init__(self, uri: str, alias: str = "default") -> None:
        self.app_name = f"ft-{uuid.uuid4().hex[:10]}"
        self.alias = alias
        self.inserts = Inserts()
        mongoengine.connect(
            f"flask_tracking_wire_{uuid.uuid4().hex[:10]}",
            alias=alias,
            host=uri,
            appname=self.app_name,
            uuidRepresentation="standard",
            serverSelectionTimeoutMS=5000,
            heartbeatFrequencyMS=HEARTBEAT_MS,
            event_listeners=[self.inserts],
        )
        self.database = mongoengine.get_db(alias)
        self.admin: Any = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        self.apps: list[Flask] = []

    def make_app(self, **config: Any) -> Flask:
        app = Flask(f"wire_{len(self.apps)}")
        app.config.update(
            TESTING=True,
            TRACKING_DB_ALIAS=self.alias,
            TRACKING_WRITE_TIMEOUT_SECONDS=WRITE_TIMEOUT_SECONDS,
            **FAST_WRITER,
        )
        app.config.update(config)
        add_routes(app)
        Tracking(app)
        self.apps.append(app)
        return app

    def fail_point(self, mode: Any, **data: Any) -> None:
        """Make the server fail this client's inserts (``failCommand``) as ``data`` says."""
        data = {"failCommands": ["insert"], "appName": self.app_name, **data}
        self.admin.admin.command("configureFailPoint", "failCommand", mode=mode, data=data)

    def fail_point_off(self) -> None:
        self.admin.admin.command("configureFailPoint", "failCommand", mode="off")

    def stored(self) -> list[dict[str, Any]]:
        return list(self.admin[self.database.name]["tracking"].find())

    def close(self) -> None:
        for app in self.apps:
            app.extensions["tracking"]._apps[app].writer.shutdown(1.0)
        try:
            self.admin.drop_database(self.database.name)
        finally:
            self.admin.close()
            mongoengine.disconnect(self.alias)


@pytest.fixture
def wire(real_server: Any) -> Iterator[Wire]:
    """A :class:`Wire` on the session's real server; any fail point is turned off at the end."""
    wire = Wire(real_server.uri)
    try:
        yield wire
    finally:
        try:
            wire.fail_point_off()
        finally:
            wire.close()


def send(app: Flask, count: int, tag: str) -> float:
    """Send ``count`` requests, each answered exactly as by the untracked app; return the slowest
    request's duration in seconds."""
    expected = expected_responses()
    client = app.test_client()
    slowest = 0.0
    for number in range(count):
        index = number % len(REQUESTS)
        path = REQUESTS[index][1]
        started = time.perf_counter()
        got = fetch(client, index)
        slowest = max(slowest, time.perf_counter() - started)
        assert got == expected[index], (path, got, expected[index])
        # One request with a query string that names it, to find it in the store.
        client.get(f"/hello?{tag}={number}")
    return slowest


def settled(app: Flask, timeout: float = RECOVERY_SECONDS) -> dict[str, int]:
    """The writer's counters once nothing is pending (waits up to ``timeout`` seconds)."""
    tracking = app.extensions["tracking"]
    tracking.flush(0)
    assert wait_for(lambda: tracking.stats(app)["pending"] == 0, timeout), tracking.stats(app)
    stats: dict[str, int] = tracking.stats(app)
    check_invariant(stats)
    assert stats["capture_errors"] == 0, stats
    assert stats.get("dropped_unaccounted", 0) == 0, stats
    return stats


def drops(stats: dict[str, int]) -> dict[str, int]:
    return {key: value for key, value in stats.items() if key.startswith("dropped_") and value}


def assert_stored_once(wire: Wire, stats: dict[str, int]) -> list[dict[str, Any]]:
    """Every stored document is a distinct request, and the writer counted each as written."""
    documents = wire.stored()
    ids = Counter(doc["_id"] for doc in documents)
    request_ids = Counter(doc["request_id"] for doc in documents)
    assert [i for i, n in ids.items() if n > 1] == []
    assert [i for i, n in request_ids.items() if n > 1] == []
    assert len(documents) == stats["written"], (len(documents), stats)
    return documents


def warmed_up(wire: Wire, **config: Any) -> Flask:
    """An app whose writer has set the collection up and written one record."""
    app = wire.make_app(**config)
    app.test_client().get("/hello?warmup=1")
    assert app.extensions["tracking"].flush(10)
    assert app.extensions["tracking"].stats(app)["written"] == 1
    return app


def recovers(wire: Wire, app: Flask) -> None:
    """With the fault gone, new records are written without anything restarting the writer."""
    before = app.extensions["tracking"].stats(app)["written"]
    send(app, 3, "after")
    stats = settled(app)
    assert stats["written"] == before + 2 * 3, stats
    assert len(wire.stored()) == stats["written"]


# ---------------------------------------------------------------------------- transient faults

TRANSIENT: dict[str, dict[str, Any]] = {
    # pymongo retries a write once by itself: three failures defeat that and the writer's first
    # retry, so the tracker's own retry path is the one that gets the records through.
    "closeConnection": {"mode": {"times": 3}, "data": {"closeConnection": True}},
    "91-ShutdownInProgress": {"mode": {"times": 3}, "data": {"errorCode": 91}},
    "10107-NotWritablePrimary": {"mode": {"times": 3}, "data": {"errorCode": 10107}},
    "11600-InterruptedAtShutdown": {"mode": {"times": 3}, "data": {"errorCode": 11600}},
    # Under a timeout pymongo retries such an answer by itself until the timeout: this one
    # lasts longer than the writer's timeout, and the writer retries after it.
    "6-HostUnreachable-for-1.5s": {"mode": "alwaysOn", "data": {"errorCode": 6}, "hold": 1.5},
    # The insert runs, but only after the writer's timeout: the retry finds the records there.
    "blockConnection": {
        "mode": {"times": 1},
        "data": {"blockConnection": True, "blockTimeMS": int(WRITE_TIMEOUT_SECONDS * 3000)},
    },
}


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_a_transient_fault_delays_records_and_loses_none(wire: Wire, fault: str) -> None:
    app = warmed_up(wire)
    case = TRANSIENT[fault]
    wire.fail_point(case["mode"], **case["data"])
    started = time.monotonic()
    slowest = send(app, 14, "during")
    if "hold" in case:
        time.sleep(max(0.0, started + case["hold"] - time.monotonic()))
        wire.fail_point_off()
    stats = settled(app)
    wire.fail_point_off()
    print(f"\n{fault}: slowest request {slowest * 1000:.1f} ms; {stats}")
    times = case["mode"]["times"] if isinstance(case["mode"], dict) else 2
    assert wire.inserts.failures() >= times  # the fault happened
    assert slowest < SLOWEST_REQUEST_SECONDS
    assert drops(stats) == {}
    assert stats["enqueued"] == stats["written"] == 1 + 2 * 14
    documents = assert_stored_once(wire, stats)
    queries = sorted(
        doc["query_params"] or "" for doc in documents if "during" in (doc["query_params"] or "")
    )
    assert queries == sorted(f"during={n}" for n in range(14))
    recovers(wire, app)


def test_a_transient_error_creating_the_collection_is_retried_and_it_is_created_capped(
    wire: Wire,
) -> None:
    app = wire.make_app(TRACKING_TABLE_SIZE=1024 * 1024, TRACKING_MAX_DOCUMENTS=1000)
    wire.fail_point({"times": 1}, failCommands=["create"], errorCode=6)
    send(app, 7, "first")
    stats = settled(app)
    assert drops(stats) == {} and stats["written"] == 2 * 7, stats
    options = wire.admin[wire.database.name]["tracking"].options()
    assert options.get("capped") is True and options.get("max") == 1000, options
    assert_stored_once(wire, stats)


# ---------------------------------------------------------------------------- refused writes

REFUSED = {
    "13-Unauthorized": 13,
    # mongod (and SecantusDB) refuse to inject 121 without its extra info and answer 40671
    # instead: still a command the server refused, which is what the writer must handle.
    "121-DocumentValidationFailure": 121,
}


@pytest.mark.parametrize("fault", list(REFUSED))
def test_a_refused_batch_is_dropped_as_db_error_and_the_next_is_written(
    wire: Wire, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = warmed_up(wire, TRACKING_FLUSH_INTERVAL_SECONDS=60)
    tracking = app.extensions["tracking"]
    wire.fail_point({"times": 1}, errorCode=REFUSED[fault])
    client = app.test_client()
    for number in range(3):
        client.get(f"/hello?refused={number}")
    assert tracking.flush(10)
    stats = settled(app)
    assert wire.inserts.failures() == 1
    assert drops(stats) == {"dropped_db_error": 3}, stats  # dropped, not retried
    assert "MongoDB refused a batch of 3 records (OperationFailure" in caplog.text
    send(app, 2, "next")
    stats = settled(app)
    assert stats["written"] == 1 + 2 * 2 and drops(stats) == {"dropped_db_error": 3}, stats
    assert_stored_once(wire, stats)


def test_documents_the_server_refuses_are_dropped_and_the_rest_of_the_batch_written(
    wire: Wire,
) -> None:
    # A validator makes the server itself answer 121 for some documents of a batch.
    wire.database.create_collection(
        "tracking",
        capped=True,
        size=1024 * 1024,
        max=1000,
        validator={"query_params": {"$not": {"$regex": "^reject"}}},
    )
    app = wire.make_app(TRACKING_FLUSH_INTERVAL_SECONDS=60)
    tracking = app.extensions["tracking"]
    client = app.test_client()
    for query in ["keep=1", "reject=1", "keep=2", "reject=2", "keep=3"]:
        client.get(f"/hello?{query}")
    assert tracking.flush(10)
    stats = settled(app)
    assert stats["written"] == 3 and drops(stats) == {"dropped_db_error": 2}, stats
    documents = assert_stored_once(wire, stats)
    assert sorted(doc["query_params"] for doc in documents) == ["keep=1", "keep=2", "keep=3"]


@pytest.mark.parametrize(
    "error",
    [
        {"code": 64, "errmsg": "waiting for replication timed out"},
        {"code": 91, "errmsg": "shutting down", "errorLabels": ["RetryableWriteError"]},
    ],
    ids=["64-WriteConcernTimeout", "91-retryable"],
)
def test_a_write_concern_error_still_counts_the_stored_records_once(
    wire: Wire, error: dict[str, Any]
) -> None:
    app = warmed_up(wire, TRACKING_FLUSH_INTERVAL_SECONDS=60)
    wire.fail_point({"times": 1}, writeConcernError=error)
    send(app, 7, "wce")
    assert app.extensions["tracking"].flush(10)
    stats = settled(app)
    assert any("writeConcernError" in reply for _, _, reply in wire.inserts.seen)
    assert drops(stats) == {}, stats
    assert stats["written"] == 1 + 2 * 7, stats
    assert_stored_once(wire, stats)
    recovers(wire, app)


#: Faults that hit the second of the insert commands pymongo splits one batch into.
SPLIT_BATCH_FAULTS: dict[str, tuple[Any, dict[str, Any]]] = {
    # The first command stores its documents but answers with a write concern error of a
    # retryable code and no RetryableWriteError label (as with retryWrites=false, or from
    # SecantusDB): pymongo raises it at once and never sends the second command.
    "write-concern-error-91": (
        {"times": 1},
        {"writeConcernError": {"code": 91, "errmsg": "shutting down"}},
    ),
    # The first command is stored, the second refused.
    "second-command-refused": ({"skip": 1}, {"errorCode": 13}),
}


@pytest.mark.parametrize("fault", list(SPLIT_BATCH_FAULTS))
def test_a_batch_split_into_two_insert_commands_counts_every_record_as_it_ended(
    wire: Wire, fault: str
) -> None:
    # 400 documents of 128 KB (TRACKING_MAX_BODY_LENGTH bodies both ways): 51 MB, more than
    # one insert command carries (maxMessageSizeBytes, 48 MB), so pymongo sends two.
    sink = MongoSink(
        lambda: wire.database,
        capped_size_bytes=256 * 1024 * 1024,
        capped_max_documents=10_000,
        max_record_bytes=2 * 1024 * 1024,
        write_timeout_seconds=30,
    )
    writer = BatchWriter(
        sink,
        batch_max_records=500,
        max_queue_bytes=1024 * 1024 * 1024,
        flush_interval_seconds=60,
        retry_initial_backoff_seconds=0.01,
        retry_max_backoff_seconds=0.05,
    )
    try:
        writer.submit(RawBSONDocument(bson.encode({"_id": bson.ObjectId()})), 100)
        assert writer.flush(10)  # the collection is set up
        mode, data = SPLIT_BATCH_FAULTS[fault]
        wire.fail_point(mode, **data)
        for number in range(400):
            body = os.urandom(64_000).hex()
            document = {"_id": bson.ObjectId(), "number": number, "body": body}
            writer.submit(RawBSONDocument(bson.encode(document)), len(body))
        assert writer.flush(60)
        wire.fail_point_off()
        stats = writer.stats()
    finally:
        writer.shutdown(1.0)
    assert sum(1 for _, _, reply in wire.inserts.seen if "n" in reply) >= 2  # split in two
    assert stats.get("dropped_unaccounted", 0) == 0, stats
    stored = wire.admin[wire.database.name]["tracking"].count_documents({})
    assert stats["written"] == stored, stats  # nothing stored counted as dropped, or lost
    dropped = sum(value for key, value in stats.items() if key.startswith("dropped_"))
    assert stats["written"] + dropped == stats["enqueued"] == 401, stats


def test_a_duplicate_key_of_another_unique_index_is_a_refused_record_not_a_written_one(
    wire: Wire,
) -> None:
    # Someone made request ids unique; two requests come with the same X-Request-ID.
    wire.database.create_collection("tracking", capped=True, size=1024 * 1024, max=1000)
    wire.database["tracking"].create_index("request_id", unique=True)
    app = wire.make_app(TRACKING_REQUEST_ID_HEADER="X-Request-ID")
    client = app.test_client()
    for request_id in ["same", "same", "other"]:
        client.get("/hello", headers={"X-Request-ID": request_id})
    stats = settled(app)
    assert len(wire.stored()) == 2
    assert stats["written"] == 2 and drops(stats) == {"dropped_db_error": 1}, stats


# ---------------------------------------------------------------------------- insert-only

#: Every command the tracker may send: set the collection up, then insert. Never an update,
#: a delete, a drop or anything else, however the server answers.
ALLOWED_COMMANDS = {"create", "listCollections", "createIndexes", "listIndexes", "insert"}


def test_writes_are_insert_only_through_retries_and_errors(wire: Wire) -> None:
    # The records only: the rollups are $inc upserts into their own collection by design.
    app = wire.make_app(TRACKING_FLUSH_INTERVAL_SECONDS=60, TRACKING_ROLLUPS=False)
    tracking = app.extensions["tracking"]
    client = app.test_client()
    faults: list[tuple[dict[str, int], dict[str, Any]]] = [
        ({"times": 2}, {"closeConnection": True}),
        ({"times": 1}, {"errorCode": 13}),
        ({"times": 3}, {"errorCode": 91}),
    ]
    for round_number in range(5):
        if faults:
            mode, data = faults.pop(0)
            wire.fail_point(mode, **data)
        for i in range(3):
            client.get(f"/hello?r={round_number}&i={i}")
        client.get("/missing", buffered=True)
        tracking.flush(0)
        settled(app)
        wire.fail_point_off()
    stats = settled(app)
    assert wire.inserts.failures() >= 2 + 1 + 3
    assert {"create", "insert"} <= set(wire.inserts.commands)
    assert set(wire.inserts.commands) - ALLOWED_COMMANDS == set(), wire.inserts.commands
    assert drops(stats) == {"dropped_db_error": 4}, stats  # the batch refused with code 13
    assert stats["written"] == 5 * 4 - 4
    assert_stored_once(wire, stats)


# ---------------------------------------------------------------------------- server restart


def test_server_killed_and_restarted_under_8_threads_of_1000_requests(tmp_path: Path) -> None:
    from example_app.mongo_server import LocalServer

    server = LocalServer(str(tmp_path / "data"))
    server.start()
    wire = None
    try:
        # Journaled acknowledgements: under w:1 alone the server answers before its journal
        # reaches the disk, and a SIGKILL then loses batches it acknowledged (hundreds of
        # documents a kill, measured), which no client can know of.
        wire = Wire(server.uri + "?journal=true", alias="restarted")
        # Room for every record in the queue: the outage must cost time, never records. The
        # default write timeout: a batch of 500 can take SecantusDB a second on a busy machine.
        app = wire.make_app(TRACKING_QUEUE_MAX_RECORDS=10_000, TRACKING_WRITE_TIMEOUT_SECONDS=5.0)
        app.test_client().get("/hello?warmup=1")
        assert app.extensions["tracking"].flush(10)
        result = run_with_restart(app, server, threads=8, per_thread=1000)
        # SecantusDB spends 1-3 ms of CPU per document: 8,000 take a while on 2 busy cores.
        stats = settled(app, timeout=180)
        print(
            f"\n8 threads x 1000 requests, server killed at {result['killed_at']} requests and "
            f"back {result['down_seconds']:.2f} s later: {result['elapsed']:.1f} s, slowest "
            f"request {result['slowest'] * 1000:.0f} ms; {stats}"
        )
        assert result["problems"] == [], result["problems"][:5]
        assert result["slowest"] < 2.0, result["slowest"]
        assert stats["enqueued"] == 1 + 8 * 1000, stats
        assert stats["written"] == stats["enqueued"] and drops(stats) == {}, stats
        documents = assert_stored_once(wire, stats)
        queries = Counter(doc["query_params"] for doc in documents)
        assert len(queries) == 1 + 8 * 1000 and set(queries.values()) == {1}
    finally:
        if wire is not None:
            for tracked in wire.apps:
                tracked.extensions["tracking"]._apps[tracked].writer.shutdown(1.0)
            wire.admin.close()
            mongoengine.disconnect(wire.alias)
        server.stop()


def run_with_restart(app: Flask, server: Any, threads: int, per_thread: int) -> dict[str, Any]:
    """Send ``threads * per_thread`` distinct requests; kill the server a quarter of the way
    through and start it again (same port, same data) half a second later. The last quarter of
    each thread's requests waits (untimed) until the server is back, so that requests arrive
    before, during and after the outage."""
    client_count = threads * per_thread
    untracked = untracked_app().test_client().get("/hello?t=0&i=0")
    expected = (untracked.status_code, sorted(untracked.headers.items()), untracked.get_data())
    problems: list[str] = []
    done = Counter[str]()
    lock = threading.Lock()
    slowest = [0.0]
    restarted = threading.Event()
    marks: dict[str, Any] = {}

    def worker(number: int) -> None:
        client = app.test_client()
        for i in range(per_thread):
            if i == per_thread * 3 // 4:
                restarted.wait(60)
            started = time.perf_counter()
            try:
                response = client.get(f"/hello?t={number}&i={i}")
                got = (response.status_code, sorted(response.headers.items()), response.get_data())
            except Exception as error:
                problems.append(repr(error))
                continue
            took = time.perf_counter() - started
            with lock:
                slowest[0] = max(slowest[0], took)
                done["requests"] += 1
            if got != expected:
                problems.append(f"{got!r} != {expected!r}")

    def restart() -> None:
        assert wait_for(lambda: done["requests"] >= client_count // 4, 120)
        marks["killed_at"] = done["requests"]
        server.kill()
        down = time.perf_counter()
        time.sleep(0.5)
        server.start()
        marks["down_seconds"] = time.perf_counter() - down
        restarted.set()

    killer = threading.Thread(target=restart)
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    killer.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    killer.join(60)
    assert restarted.is_set(), "the server was not restarted"
    return {"problems": problems, "slowest": slowest[0], "elapsed": elapsed, **marks}

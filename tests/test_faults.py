"""Fault injection: MongoDB refused, hanging, flapping or refusing writes; a full queue; process
exit and fork; the tracker's own code raising. Every test checks that the app behaves exactly as
without the tracker and that the counters account for every record.

No MongoDB server is needed: mongomock, patched mongomock methods, a refused port and a local
socket that accepts connections and never replies stand in for the database. The faults a real
server can produce itself (network errors, error codes, write concern errors, a blocked or
restarted server) are in test_faults_wire.py; the patches here are for what a fail point cannot
express (a batch half stored, exact retry timings, a full queue, the tracker's own bugs).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import mongoengine
import mongomock
import pymongo
import pytest
from flask import Flask
from pymongo.errors import AutoReconnect, CollectionInvalid

from flask_tracking import Tracking, record_dropped
from flask_tracking.capture import BodyCapture
from flask_tracking.store import MongoSink

from .conftest import FAST_WRITER, MONGOMOCK_ONLY, add_routes, fork_and_report, stored

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The collection and database classes of the two backends (mongomock, pymongo).
COLLECTION_CLASSES = (mongomock.collection.Collection, pymongo.collection.Collection)
DATABASE_CLASSES = (mongomock.database.Database, pymongo.database.Database)
ORIGINAL_INSERT_MANYS = {owner: owner.insert_many for owner in COLLECTION_CLASSES}


def ORIGINAL_INSERT_MANY(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
    """The backend's own insert_many, whichever backend ``collection`` belongs to."""
    return ORIGINAL_INSERT_MANYS[type(collection)](collection, documents, *args, **kwargs)


#: serverSelectionTimeoutMS of the clients pointed at a dead server. Longer than the tracker's
#: write timeout, so a wait bounded by the client rather than by the tracker shows up.
SELECTION_TIMEOUT_MS = 3000
# ---------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.005)


class HangingServer:
    """A TCP server that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hanging-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._connections.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()
        for connection in self._connections:
            connection.close()


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def connected_alias(alias: str, port: int) -> Iterator[str]:
    """A MongoEngine alias with a real pymongo client pointed at 127.0.0.1:port."""
    mongoengine.connect(
        "tracking_faults",
        alias=alias,
        host=f"mongodb://127.0.0.1:{port}/",
        serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS,
        uuidRepresentation="standard",
    )
    try:
        yield alias
    finally:
        mongoengine.disconnect(alias)


@pytest.fixture
def refused_alias() -> Iterator[str]:
    with connected_alias("refused", closed_port()) as alias:
        yield alias


@pytest.fixture
def hanging_alias() -> Iterator[str]:
    server = HangingServer()
    try:
        with connected_alias("hanging", server.port) as alias:
            yield alias
    finally:
        server.close()


def untracked_app(**config: Any) -> Flask:
    app = Flask("untracked")
    app.config.update(TESTING=True)
    app.config.update(config)
    add_routes(app)
    return app


def writer_of(app: Flask) -> Any:
    return app.extensions["tracking"]._apps[app].writer


#: Requests whose responses are compared with an untracked app: (method, path, keyword args).
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/hello?x=1", {}),
    ("POST", "/echo", {"json": {"k": "v", "n": [1, 2, 3]}}),
    ("POST", "/count", {"data": b"z" * 3000}),
    ("GET", "/missing", {}),
    ("GET", "/stream", {}),
    ("GET", "/custom", {}),
    ("GET", "/no-such-route", {}),
]


def fetch(client: Any, index: int) -> tuple[int, list[tuple[str, str]], bytes]:
    method, path, kwargs = REQUESTS[index]
    response = client.open(path, method=method, buffered=True, **kwargs)
    return response.status_code, sorted(response.headers.items()), response.get_data()


def expected_responses(testing: bool = True) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    client = untracked_app(TESTING=testing).test_client()
    return [fetch(client, index) for index in range(len(REQUESTS))]


def check_invariant(stats: dict[str, int]) -> None:
    """The writer's documented invariant (BatchWriter docstring), once the writer is idle."""
    dropped = sum(count for key, count in stats.items() if key.startswith("dropped_"))
    if "not_enqueued" in stats:
        expected = stats["written"] + stats["pending"] + dropped - stats["not_enqueued"]
    else:  # older counters: refused records are the queue-full and after-shutdown ones
        expected = (
            stats["written"]
            + stats["pending"]
            + dropped
            - stats["dropped_queue_full"]
            - stats["dropped_hook_error"]
            - stats["refused_after_shutdown"]
        )
    assert stats["enqueued"] == expected, stats


@contextlib.contextmanager
def patch_insert_many(fake: Callable[..., Any]) -> Iterator[None]:
    """Replace both backends' Collection.insert_many; ``fake(collection, documents, **kwargs)``."""

    def insert_many(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        return fake(collection, documents, *args, **kwargs)

    with contextlib.ExitStack() as stack:
        for owner in COLLECTION_CLASSES:
            stack.enter_context(mock.patch.object(owner, "insert_many", new=insert_many))
        yield


# ---------------------------------------------------------------------------- database down


def run_load(app: Flask, threads: int = 8, total: int = 2000) -> dict[str, Any]:
    """Send ``total`` requests from ``threads`` threads; compare each with the untracked app."""
    expected = expected_responses()
    tracking = app.extensions["tracking"]
    problems: list[str] = []
    max_pending = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal max_pending
        while not done.is_set():
            max_pending = max(max_pending, tracking.stats(app)["pending"])
            time.sleep(0.002)

    def worker(number: int) -> None:
        client = app.test_client()
        for i in range(total // threads):
            index = (number + i) % len(REQUESTS)
            try:
                got = fetch(client, index)
            except Exception as error:  # an exception reached the client: the test fails
                problems.append(f"{REQUESTS[index][1]}: {error!r}")
                continue
            if got != expected[index]:
                problems.append(f"{REQUESTS[index][1]}: {got!r} != {expected[index]!r}")

    sampler = threading.Thread(target=sample)
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    sampler.start()
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    stats = tracking.stats(app)
    max_pending = max(max_pending, stats["pending"])
    return {"elapsed": elapsed, "problems": problems, "stats": stats, "max_pending": max_pending}


@pytest.mark.parametrize("database", ["refused", "hanging"])
def test_2000_requests_with_the_database_down_behave_as_untracked(
    mongo: Any, database: str, request: pytest.FixtureRequest
) -> None:
    alias = request.getfixturevalue(f"{database}_alias")
    app = Flask(f"down_{database}")
    app.config.update(
        TESTING=True,
        TRACKING_DB_ALIAS=alias,
        TRACKING_QUEUE_MAX_RECORDS=300,
        TRACKING_BATCH_MAX_RECORDS=100,
        TRACKING_WRITE_TIMEOUT_SECONDS=0.5,
        **FAST_WRITER,
    )
    add_routes(app)
    tracking = Tracking(app)
    try:
        result = run_load(app)
        stats = result["stats"]
        print(
            f"\n2000 requests, 8 threads, database {database}: {result['elapsed']:.2f} s; {stats}"
        )
        assert result["problems"] == [], result["problems"][:5]
        assert result["elapsed"] < 10.0, f"2000 requests took {result['elapsed']:.2f} s"
        assert stats["capture_errors"] == 0
        assert stats["written"] == 0
        assert result["max_pending"] <= 300, result["max_pending"]
        # Memory is bounded by the queue: exactly the overflow was refused and counted.
        assert stats["enqueued"] + stats["dropped_queue_full"] == 2000, stats
        # Nothing leaves the queue while the database is down (retries keep records pending).
        assert stats["enqueued"] == stats["pending"] == 300, stats
        assert stats.get("dropped_unaccounted", 0) == 0, stats
        assert stats["dropped_write_error"] == stats["dropped_encode_error"] == 0
        check_invariant(stats)
    finally:
        writer_of(app).shutdown(1.0)
    stats = tracking.stats(app)
    assert stats["pending"] == 0
    check_invariant(stats)


@pytest.mark.parametrize("database", ["refused", "hanging"])
def test_one_insert_attempt_waits_at_most_the_write_timeout(
    database: str, request: pytest.FixtureRequest
) -> None:
    alias = request.getfixturevalue(f"{database}_alias")
    sink = MongoSink(
        lambda: mongoengine.get_db(alias),
        capped_size_bytes=1024 * 1024,
        capped_max_documents=1000,
        max_record_bytes=2 * 1024 * 1024,
        write_timeout_seconds=0.5,
    )
    durations: list[float] = []
    outcomes: list[Any] = []
    stop = threading.Event()

    def attempts() -> None:
        for i in range(2):  # the first attempt also sets the collection up
            if stop.is_set():
                return
            started = time.perf_counter()
            outcomes.append(sink([{"_id": i, "path": "/x"}]))
            durations.append(time.perf_counter() - started)

    worker = threading.Thread(target=attempts, daemon=True)
    worker.start()
    try:
        worker.join(2.5)
        print(f"\ninsert attempts against the {database} server: {durations}")
        assert len(durations) == 2, f"attempts still waiting after 2.5 s: {durations}"
        assert all(0.3 <= duration <= 2.0 for duration in durations), durations
        assert all(outcome.retry and not outcome.written for outcome in outcomes), outcomes
    finally:
        stop.set()
        worker.join(SELECTION_TIMEOUT_MS / 1000 + 1)  # no thread outlives the test


def test_insert_under_the_write_timeout_returns_promptly_from_a_hanging_server(
    hanging_alias: str,
) -> None:
    """The bound the sink relies on: pymongo.timeout() cuts a hanging insert short."""
    collection = mongoengine.get_db(hanging_alias)["tracking"]
    started = time.perf_counter()
    with pytest.raises(AutoReconnect), pymongo.timeout(0.5):
        collection.insert_many([{"n": 1}], ordered=False)
    elapsed = time.perf_counter() - started
    print(f"\ninsert_many under pymongo.timeout(0.5) against a hanging server: {elapsed:.2f} s")
    assert 0.4 <= elapsed <= 2.0


# ---------------------------------------------------------------------------- outages


class FlakyInsert:
    """insert_many that fails while ``down`` (or for the first ``failures`` calls)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.down = False
        self.attempts: list[tuple[float, bool, list[Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        documents = list(documents)
        with self.lock:
            failing = self.down or len(self.attempts) < self.failures
            self.attempts.append((time.monotonic(), not failing, [d["_id"] for d in documents]))
        if failing:
            raise AutoReconnect("connection refused (simulated)")
        return ORIGINAL_INSERT_MANY(collection, documents, *args, **kwargs)


def test_records_are_written_within_the_backoff_bound_after_an_outage(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(
        TRACKING_RETRY_INITIAL_BACKOFF_SECONDS=0.05, TRACKING_RETRY_MAX_BACKOFF_SECONDS=0.2
    )
    insert = FlakyInsert(failures=4)
    with patch_insert_many(insert):
        client = app.test_client()
        for i in range(10):
            client.get(f"/hello?i={i}")
        tracking = app.extensions["tracking"]
        assert wait_for(lambda: tracking.stats(app)["written"] == 10, timeout=5), tracking.stats(
            app
        )
    times = [when for when, _, _ in insert.attempts]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    last_failure = max(when for when, ok, _ in insert.attempts if not ok)
    first_success = min(when for when, ok, _ in insert.attempts if ok)
    assert first_success - last_failure <= 0.2 + 0.15, gaps  # at most one max backoff later
    assert all(gap >= 0.04 for gap in gaps[:4]), gaps  # never faster than the backoff
    docs = stored(app, mongo)
    assert sorted(doc["query_params"] for doc in docs) == sorted(f"i={i}" for i in range(10))
    stats = tracking.stats(app)
    assert stats["written"] == 10
    assert all(v == 0 for k, v in stats.items() if k.startswith("dropped_")), stats


def test_the_writer_does_not_busy_loop_while_the_database_is_down(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(
        TRACKING_RETRY_INITIAL_BACKOFF_SECONDS=0.05, TRACKING_RETRY_MAX_BACKOFF_SECONDS=0.2
    )
    tracking = app.extensions["tracking"]
    insert = FlakyInsert()
    insert.down = True
    period = 1.2
    with patch_insert_many(insert):
        client = app.test_client()
        deadline = time.monotonic() + period
        sent = 0
        while time.monotonic() < deadline:  # steady traffic during the outage
            client.get(f"/hello?n={sent}")
            sent += 1
            time.sleep(0.005)
        attempts_while_down = len(insert.attempts)
        insert.down = False
        assert wait_for(lambda: tracking.stats(app)["written"] == sent, timeout=3), tracking.stats(
            app
        )
    # 0.05 + 0.1 + 0.2 + 0.2 + ...: about period / max backoff, plus the doubling steps.
    bound = period / 0.2 + 3 + 2
    assert 3 <= attempts_while_down <= bound, f"{attempts_while_down} attempts in {period} s"
    stats = tracking.stats(app)
    assert stats["enqueued"] == stats["written"] == sent
    assert all(v == 0 for k, v in stats.items() if k.startswith("dropped_")), stats


def test_retrying_a_partly_written_batch_creates_no_duplicates(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_FLUSH_INTERVAL_SECONDS=60)
    tracking = app.extensions["tracking"]
    calls: list[list[Any]] = []

    def half_then_fail(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        documents = list(documents)
        calls.append([doc["_id"] for doc in documents])
        if len(calls) == 1:  # the connection drops after the server stored the first half
            ORIGINAL_INSERT_MANY(collection, documents[:3], *args, **kwargs)
            raise AutoReconnect("connection reset by peer (simulated)")
        return ORIGINAL_INSERT_MANY(collection, documents, *args, **kwargs)

    with patch_insert_many(half_then_fail):
        client = app.test_client()
        for i in range(6):
            client.get(f"/hello?i={i}")
        assert tracking.flush(3)
    docs = stored(app, mongo)
    assert len(calls) == 2
    assert calls[1] == calls[0]  # the same documents, with the same _ids, were retried
    assert sorted(doc["_id"] for doc in docs) == sorted(calls[0])  # each stored exactly once
    assert sorted(doc["query_params"] for doc in docs) == [f"i={i}" for i in range(6)]
    stats = tracking.stats(app)
    assert stats["written"] == 6  # the duplicate-key errors of the retry count as written
    assert all(v == 0 for k, v in stats.items() if k.startswith("dropped_")), stats


# ---------------------------------------------------------------------------- queue full


@contextlib.contextmanager
def held_writes() -> Iterator[tuple[threading.Event, threading.Event]]:
    """Every insert_many waits until the test sets ``gate`` (at most 120 s: a shorter wait lets
    a slow machine write early); ``entered`` is set once the writer is waiting."""
    gate, entered = threading.Event(), threading.Event()

    def blocked(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        gate.wait(120)
        return ORIGINAL_INSERT_MANY(collection, documents, *args, **kwargs)

    with patch_insert_many(blocked):
        yield gate, entered


def test_a_full_queue_never_blocks_counts_exactly_the_overflow_and_stays_flat(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # Without rollups: their samples wait for the writer thread, which this test blocks
    # (in service a write ends within TRACKING_WRITE_TIMEOUT_SECONDS).
    app = make_app(
        TRACKING_QUEUE_MAX_RECORDS=100, TRACKING_BATCH_MAX_RECORDS=10, TRACKING_ROLLUPS=False
    )
    tracking = app.extensions["tracking"]
    client = app.test_client()
    with held_writes() as (gate, entered):
        try:
            client.get("/hello")
            assert entered.wait(3), "the writer never started writing"
            slowest = 0.0
            started = time.perf_counter()
            for _ in range(499):
                one = time.perf_counter()
                assert client.get("/hello").data == b"Hello"
                slowest = max(slowest, time.perf_counter() - one)
            elapsed = time.perf_counter() - started
            stats = tracking.stats(app)
            assert stats["enqueued"] == stats["pending"] == 100
            assert stats["dropped_queue_full"] == 400  # exactly the overflow
            assert elapsed < 5.0 and slowest < 0.5, (elapsed, slowest)

            for _ in range(50):  # warm up caches before measuring
                client.get("/hello")
            tracemalloc.start(30)
            try:
                gc.collect()  # what is retained, not garbage waiting for a collection
                before = tracemalloc.take_snapshot()
                for _ in range(400):
                    client.get("/hello")
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            # Only what the requests allocated: other threads (a real client's monitors, writers
            # of earlier tests) allocate meanwhile too.
            requests_only = [tracemalloc.Filter(True, __file__, all_frames=True)]
            grown = sum(
                stat.size_diff
                for stat in after.filter_traces(requests_only).compare_to(
                    before.filter_traces(requests_only), "filename"
                )
            )
            # One retained record weighs kilobytes: 400 of them would be far above this.
            assert grown < 100 * 1024, f"grew by {grown} bytes"
            stats = tracking.stats(app)
            assert stats["dropped_queue_full"] == 400 + 450
            assert stats["pending"] == 100
        finally:
            gate.set()
        assert tracking.flush(5)
    stats = tracking.stats(app)
    assert stats["written"] == 100
    assert stats["enqueued"] + stats["dropped_queue_full"] == 1 + 499 + 50 + 400
    check_invariant(stats)
    assert len(stored(app, mongo)) == 100


def test_a_slow_record_dropped_receiver_never_slows_the_requests_of_a_full_queue(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # reliability.md: the signals are "sent from the writer thread". A receiver that talks to
    # a metrics or alerting service must not cost every request while the database is down.
    app = make_app(
        TRACKING_QUEUE_MAX_RECORDS=5, TRACKING_BATCH_MAX_RECORDS=5, TRACKING_ROLLUPS=False
    )
    tracking = app.extensions["tracking"]
    calls: list[tuple[str, str, int]] = []

    def slow_receiver(sender: Flask, reason: str, count: int) -> None:
        calls.append((threading.current_thread().name, reason, count))
        time.sleep(0.2)

    record_dropped.connect(slow_receiver, app)
    client = app.test_client()
    with held_writes() as (gate, entered):
        try:
            client.get("/hello")
            assert entered.wait(3), "the writer never started writing"
            slowest = 0.0
            for _ in range(10):
                started = time.perf_counter()
                assert client.get("/hello").data == b"Hello"
                slowest = max(slowest, time.perf_counter() - started)
        finally:
            gate.set()
        assert tracking.flush(5)
    assert tracking.stats(app)["dropped_queue_full"] == 6
    assert wait_for(lambda: sum(count for _, _, count in calls) == 6), calls
    assert slowest < 0.1, slowest
    assert {name for name, _, _ in calls} == {f"flask-tracking-writer[{app.name}]"}


def test_the_queue_byte_bound_counts_every_header_while_the_database_hangs(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """1,000 requests with big headers while every write hangs: the memory the queue holds
    stays within a small factor of TRACKING_QUEUE_MAX_BYTES, and the overflow is counted."""
    bound = 1024 * 1024
    app = make_app(TRACKING_QUEUE_MAX_BYTES=bound, TRACKING_BATCH_MAX_RECORDS=10)
    tracking = app.extensions["tracking"]
    gate = threading.Event()
    entered = threading.Event()
    original = MongoSink.__call__

    def hanging(sink: MongoSink, records: list[Any]) -> Any:
        entered.set()
        gate.wait(30)
        return original(sink, records)

    client = app.test_client()
    with mock.patch.object(MongoSink, "__call__", hanging):
        try:
            client.get("/hello")
            assert entered.wait(3), "the writer never started writing"
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                for number in range(1000):
                    # New strings per request, as a server makes them.
                    headers = {f"X-Big-{index}": f"{number:08d}" * 1024 for index in range(10)}
                    assert client.get("/hello", headers=headers).data == b"Hello"
                del headers
                gc.collect()  # what is left is held, not garbage waiting for a collection
                after, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            held = after - before
            stats = tracking.stats(app)
            assert held < 3 * bound, f"the queue holds {held} bytes for a {bound}-byte bound"
            assert stats["dropped_queue_full"] > 900, stats
            assert stats["enqueued"] + stats["dropped_queue_full"] == 1001
        finally:
            gate.set()
        assert tracking.flush(10)
    check_invariant(tracking.stats(app))


# ---------------------------------------------------------------------------- process exit

EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, json, socket, sys, time
    import mongoengine, mongomock
    from flask import Flask
    from flask_tracking import Tracking

    mode, count, out_path, apps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    if mode == "up":
        mongoengine.connect("exit_db", alias="default", mongo_client_class=mongomock.MongoClient,
                            uuidRepresentation="standard")
        original = mongomock.collection.Collection.insert_many

        def insert_many(self, documents, *args, **kwargs):
            documents = list(documents)
            result = original(self, documents, *args, **kwargs)
            with open(out_path, "a") as out:
                for document in documents:
                    out.write(document["query_params"] + "\\n")
            return result

        mongomock.collection.Collection.insert_many = insert_many
    else:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        mongoengine.connect("exit_db", alias="default", host=f"mongodb://127.0.0.1:{port}/",
                            serverSelectionTimeoutMS=30000, uuidRepresentation="standard")

    # atexit runs hooks last-in first-out: these two bracket the tracker's own exit hooks.
    marks = {}
    atexit.register(lambda: print("TRACKER_EXIT_SECONDS", time.perf_counter() - marks["start"],
                                  file=sys.stderr, flush=True))
    tracking = Tracking()
    kept = []  # Tracking holds its apps weakly: a collected app's records leave tracking.stats()
    for number in range(apps):
        app = Flask(f"exiting_{number}")
        kept.append(app)
        app.config.update(TESTING=True, TRACKING_FLUSH_INTERVAL_SECONDS=60,
                          TRACKING_SHUTDOWN_TIMEOUT_SECONDS=1.0)
        app.add_url_rule("/hello", "hello", lambda: "Hello")
        tracking.init_app(app)
        client = app.test_client()
        for i in range(count):
            client.get(f"/hello?i={i}")
    atexit.register(lambda: marks.setdefault("start", time.perf_counter()))
    print(json.dumps(tracking.stats()), flush=True)
    """
)


def run_exit_script(
    mode: str, count: int, out_path: Path, apps: int = 1
) -> tuple[dict[str, int], float, float, str]:
    """Run EXIT_SCRIPT (``count`` requests to each of ``apps`` apps); return its stats (all
    apps summed), the seconds from its last print to its exit, the seconds the tracker's atexit
    hooks took, and its stderr."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", EXIT_SCRIPT, mode, str(count), str(out_path), str(apps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        printed = time.perf_counter()
        process.wait(30)
        exited = time.perf_counter()
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0, stderr
    assert line, stderr
    [hook] = [float(x.split()[1]) for x in stderr.splitlines() if x.startswith("TRACKER_EXIT")]
    return json.loads(line), exited - printed, hook, stderr


def test_pending_records_are_written_at_interpreter_exit(tmp_path: Path) -> None:
    out_path = tmp_path / "written.txt"
    stats, _, _, stderr = run_exit_script("up", 25, out_path)
    assert stats["enqueued"] == stats["pending"] == 25 and stats["written"] == 0
    written = out_path.read_text().split()
    assert sorted(written) == sorted(f"i={i}" for i in range(25)), stderr
    assert "Traceback" not in stderr


def test_exit_with_the_database_down_waits_at_most_the_shutdown_timeout(tmp_path: Path) -> None:
    _, baseline, baseline_hook, _ = run_exit_script("down", 0, tmp_path / "none.txt")
    stats, delay, hook, stderr = run_exit_script("down", 20, tmp_path / "none.txt")
    print(
        f"\nexit with the database down, TRACKING_SHUTDOWN_TIMEOUT_SECONDS=1: tracker exit hook "
        f"{hook:.2f} s, print-to-exit {delay:.2f} s; no records: {baseline_hook:.2f} s, "
        f"{baseline:.2f} s"
    )
    assert stats["pending"] == 20
    assert "20 record(s) still pending" in stderr
    assert baseline_hook < 0.2
    assert 0.9 <= hook < 1.0 + 0.3, hook  # the tracker waits its shutdown timeout, no longer
    # pymongo's own atexit hook joins each of its monitor threads for up to 1 s; while an
    # abandoned insert is still selecting a server that can take longer than with no records.
    assert delay < baseline + 1.0 + 2.0, (delay, baseline)
    assert "Traceback" not in stderr


def test_exit_with_the_database_down_and_three_apps_waits_one_shutdown_timeout(
    tmp_path: Path,
) -> None:
    # Each app's writer has its own exit hook; they must not wait one after the other (with
    # gunicorn's graceful timeout, the worker would be killed before the last one ran).
    stats, _, hook, stderr = run_exit_script("down", 5, tmp_path / "none.txt", apps=3)
    assert stats["pending"] == 3 * 5
    assert stderr.count("5 record(s) still pending") == 3
    assert hook < 1.0 + 0.3, hook  # TRACKING_SHUTDOWN_TIMEOUT_SECONDS, for all apps at once


def test_close_drains_the_writers_of_all_its_apps_at_once(mongo: Any) -> None:
    # Each write takes 0.5 s: one after the other, three apps need 1.5 s; at once, 0.5 s.
    tracking = Tracking()
    apps = []
    for number in range(3):
        app = Flask(f"closing-slow-{number}")
        app.config.update(TESTING=True, **FAST_WRITER)
        app.config.update(TRACKING_FLUSH_INTERVAL_SECONDS=60, TRACKING_ROLLUPS=False)
        add_routes(app)
        tracking.init_app(app)
        apps.append(app)

    def slow(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return ORIGINAL_INSERT_MANY(collection, documents, *args, **kwargs)

    with patch_insert_many(slow):
        for app in apps:
            app.test_client().get("/hello")
        assert tracking.close(1.2) is True, [tracking.stats(app) for app in apps]
    assert [tracking.stats(app)["written"] for app in apps] == [1, 1, 1]


def test_close_says_records_were_dropped_when_a_writer_backs_off_past_its_deadline(
    mongo: Any,
) -> None:
    # The second app's writer backs off for 10 s: told to stop first, it counts its record
    # dropped_shutdown on its own thread at once, while close() waits for the first app's slow
    # (but successful) write. close() must still say that a record was dropped.
    tracking = Tracking()
    apps = []
    for number in range(2):
        app = Flask(f"closing-down-{number}")
        app.config.update(TESTING=True, **FAST_WRITER)
        app.config.update(
            TRACKING_FLUSH_INTERVAL_SECONDS=0.02,
            TRACKING_RETRY_INITIAL_BACKOFF_SECONDS=10,
            TRACKING_RETRY_MAX_BACKOFF_SECONDS=10,
            TRACKING_ROLLUPS=False,
        )
        add_routes(app)
        tracking.init_app(app)
        apps.append(app)
    refused: list[int] = []

    def slow_or_down(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        if any("unreachable" in str(dict(document)) for document in documents):
            refused.append(len(documents))
            raise AutoReconnect("connection refused (simulated)")
        time.sleep(0.3)
        return ORIGINAL_INSERT_MANY(collection, documents, *args, **kwargs)

    with patch_insert_many(slow_or_down):
        apps[1].test_client().get("/hello?unreachable=1")
        assert wait_for(lambda: refused)
        apps[0].test_client().get("/hello")
        assert tracking.close(2.0) is False
    assert [tracking.stats(app)["written"] for app in apps] == [1, 0]
    assert [tracking.stats(app)["dropped_shutdown"] for app in apps] == [0, 1]


# ---------------------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_has_its_own_queue_thread_and_client(
    make_app: Callable[..., Flask], mongo: Any, backend: str
) -> None:
    app = make_app(TRACKING_FLUSH_INTERVAL_SECONDS=60)
    tracking = app.extensions["tracking"]
    inserted: list[tuple[int, list[str]]] = []
    resolved: list[int] = []
    real_get_db = mongoengine.connection.get_db

    def insert(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        documents = list(documents)
        inserted.append((os.getpid(), [doc["query_params"] for doc in documents]))
        return ORIGINAL_INSERT_MANY(collection, documents, *args, **kwargs)

    def get_db(*args: Any, **kwargs: Any) -> Any:
        resolved.append(os.getpid())
        return real_get_db(*args, **kwargs)

    client = app.test_client()
    with patch_insert_many(insert), mock.patch.object(mongoengine.connection, "get_db", get_db):
        client.get("/hello?parent=0")
        assert tracking.flush(3)  # the parent's client and collection are set up
        for i in range(1, 4):
            client.get(f"/hello?parent={i}")
        assert tracking.stats(app)["pending"] == 3  # waiting for the (long) flush interval

        parent_pid = os.getpid()

        def child() -> dict[str, Any]:
            report: dict[str, Any] = {"before": tracking.stats(app)}
            report["status"] = client.get("/hello?child=1").status_code
            report["flushed"] = tracking.flush(3)
            report["after"] = tracking.stats(app)
            report["mine"] = [docs for p, docs in inserted if p == os.getpid()]
            report["resolved_in_child"] = resolved.count(os.getpid())
            report["writers"] = [
                t.name for t in threading.enumerate() if t.name.startswith("flask-tracking")
            ]
            return report

        report = fork_and_report(child)

        assert all(value == 0 for value in report["before"].values()), report["before"]
        assert report["status"] == 200
        assert report["flushed"] is True
        assert report["mine"] == [["child=1"]]  # none of the parent's records
        assert report["after"]["enqueued"] == report["after"]["written"] == 1
        # The records' and the rollups' sinks each resolved the database again (a sink twice
        # when a real client's first use after the fork failed and was retried).
        assert report["resolved_in_child"] >= 2
        # Threads do not survive a fork: this one was started by the child's first record.
        assert report["writers"] == [f"flask-tracking-writer[{app.name}]"]

        assert tracking.flush(3)
        parents = [q for p, docs in inserted if p == parent_pid for q in docs]
    assert sorted(parents) == [f"parent={i}" for i in range(4)]  # each exactly once overall
    # A real server holds the child's record too; mongomock's child wrote into its own copy.
    child_records = ["child=1"] if backend == "real" else []
    assert sorted(doc["query_params"] for doc in stored(app, mongo)) == sorted(
        [f"parent={i}" for i in range(4)] + child_records
    )
    assert tracking.stats(app)["written"] == 4


RAW_FORK_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, os, threading
    import mongoengine, mongomock
    from flask import Flask
    from flask_tracking import Tracking

    mongoengine.connect("fork_db", alias="default", mongo_client_class=mongomock.MongoClient,
                        uuidRepresentation="standard")
    original_insert = mongomock.collection.Collection.insert_many
    original_get_db = mongoengine.connection.get_db
    inserted, resolved = [], []

    def insert_many(self, documents, *args, **kwargs):
        documents = list(documents)
        inserted.append((os.getpid(), [doc["query_params"] for doc in documents]))
        return original_insert(self, documents, *args, **kwargs)

    def get_db(*args, **kwargs):
        resolved.append(os.getpid())
        return original_get_db(*args, **kwargs)

    mongomock.collection.Collection.insert_many = insert_many
    mongoengine.connection.get_db = get_db

    app = Flask("forked")
    app.config.update(TESTING=True, TRACKING_FLUSH_INTERVAL_SECONDS=60)

    @app.get("/hello")
    def hello():
        return "Hello"

    tracking = Tracking(app)
    client = app.test_client()
    client.get("/hello?parent=0")
    assert tracking.flush(3)
    for i in range(1, 4):
        client.get(f"/hello?parent={i}")
    pending_before_fork = tracking.stats(app)["pending"]

    read_fd, write_fd = os.pipe()
    pid = ctypes.PyDLL(None).fork()  # straight from libc: Python's at-fork hooks do not run
    if pid == 0:
        code = 1
        try:
            report = {"before": tracking.stats(app)}
            report["status"] = client.get("/hello?child=1").status_code
            report["flushed"] = tracking.flush(3)
            report["after"] = tracking.stats(app)
            report["mine"] = [docs for p, docs in inserted if p == os.getpid()]
            report["resolved_in_child"] = resolved.count(os.getpid())
            os.write(write_fd, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert tracking.flush(3)
    print(json.dumps({
        "child_exit": status,
        "child": json.loads(b"".join(chunks)),
        "pending_before_fork": pending_before_fork,
        "parent_inserts": [q for p, docs in inserted if p == os.getpid() for q in docs],
        "parent_stats": tracking.stats(app),
    }))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="calls libc fork() directly")
def test_fork_that_skips_the_at_fork_hooks_is_caught_by_the_pid_check() -> None:
    """As a fork made from C (uWSGI without --py-call-osafterfork). Run in a fresh process:
    a raw fork of pytest's own many-threaded process could copy a lock some thread holds."""
    result = subprocess.run(
        [sys.executable, "-c", RAW_FORK_SCRIPT],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["child_exit"] == 0
    assert report["pending_before_fork"] == 3
    child = report["child"]
    assert all(value == 0 for value in child["before"].values()), child["before"]
    assert child["status"] == 200 and child["flushed"] is True
    assert child["mine"] == [["child=1"]]  # none of the parent's pending records
    assert child["after"]["enqueued"] == child["after"]["written"] == 1
    # The records' and the rollups' sinks each resolved the database again, once.
    assert child["resolved_in_child"] == 2
    assert sorted(report["parent_inserts"]) == [f"parent={i}" for i in range(4)]
    assert report["parent_stats"]["written"] == 4


# mongomock: a simulated pid change would make a real pymongo client believe it was forked.
@MONGOMOCK_ONLY
def test_pid_change_without_fork_hooks_resets_queue_thread_and_client(
    make_app: Callable[..., Flask], mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork the at-fork hooks missed, simulated by a new os.getpid() in this process."""
    app = make_app(TRACKING_BATCH_MAX_RECORDS=1)
    tracking = app.extensions["tracking"]
    gate = threading.Event()
    written: list[str] = []
    calls: list[int] = []
    resolved: list[int] = []
    real_get_db = mongoengine.connection.get_db

    def insert(collection: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        documents = list(documents)
        calls.append(os.getpid())
        if len(calls) == 1:
            gate.wait(5)  # the "parent's" first batch stays in flight
        written.extend(doc["query_params"] for doc in documents)
        return ORIGINAL_INSERT_MANY(collection, documents, *args, **kwargs)

    def get_db(*args: Any, **kwargs: Any) -> Any:
        resolved.append(os.getpid())
        return real_get_db(*args, **kwargs)

    client = app.test_client()
    with patch_insert_many(insert), mock.patch.object(mongoengine.connection, "get_db", get_db):
        try:
            client.get("/hello?p=a")
            assert wait_for(lambda: calls)  # record a in flight, held at the gate
            client.get("/hello?p=b")
            client.get("/hello?p=c")
            assert tracking.stats(app)["pending"] == 3
            old_writers = {t for t in threading.enumerate() if t.name.startswith("flask-tr")}

            child_pid = os.getpid() + 100_000
            monkeypatch.setattr(os, "getpid", lambda: child_pid)
            stats = tracking.stats(app)
            assert stats["pending"] == 0 and stats["enqueued"] == 0, stats
            client.get("/hello?p=d")
            assert tracking.flush(3)
            assert written == ["p=d"]  # b and c were the "parent's": never written here
            assert resolved.count(child_pid) == 2  # new clients (records, rollups) in the "child"
            new_writers = {t for t in threading.enumerate() if t.name.startswith("flask-tr")}
            assert new_writers - old_writers, "no new writer thread"
        finally:
            gate.set()
        old = [t for t in old_writers if t.name == f"flask-tracking-writer[{app.name}]"]
        for thread in old:
            thread.join(2)
            assert not thread.is_alive()  # the parent's worker noticed and exited
    assert sorted(written) == ["p=a", "p=d"]  # a by the stale worker; b, c never
    stats = tracking.stats(app)
    assert stats["written"] == 1  # the stale worker's late outcome is not counted here
    check_invariant(stats)


# ---------------------------------------------------------------------------- tracker bugs

HOOK_FAULTS = [
    # (what to patch, capture_errors per request, enqueued per request, encode errors)
    ("flask_tracking.capture.TrackingMiddleware._start", 1, 0, 0),
    ("flask_tracking.extension.tee_response_body", 1, 1, 0),
    ("flask_tracking.extension.snapshot_request", 1, 1, 0),
    ("flask_tracking.writer.BatchWriter.submit", 1, 0, 0),
    ("flask_tracking.store.to_document", 0, 1, 1),
]


@pytest.mark.parametrize("testing", [True, False], ids=["testing", "production"])
@pytest.mark.parametrize(
    ("target", "errors", "enqueued", "encode_errors"),
    HOOK_FAULTS,
    ids=[fault[0].rsplit(".", 1)[-1] for fault in HOOK_FAULTS],
)
def test_the_trackers_own_errors_never_change_the_response(
    make_app: Callable[..., Flask],
    mongo: Any,
    target: str,
    errors: int,
    enqueued: int,
    encode_errors: int,
    testing: bool,
) -> None:
    app = make_app(testing=testing)
    tracking = app.extensions["tracking"]
    expected = expected_responses(testing)
    client = app.test_client()
    with mock.patch(target, side_effect=RuntimeError("tracker bug")) as broken:
        for index in range(len(REQUESTS)):
            before = tracking.stats(app)
            assert fetch(client, index) == expected[index], REQUESTS[index][1]
            assert tracking.flush(3)
            after = tracking.stats(app)
            path = REQUESTS[index][1]
            assert after["capture_errors"] - before["capture_errors"] == errors, path
            assert after["enqueued"] - before["enqueued"] == enqueued, path
            assert after["dropped_encode_error"] - before["dropped_encode_error"] == encode_errors
        assert broken.called
    stats = tracking.stats(app)
    assert stats["written"] == (enqueued - encode_errors) * len(REQUESTS)
    assert stats.get("dropped_unaccounted", 0) == 0
    check_invariant(stats)


class BrokenBuffer:
    """A body buffer whose every copy fails, as a MemoryError would."""

    def __len__(self) -> int:
        return 0

    def __iadd__(self, other: Any) -> BrokenBuffer:
        raise RuntimeError("tracker bug")


@pytest.mark.parametrize("testing", [True, False], ids=["testing", "production"])
def test_a_failing_body_tee_never_breaks_the_request_or_the_response(
    make_app: Callable[..., Flask], mongo: Any, testing: bool
) -> None:
    app = make_app(testing=testing)
    tracking = app.extensions["tracking"]
    expected = expected_responses(testing)
    client = app.test_client()
    problems = []
    broken_copy = mock.patch("flask_tracking.capture.bytearray", BrokenBuffer, create=True)
    broken_share = mock.patch.object(BodyCapture, "whole", side_effect=RuntimeError("tracker bug"))
    with broken_copy, broken_share:
        for index in range(len(REQUESTS)):
            before = tracking.stats(app)
            path = REQUESTS[index][1]
            try:
                got = fetch(client, index)
            except Exception as error:
                problems.append(f"{path}: {error!r} reached the client")
                continue
            if got != expected[index]:
                problems.append(f"{path}: {got!r} != {expected[index]!r}")
            assert tracking.flush(3)
            after = tracking.stats(app)
            if after["capture_errors"] == before["capture_errors"]:
                problems.append(f"{path}: the failure was not counted")
            if after["enqueued"] - before["enqueued"] != 1:
                problems.append(f"{path}: not recorded")
    assert problems == []


def test_a_failing_snapshot_is_counted_once_when_the_view_raises(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(testing=False)
    tracking = app.extensions["tracking"]
    reference = untracked_app(TESTING=False).test_client().get("/boom", buffered=True)
    with mock.patch(
        "flask_tracking.extension.snapshot_request", side_effect=RuntimeError("tracker bug")
    ):
        response = app.test_client().get("/boom", buffered=True)
        assert tracking.flush(3)
    assert (response.status_code, response.data) == (reference.status_code, reference.data)
    stats = tracking.stats(app)
    assert stats["enqueued"] == 1
    assert stats["capture_errors"] == 1


# ---------------------------------------------------------------------------- capped collection


class FakeCollection:
    """A mongomock collection that answers options() like a server."""

    def __init__(self, database: FakeDatabase, name: str) -> None:
        self._database = database
        self._inner = database.inner[name]
        self.name = name

    def options(self) -> dict[str, Any]:
        return dict(self._database.options)

    @property
    def codec_options(self) -> Any:
        """How the writer encodes its documents: reading it changes nothing."""
        return self._inner.codec_options

    def index_information(self) -> dict[str, Any]:
        """What a capped-mode writer reads of a plain collection (has it a TTL index?): reading
        it changes nothing."""
        return dict(self._inner.index_information())

    def insert_many(self, documents: Any, **kwargs: Any) -> Any:
        return self._inner.insert_many(documents, **kwargs)

    def create_index(self, keys: Any, **kwargs: Any) -> Any:
        """The reading indexes (flask_tracking.indexes) are expected; they change no data."""
        self._database.indexes.append(kwargs.get("name"))
        return self._inner.create_index(keys, **kwargs)

    def __getattr__(self, name: str) -> Any:
        self._database.other_calls.append(name)
        return getattr(self._inner, name)


class FakeDatabase:
    """create_collection creates once and then raises CollectionInvalid, like a server."""

    name = "fake"

    def __init__(self, exists_with: dict[str, Any] | None, parties: int = 1) -> None:
        self.inner = mongomock.MongoClient()["fake"]
        self.options: dict[str, Any] = dict(exists_with or {})
        self.exists = exists_with is not None
        self.create_calls: list[dict[str, Any]] = []
        self.created = 0
        self.other_calls: list[str] = []
        self.indexes: list[str] = []
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(parties)

    def create_collection(self, name: str, **kwargs: Any) -> FakeCollection:
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait(5)  # every worker arrives here together
        with self._lock:
            self.create_calls.append(kwargs)
            if self.exists:
                raise CollectionInvalid(f"collection {name} already exists")
            self.exists = True
            self.created += 1
            self.options = {"capped": True, "size": kwargs["size"], "max": kwargs["max"]}
        return FakeCollection(self, name)

    def __getitem__(self, name: str) -> FakeCollection:
        return FakeCollection(self, name)

    def __getattr__(self, name: str) -> Any:
        self.other_calls.append(name)
        raise AssertionError(f"unexpected database call: {name}")


class FakeClient:
    database: FakeDatabase

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getitem__(self, name: str) -> FakeDatabase:
        return self.database

    def close(self) -> None:
        pass


@contextlib.contextmanager
def fake_alias(database: FakeDatabase) -> Iterator[str]:
    client_class = type("BoundFakeClient", (FakeClient,), {"database": database})
    alias = f"fake_{id(database)}"
    mongoengine.connect(
        "fake", alias=alias, mongo_client_class=client_class, uuidRepresentation="standard"
    )
    try:
        yield alias
    finally:
        mongoengine.disconnect(alias)


def tracked_app(name: str, alias: str, **config: Any) -> Flask:
    app = Flask(name)
    app.config.update(TESTING=True, TRACKING_DB_ALIAS=alias, **FAST_WRITER)
    app.config.update(config)
    add_routes(app)
    Tracking(app)
    return app


def tracking_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "flask_tracking" and record.levelno >= logging.WARNING
    ]


def test_missing_collection_is_created_capped_once_when_4_workers_start_together(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_tracking")
    database = FakeDatabase(exists_with=None, parties=4)
    with fake_alias(database) as alias:
        apps = [tracked_app(f"worker{n}", alias, TRACKING_TABLE_SIZE=1_048_576) for n in range(4)]
        try:
            workers = [
                threading.Thread(target=lambda a=app: a.test_client().get("/hello")) for app in apps
            ]
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join()
            for app in apps:
                assert app.extensions["tracking"].flush(8)
                assert app.extensions["tracking"].stats(app)["written"] == 1
        finally:
            for app in apps:
                writer_of(app).shutdown(1.0)
    assert database.created == 1
    assert len(database.create_calls) == 4  # the three losers accepted the existing one
    assert database.create_calls[0] == {"capped": True, "size": 1_048_576, "max": 1_000_000}
    assert database.inner["tracking"].count_documents({}) == 4
    assert tracking_warnings(caplog) == []


def test_capped_collection_with_other_options_is_used_as_is_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_tracking")
    database = FakeDatabase(exists_with={"capped": True, "size": 5_000_192, "max": 7})
    with fake_alias(database) as alias:
        app = tracked_app("other_options", alias, TRACKING_ROLLUPS=False)
        try:
            client = app.test_client()
            for i in range(3):
                client.get(f"/hello?i={i}")
                assert app.extensions["tracking"].flush(3)
        finally:
            writer_of(app).shutdown(1.0)
    assert database.options == {"capped": True, "size": 5_000_192, "max": 7}  # untouched
    assert database.inner["tracking"].count_documents({}) == 3
    assert database.created == 0
    assert database.other_calls == []
    [message] = tracking_warnings(caplog)
    assert "capped with size=5000192 max=7" in message


def test_uncapped_collection_is_never_converted_and_warns_about_convert_to_capped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_tracking")
    database = FakeDatabase(exists_with={})
    with fake_alias(database) as alias:
        app = tracked_app("uncapped", alias, TRACKING_ROLLUPS=False)
        try:
            client = app.test_client()
            for i in range(3):
                client.get(f"/hello?i={i}")
                assert app.extensions["tracking"].flush(3)
        finally:
            writer_of(app).shutdown(1.0)
    assert database.options == {}  # never converted
    assert database.other_calls == []  # no command(), drop or rename
    assert database.inner["tracking"].count_documents({}) == 3
    [message] = tracking_warnings(caplog)
    assert "not capped" in message and "convertToCapped" in message


# mongomock is the server without capped support.
@MONGOMOCK_ONLY
def test_server_without_capped_support_gets_a_plain_collection_and_one_warning(
    make_app: Callable[..., Flask], mongo: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_tracking")
    app = make_app()
    client = app.test_client()
    for i in range(3):
        client.get(f"/hello?i={i}")
        assert app.extensions["tracking"].flush(3)
    assert len(stored(app, mongo)) == 3
    assert "tracking" in mongo.list_collection_names()
    [message] = tracking_warnings(caplog)
    assert "does not support capped collections" in message

"""Rollups end to end: every request counted (sampled, evicted or refused records too),
several writers adding up, expiry, the QuerySet's reports and filters, the sink's faults."""

from __future__ import annotations

import logging
import os
import types
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pymongo
import pytest
from bson import SON
from flask import Flask
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure

from flask_tracking.aggregate import Aggregate, RollupAggregator
from flask_tracking.documents import Tracking, percentile
from flask_tracking.rollups import Rollup
from flask_tracking.store import (
    ROLLUP_ENDPOINT_INDEX,
    ROLLUP_KEY_INDEX,
    ROLLUP_TTL_INDEX,
    RollupSink,
)

from .conftest import fork_and_report, store_rollups
from .test_queries import FORBIDDEN, SERVER_OPERATORS, operators


def spied_times(app: Flask) -> list[float]:
    """The execution time of every request the app's rollups are handed, as it is handed."""
    tracked = app.extensions["tracking"]._apps[app]
    aggregator = tracked.rollups
    times: list[float] = []
    original = aggregator.add

    def add(sample: Any) -> None:
        times.append(sample[4])
        original(sample)

    aggregator.add = add
    return times


def serve(app: Flask, count: int, errors: int = 0) -> None:
    client = app.test_client()
    for index in range(count):
        client.get("/hello" if index % 10 else f"/sleep/{0.001 * (index % 7)}")
    for _ in range(errors):
        with client.get("/missing"):
            pass


def only_row(rows: list[dict[str, Any]], key: str, value: Any) -> dict[str, Any]:
    (row,) = [row for row in rows if row[key] == value]
    return row


# --- every request counted --------------------------------------------------------------


def test_sampled_requests_are_all_counted_with_a_p95_within_5_percent(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_SAMPLE_RATE=0.1, TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS=None)
    times = spied_times(app)
    serve(app, 300)
    tracking = app.extensions["tracking"]
    assert tracking.flush(10)
    assert Tracking.objects.count() < 100  # about 30 kept
    stats = Rollup.objects.stats()
    hello = only_row(stats, "endpoint", "hello")
    assert hello["count"] == 270
    assert only_row(stats, "endpoint", "sleep")["count"] == 30
    summary = Rollup.objects.summary()
    assert summary["count"] == 300 == len(times)
    exact = percentile(sorted(times), 0.95)
    assert exact is not None and abs(summary["p95"] - exact) <= 0.05 * exact
    assert summary["max"] == pytest.approx(max(times))
    assert tracking.stats(app)["rollup_requests"] == 300


def test_evicted_and_refused_records_are_counted(
    make_app: Callable[..., Flask], mongo: Any, backend: str
) -> None:
    app = make_app(
        TRACKING_MAX_DOCUMENTS=10,
        TRACKING_QUEUE_MAX_RECORDS=5,
        TRACKING_BATCH_MAX_RECORDS=5,
    )
    serve(app, 200, errors=7)
    tracking = app.extensions["tracking"]
    assert tracking.flush(20)
    stats = tracking.stats(app)
    if backend == "real":  # the capped collection evicts (mongomock never does)
        assert Tracking.objects.count() <= 15
    assert stats["written"] + stats["dropped_queue_full"] == 207
    assert Rollup.objects.summary()["count"] == 207
    missing = only_row(Rollup.objects.stats(), "endpoint", "missing")
    assert (missing["count"], missing["client_errors"], missing["errors"]) == (7, 7, 0)
    assert missing["status"] == {"4xx": 7}


def test_outcome_rules_leave_records_out_but_not_requests(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_ONLY_ERRORS=True, testing=False)
    client = app.test_client()
    for _ in range(5):
        client.get("/hello")
    for _ in range(2):
        with client.get("/boom"):
            pass
    assert app.extensions["tracking"].flush(10)
    assert Tracking.objects.count() == 2
    rows = Rollup.objects.stats()
    assert only_row(rows, "endpoint", "hello")["count"] == 5
    boom = only_row(rows, "endpoint", "boom")
    assert (boom["count"], boom["errors"], boom["error_rate"]) == (2, 2, 1.0)


def test_a_request_the_app_gave_no_response_is_an_error_of_no_status_class(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """A view ended by SystemExit (gunicorn's worker timeout): counted under its endpoint, as
    an error, with no status class but ``other``; the record and the rollup agree."""
    app = make_app(testing=False)

    @app.get("/stuck")
    def stuck() -> str:
        raise SystemExit(1)

    with pytest.raises(SystemExit):
        app.test_client().get("/stuck")
    assert app.extensions["tracking"].flush(10)
    row = only_row(Rollup.objects.stats(), "endpoint", "stuck")
    assert (row["count"], row["errors"], row["status"]) == (1, 1, {"other": 1})
    assert Tracking.objects.errors().get().status_code is None


def test_excluded_requests_are_not_counted(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_EXCLUDE=["^/hello"])
    serve(app, 20)
    assert app.extensions["tracking"].flush(10)
    assert [row["endpoint"] for row in Rollup.objects.stats()] == ["sleep"]


def test_rollups_can_be_switched_off(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_ROLLUPS=False)
    serve(app, 5)
    tracking = app.extensions["tracking"]
    assert tracking.flush(10)
    assert "rollup_requests" not in tracking.stats(app)
    assert "tracking_rollups" not in mongo.list_collection_names()


def test_the_collection_name_is_configurable(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_ROLLUP_COLLECTION="my_rollups")
    serve(app, 5)
    assert app.extensions["tracking"].flush(10)
    assert mongo["my_rollups"].count_documents({"period": "minute"}) == 2  # /hello, /sleep
    assert "tracking_rollups" not in mongo.list_collection_names()
    from flask_tracking.cli import app_rollups

    with app.app_context():
        assert app_rollups().summary()["count"] == 5


# --- several writers ----------------------------------------------------------------------


def test_two_writers_add_up_in_the_same_minute(make_app: Callable[..., Flask], mongo: Any) -> None:
    first, second = make_app(), make_app()
    serve(first, 40)
    serve(second, 60)
    serve(first, 10)
    for app in (first, second):
        assert app.extensions["tracking"].flush(10)
    hello = only_row(Rollup.objects.stats(), "endpoint", "hello")
    assert hello["count"] == 99  # 36 + 54 + 9
    assert Rollup.objects.filter(period="hour").count() <= 4  # one per hour, endpoint, method


def test_two_processes_add_up_in_the_same_minute(
    make_app: Callable[..., Flask], mongo: Any, backend: str
) -> None:
    if backend == "mongomock":
        pytest.skip("a forked child has its own copy of mongomock's data")
    app = make_app()
    tracking = app.extensions["tracking"]
    serve(app, 1)
    assert tracking.flush(10)  # the collection and its indexes exist

    def child() -> int:
        serve(app, 50)
        assert tracking.flush(10)
        return tracking.stats(app)["rollup_requests"]

    assert fork_and_report(child, timeout=60) == 50
    serve(app, 30)
    assert tracking.flush(10)
    assert Rollup.objects.summary()["count"] == 81
    assert tracking.stats(app)["rollup_requests"] == 31


# --- expiry -----------------------------------------------------------------------------


def test_the_ttl_index_expires_rollups_after_the_retention(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_ROLLUP_RETENTION_DAYS=3)
    serve(app, 2)
    assert app.extensions["tracking"].flush(10)
    indexes = mongo["tracking_rollups"].index_information()
    assert indexes[ROLLUP_TTL_INDEX]["expireAfterSeconds"] == 3 * 86400
    assert indexes[ROLLUP_TTL_INDEX]["key"] == [("start", 1)]


def test_expired_rollups_disappear(mongomock_db: Any) -> None:
    """mongomock applies TTL indexes when it reads; the server's TTL monitor every 60 s."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    record = {"endpoint": "index", "method": "GET", "status_code": 200, "execution_time": 1.0}
    store_rollups(
        mongomock_db,
        [{**record, "date_created": now - timedelta(days=4)}, {**record, "date_created": now}],
        retention_days=3,
    )
    assert Rollup.objects.count() == 2  # a minute and an hour rollup
    assert Rollup.objects.summary()["count"] == 1


def test_a_changed_retention_changes_the_ttl_index(real_db: Any) -> None:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    record = {"endpoint": "index", "method": "GET", "status_code": 200, "date_created": now}
    store_rollups(real_db, [record], retention_days=3)
    store_rollups(real_db, [record], retention_days=5)
    indexes = real_db["tracking_rollups"].index_information()
    assert indexes[ROLLUP_TTL_INDEX]["expireAfterSeconds"] == 5 * 86400


# --- the QuerySet -----------------------------------------------------------------------


def traffic(now: datetime) -> list[dict[str, Any]]:
    def request(minutes_ago: float, **fields: Any) -> dict[str, Any]:
        base = {
            "date_created": now - timedelta(minutes=minutes_ago),
            "endpoint": "items",
            "method": "GET",
            "status_code": 200,
            "execution_time": 10.0,
            "request_body_size": 0,
            "response_body_size": 100,
        }
        return {**base, **fields}

    return [
        *(request(5, execution_time=float(ms)) for ms in range(1, 101)),
        request(5, method="POST", status_code=201, request_body_size=1000),
        request(90, status_code=500, execution_time=700.0),
        request(90, exception="ValueError: x", status_code=200),
        request(3 * 60 * 24, endpoint=None, status_code=404, execution_time=None),
    ]


def test_stats_timeline_and_filters(mongo: Any) -> None:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    store_rollups(mongo, traffic(now))
    rows = Rollup.objects.stats()
    assert [(row["endpoint"], row["count"]) for row in rows] == [("items", 103), (None, 1)]
    items = rows[0]
    assert (items["errors"], items["client_errors"], items["bytes_in"]) == (2, 0, 1000)
    assert items["error_rate"] == pytest.approx(2 / 103)
    assert items["max"] == 700.0
    assert set(items) >= {"mean", "p50", "p95", "p99", "bytes_out", "status"}
    assert rows[1]["mean"] is None and rows[1]["p95"] is None
    methods = Rollup.objects.stats(group_by="method")
    assert [(row["method"], row["count"]) for row in methods] == [("GET", 103), ("POST", 1)]
    classes = Rollup.objects.stats(group_by="status_class")
    assert [(row["status_class"], row["count"], row["errors"]) for row in classes] == [
        ("2xx", 102, 0),
        ("4xx", 1, 0),
        ("5xx", 1, 1),
    ]
    recent = Rollup.objects.last(hours=1)
    assert recent.summary()["count"] == 101
    assert abs(recent.for_method("get").summary()["p95"] - 95.0) <= 0.05 * 95.0
    assert recent.for_method("POST").summary()["count"] == 1
    assert Rollup.objects.last(days=1).for_endpoint("items").summary()["count"] == 103
    assert Rollup.objects.for_endpoint(None).summary()["count"] == 1
    assert Rollup.objects.between(end=now - timedelta(days=1)).summary()["count"] == 1
    assert Rollup.objects.between(now - timedelta(days=1)).summary()["count"] == 103
    hours = Rollup.objects.last(days=1).timeline("hour")
    assert [row["count"] for row in hours] in ([2, 101], [103])
    assert all(row["start"].minute == 0 for row in hours)
    days = Rollup.objects.timeline("day")
    assert sum(row["count"] for row in days) == 104
    assert Rollup.objects.between("2001-01-01", "2001-01-02").summary()["count"] == 0
    assert sum(Rollup.objects.latency_histogram().values()) == 103


def test_bad_arguments_say_what_is_allowed(mongomock_db: Any) -> None:
    with pytest.raises(ValueError, match="endpoint, method, status_class"):
        Rollup.objects.stats(group_by="path")
    with pytest.raises(ValueError, match="minute, hour, day"):
        Rollup.objects.timeline("week")
    with pytest.raises(ValueError, match="positive duration"):
        Rollup.objects.last()
    with pytest.raises(ValueError, match="after the end"):
        Rollup.objects.between("2024-05-02", "2024-05-01")
    with pytest.raises(ValueError, match="out of range"):
        Rollup.objects.last(days=1e6)


def test_a_window_in_the_last_hour_of_year_9999_is_reported(mongo: Any) -> None:
    # No whole hour follows 9999-12-31 23:00: the reports used to overflow looking for one.
    assert Rollup.objects.between(datetime.max).summary()["count"] == 0
    assert Rollup.objects.between("9999-12-31T23:30").stats() == []
    assert Rollup.objects.between("9999-12-31T23:30").timeline("hour") == []


def test_the_pipelines_use_only_operators_of_mongodb_4_4(
    mongomock_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection_class = type(Rollup._get_collection())
    original = collection_class.aggregate
    pipelines: list[list[dict[str, Any]]] = []

    def spy(self: Any, pipeline: list[dict[str, Any]], **kwargs: Any) -> Any:
        pipelines.append(pipeline)
        assert kwargs.get("allowDiskUse") is True
        return original(self, pipeline, **kwargs)

    monkeypatch.setattr(collection_class, "aggregate", spy)
    store_rollups(mongomock_db, traffic(datetime.now(timezone.utc).replace(tzinfo=None)))
    Rollup.objects.last(days=1).for_endpoint("items").stats()
    Rollup.objects.timeline("minute")
    Rollup.objects.stats("status_class")
    used = set().union(*(operators(pipeline) for pipeline in pipelines))
    extra = {"$unwind": (3, 2), "$objectToArray": (3, 4), "$literal": (2, 6)}
    known = {**SERVER_OPERATORS, **extra}
    assert not used & FORBIDDEN
    assert used <= set(known), used - set(known)
    assert max(known[name] for name in used) <= (4, 4)


# --- the sink's faults ------------------------------------------------------------------


class FakeCollection:
    """A collection whose bulk_write raises what it is given."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.name = "tracking_rollups"
        self.indexes: list[str] = []

    def create_index(self, keys: Any, name: str, **options: Any) -> str:
        self.indexes.append(name)
        return name

    def bulk_write(self, operations: list[Any], ordered: bool) -> None:
        assert ordered is False
        if self.error is not None:
            raise self.error


def sink_with(error: Exception | None) -> tuple[RollupSink, FakeCollection]:
    collection = FakeCollection(error)
    sink = RollupSink(
        lambda: {"tracking_rollups": collection},  # type: ignore[return-value,dict-item]
        retention_days=1,
        write_timeout_seconds=1.0,
    )
    return sink, collection


def aggregates(count: int) -> list[Any]:
    minute = datetime(2024, 5, 1, 10, 0)
    found = []
    for index in range(count):
        aggregate = Aggregate()
        aggregate.add((0.0, f"e{index}", "GET", "200 OK", 1.0, False, 0, 0))
        found.append((("minute", minute, f"e{index}", "GET"), aggregate))
    return found


def test_the_sink_retries_network_errors_and_duplicate_keys_and_drops_refusals() -> None:
    batch = aggregates(4)
    sink, collection = sink_with(None)
    assert sink(batch).written == 4
    assert len(collection.indexes) == 3
    sink, _ = sink_with(AutoReconnect("down"))
    outcome = sink(batch)
    assert outcome.retry == batch and outcome.written == 0
    details = {
        "writeErrors": [
            {"index": 1, "code": 11000, "errmsg": "duplicate key"},
            {"index": 3, "code": 2, "errmsg": "bad value"},
        ]
    }
    sink, _ = sink_with(BulkWriteError(details))
    outcome = sink(batch)
    assert outcome.retry == [batch[1]]
    assert (outcome.written, outcome.dropped) == (2, 1)
    sink, _ = sink_with(OperationFailure("not allowed", code=13))
    outcome = sink(batch)
    assert (outcome.written, outcome.dropped, outcome.retry) == (0, 4, [])
    assert sink([]).written == 0


def test_a_transient_error_creating_the_rollup_indexes_is_retried() -> None:
    """A "try again later" answer (here ExceededTimeLimit, from a mongos whose shard did not
    answer in time) to a rollup index's ``createIndexes`` hands the round back for a retry,
    which creates the indexes: taken for a refusal, the rollups would never get their TTL
    index (nor their unique key) while the process lives."""
    batch = aggregates(2)
    sink, collection = sink_with(None)
    create_index = collection.create_index
    failures = [OperationFailure("operation exceeded time limit", code=262)]

    def flaky(keys: Any, name: str, **options: Any) -> str:
        if failures:
            raise failures.pop()
        return create_index(keys, name, **options)

    collection.create_index = flaky  # type: ignore[method-assign]
    outcome = sink(batch)
    assert (outcome.written, outcome.retry) == (0, batch)
    assert sink(batch).written == 2
    assert collection.indexes == [ROLLUP_KEY_INDEX, ROLLUP_ENDPOINT_INDEX, ROLLUP_TTL_INDEX]


def test_a_transient_error_changing_the_rollup_expiry_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rollups' TTL index exists with another expiry (``createIndexes`` refuses it, code
    85): a "try again later" answer to the ``collMod`` that changes it hands the round back
    for a retry, which changes it; taken for a refusal, the rollups would keep the old
    expiry while the process lives, with a warning that they do."""
    batch = aggregates(2)
    sink, collection = sink_with(None)
    commands: list[tuple[Any, ...]] = []
    failures = [OperationFailure("operation exceeded time limit", code=262)]

    def command(*arguments: Any, **options: Any) -> dict[str, Any]:
        if failures:
            raise failures.pop()
        commands.append((*arguments, options))
        return {"ok": 1}

    def create_index(keys: Any, name: str, **options: Any) -> str:
        if name == ROLLUP_TTL_INDEX:
            raise OperationFailure("an index with another expiry exists", code=85)
        return name

    collection.create_index = create_index  # type: ignore[method-assign]
    collection.database = types.SimpleNamespace(command=command)  # type: ignore[attr-defined]
    caplog.set_level(logging.WARNING, "flask_tracking")
    outcome = sink(batch)
    assert (outcome.written, outcome.retry) == (0, batch)
    assert sink(batch).written == 2
    assert [arguments[:2] for arguments in commands] == [("collMod", "tracking_rollups")]
    assert not [r for r in caplog.records if "could not be changed" in r.getMessage()]


def test_a_failing_rollup_write_is_retried_and_counted(
    make_app: Callable[..., Flask], mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    serve(app, 3)
    tracking = app.extensions["tracking"]
    assert tracking.flush(10)
    calls = []
    original = pymongo.collection.Collection.bulk_write

    def flaky(self: Any, operations: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(operations))
        if len(calls) <= 2:
            raise AutoReconnect("connection reset")
        return original(self, operations, *args, **kwargs)

    collection_class = type(mongo["tracking_rollups"])
    original = collection_class.bulk_write
    monkeypatch.setattr(collection_class, "bulk_write", flaky)
    serve(app, 4)
    assert tracking.flush(10)
    stats = tracking.stats(app)
    assert stats["rollup_retries"] >= 2
    assert stats["dropped_db_error"] == 0
    assert Rollup.objects.summary()["count"] == 7


def test_aggregator_and_sink_on_the_backend(mongo: Any) -> None:
    """One round through the real sink: one document per key, $inc adds, $max keeps."""
    sink = RollupSink(lambda: mongo, retention_days=1, write_timeout_seconds=10.0)
    aggregator = RollupAggregator(sink)
    moment = datetime.now(timezone.utc).timestamp()
    for elapsed in (5.0, 50.0):
        aggregator.add((moment, "e", "GET", "200 OK", elapsed, False, 1, 2))
        assert aggregator.write()
    (document,) = mongo["tracking_rollups"].find({"period": "minute"})
    assert (document["count"], document["timed"], document["time_max"]) == (2, 2, 50.0)
    assert document["time_sum"] == 55.0 and document["bytes_out"] == 4
    assert document["status"] == {"2xx": 2}
    assert sum(document["histogram"].values()) == 2
    assert isinstance(SON(document), SON) and os.getpid() > 0


def test_a_4xx_whose_body_raised_is_a_client_error_too(mongo: Any) -> None:
    """A streamed 404 whose generator raised mid-body is stored with status 404 and an
    exception: ``Tracking.objects.client_errors()`` (400 to 499) and ``errors()`` both select it,
    and the rollups count it as a 4xx in ``status``; but their ``client_errors`` ("status 400 to
    499", docs/rollups.md) leave it out, because ``Aggregate.add_many`` counts a request as a
    client error only when it is not an error (``elif``)."""
    record = {
        "date_created": datetime.now(timezone.utc).replace(tzinfo=None),
        "endpoint": "download",
        "method": "GET",
        "status_code": 404,
        "execution_time": 3.0,
        "exception": "OSError: disk gone",
    }
    Tracking._get_collection().insert_one(dict(record))
    store_rollups(mongo, [record])
    summary = Rollup.objects.summary()
    assert (summary["count"], summary["errors"], summary["status"]) == (1, 1, {"4xx": 1})
    assert Tracking.objects.client_errors().count() == 1
    assert summary["client_errors"] == Tracking.objects.client_errors().count()


def test_a_client_cannot_grow_the_rollups_without_bound_by_inventing_methods(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # README.md ("the oldest records make room when it is full, so tracking never fills the
    # disk") and docs/production.md: with TRACKING_ROLLUPS on (the default) every distinct
    # client-sent HTTP method opens two new rollup documents (minute and hour) in a collection
    # that is not capped and kept 90 days: 200 requests with made-up methods make 400 documents.
    app = make_app()
    client = app.test_client()
    for number in range(200):
        client.open("/hello", method=f"X{number}")
    assert app.extensions["tracking"].flush(5)
    methods = mongo["tracking_rollups"].distinct("method")
    documents = mongo["tracking_rollups"].count_documents({})
    assert len(methods) <= 10, f"{len(methods)} methods, {documents} documents"
    assert "OTHER" in methods
    assert mongo["tracking"].count_documents({"method": "X7"}) == 1  # the record keeps it


def test_rollup_method_keeps_the_standard_methods_and_folds_the_rest() -> None:
    from flask_tracking.aggregate import rollup_method

    assert [rollup_method(m) for m in ("GET", "PATCH", None)] == ["GET", "PATCH", None]
    assert [rollup_method(m) for m in ("PROPFIND", "get", "X1")] == ["OTHER"] * 3

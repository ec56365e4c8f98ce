"""Tests for the query helpers and reports of TrackingQuerySet, on mongomock.

Records are inserted as raw dicts in the stored schema (fields.FIELDS), as the writer does. The
reports are checked against a brute-force computation in Python over the same records, with
the one percentile formula (reports.percentile) used by both sides.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import mongoengine
import mongomock
import pytest
from bson import ObjectId
from pymongo import CursorType
from pymongo.errors import ServerSelectionTimeoutError

from flask_tracking import documents
from flask_tracking.documents import (
    STATS_GROUPS,
    Tracking,
    TrackingQuerySet,
    parse_datetime,
    percentile,
)
from flask_tracking.fields import FIELDS, OPTIONAL_FIELDS
from flask_tracking.reports import PERCENTILES

BASE = dt.datetime(2024, 5, 1, 10, 0)
OVERLAP = dt.timedelta(seconds=documents.POLL_OVERLAP_SECONDS)


pytestmark = pytest.mark.usefixtures("mongo")  # a fresh mongomock database per test


# --- stored records ---------------------------------------------------------------------


def stored_record(**overrides: Any) -> dict[str, Any]:
    """One record with every stored field (fields.FIELDS), as the writer inserts it."""
    record: dict[str, Any] = {
        "date_created": BASE,
        "host": "localhost",
        "scheme": "http",
        "method": "GET",
        "path": "/",
        "query_params": "",
        "ip": "10.0.0.1",
        "endpoint": "index",
        "url_rule": "/",
        "referrer": None,
        "user": None,
        "user_id": None,
        "user_agent": {
            "browser": "Firefox",
            "version": "120.0",
            "platform": "Linux",
            "device": "Other",
            "language": "en-US",
            "string": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        },
        "request_headers": [["Host", "localhost"], ["Accept", "*/*"]],
        "request_body": None,
        "request_body_size": 0,
        "request_body_truncated": False,
        "request_body_omitted": None,
        "response_headers": [["Content-Type", "text/plain; charset=utf-8"]],
        "response_body": b"ok",
        "response_body_size": 2,
        "response_body_truncated": False,
        "response_body_omitted": None,
        "status_code": 200,
        "execution_time": 1.0,
        "total_time": 1.0,
        "hostname": "worker-1",
        "custom_data": None,
        "exception": None,
        "request_id": None,
        "sample_rate": None,
    }
    record.update(overrides)
    return record


def insert(*records: dict[str, Any]) -> list[ObjectId]:
    return list(Tracking._get_collection().insert_many(list(records)).inserted_ids)


_ENDPOINTS = [
    ("index", lambda rng: "/"),
    ("users.show", lambda rng: f"/users/{rng.randrange(1, 6)}"),
    ("api.orders", lambda rng: "/api/orders"),
    (None, lambda rng: "/missing"),
]
_BROWSERS = [("Firefox", "Linux"), ("Chrome", "Windows"), ("Safari", "Mac OS X"), (None, None)]


def seeded_records(count: int = 600, seed: int = 4) -> list[dict[str, Any]]:
    """A varied, reproducible set: four endpoints, every status class, exceptions, records
    without an execution time (null or missing), sampled records, bodies with no size."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        endpoint, make_path = rng.choice(_ENDPOINTS)
        browser, platform = rng.choice(_BROWSERS)
        record = stored_record(
            date_created=BASE + dt.timedelta(seconds=rng.randrange(3 * 3600)),
            endpoint=endpoint,
            path=make_path(rng),
            status_code=404 if endpoint is None else rng.choice([200] * 8 + [201, 302, 400, 500]),
            execution_time=round(rng.lognormvariate(3, 1), 3),
            user_id=rng.choice([None, "1", "2", "3"]),
            ip=f"10.0.0.{rng.randrange(12)}",
            request_body_size=rng.choice([None, 0, rng.randrange(5000)]),
            response_body_size=rng.choice([None, rng.randrange(20000)]),
            exception="ValueError: boom" if rng.random() < 0.05 else None,
            user_agent={"browser": browser, "platform": platform},
        )
        if rng.random() < 0.05:
            record["execution_time"] = None
        elif rng.random() < 0.05:
            del record["execution_time"]
        if rng.random() < 0.3:
            record["sample_rate"] = rng.choice([1.0, 0.5, 0.25, 0.1])
        records.append(record)
    return records


# --- brute force ------------------------------------------------------------------------


def weight(record: dict[str, Any]) -> float:
    rate = record.get("sample_rate")
    return 1 / rate if isinstance(rate, (int, float)) and 0 < rate <= 1 else 1.0


def is_error(record: dict[str, Any]) -> bool:
    return (record.get("status_code") or 0) >= 500 or record.get("exception") is not None


def brute_force_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What every report row says about ``records``, computed in plain Python."""
    weights = [weight(record) for record in records]
    count = sum(weights)
    errors = sum(w for record, w in zip(records, weights) if is_error(record))
    timed = [
        (record["execution_time"], w)
        for record, w in zip(records, weights)
        if isinstance(record.get("execution_time"), (int, float))
    ]
    times = sorted(t for t, _ in timed)
    summary = {
        "count": round(count),
        "errors": round(errors),
        "error_rate": errors / count,
        "mean": sum(t * w for t, w in timed) / sum(w for _, w in timed) if timed else None,
        **{key: percentile(times, fraction) for key, fraction in PERCENTILES.items()},
        "max": max(times, default=None),
        "bytes_in": round(
            sum((r.get("request_body_size") or 0) * w for r, w in zip(records, weights))
        ),
        "bytes_out": round(
            sum((r.get("response_body_size") or 0) * w for r, w in zip(records, weights))
        ),
    }
    return summary


def brute_force_stats(records: list[dict[str, Any]], group_by: str) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record.get(group_by)].append(record)
    return {value: brute_force_summary(members) for value, members in groups.items()}


def assert_same_summary(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if isinstance(value, float):
            assert actual[key] == pytest.approx(value), key
        else:
            assert actual[key] == value, key


# --- filters ----------------------------------------------------------------------------


def paths(queryset: TrackingQuerySet) -> list[str]:
    return [record.path for record in queryset]


def test_stored_record_has_every_stored_field() -> None:
    assert set(stored_record()) == set(FIELDS) - set(OPTIONAL_FIELDS)  # it ran no command


def test_newest_first_by_default_and_order_by_overrides() -> None:
    insert(
        stored_record(path="/b", date_created=BASE + dt.timedelta(minutes=1), execution_time=9.0),
        stored_record(path="/a", date_created=BASE, execution_time=5.0),
        stored_record(path="/c", date_created=BASE + dt.timedelta(minutes=2), execution_time=1.0),
    )
    assert paths(Tracking.objects) == ["/c", "/b", "/a"]
    assert paths(Tracking.objects.slow(0)) == ["/c", "/b", "/a"]
    assert paths(Tracking.objects.slow(0).order_by("-execution_time")) == ["/b", "/a", "/c"]
    assert paths(Tracking.objects.order_by()) == ["/b", "/a", "/c"]  # storage order


def test_slow() -> None:
    insert(
        stored_record(path="/fast", execution_time=10.0),
        stored_record(path="/slow", execution_time=1000.0),
    )
    assert paths(Tracking.objects.slow(1000)) == ["/slow"]
    assert sorted(paths(Tracking.objects.slow(10))) == ["/fast", "/slow"]
    assert paths(Tracking.objects.slow(1000.5)) == []


def test_errors_and_client_errors() -> None:
    insert(
        stored_record(path="/ok", status_code=200),
        stored_record(path="/raised", status_code=200, exception="ValueError: x"),
        stored_record(path="/500", status_code=500),
        stored_record(path="/503", status_code=503),
        stored_record(path="/400", status_code=400),
        stored_record(path="/499", status_code=499),
        stored_record(path="/302", status_code=302),
    )
    assert sorted(paths(Tracking.objects.errors())) == ["/500", "/503", "/raised"]
    assert sorted(paths(Tracking.objects.client_errors())) == ["/400", "/499"]


def test_between_accepts_datetimes_dates_and_strings() -> None:
    for minute in range(0, 60, 10):
        insert(stored_record(path=f"/{minute}", date_created=BASE + dt.timedelta(minutes=minute)))
    start, end = BASE + dt.timedelta(minutes=10), BASE + dt.timedelta(minutes=30)
    expected = ["/20", "/10"]  # start included, end excluded, newest first
    assert paths(Tracking.objects.between(start, end)) == expected
    assert paths(Tracking.objects.between("2024-05-01 10:10", "2024-05-01 10:30")) == expected
    assert paths(Tracking.objects.between("2024-05-01T10:10:00Z", "2024-05-01T10:30Z")) == expected
    # an offset is converted to UTC; an aware datetime too
    assert paths(Tracking.objects.between("2024-05-01T12:10+02:00", None)) == [
        "/50",
        "/40",
        "/30",
        "/20",
        "/10",
    ]
    aware = dt.datetime(2024, 5, 1, 6, 30, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    assert paths(Tracking.objects.between(None, aware)) == ["/20", "/10", "/0"]
    assert len(paths(Tracking.objects.between(dt.date(2024, 5, 1), "2024-05-02"))) == 6


def test_between_rejects_bad_input_with_a_sentence() -> None:
    with pytest.raises(ValueError, match=r"'yesterday' is not a date\. Give a date and time"):
        Tracking.objects.between("yesterday")
    with pytest.raises(ValueError, match="is after the end"):
        Tracking.objects.between("2024-05-02", "2024-05-01")
    with pytest.raises(ValueError, match="not a date"):
        Tracking.objects.between(42)  # type: ignore[arg-type]


def test_parse_datetime_forms() -> None:
    assert parse_datetime("2024-05-01") == dt.datetime(2024, 5, 1)
    assert parse_datetime(" 2024-05-01 10:00 ") == dt.datetime(2024, 5, 1, 10)
    assert parse_datetime("2024-05-01T10:00:00.250z") == dt.datetime(2024, 5, 1, 10, 0, 0, 250000)
    assert parse_datetime("2024-05-01T12:00+02:00") == dt.datetime(2024, 5, 1, 10)
    with pytest.raises(ValueError):
        parse_datetime("")
    for text in ("0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00"):
        with pytest.raises(ValueError, match="out of range"):
            parse_datetime(text)


def test_last() -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    insert(
        stored_record(path="/now", date_created=now),
        stored_record(path="/hour", date_created=now - dt.timedelta(minutes=50)),
        stored_record(path="/day", date_created=now - dt.timedelta(hours=20)),
        stored_record(path="/old", date_created=now - dt.timedelta(days=3)),
    )
    assert paths(Tracking.objects.last(minutes=5)) == ["/now"]
    assert paths(Tracking.objects.last(hours=1)) == ["/now", "/hour"]
    assert paths(Tracking.objects.last(days=1)) == ["/now", "/hour", "/day"]
    assert paths(Tracking.objects.last(days=1, hours=49)) == ["/now", "/hour", "/day", "/old"]
    with pytest.raises(ValueError, match="positive duration"):
        Tracking.objects.last()
    for days in (1e6, 1e20):  # before year 1: a sentence, not an OverflowError
        with pytest.raises(ValueError, match="out of range"):
            Tracking.objects.last(days=days)


def test_for_path_is_a_regex_anchored_at_the_start() -> None:
    insert(
        *(
            stored_record(path=path, date_created=BASE + dt.timedelta(seconds=index))
            for index, path in enumerate(
                [
                    "/api/users",
                    "/api/orders",
                    "/v2/api/users",
                    "/users/12",
                    "/users/12/edit",
                    "/a.b",
                ]
            )
        )
    )
    assert paths(Tracking.objects.for_path("/api/")) == ["/api/orders", "/api/users"]
    assert paths(Tracking.objects.for_path(r"/users/\d+$")) == ["/users/12"]
    assert set(paths(Tracking.objects.for_path("/api/orders|/users"))) == {
        "/api/orders",
        "/users/12",
        "/users/12/edit",
    }
    assert paths(Tracking.objects.for_path("/users/12", exact=True)) == ["/users/12"]
    assert paths(Tracking.objects.for_path("/a.b", exact=True)) == ["/a.b"]
    # A simple prefix: MongoDB uses the index.
    assert documents._path_regex("/api/") == {"$regex": "^/api/"}
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Tracking.objects.for_path("/users/(")


@pytest.mark.parametrize(
    "pattern",
    [re.compile("/API/", re.IGNORECASE), "(?i)/API/"],
    ids=["compiled-with-flags", "inline-flags"],
)
def test_for_path_keeps_the_flags_of_the_pattern(pattern: Any) -> None:
    """``for_path`` matches "like ``re.match``" and takes an ``re.Pattern``, but only the
    pattern's text reaches MongoDB: the flags of a compiled pattern are dropped (no record
    matches), and a leading inline flag group is put after the ``^`` anchor ("^(?i)/API/"),
    which Python's ``re`` (mongomock) and SecantusDB refuse as "global flags not at the start
    of the expression" (re.error / OperationFailure) though the pattern itself compiles."""
    insert(stored_record(path="/api/users"), stored_record(path="/v2/api/users"))
    assert re.match(pattern, "/api/users") and not re.match(pattern, "/v2/api/users")
    assert paths(Tracking.objects.for_path(pattern)) == ["/api/users"]


def test_for_path_stays_at_the_start_of_the_path_with_multiline() -> None:
    """``re.MULTILINE`` lets ``^`` match after a newline too; ``re.match`` does not, nor does
    ``for_path``. A flag MongoDB has no option for is refused, not dropped."""
    insert(stored_record(path="/a\n/b"), stored_record(path="/b"))
    assert paths(Tracking.objects.for_path(re.compile("/b", re.MULTILINE))) == ["/b"]
    with pytest.raises(ValueError, match=r"re\.ASCII"):
        Tracking.objects.for_path(re.compile(r"/\w+", re.ASCII))


def test_for_endpoint_and_for_ip() -> None:
    insert(
        stored_record(path="/1", endpoint="users.show", ip="203.0.113.7"),
        stored_record(path="/2", endpoint="users.edit", ip="203.0.113.8"),
    )
    assert paths(Tracking.objects.for_endpoint("users.show")) == ["/1"]
    assert paths(Tracking.objects.for_ip("203.0.113.8")) == ["/2"]


class LoginUser:
    def __init__(self, ident: Any) -> None:
        self.ident = ident

    def get_id(self) -> str:
        return str(self.ident)


class DocumentLikeUser:
    pk = ObjectId("65f000000000000000000001")


def test_for_user_takes_users_and_ids() -> None:
    insert(
        stored_record(path="/42", user_id="42"),
        stored_record(path="/doc", user_id=str(DocumentLikeUser.pk)),
        stored_record(path="/anonymous", user_id=None),
    )
    assert paths(Tracking.objects.for_user(LoginUser(42))) == ["/42"]
    assert paths(Tracking.objects.for_user("42")) == ["/42"]
    assert paths(Tracking.objects.for_user(42)) == ["/42"]
    assert paths(Tracking.objects.for_user(DocumentLikeUser())) == ["/doc"]
    assert paths(Tracking.objects.for_user(None)) == ["/anonymous"]


def test_with_data() -> None:
    insert(
        stored_record(path="/a", custom_data={"order": 42, "cart": {"items": 3}, "team": "blue"}),
        stored_record(path="/b", custom_data={"order": 7, "cart": {"items": 1}, "team": "red"}),
        stored_record(path="/c", custom_data=None),
    )
    assert paths(Tracking.objects.with_data(order=42)) == ["/a"]
    assert paths(Tracking.objects.with_data(cart__items=1)) == ["/b"]
    assert sorted(paths(Tracking.objects.with_data(order__gte=7))) == ["/a", "/b"]
    assert paths(Tracking.objects.with_data(team__in=("red", "green"))) == ["/b"]
    assert paths(Tracking.objects.with_data(team__in="red")) == ["/b"]  # not r, e, d
    assert paths(Tracking.objects.with_data(order__in=42)) == ["/a"]
    assert sorted(paths(Tracking.objects.with_data(team__nin=(t for t in ["red"])))) == ["/a", "/c"]
    assert paths(Tracking.objects.with_data(order__gt=5, team="blue")) == ["/a"]
    assert paths(Tracking.objects.with_data(order__exists=False)) == ["/c"]
    assert len(paths(Tracking.objects.with_data())) == 3


def test_helpers_chain_with_each_other_and_filter() -> None:
    insert(
        stored_record(path="/api/x", status_code=500, execution_time=900.0, user_id="1"),
        stored_record(path="/api/y", status_code=500, execution_time=10.0, user_id="1"),
        stored_record(path="/api/z", status_code=200, execution_time=900.0, user_id="1"),
        stored_record(path="/web", status_code=500, execution_time=900.0, user_id="1"),
        stored_record(path="/api/w", status_code=500, execution_time=900.0, user_id="2"),
    )
    chained = Tracking.objects.for_path("/api/").errors().slow(100).for_user("1")
    assert isinstance(chained, TrackingQuerySet)
    assert paths(chained) == ["/api/x"]
    assert paths(Tracking.objects.filter(user_id="2").for_path("/api")) == ["/api/w"]


def test_read_through_another_alias() -> None:
    mongoengine.connect(
        "other_db",
        alias="other",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )
    try:
        with mongoengine.context_managers.switch_db(Tracking, "other") as other:
            other._get_collection().insert_one(stored_record(path="/elsewhere", status_code=500))
        records = Tracking.objects.using("other")
        assert paths(records.errors()) == ["/elsewhere"]
        assert records.stats()[0]["count"] == 1
        assert Tracking.objects.count() == 0
    finally:
        mongoengine.disconnect("other")


# --- reports ----------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", STATS_GROUPS)
def test_stats_equal_brute_force(group_by: str) -> None:
    records = seeded_records()
    insert(*records)
    rows = Tracking.objects.stats(group_by=group_by)
    expected = brute_force_stats(records, group_by)
    assert {row[group_by] for row in rows} == set(expected)
    for row in rows:
        assert_same_summary(row, expected[row[group_by]])
    counts = [row["count"] for row in rows]
    assert counts == sorted(counts, reverse=True)


def test_stats_of_a_filtered_window_and_a_slice() -> None:
    records = seeded_records()
    insert(*records)
    start, end = BASE + dt.timedelta(minutes=30), BASE + dt.timedelta(minutes=90)
    window = [
        r for r in records if start <= r["date_created"] < end and r["path"].startswith("/users/")
    ]
    rows = Tracking.objects.between(start, end).for_path("/users/").stats("path")
    expected = brute_force_stats(window, "path")
    assert {row["path"] for row in rows} == set(expected)
    for row in rows:
        assert_same_summary(row, expected[row["path"]])

    # a slice takes the first records in the QuerySet's order: newest first by default...
    newest = sorted(records, key=lambda r: r["date_created"], reverse=True)[:50]
    sliced = {row["endpoint"]: row for row in Tracking.objects[:50].stats()}
    assert sliced.keys() == brute_force_stats(newest, "endpoint").keys()
    for endpoint, summary in brute_force_stats(newest, "endpoint").items():
        assert_same_summary(sliced[endpoint], summary)
    # ... or the caller's order
    timed = [r for r in records if isinstance(r.get("execution_time"), float)]
    slowest = sorted(timed, key=lambda r: r["execution_time"], reverse=True)[:20]
    (row,) = Tracking.objects.order_by("-execution_time")[:20].stats("status_code")[:1] or [{}]
    assert_same_summary(row, brute_force_stats(slowest, "status_code")[row["status_code"]])


def test_stats_counts_sampled_records_by_their_weight() -> None:
    insert(
        stored_record(endpoint="e", execution_time=10.0, sample_rate=0.25, request_body_size=100),
        stored_record(endpoint="e", execution_time=30.0, status_code=500),
        stored_record(endpoint="e", execution_time=None, sample_rate=0.0),  # invalid rate: 1
    )
    (row,) = Tracking.objects.stats()
    assert row["count"] == 6  # 4 + 1 + 1
    assert row["errors"] == 1
    assert row["error_rate"] == pytest.approx(1 / 6)
    assert row["mean"] == pytest.approx((10 * 4 + 30) / 5)
    assert (row["p50"], row["p95"], row["max"]) == (10.0, 10.0, 30.0)
    assert row["bytes_in"] == 400


def test_stats_of_records_without_times_and_of_nothing() -> None:
    insert(stored_record(endpoint="x", execution_time=None), {"endpoint": "x"})
    (row,) = Tracking.objects.stats()
    assert row["count"] == 2
    assert (row["mean"], row["p50"], row["p99"], row["max"]) == (None, None, None, None)
    assert Tracking.objects.for_endpoint("nothing").stats() == []
    assert Tracking.objects.none().stats() == []


def test_stats_rejects_unknown_groups() -> None:
    with pytest.raises(ValueError, match="group_by must be one of endpoint, path"):
        Tracking.objects.stats(group_by="hostname")


@pytest.mark.parametrize(
    ("bucket", "truncate"),
    [
        ("minute", lambda d: d.replace(second=0, microsecond=0)),
        ("hour", lambda d: d.replace(minute=0, second=0, microsecond=0)),
        ("day", lambda d: d.replace(hour=0, minute=0, second=0, microsecond=0)),
    ],
)
def test_timeline_equals_brute_force(bucket: str, truncate: Any) -> None:
    records = seeded_records(300)
    insert(*records, stored_record(date_created=None), {"path": "/no-date"})
    rows = Tracking.objects.timeline(bucket=bucket)
    groups: dict[dt.datetime, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[truncate(record["date_created"])].append(record)
    assert [row["start"] for row in rows] == sorted(groups)
    for row in rows:
        assert_same_summary(row, brute_force_summary(groups[row["start"]]))


def test_timeline_rejects_unknown_buckets() -> None:
    with pytest.raises(ValueError, match="bucket must be one of minute, hour, day"):
        Tracking.objects.timeline(bucket="week")


def test_unique_visitors() -> None:
    records = seeded_records(200)
    insert(*records, stored_record(ip=None, user_id=None))
    expected_ips = {r["ip"] for r in records}
    expected_users = {r["user_id"] for r in records} - {None}
    assert Tracking.objects.unique_visitors() == {
        "ips": len(expected_ips),
        "users": len(expected_users),
    }
    window = Tracking.objects.for_user("1")
    assert window.unique_visitors() == {
        "ips": len({r["ip"] for r in records if r["user_id"] == "1"}),
        "users": 1,
    }
    assert Tracking.objects.for_ip("nobody").unique_visitors() == {"ips": 0, "users": 0}


@pytest.mark.parametrize("by", ["browser", "platform"])
def test_user_agents(by: str) -> None:
    records = seeded_records(200)
    insert(*records)
    rows = Tracking.objects.user_agents(by=by)
    expected: dict[Any, float] = defaultdict(float)
    for record in records:
        expected[record["user_agent"][by]] += weight(record)
    total = sum(expected.values())
    assert {row[by]: row["count"] for row in rows} == {k: round(v) for k, v in expected.items()}
    for row in rows:
        assert row["share"] == pytest.approx(expected[row[by]] / total)
    assert [row["count"] for row in rows] == sorted((row["count"] for row in rows), reverse=True)
    with pytest.raises(ValueError, match="by must be one of"):
        Tracking.objects.user_agents(by="string")


# Operators the reports may use, with the MongoDB version that introduced them: all <= 4.4.
SERVER_OPERATORS = {
    "$match": (2, 2),
    "$project": (2, 2),
    "$sort": (2, 2),
    "$group": (2, 2),
    "$limit": (2, 2),
    "$skip": (2, 2),
    "$facet": (3, 4),
    "$count": (3, 4),
    "$sum": (2, 2),
    "$push": (2, 2),
    "$max": (2, 2),
    "$cond": (2, 2),
    "$and": (2, 2),
    "$or": (2, 2),
    "$gt": (2, 2),
    "$gte": (2, 2),
    "$lt": (2, 2),
    "$lte": (2, 2),
    "$eq": (2, 2),
    "$ne": (2, 2),
    "$in": (2, 2),
    "$regex": (2, 2),
    "$type": (2, 2),
    "$divide": (2, 2),
    "$multiply": (2, 2),
    "$subtract": (2, 2),
    "$size": (2, 6),
    "$let": (2, 6),
    "$dateToString": (3, 0),
    "$floor": (3, 2),
    "$arrayElemAt": (3, 2),
    "$filter": (3, 2),
    "$isNumber": (4, 4),
}
FORBIDDEN = {"$percentile", "$median", "$dateTrunc", "$setWindowFields", "$bucketAuto"}
FORBIDDEN |= {"$sortByCount", "$stdDevPop", "$sortArray", "$topN"}


def operators(value: Any) -> set[str]:
    """Every ``$name`` used as a key anywhere in a pipeline."""
    if isinstance(value, dict):
        found = {key for key in value if key.startswith("$")}
        for item in value.values():
            found |= operators(item)
        return found
    if isinstance(value, (list, tuple)):
        return set().union(*(operators(item) for item in value)) if value else set()
    return set()


def test_report_pipelines_use_only_operators_of_mongodb_4_4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collection_class = type(Tracking._get_collection())
    original = collection_class.aggregate
    pipelines: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []

    def spy(self: Any, pipeline: list[dict[str, Any]], **kwargs: Any) -> Any:
        pipelines.append((pipeline, kwargs))
        return original(self, pipeline, **kwargs)

    monkeypatch.setattr(collection_class, "aggregate", spy)
    insert(*seeded_records(50))
    queryset = Tracking.objects.last(days=100000).for_path("/users/").errors()
    queryset.stats()
    queryset.timeline("minute")
    queryset.unique_visitors()
    queryset.user_agents("platform")
    Tracking.objects[:5].stats()
    assert len(pipelines) == 5
    used = set().union(*(operators(pipeline) for pipeline, _ in pipelines))
    assert not used & FORBIDDEN
    assert used <= set(SERVER_OPERATORS), used - set(SERVER_OPERATORS)
    assert max(SERVER_OPERATORS[name] for name in used) <= (4, 4)
    assert all(kwargs.get("allowDiskUse") is True for _, kwargs in pipelines)
    assert all(pipeline[0] == {"$match": queryset._query} for pipeline, _ in pipelines[:4])


# --- follow: polling (mongomock) --------------------------------------------------------


def insert_later(delay: float, *records: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        insert(*records)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_follow_polls_and_yields_only_new_matching_records() -> None:
    insert(stored_record(path="/old", status_code=500))
    followed = Tracking.objects.errors().follow(interval=0.02, timeout=5)
    thread = insert_later(
        0.2,
        stored_record(path="/new-ok", status_code=200),
        stored_record(path="/new-error", status_code=500),
        stored_record(path="/new-raised", exception="KeyError: 'x'"),
    )
    got = list(itertools.islice(followed, 2))
    thread.join()
    followed.close()
    assert [record.path for record in got] == ["/new-error", "/new-raised"]
    assert all(isinstance(record, Tracking) for record in got)


def test_follow_catches_records_arriving_out_of_id_order() -> None:
    now = dt.datetime.now(dt.timezone.utc)
    insert(stored_record(path="/seen", _id=ObjectId.from_datetime(now)))
    followed = Tracking.objects.follow(interval=0.02, timeout=5)
    # another worker's record: older id (within the overlap), stored later
    late_id = ObjectId(
        ObjectId.from_datetime(now - dt.timedelta(seconds=3)).binary[:4] + b"\x01" * 8
    )
    thread = insert_later(0.1, stored_record(path="/late", _id=late_id))
    (record,) = itertools.islice(followed, 1)
    thread.join()
    followed.close()
    assert record.path == "/late"


def test_follow_on_an_empty_selection_yields_the_first_records() -> None:
    followed = Tracking.objects.follow(interval=0.02, timeout=5)
    thread = insert_later(0.1, stored_record(path="/first"), stored_record(path="/second"))
    got = [record.path for record in itertools.islice(followed, 2)]
    thread.join()
    followed.close()
    assert got == ["/first", "/second"]


@pytest.mark.parametrize("interval", [0, -1, math.nan, math.inf, 1e10])
def test_follow_refuses_an_interval_it_cannot_wait(interval: float) -> None:
    with pytest.raises(ValueError, match="above 0 and at most 86400 seconds"):
        Tracking.objects.follow(interval=interval)


def test_follow_stops_at_the_timeout() -> None:
    insert(stored_record())
    started = time.monotonic()
    assert list(Tracking.objects.follow(interval=0.01, timeout=0.2)) == []
    assert 0.15 < time.monotonic() - started < 2
    assert list(Tracking.objects.none().follow(timeout=0.01)) == []


# --- follow: tailable cursor (fakes; mongomock cannot tail) -----------------------------


class FakeTailableCursor:
    """A tailable cursor: each ``for`` loop gets one batch; then it dies."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = batches
        self.alive = True
        self.closed = False
        self.await_ms: int | None = None

    def max_await_time_ms(self, ms: int) -> FakeTailableCursor:
        self.await_ms = ms
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.batches:
            self.alive = False
            return iter(())
        return iter(self.batches.pop(0))

    def close(self) -> None:
        self.closed = True


class FakeQuery(list):  # type: ignore[type-arg]
    def sort(self, *args: Any) -> FakeQuery:
        return self

    def limit(self, count: int) -> FakeQuery:
        return self


class FakeCappedCollection:
    def __init__(self, options: Any, cursor: FakeTailableCursor) -> None:
        self._options = options
        self.cursor = cursor
        self.finds: list[tuple[Any, Any, Any]] = []
        self.newest = ObjectId.from_datetime(BASE)

    def options(self) -> Any:
        if isinstance(self._options, Exception):
            raise self._options
        return self._options

    def find(self, criteria: Any = None, projection: Any = None, cursor_type: Any = None) -> Any:
        self.finds.append((criteria, projection, cursor_type))
        if cursor_type is not None:
            return self.cursor
        return FakeQuery([{"_id": self.newest}])


def test_follow_uses_a_tailable_cursor_on_a_capped_collection() -> None:
    new = [stored_record(_id=ObjectId(), path=f"/tail{index}") for index in range(3)]
    cursor = FakeTailableCursor([new[:2], [], new[2:]])
    collection = FakeCappedCollection({"capped": True, "size": 4096}, cursor)
    queryset = TrackingQuerySet(Tracking, collection).filter(status_code=200)
    got = list(itertools.islice(queryset.follow(interval=0.25, timeout=5), 3))
    assert [record.path for record in got] == ["/tail0", "/tail1", "/tail2"]
    criteria, _, cursor_type = collection.finds[-1]
    assert cursor_type == CursorType.TAILABLE_AWAIT
    start = ObjectId.from_datetime(BASE - OVERLAP)  # records of other workers come late
    assert criteria == {"$and": [{"status_code": 200}, {"_id": {"$gte": start}}]}
    assert cursor.await_ms == 250
    assert cursor.closed


def test_follow_recreates_a_dead_tailable_cursor_before_the_last_record() -> None:
    """From the overlap before the newest record yielded on; what was yielded is skipped."""
    first = stored_record(_id=ObjectId(), path="/before-death")
    cursor = FakeTailableCursor([[first], [first]])
    collection = FakeCappedCollection({"capped": True}, cursor)
    followed = TrackingQuerySet(Tracking, collection).follow(interval=0.01, timeout=0.3)
    assert [record.path for record in followed] == ["/before-death"]
    tail_finds = [criteria for criteria, _, kind in collection.finds if kind is not None]
    assert len(tail_finds) >= 2
    start = ObjectId.from_datetime(first["_id"].generation_time - OVERLAP)
    assert tail_finds[1] == {"_id": {"$gte": start}}


@pytest.mark.parametrize(
    ("options", "capped"),
    [
        ({"capped": True}, True),
        ({"capped": False}, False),
        ({}, False),
        (TypeError("'Collection' object is not callable"), False),  # mongomock
        (NotImplementedError(), False),
    ],
)
def test_tailing_is_chosen_only_for_capped_collections(options: Any, capped: bool) -> None:
    collection = FakeCappedCollection(options, FakeTailableCursor([]))
    assert documents._is_capped(collection) is capped


def test_capped_check_lets_network_errors_through() -> None:
    collection = FakeCappedCollection(ServerSelectionTimeoutError("down"), FakeTailableCursor([]))
    with pytest.raises(ServerSelectionTimeoutError):
        list(TrackingQuerySet(Tracking, collection).follow(timeout=0.1))


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (lambda: Tracking.objects[:0], 0),  # iterates as no record
        (lambda: Tracking.objects.limit(0), 3),  # MongoEngine/pymongo: limit 0 is no limit
        (lambda: Tracking.objects.skip(1).limit(0), 2),
    ],
    ids=["empty-slice", "limit-0", "skip-limit-0"],
)
def test_reports_of_a_zero_limit_cover_what_iterating_covers(select: Any, expected: int) -> None:
    """ "A slice such as ``[:100]`` is honoured": the reports cover the records the QuerySet
    iterates. With a zero limit MongoEngine's ``aggregate`` emits ``{"$limit": 0}``, which the
    real server refuses (OperationFailure "the limit must be positive") and mongomock reads as
    "no record", while iteration gives none (``[:0]``) or every record (``limit(0)``)."""
    insert(*(stored_record(date_created=BASE + dt.timedelta(minutes=i)) for i in range(3)))
    selection = select()
    assert len(list(selection)) == expected
    counts = [row["count"] for row in selection.stats()]
    assert counts == ([expected] if expected else [])
    assert selection.unique_visitors() == {"ips": 1 if expected else 0, "users": 0}


def test_for_path_verbose_pattern_with_a_comment_and_an_alternation() -> None:
    """Review: ``for_path`` says a compiled pattern's flags apply; with ``re.VERBOSE`` a ``#``
    comment runs to the end of the line, so the ``)`` that closes the ``(?:...)`` put around a
    pattern with ``|`` is read as part of the comment: the regex sent is unbalanced, though
    ``re.match`` takes the pattern."""
    pattern = re.compile("/a | /b  # the two sections", re.VERBOSE)
    insert(stored_record(path="/a/1"), stored_record(path="/b/2"), stored_record(path="/c"))
    assert [p for p in ["/a/1", "/b/2", "/c"] if pattern.match(p)] == ["/a/1", "/b/2"]
    assert sorted(paths(Tracking.objects.for_path(pattern))) == ["/a/1", "/b/2"]

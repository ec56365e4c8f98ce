"""Reading helpers against a real MongoDB (4.4+): runs only when TRACKING_TEST_MONGODB_URI is set.

mongomock cannot tail a capped collection and evaluates the aggregation pipelines with its own
code; this module checks, on a real server, that ``follow()``/``flask tracking tail`` use a
tailable cursor, that the report pipelines run and equal the brute-force numbers, and that the
indexes of ``ensure_indexes`` serve the helpers. Example:
``TRACKING_TEST_MONGODB_URI=mongodb://localhost:27017/ pytest tests/test_realserver_reading.py``.
Each test uses a fresh database ``flask_tracking_test_<random>`` and drops it afterwards.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from flask import Flask

from flask_tracking import documents
from flask_tracking.cli import tracking_cli
from flask_tracking.documents import STATS_GROUPS, Tracking
from flask_tracking.indexes import INDEXES, ensure_indexes

from . import test_realserver
from .conftest import secantus_differs
from .test_queries import (
    assert_same_summary,
    brute_force_stats,
    brute_force_summary,
    seeded_records,
    stored_record,
)

pytestmark = test_realserver.pytestmark


@pytest.fixture
def capped(real_db: Any) -> Any:
    return real_db.create_collection("tracking", capped=True, size=1024 * 1024, max=5000)


def insert_later(collection: Any, delay: float, *records: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        collection.insert_many(list(records))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_follow_tails_a_capped_collection(capped: Any) -> None:
    capped.insert_one(stored_record(path="/before"))
    assert documents._is_capped(capped)
    followed = Tracking.objects.follow(interval=0.2, timeout=20)
    thread = insert_later(
        capped,
        0.5,
        stored_record(path="/one"),
        stored_record(path="/two", status_code=500),
    )
    got = [record.path for record in itertools.islice(followed, 2)]
    thread.join()
    followed.close()
    assert got == ["/one", "/two"]


def test_follow_filters_and_waits_on_an_empty_capped_collection(capped: Any) -> None:
    followed = Tracking.objects.errors().follow(interval=0.2, timeout=20)
    thread = insert_later(
        capped,
        0.5,
        stored_record(path="/ok"),
        stored_record(path="/error", status_code=503),
    )
    (record,) = itertools.islice(followed, 1)
    thread.join()
    followed.close()
    assert record.path == "/error"


def test_cli_tail_and_info_on_a_capped_collection(capped: Any) -> None:
    ensure_indexes(capped)
    capped.insert_one(stored_record(path="/seen"))
    app = Flask("real_reading")
    app.cli.add_command(tracking_cli)
    runner = app.test_cli_runner()
    thread = insert_later(capped, 0.5, stored_record(path="/tailed"))
    args = ["tracking", "tail", "-n", "1", "--interval", "0.2", "--max-records", "1"]
    result = runner.invoke(args=[*args, "--timeout", "20"])
    thread.join()
    assert result.exit_code == 0, result.output
    assert [line.split()[4] for line in result.stdout.splitlines()] == ["/seen", "/tailed"]
    output = runner.invoke(args=["tracking", "info"]).stdout
    info = dict(line.split(":", 1) for line in output.splitlines())
    info = {key: value.strip() for key, value in info.items()}
    assert info["Capped"] == "yes (1.0 MB, at most 5000 records)"
    assert "of data" in info["Size"]
    assert "tracking_date_created (date_created -1)" in info["Indexes"]


@pytest.mark.parametrize("group_by", STATS_GROUPS)
def test_stats_pipeline_equals_brute_force(real_db: Any, group_by: str) -> None:
    records = seeded_records()
    real_db["tracking"].insert_many([dict(record) for record in records])
    rows = Tracking.objects.stats(group_by=group_by)
    expected = brute_force_stats(records, group_by)
    assert {row[group_by] for row in rows} == set(expected)
    for row in rows:
        assert_same_summary(row, expected[row[group_by]])


@pytest.mark.parametrize("bucket", ["minute", "hour", "day"])
def test_timeline_pipeline_equals_brute_force(real_db: Any, bucket: str) -> None:
    records = seeded_records(300)
    real_db["tracking"].insert_many([*(dict(r) for r in records), {"path": "/no-date"}])
    layout = documents.TIMELINE_BUCKETS[bucket]
    groups: dict[dt.datetime, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        start = dt.datetime.strptime(record["date_created"].strftime(layout), layout)
        groups[start].append(record)
    rows = Tracking.objects.timeline(bucket=bucket)
    assert [row["start"] for row in rows] == sorted(groups)
    for row in rows:
        assert_same_summary(row, brute_force_summary(groups[row["start"]]))


def test_unique_visitors_and_user_agents_on_a_server(real_db: Any) -> None:
    records = seeded_records(200)
    real_db["tracking"].insert_many([dict(record) for record in records])
    assert Tracking.objects.unique_visitors() == {
        "ips": len({r["ip"] for r in records}),
        "users": len({r["user_id"] for r in records} - {None}),
    }
    rows = Tracking.objects.user_agents("browser")
    assert sum(row["share"] for row in rows) == pytest.approx(1)


def indexed_capped(capped: Any) -> Any:
    assert ensure_indexes(capped) == [name for name, _ in INDEXES]
    assert ensure_indexes(capped) == [name for name, _ in INDEXES]  # idempotent
    capped.insert_many([stored_record(path=f"/api/{index}") for index in range(50)])
    return capped


def assert_plans_name(plans: dict[str, Any]) -> None:
    for name, plan in plans.items():  # the winning or a rejected plan: the planner chooses
        assert name in json.dumps(plan, default=str), name


def test_indexes_on_a_capped_collection_are_candidates_for_the_helpers(capped: Any) -> None:
    indexed_capped(capped)
    assert_plans_name(
        {
            "tracking_date_created": Tracking.objects.last(hours=1).explain(),
            "tracking_execution_time": Tracking.objects.slow(1000)
            .order_by("-execution_time")
            .explain(),
        }
    )


def test_path_and_status_indexes_are_candidates(capped: Any, real_server: Any) -> None:
    secantus_differs(real_server, "its planner scans for a prefix regex and for $and with $or")
    indexed_capped(capped)
    assert_plans_name(
        {
            "tracking_path": Tracking.objects.for_path("/api/").explain(),
            "tracking_status_code": Tracking.objects.errors().filter(status_code=500).explain(),
        }
    )


def test_follow_on_a_capped_collection_catches_records_arriving_out_of_id_order(
    capped: Any,
) -> None:
    """The polling ``follow()`` yields another worker's record that has an older ``_id`` but is
    stored after the call (docs/querying.md: "records that reach the database out of ``_id``
    order (several workers, batches waiting in a queue) are not missed"); the tailing one
    filters on ``_id > <newest id when called>``, so it never yields that record although it
    was stored after the call, in storage order behind the ones it yields."""
    from bson import ObjectId

    now = dt.datetime.now(dt.timezone.utc)
    capped.insert_one(stored_record(path="/seen", _id=ObjectId.from_datetime(now)))
    followed = Tracking.objects.follow(interval=0.2, timeout=10)
    late_id = ObjectId(
        ObjectId.from_datetime(now - dt.timedelta(seconds=3)).binary[:4] + b"\x01" * 8
    )
    thread = insert_later(
        capped, 0.5, stored_record(path="/late", _id=late_id), stored_record(path="/next")
    )
    got = [record.path for record in itertools.islice(followed, 2)]
    thread.join()
    followed.close()
    assert got == ["/late", "/next"]


def test_follow_on_a_capped_collection_yields_a_record_whose_id_is_not_an_objectid(
    capped: Any,
) -> None:
    """Review: the tailing ``follow()`` now reads ``generation_time`` of every ``_id`` it yields
    (to prune the ids it has seen), so a record whose ``_id`` is not an ObjectId (one inserted
    by hand or by another tool, which docs/migrating.md now says may be there) ends the
    generator with AttributeError instead of being yielded; before today it was yielded."""
    followed = Tracking.objects.follow(interval=0.2, timeout=10)
    thread = insert_later(
        capped, 0.5, stored_record(path="/imported", _id="import-1"), stored_record(path="/next")
    )
    got = [record.path for record in itertools.islice(followed, 2)]
    thread.join()
    followed.close()
    assert got == ["/imported", "/next"]

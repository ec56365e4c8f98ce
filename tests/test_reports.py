"""Tests for flask_tracking.reports: the report pipelines, run on a bare collection, and their rows.

The reports of ``Tracking.objects`` (with their ``$match``, slices and brute-force checks over
many records) are tested in test_queries.py; here each pipeline stands alone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from flask_tracking import reports
from flask_tracking.reports import (
    PERCENTILES,
    check_choice,
    finite_sorted,
    is_number,
    percentile,
    percentile_index,
)

BASE = dt.datetime(2024, 5, 1, 10, 0)


def run(mongo: Any, records: list[dict[str, Any]], pipeline: list[dict[str, Any]]) -> Any:
    """Store ``records`` raw and run ``pipeline`` over the whole collection."""
    mongo["tracking"].insert_many(records)
    return list(mongo["tracking"].aggregate(pipeline))


# --- the percentile formula ----------------------------------------------------------------


def test_percentile_formula() -> None:
    assert percentile_index(0.5, 4) == 1  # floor(0.5 * 3)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_percentile_is_importable_from_documents_too() -> None:
    from flask_tracking import documents

    assert documents.percentile is percentile
    assert documents.percentile_index is percentile_index


# --- small helpers -------------------------------------------------------------------------


def test_check_choice_names_the_choices() -> None:
    check_choice("by", "browser", reports.USER_AGENT_FIELDS)
    check_choice("bucket", "day", reports.TIMELINE_BUCKETS)
    with pytest.raises(ValueError, match=r"^by must be one of browser, platform, device, "):
        check_choice("by", "os", reports.USER_AGENT_FIELDS)
    with pytest.raises(ValueError, match=r"bucket must be one of minute, hour, day, not 'week'"):
        check_choice("bucket", "week", reports.TIMELINE_BUCKETS)


def test_is_number_and_finite_sorted() -> None:
    assert is_number(1) and is_number(1.5) and is_number(float("nan"))
    assert not is_number(True) and not is_number("1") and not is_number(None)
    values = [3.0, None, True, "2", 1, float("nan"), float("inf"), -float("inf"), 2.5]
    assert finite_sorted(values) == [1, 2.5, 3.0]
    assert finite_sorted(iter([])) == []


# --- the pipelines on a bare collection (both backends) ----------------------------------


def test_stats_pipeline_weights_sampled_records(mongo: Any) -> None:
    records = [
        {"endpoint": "a", "execution_time": 10.0, "status_code": 200, "request_body_size": 5},
        {"endpoint": "a", "execution_time": 30.0, "status_code": 500, "sample_rate": 0.5},
        {"endpoint": "a", "execution_time": None, "exception": "E: x", "sample_rate": 2},
        {"endpoint": "b", "status_code": 404, "response_body_size": 7, "sample_rate": 0.25},
    ]
    rows = reports.stats_rows(run(mongo, records, reports.stats_pipeline("endpoint")), "endpoint")
    assert [row["endpoint"] for row in rows] == ["a", "b"]  # 4 requests each (1 + 2 + 1, 4)
    a, b = rows
    assert (a["count"], a["errors"], a["error_rate"]) == (4, 3, 0.75)
    assert a["mean"] == pytest.approx((10 + 30 * 2) / 3)
    assert (a["p50"], a["p95"], a["p99"], a["max"]) == (10.0, 10.0, 10.0, 30.0)
    assert (a["bytes_in"], a["bytes_out"]) == (5, 0)
    assert (b["count"], b["errors"], b["error_rate"], b["mean"]) == (4, 0, 0.0, None)
    assert (b["p50"], b["max"], b["bytes_out"]) == (None, None, 28)
    fields = ["count", "errors", "error_rate", "mean", *PERCENTILES, "max", "bytes_in", "bytes_out"]
    assert list(a) == ["endpoint", *fields]


def test_timeline_pipeline_buckets_dated_records(mongo: Any) -> None:
    records = [
        {"date_created": BASE + dt.timedelta(minutes=61), "execution_time": 2.0},
        {"date_created": BASE, "execution_time": 1.0},
        {"date_created": BASE + dt.timedelta(minutes=5), "execution_time": 3.0},
        {"date_created": "2024-05-01", "execution_time": 9.0},  # not a date: left out
        {"execution_time": 9.0},
    ]
    rows = reports.timeline_rows(run(mongo, records, reports.timeline_pipeline("hour")), "hour")
    assert [(row["start"], row["count"], row["max"]) for row in rows] == [
        (BASE, 2, 3.0),
        (BASE + dt.timedelta(hours=1), 1, 2.0),
    ]


def test_timeline_rows_parse_every_bucket_layout() -> None:
    row = {"count": 1, "errors": 0, "error_rate": 0, "bytes_in": 0, "bytes_out": 0}
    for bucket, key, start in [
        ("minute", "2024-05-01T10:07", dt.datetime(2024, 5, 1, 10, 7)),
        ("hour", "2024-05-01T10", dt.datetime(2024, 5, 1, 10)),
        ("day", "2024-05-01", dt.datetime(2024, 5, 1)),
    ]:
        assert reports.timeline_rows([{"_id": key, **row}], bucket)[0]["start"] == start


def test_unique_visitors_pipeline(mongo: Any) -> None:
    records = [
        {"ip": "10.0.0.1", "user_id": "1"},
        {"ip": "10.0.0.1", "user_id": "2"},
        {"ip": "10.0.0.2", "user_id": None},
        {"ip": None},
    ]
    rows = run(mongo, records, reports.unique_visitors_pipeline())
    assert reports.unique_visitors(rows) == {"ips": 2, "users": 2}
    assert reports.unique_visitors([]) == {"ips": 0, "users": 0}


def test_user_agents_pipeline_and_rows(mongo: Any) -> None:
    records = [
        {"user_agent": {"browser": "Firefox"}},
        {"user_agent": {"browser": "Chrome"}, "sample_rate": 0.5},
        {"user_agent": {"browser": "Firefox"}},
        {"user_agent": None},
    ]
    rows = reports.user_agent_rows(
        run(mongo, records, reports.user_agents_pipeline("browser")), "browser"
    )
    assert [(row["browser"], row["count"], row["share"]) for row in rows] == [
        ("Chrome", 2, 0.4),
        ("Firefox", 2, 0.4),
        (None, 1, 0.2),
    ]


def test_db_summary_pipeline(mongo: Any) -> None:
    records = [
        {"db": {"count": 3, "time_ms": 4.0}, "execution_time": 10.0},
        {"db": {"count": 1, "time_ms": 1.0}, "execution_time": 10.0, "sample_rate": 0.5},
        {"execution_time": 5.0},
        {"db": {"count": "x"}, "execution_time": None},
    ]
    summary = reports.db_summary(run(mongo, records, reports.db_summary_pipeline()))
    assert summary == {
        "requests": 5,
        "with_db": 3,
        "commands": 5,
        "time_ms": 6.0,
        "app_time_ms": 35.0,
        "share": pytest.approx(6 / 35),
        "mean_commands": 1.0,
        "mean_time_ms": 1.2,
    }


def test_db_summary_of_no_records() -> None:
    assert reports.db_summary([]) == {
        "requests": 0,
        "with_db": 0,
        "commands": 0,
        "time_ms": 0.0,
        "app_time_ms": 0.0,
        "share": None,
        "mean_commands": None,
        "mean_time_ms": None,
    }

"""Tests for flask_tracking.cli.reports: ``flask tracking stats`` and ``timeline``."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import Result
from flask.testing import FlaskCliRunner

from flask_tracking.documents import Tracking

from .cli_support import assert_clear_error, at, cli_app, run
from .conftest import store_rollups
from .test_queries import insert, seeded_records, stored_record


@pytest.fixture
def runner(mongo: Any) -> FlaskCliRunner:
    return cli_app().test_cli_runner()


def table(result: Result) -> list[list[str]]:
    return [line.split() for line in result.stdout.splitlines()]


def test_stats_table_per_endpoint_of_the_records(runner: FlaskCliRunner) -> None:
    insert(
        *(stored_record(endpoint="fast", execution_time=float(ms)) for ms in range(1, 11)),
        stored_record(endpoint="slow", execution_time=900.0, status_code=500),
        stored_record(endpoint="slow", execution_time=100.0, request_body_size=2500),
        stored_record(endpoint=None, execution_time=5.0, status_code=404),
    )
    result = run(runner, "stats", "--records")
    assert result.exit_code == 0
    rows = table(result)
    assert rows[0] == [
        "endpoint",
        "count",
        "errors",
        "err%",
        "mean",
        "p50",
        "p95",
        "p99",
        "max",
        "in",
        "out",
    ]
    assert rows[1] == [
        "fast",
        "10",
        "0",
        "0.0",
        "5.5",
        "5.0",
        "9.0",
        "9.0",
        "10.0",
        "0",
        "B",
        "20",
        "B",
    ]
    assert rows[2] == [
        "slow",
        "2",
        "1",
        "50.0",
        "500.0",
        "100.0",
        "100.0",
        "100.0",
        "900.0",
        "2.5",
        "kB",
        "4",
        "B",
    ]
    assert rows[3][:3] == ["-", "1", "0"]
    by_p95 = [row[0] for row in table(run(runner, "stats", "--records", "--sort", "p95"))[1:]]
    assert by_p95 == ["slow", "fast", "-"]
    assert [row[0] for row in table(run(runner, "stats", "--records", "--sort", "name"))[1:]] == [
        "-",
        "fast",
        "slow",
    ]
    assert len(table(run(runner, "stats", "--records", "--limit", "1"))) == 2


def test_stats_and_timeline_read_the_rollups_by_default(runner: FlaskCliRunner, mongo: Any) -> None:
    """The rollups count every request; the records only those still stored."""
    served = [
        *(stored_record(endpoint="fast", execution_time=float(ms)) for ms in range(1, 101)),
        stored_record(endpoint="slow", execution_time=900.0, status_code=500),
        stored_record(endpoint="slow", execution_time=100.0, method="POST", status_code=404),
    ]
    insert(*served[:5])  # the others were sampled out or evicted
    store_rollups(mongo, served, retention_days=20000)  # served in 2024: keep them
    rows = table(run(runner, "stats"))
    assert [row[:4] for row in rows[1:]] == [
        ["fast", "100", "0", "0.0"],
        ["slow", "2", "1", "50.0"],
    ]
    assert abs(float(rows[1][6]) - 95.0) <= 0.05 * 95.0  # p95 within 5 %
    assert table(run(runner, "stats", "--records"))[1][:2] == ["fast", "5"]
    by_method = table(run(runner, "stats", "--by", "method"))
    assert [row[:2] for row in by_method[1:]] == [["GET", "101"], ["POST", "1"]]
    by_class = table(run(runner, "stats", "--by", "status_class"))
    assert [row[:3] for row in by_class[1:]] == [
        ["2xx", "100", "0"],
        ["4xx", "1", "0"],
        ["5xx", "1", "1"],
    ]
    assert table(run(runner, "stats", "--endpoint", "slow", "--method", "post"))[1][:2] == [
        "slow",
        "1",
    ]
    timeline = table(run(runner, "timeline", "--bucket", "day"))
    assert timeline[1][:2] == ["2024-05-01", "102"]
    assert table(run(runner, "timeline", "--bucket", "day", "--records"))[1][:2] == [
        "2024-05-01",
        "5",
    ]


def test_record_only_filters_and_groups_need_records(runner: FlaskCliRunner) -> None:
    assert_clear_error(
        run(runner, "stats", "--path", "/a", "--errors"), "--path, --errors", "--records"
    )
    assert_clear_error(run(runner, "timeline", "--user", "7"), "--user can only select stored")
    assert_clear_error(run(runner, "stats", "--by", "path"), "--by path is not available")
    assert_clear_error(run(runner, "stats", "--records", "--by", "method"), "--records")


def test_stats_by_status_code_with_filters(runner: FlaskCliRunner) -> None:
    insert(*seeded_records(100))
    result = run(runner, "stats", "--records", "--by", "status_code", "--path", "/users/")
    rows = table(result)
    assert rows[0][0] == "status_code"
    expected = {
        row["status_code"]: row["count"]
        for row in Tracking.objects.for_path("/users/").stats("status_code")
    }
    assert {int(row[0]): int(row[1]) for row in rows[1:]} == expected
    assert run(runner, "stats", "--endpoint", "nothing").stderr == "No records match.\n"
    assert run(runner, "stats", "--by", "hostname").exit_code == 2  # click's own usage error


def test_timeline_fills_empty_buckets(runner: FlaskCliRunner) -> None:
    insert(
        stored_record(date_created=at(1), execution_time=10.0),
        stored_record(date_created=at(2), execution_time=30.0, status_code=500),
        stored_record(date_created=at(3 * 60 + 5), execution_time=7.0),
    )
    result = run(runner, "timeline", "--records")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "start (UTC)       count  errors   p95",
        "2024-05-01 10:00      2       1  10.0  " + "#" * 40,
        "2024-05-01 11:00      0       0     -",
        "2024-05-01 12:00      0       0     -",
        "2024-05-01 13:00      1       0   7.0  " + "#" * 20,
    ]
    minutes = table(
        run(runner, "timeline", "--records", "--bucket", "minute", "--until", "2024-05-01 11:00")
    )
    assert [row[1] for row in minutes[1:]] == ["10:01", "10:02"]
    days = table(run(runner, "timeline", "--records", "--bucket", "day"))
    assert days[1][:2] == ["2024-05-01", "3"]

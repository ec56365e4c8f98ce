"""Tests for ``flask tracking ...`` (flask_tracking.cli), with app.test_cli_runner() on mongomock.

Records are inserted as raw dicts in the stored schema (see test_queries.stored_record).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import os
import re
import shlex
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import mongoengine
import mongomock
import pytest
from bson import ObjectId
from click.testing import Result
from flask import Flask, jsonify, request
from flask.testing import FlaskCliRunner
from pymongo.errors import ConnectionFailure

from flask_tracking import cli
from flask_tracking.cli import collection, export, tracking_cli
from flask_tracking.documents import Tracking, TrackingQuerySet
from flask_tracking.indexes import ensure_indexes
from flask_tracking.redact import FILTERED

from .conftest import MONGOMOCK_ONLY, store_rollups
from .test_queries import BASE, insert, seeded_records, stored_record


def add_views(app: Flask) -> None:
    """Views the replayed requests reach."""

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> Any:
        return jsonify(id=user_id, name=f"user {user_id}")

    @app.post("/orders")
    def orders() -> Any:
        return jsonify(created=request.get_json(silent=True))

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("kaboom")

    @app.get("/bytes")
    def raw_bytes() -> bytes:
        return b"\x00\x01\x02"


@pytest.fixture
def app(mongo: Any) -> Flask:
    app = Flask("cli_test")
    app.config["TESTING"] = True
    add_views(app)
    app.cli.add_command(tracking_cli)
    return app


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def run(runner: FlaskCliRunner, *args: str, **kwargs: Any) -> Result:
    return runner.invoke(args=["tracking", *args], **kwargs)


def assert_clear_error(result: Result, *fragments: str) -> None:
    """Exit code 1, one 'Error: ...' sentence, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
    for fragment in fragments:
        assert fragment in result.stderr


def listed_paths(result: Result) -> list[str]:
    """The path column of ``list`` lines: ``<id> <date> <METHOD> <user> <path> <status> <ms>``."""
    return [line.split()[4] for line in result.stdout.splitlines()]


def at(minutes: float) -> dt.datetime:
    return BASE + dt.timedelta(minutes=minutes)


# --- list -------------------------------------------------------------------------------


def test_list_one_line_per_record_newest_first(runner: FlaskCliRunner) -> None:
    first, second = insert(
        stored_record(path="/a", date_created=at(1), method="POST", user_id="42", status_code=201),
        stored_record(path="/b", query_params="x=1", date_created=at(2), execution_time=12.5),
    )
    result = run(runner, "list")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"{second} 2024-05-01T10:02:00 GET - /b?x=1 200 12.5ms",
        f"{first} 2024-05-01T10:01:00 POST 42 /a 201 1.0ms",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--path", "/api/"], ["/api/orders", "/api/users"]),
        (["--path", r"/users/\d+$"], ["/users/7"]),
        (["--endpoint", "users.show"], ["/users/7"]),
        (["--status", "404"], ["/missing"]),
        (["--status", "5xx"], ["/api/orders"]),
        (["--status", "4XX"], ["/missing"]),
        (["--method", "post"], ["/api/orders"]),
        (["--user", "42"], ["/api/users"]),
        (["--ip", "203.0.113.9"], ["/users/7"]),
        (
            ["--since", "2024-05-01 10:02", "--until", "2024-05-01T10:04:00Z"],
            ["/api/users", "/missing", "/users/7"],
        ),
        (["--since", "2024-05-01T12:03+02:00"], ["/api/orders", "/api/users"]),
        (["--slow", "500"], ["/api/orders", "/users/7"]),
        (["--errors"], ["/api/orders", "/raised"]),
        (["--data", "order=42"], ["/api/orders"]),
        (["--data", "cart__items=2", "--data", "team=blue"], ["/api/users"]),
        (["--data", "team=blue"], ["/api/users"]),
        (["--errors", "--method", "GET"], ["/raised"]),
        (["--limit", "2"], ["/api/orders", "/api/users"]),
    ],
)
def test_list_filters(runner: FlaskCliRunner, args: list[str], expected: list[str]) -> None:
    insert(
        stored_record(path="/raised", date_created=at(1), exception="KeyError: 'x'"),
        stored_record(
            path="/users/7",
            endpoint="users.show",
            date_created=at(2),
            ip="203.0.113.9",
            execution_time=800.0,
        ),
        stored_record(path="/missing", endpoint=None, date_created=at(2.5), status_code=404),
        stored_record(
            path="/api/users",
            date_created=at(3),
            user_id="42",
            custom_data={"team": "blue", "cart": {"items": 2}},
        ),
        stored_record(
            path="/api/orders",
            method="POST",
            date_created=at(4),
            status_code=503,
            execution_time=1500.0,
            custom_data={"order": 42},
        ),
    )
    result = run(runner, "list", *args)
    assert result.exit_code == 0, result.output
    assert listed_paths(result) == expected


def test_list_since_a_duration_ago(runner: FlaskCliRunner) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    insert(
        stored_record(path="/recent", date_created=now - dt.timedelta(minutes=10)),
        stored_record(path="/earlier", date_created=now - dt.timedelta(hours=2)),
    )
    assert listed_paths(run(runner, "list", "--since", "30m")) == ["/recent"]
    assert listed_paths(run(runner, "list", "--since", "3h")) == ["/recent", "/earlier"]
    assert listed_paths(run(runner, "list", "--until", "1h")) == ["/earlier"]


def test_list_without_matches_says_so(runner: FlaskCliRunner) -> None:
    result = run(runner, "list", "--status", "418")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "No records match.\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since: 'yesterday' is not a date"),
        (["--until", "2024-13-45"], "--until: '2024-13-45' is not a date"),
        (["--since", "2024-05-02", "--until", "2024-05-01"], "is after the end"),
        (["--status", "abc"], "--status takes a code such as 404 or a class such as 5xx"),
        (["--data", "order"], "--data takes KEY=VALUE"),
        (["--path", "/users/("], "is not a valid regular expression"),
    ],
)
def test_bad_filters_are_one_sentence_and_exit_1(
    runner: FlaskCliRunner, args: list[str], message: str
) -> None:
    insert(stored_record())
    for command in ("list", "export", "stats", "timeline", "tail"):
        extra = ["--records"] if command in ("stats", "timeline") else []
        assert_clear_error(run(runner, command, *args, *extra), message)


def test_colour_only_on_a_terminal(runner: FlaskCliRunner) -> None:
    insert(stored_record(status_code=500), stored_record(status_code=404, date_created=at(1)))
    plain = run(runner, "list")
    assert "\x1b[" not in plain.output
    coloured = run(runner, "list", color=True)
    assert "\x1b[31m" in coloured.output  # red: the 500
    assert "\x1b[33m" in coloured.output  # yellow: the 404
    assert click_unstyle(coloured.output) == plain.output


def click_unstyle(text: str) -> str:
    import click

    return click.unstyle(text)


# --- show, curl -------------------------------------------------------------------------


def test_show_prints_the_debug_view(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/orders",
            request_headers=[["Content-Type", "application/json"], ["Cookie", FILTERED]],
            request_body=b'{"item":1}',
            request_body_size=10,
        )
    )
    result = run(runner, "show", str(record_id))
    assert result.exit_code == 0
    assert result.stdout == Tracking.objects.get(id=record_id).debug() + "\n"
    assert "POST http://localhost/orders" in result.stdout
    assert '"item": 1' in result.stdout


def test_show_prints_the_request_id(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(stored_record(request_id="4bf92f3577b34da6a3ce929d0e0e4736"))
    result = run(runner, "show", str(record_id))
    assert "Request id: 4bf92f3577b34da6a3ce929d0e0e4736\n" in result.stdout


@pytest.mark.parametrize(
    ("command", "option", "words"),
    [
        ("stats", "--by", "Rollups group by endpoint, method or status_class"),
        ("timeline", "--bucket", "Length of one row"),
        ("export", "--format", "JSON Lines"),
        ("export", "--limit", "OLDEST first"),
    ],
)
def test_help_describes_the_options(
    runner: FlaskCliRunner, command: str, option: str, words: str
) -> None:
    result = run(runner, command, "--help")
    assert result.exit_code == 0
    described = " ".join(result.stdout.split())  # click wraps the help text
    options = described[described.index("Options:") :]
    after = options[options.index(f"{option} ") :]
    assert words in after[:300], described


def test_show_malformed_and_unknown_ids(runner: FlaskCliRunner) -> None:
    insert(stored_record())
    assert_clear_error(run(runner, "show", "12345"), "'12345' is not a record id")
    unknown = str(ObjectId())
    assert_clear_error(run(runner, "show", unknown), f"No record has the id {unknown}")
    for command in ("curl", "replay"):
        assert_clear_error(run(runner, command, "nope"), "is not a record id")
        assert_clear_error(run(runner, command, unknown), "No record has the id")


def test_curl_leaves_filtered_headers_out_and_quotes_everything(runner: FlaskCliRunner) -> None:
    body = '{"note": "it\'s $HOME; `rm -rf /`"}'
    (record_id,) = insert(
        stored_record(
            method="POST",
            scheme="https",
            host="shop.example",
            path="/a b/100%",
            query_params="q=a%20b&token=[Filtered]",
            request_headers=[
                ["Host", "shop.example"],
                ["Content-Type", "application/json"],
                ["Content-Length", "33"],
                ["Authorization", FILTERED],
                ["Cookie", FILTERED],
                ["X-Quote", "it's"],
                ["X-Empty", ""],
            ],
            request_body=body.encode(),
            request_body_size=len(body),
        )
    )
    result = run(runner, "curl", str(record_id))
    assert result.exit_code == 0
    assert result.stderr == (
        "# Target: the recorded host https://shop.example; choose another with --base-url.\n"
        "# Left out filtered headers: Authorization, Cookie.\n"
    )
    assert result.stdout.startswith("curl ")
    assert shell_words(result.stdout) == [
        "curl",
        "-X",
        "POST",
        "https://shop.example/a%20b/100%25?q=a%20b&token=[Filtered]",
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Quote: it's",
        "-H",
        "X-Empty;",
        "--data-raw",
        body,
    ]


def shell_words(command: str) -> list[str]:
    """The arguments ``sh`` passes to curl for ``command`` (a printed curl command)."""
    assert command.startswith("curl ")
    script = "printf '%s\\0' " + command[len("curl ") :]
    printed = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    return ["curl", *printed.decode().split("\0")[:-1]]


def test_curl_pipes_a_binary_body_through_printf(runner: FlaskCliRunner) -> None:
    body = bytes(range(256)) + b"%s%%\\n'\""
    (record_id,) = insert(
        stored_record(
            method="PUT",
            path="/upload",
            request_headers=[["Content-Type", "application/octet-stream"]],
            request_body=body,
            request_body_size=len(body),
        )
    )
    command = run(runner, "curl", str(record_id)).stdout
    printf, _, curl_part = command.partition(" | ")
    assert shlex.split(curl_part)[-2:] == ["--data-binary", "@-"]
    printed = subprocess.run(["sh", "-c", printf], capture_output=True, check=True).stdout
    assert printed == body


def test_curl_leaves_out_a_truncated_binary_body_and_offers_a_data_file(
    runner: FlaskCliRunner, tmp_path: Any
) -> None:
    kept = bytes(range(256)) * 40
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/upload",
            request_headers=[["Content-Type", "application/octet-stream"]],
            request_body=kept,
            request_body_size=1_000_000,
            request_body_truncated=True,
        )
    )
    result = run(runner, "curl", str(record_id))
    assert result.exit_code == 0
    assert "printf" not in result.stdout and "--data" not in result.stdout
    assert len(result.stdout) < 500
    assert f"binary and truncated ({len(kept)} of 1000000 bytes kept)" in result.stderr
    assert f"flask tracking curl {record_id} --data-file FILE" in result.stderr

    target = tmp_path / "body.bin"
    result = run(runner, "curl", str(record_id), "--data-file", str(target))
    assert result.exit_code == 0
    assert target.read_bytes() == kept
    assert shlex.split(result.stdout)[-2:] == ["--data-binary", f"@{target}"]
    assert "truncated" in result.stderr and "--data-file FILE" not in result.stderr


def test_curl_notes_truncated_and_missing_bodies(runner: FlaskCliRunner) -> None:
    truncated, omitted, head = insert(
        stored_record(
            method="POST",
            request_body=b"x" * 10,
            request_body_size=5000,
            request_body_truncated=True,
        ),
        stored_record(method="POST", request_body_omitted="excluded", request_body_size=None),
        stored_record(method="HEAD"),
    )
    result = run(runner, "curl", str(truncated))
    assert "truncated (10 of 5000 bytes kept)" in result.stderr
    assert shlex.split(result.stdout)[-1] == "x" * 10
    result = run(runner, "curl", str(omitted))
    assert "not recorded (excluded)" in result.stderr
    assert "--data" not in result.stdout
    assert shlex.split(run(runner, "curl", str(head)).stdout)[:2] == ["curl", "--head"]


# --- replay -----------------------------------------------------------------------------


def recorded_user(**overrides: Any) -> dict[str, Any]:
    record = stored_record(
        path="/users/3",
        endpoint="user",
        response_headers=[["Content-Type", "application/json"]],
        response_body=b'{"id":3,"name":"user 3"}',
        response_body_size=24,
    )
    record.update(overrides)
    return record


def test_replay_identical_response(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(recorded_user())
    result = run(runner, "replay", str(record_id))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "GET /users/3 -> 200 OK (recorded: 200 OK)",
        "Response body identical to the recorded one.",
    ]


def test_replay_prints_a_unified_diff(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(
        recorded_user(status_code=500, response_body=b'{"id":3,"name":"old name"}')
    )
    result = run(runner, "replay", str(record_id))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "GET /users/3 -> 200 OK (recorded: 500 Internal Server Error)"
    assert lines[1:3] == ["--- recorded", "+++ replayed"]
    assert '-  "name": "old name"' in lines
    assert '+  "name": "user 3"' in lines


def test_replay_binary_and_missing_recorded_bodies(runner: FlaskCliRunner) -> None:
    same, other, missing = insert(
        stored_record(path="/bytes", response_body=b"\x00\x01\x02", response_body_size=3),
        stored_record(path="/bytes", response_body=b"\x00\x09", response_body_size=2),
        stored_record(path="/bytes", response_body=None, response_body_omitted="passthrough"),
    )
    assert "Binary response body identical" in run(runner, "replay", str(same)).stdout
    assert "Binary response bodies differ: 2 bytes recorded, 3 now" in (
        run(runner, "replay", str(other)).stdout
    )
    assert "not available (passthrough)" in run(runner, "replay", str(missing)).stdout


def test_replay_compares_only_the_kept_part_of_a_truncated_response(
    runner: FlaskCliRunner,
) -> None:
    (record_id,) = insert(recorded_user(response_body=b'{"id":3,"na', response_body_truncated=True))
    result = run(runner, "replay", str(record_id))
    assert "comparing the first 11 bytes" in result.stdout
    assert "Response body identical" in result.stdout


def test_replay_refuses_methods_that_change_data_without_force(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/orders",
            request_headers=[["Content-Type", "application/json"]],
            request_body=b'{"item": 1}',
            request_body_size=11,
            response_body=b'{"created": {"item": 1}}',
        )
    )
    assert_clear_error(
        run(runner, "replay", str(record_id)), "Not replaying a POST request", "--force"
    )
    for method in ("PUT", "PATCH", "DELETE"):
        (other,) = insert(stored_record(method=method, path="/orders"))
        assert_clear_error(run(runner, "replay", str(other)), f"Not replaying a {method}")
    forced = run(runner, "replay", "--force", str(record_id))
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.startswith("POST /orders -> 200 OK")


def test_replay_refuses_a_truncated_request_body(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/orders",
            request_body=b'{"item"',
            request_body_size=11,
            request_body_truncated=True,
        )
    )
    assert_clear_error(
        run(runner, "replay", "--force", str(record_id)),
        "The stored request body was truncated",
        "pass --allow-truncated",
    )
    result = run(runner, "replay", "--force", "--allow-truncated", str(record_id))
    assert result.exit_code == 0
    assert result.stdout.startswith("POST /orders -> 200 OK")


def test_replay_reports_an_exception_of_the_app(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(stored_record(path="/boom"))
    assert_clear_error(
        run(runner, "replay", str(record_id)),
        "The app raised ValueError while handling the replayed request: kaboom",
    )


# --- stats, timeline --------------------------------------------------------------------


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


# --- tail -------------------------------------------------------------------------------


def insert_later(delay: float, *records: dict[str, Any]) -> threading.Thread:
    def run_insert() -> None:
        time.sleep(delay)
        insert(*records)

    thread = threading.Thread(target=run_insert)
    thread.start()
    return thread


def test_tail_shows_recent_records_then_follows_new_ones(runner: FlaskCliRunner) -> None:
    insert(*(stored_record(path=f"/old{index}", date_created=at(index)) for index in range(5)))
    thread = insert_later(
        0.3,
        stored_record(path="/new-ok", date_created=at(10)),
        stored_record(path="/new-error", date_created=at(11), status_code=500),
    )
    result = run(
        runner, "tail", "-n", "2", "--interval", "0.05", "--max-records", "2", "--timeout", "10"
    )
    thread.join()
    assert result.exit_code == 0, result.output
    assert listed_paths(result) == ["/old3", "/old4", "/new-ok", "/new-error"]


def test_tail_filters_like_list(runner: FlaskCliRunner) -> None:
    insert(stored_record(path="/old-error", status_code=500))
    thread = insert_later(
        0.2,
        stored_record(path="/ok"),
        stored_record(path="/error", status_code=502),
    )
    result = run(
        runner,
        "tail",
        "--errors",
        "-n",
        "0",
        "--interval",
        "0.05",
        "--max-records",
        "1",
        "--timeout",
        "10",
    )
    thread.join()
    assert listed_paths(result) == ["/error"]


def test_tail_stops_at_the_timeout(runner: FlaskCliRunner) -> None:
    insert(stored_record())
    started = time.monotonic()
    result = run(runner, "tail", "-n", "0", "--interval", "0.02", "--timeout", "0.2")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert time.monotonic() - started < 3


def test_tail_exits_quietly_on_ctrl_c(
    runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(stored_record(path="/seen"))
    closed = []

    def interrupted_follow(self: TrackingQuerySet, **kwargs: Any) -> Iterator[Tracking]:
        try:
            yield self.first()
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    monkeypatch.setattr(TrackingQuerySet, "follow", interrupted_follow)
    result = run(runner, "tail", "-n", "0")
    assert result.exit_code == 0
    assert listed_paths(result) == ["/seen"]
    assert "Aborted" not in result.output
    assert closed == [True]


# --- export -----------------------------------------------------------------------------


def test_export_jsonl_to_stdout_with_base64_bodies(runner: FlaskCliRunner) -> None:
    binary = bytes(range(256))
    first, second = insert(
        stored_record(path="/one", date_created=at(1), request_body=binary, request_body_size=256),
        stored_record(
            path="/two",
            date_created=dt.datetime(2024, 5, 1, 10, 2, 3, 456000),
            custom_data={"n": 1},
        ),
    )
    result = run(runner, "export")
    assert result.exit_code == 0
    assert result.stderr == "Exported 2 records to stdout.\n"
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["_id"] for line in lines] == [str(first), str(second)]  # storage order
    assert next(iter(lines[0])) == "_id"
    assert base64.b64decode(lines[0]["request_body"]) == binary
    assert base64.b64decode(lines[1]["response_body"]) == b"ok"
    assert lines[1]["date_created"] == "2024-05-01T10:02:03.456Z"
    assert lines[1]["custom_data"] == {"n": 1}
    assert lines[0]["request_headers"] == [["Host", "localhost"], ["Accept", "*/*"]]


def test_export_csv_to_a_file_with_filters(runner: FlaskCliRunner, tmp_path: Path) -> None:
    insert(
        stored_record(
            path="/a",
            status_code=500,
            custom_data={"order": 1},
            date_created=at(1),
            request_id="req-1",
            sample_rate=0.25,
        ),
        stored_record(path="/b", date_created=at(2)),
        stored_record(path="/c", status_code=503, user_agent=None, date_created=at(3)),
    )
    target = tmp_path / "out.csv"
    result = run(runner, "export", "--format", "csv", "--status", "5xx", "-o", str(target))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == f"Exported 2 records to {target}.\n"
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [row["path"] for row in rows] == ["/a", "/c"]
    assert tuple(rows[0]) == cli.CSV_COLUMNS
    assert rows[0]["custom_data"] == '{"order": 1}'
    assert (rows[0]["request_id"], rows[0]["sample_rate"]) == ("req-1", "0.25")
    assert rows[0]["user_agent.browser"] == "Firefox"
    assert rows[1]["user_agent.browser"] == ""
    assert rows[0]["date_created"] == "2024-05-01T10:01:00.000Z"
    assert rows[0]["response_body_truncated"] == "false"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a new export: owner only
    target.chmod(0o640)
    assert run(runner, "export", "--format", "csv", "-o", str(target)).exit_code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # a replaced one keeps its mode
    assert len(target.read_text().splitlines()) == 4


def test_export_limit_and_no_records(runner: FlaskCliRunner, tmp_path: Path) -> None:
    insert(*(stored_record(path=f"/{index}") for index in range(5)))
    assert len(run(runner, "export", "--limit", "3").stdout.splitlines()) == 3
    result = run(runner, "export", "--path", "/nothing", "-o", str(tmp_path / "empty.jsonl"))
    assert result.stderr == f"Exported 0 records to {tmp_path / 'empty.jsonl'}.\n"
    assert (tmp_path / "empty.jsonl").read_text() == ""


def test_export_to_dev_null_writes_in_place(runner: FlaskCliRunner) -> None:
    insert(stored_record())
    result = run(runner, "export", "-o", os.devnull)
    assert result.exit_code == 0
    assert result.stderr == f"Exported 1 records to {os.devnull}.\n"
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # not replaced by a renamed temporary file


def test_a_failed_export_leaves_no_partial_file(
    runner: FlaskCliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(*(stored_record(path=f"/{index}") for index in range(3)))
    target = tmp_path / "out.jsonl"
    target.write_text("previous export\n")

    def failing(documents: Any, stream: Any) -> int:
        stream.write("half a line")
        raise ConnectionFailure("connection reset")

    monkeypatch.setattr(export, "_write_jsonl", failing)
    assert_clear_error(run(runner, "export", "-o", str(target)), "Cannot reach MongoDB")
    assert target.read_text() == "previous export\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.jsonl"]


def test_export_streams_without_caching(
    runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(*(stored_record(path=f"/{index}") for index in range(30)))
    seen: dict[str, Any] = {}
    original = export._write_jsonl

    def spy(documents: Any, stream: Any) -> int:
        seen["documents"] = documents
        return original(documents, stream)

    monkeypatch.setattr(export, "_write_jsonl", spy)
    result = run(runner, "export", "--batch-size", "7")
    assert len(result.stdout.splitlines()) == 30
    documents = seen["documents"]
    assert not hasattr(documents, "_result_cache")  # a QuerySetNoCache: nothing is kept
    assert documents._batch_size == 7
    assert documents._as_pymongo is True  # raw dicts, no Document objects
    assert documents._ordering == []  # storage order: no sort for the server to hold


def test_jsonable_handles_every_stored_type() -> None:
    from bson import DBRef

    oid = ObjectId()
    value = {
        "id": oid,
        "ref": DBRef("user", oid),
        "when": dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "day": dt.date(2024, 5, 1),
        "raw": b"\xff",
        "nested": [(1, 2.5, True, None)],
        "other": Exception("x"),
    }
    assert cli.jsonable(value) == {
        "id": str(oid),
        "ref": {"$ref": "user", "$id": str(oid)},
        "when": "2024-05-01T08:00:00.000Z",
        "day": "2024-05-01",
        "raw": "/w==",
        "nested": [[1, 2.5, True, None]],
        "other": "x",
    }


# --- info, alias, connection ------------------------------------------------------------


@MONGOMOCK_ONLY
def test_info_on_mongomock(runner: FlaskCliRunner, mongo: Any) -> None:
    first, _, last = insert(
        stored_record(date_created=at(5)),
        stored_record(date_created=None),
        stored_record(date_created=at(9)),
    )
    ensure_indexes(mongo["tracking"])
    result = run(runner, "info")
    assert result.exit_code == 0
    info = dict(line.split(":", 1) for line in result.stdout.splitlines())
    info = {key: value.strip() for key, value in info.items()}
    assert info["Collection"] == "tracking (database flask_tracking_test, connection 'default')"
    assert info["Capped"] == "unknown (this server does not report collection options)"
    assert info["Size"] == "unknown (this server does not answer collStats)"
    assert info["Records"] == "3"
    assert info["Oldest"] == f"2024-05-01 10:05:00 UTC ({first})"
    assert info["Newest"] == f"2024-05-01 10:09:00 UTC ({last})"
    assert "tracking_date_created (date_created -1)" in info["Indexes"]
    assert "tracking_path (path 1, date_created -1)" in info["Indexes"]
    assert info["Writer"] == "no Tracking extension on this app"


def test_info_capped_and_sizes_from_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    class Server:
        def options(self) -> dict[str, Any]:
            return {"capped": True, "size": 104857600, "max": 1000000}

        def command(self, name: str, collection: str) -> dict[str, Any]:
            return {"size": 2_500_000, "storageSize": 4_096_000, "totalIndexSize": 300_000}

    assert collection._capped_text(Server()) == "yes (104.9 MB, at most 1000000 records)"
    assert collection._size_text(Server(), "tracking") == (
        "2.5 MB of data, 4.1 MB on disk, 300.0 kB of indexes"
    )


def test_commands_read_through_the_extension_alias_and_show_its_counters(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    mongoengine.connect(
        "elsewhere",
        alias="tracking_alias",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )
    try:
        app = make_app(TRACKING_DB_ALIAS="tracking_alias")
        app.cli.add_command(tracking_cli)
        app.test_client().get("/hello")
        assert app.extensions["tracking"].flush(5)
        runner = app.test_cli_runner()
        listed = run(runner, "list")
        assert listed.exit_code == 0, listed.output
        assert listed_paths(listed) == ["/hello"]
        assert mongo["tracking"].count_documents({}) == 0  # nothing on the default alias
        info = run(runner, "info").stdout
        assert "connection 'tracking_alias'" in info
        assert "written 1" in info
        assert "enqueued 1" in info
    finally:
        mongoengine.disconnect("tracking_alias")


def test_an_unconnected_alias_is_a_clear_error() -> None:
    app = Flask("unconnected")
    app.config["TRACKING_DB_ALIAS"] = "nowhere"
    app.cli.add_command(tracking_cli)
    result = run(app.test_cli_runner(), "list")
    assert_clear_error(result, "No MongoDB connection 'nowhere'", "TRACKING_MONGODB_URI")


def test_an_unreachable_server_is_a_clear_error() -> None:
    mongoengine.connect(
        "down",
        alias="default",
        host="mongodb://127.0.0.1:1/",
        serverSelectionTimeoutMS=100,
        connectTimeoutMS=100,
        uuidRepresentation="standard",
    )
    try:
        app = Flask("down")
        app.cli.add_command(tracking_cli)
        runner = app.test_cli_runner()
        for args in (["list"], ["stats"], ["export"], ["info"], ["show", str(ObjectId())]):
            result = run(runner, *args)
            assert_clear_error(result, "Cannot reach MongoDB (connection 'default'): 127.0.0.1:1")
            assert "Topology Description" not in result.output
    finally:
        mongoengine.disconnect("default")


# --- select_records: the filters of list, for Python callers (the dashboard) ------------


def test_select_records_filters_like_list(app: Flask, runner: FlaskCliRunner) -> None:
    from flask_tracking.cli import app_records, select_records

    insert(*seeded_records(100))
    with app.app_context():
        selected = select_records(path="/users/", status="5xx", data=())
        expected = Tracking.objects.for_path("/users/").filter(
            status_code__gte=500, status_code__lt=600
        )
        assert [r.pk for r in selected] == [r.pk for r in expected]
        assert selected.count() > 0
        assert select_records().count() == app_records().count() == 100
        listed = run(runner, "list", "--path", "/users/", "--status", "5xx", "--limit", "0")
        assert {line.split()[0] for line in listed.output.splitlines()} == {
            str(r.pk) for r in selected
        }
        with pytest.raises(ValueError, match="--status takes a code"):
            select_records(status="5x")
        with pytest.raises(ValueError, match="--since"):
            select_records(since="yesterday")


# --- safe output -------------------------------------------------------------------------------

#: Characters a terminal acts on or that reorder what it shows (ESC, BEL, C1 CSI, RLO, RLI...).
HOSTILE = "\x1b[2J\x07\x9b\u202e\u2066"
RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)


def hostile_record(**overrides: Any) -> dict[str, Any]:
    return stored_record(
        method="POST",
        path=f"/p{HOSTILE}",
        query_params=f"q={HOSTILE}",
        endpoint=f"e{HOSTILE}",
        request_headers=[["X-Evil", f"v{HOSTILE}"], [f"X-{HOSTILE}", "1"]],
        request_body=f"body{HOSTILE}".encode(),
        request_body_size=20,
        request_body_omitted=None,
        custom_data={"k": HOSTILE},
        exception=f"E: {HOSTILE}",
        **overrides,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["show", "{id}"],
        ["curl", "{id}"],
        ["stats", "--records", "--by", "path"],
        ["stats", "--records", "--by", "endpoint"],
        ["export"],
        ["export", "--format", "csv"],
    ],
)
def test_no_command_prints_raw_control_or_bidi_characters(
    runner: FlaskCliRunner, command: list[str]
) -> None:
    (record_id,) = insert(hostile_record())
    result = run(runner, *(word.format(id=record_id) for word in command))
    assert result.exit_code == 0, result.output
    assert RAW_CONTROL.search(result.stdout) is None, result.stdout
    assert RAW_CONTROL.search(result.stderr) is None, result.stderr


def test_curl_words_with_control_characters_still_say_what_was_sent(
    runner: FlaskCliRunner,
) -> None:
    (record_id,) = insert(hostile_record())
    command = run(runner, "curl", str(record_id)).stdout
    printf, _, curl_part = command.partition(" | ")
    words = shell_words(curl_part)
    assert f"X-Evil: v{HOSTILE}" in words
    assert words[3].endswith("?q=" + HOSTILE)
    printed = subprocess.run(["sh", "-c", printf], capture_output=True, check=True).stdout
    assert printed == f"body{HOSTILE}".encode()


def test_curl_base_url_chooses_the_target(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(stored_record(host="evil.example", path="/x", query_params="a=1"))
    default = run(runner, "curl", str(record_id))
    assert "# Target: the recorded host http://evil.example; choose another" in default.stderr
    assert shell_words(default.stdout)[1] == "http://evil.example/x?a=1"
    chosen = run(runner, "curl", str(record_id), "--base-url", "http://localhost:5000/")
    assert "Target" not in chosen.stderr
    assert shell_words(chosen.stdout)[1] == "http://localhost:5000/x?a=1"
    refused = run(runner, "curl", str(record_id), "--base-url", "file:///etc/passwd")
    assert refused.exit_code != 0 and "--base-url" in refused.output


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_never_start_a_formula(
    runner: FlaskCliRunner, tmp_path: Path, start: str
) -> None:
    formula = f'{start}HYPERLINK("http://evil.example")'
    insert(stored_record(path=formula, user_id=formula, endpoint="ok"))
    target = tmp_path / "out.csv"
    assert run(runner, "export", "--format", "csv", "-o", str(target)).exit_code == 0
    [row] = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    for column in ("path", "user_id"):
        assert row[column][:1] not in ("=", "+", "-", "@", "\t", "\r"), row[column]
        assert row[column].endswith('HYPERLINK("http://evil.example")')
    assert row["endpoint"] == "ok"
    assert row["status_code"] == "200"


def test_curl_does_not_resend_the_content_encoding_of_a_decoded_body(
    runner: FlaskCliRunner,
) -> None:
    (record_id,) = insert(
        stored_record(
            method="POST",
            request_headers=[["Content-Encoding", "gzip"], ["Content-Type", "application/json"]],
            request_body=b'{"a": 1}',
            request_body_size=28,
        )
    )
    words = shell_words(run(runner, "curl", str(record_id)).stdout)
    assert "Content-Type: application/json" in words
    assert not any(word.lower().startswith("content-encoding") for word in words)

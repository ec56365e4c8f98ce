"""Tests for flask_tracking.cli.collection: ``flask tracking info`` (``migrate`` is tested
with the migration in test_migrate.py)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskCliRunner

from flask_tracking.cli import collection
from flask_tracking.indexes import ensure_indexes

from .cli_support import at, cli_app, run
from .conftest import MONGOMOCK_ONLY
from .test_queries import insert, stored_record


@pytest.fixture
def runner(mongo: Any) -> FlaskCliRunner:
    return cli_app().test_cli_runner()


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

    assert collection._capped_text(collection._options(Server())) == (
        "yes (104.9 MB, at most 1000000 records)"
    )
    assert collection._size_text(Server(), "tracking") == (
        "2.5 MB of data, 4.1 MB on disk, 300.0 kB of indexes"
    )


def test_info_storage_mode_and_how_records_leave() -> None:
    ttl = {"_id_": {"key": [("_id", 1)]}, "expiry": {"expireAfterSeconds": 86400}}
    assert collection._storage_text({"capped": True}, {}) == (
        "capped (the oldest records go when it is full)"
    )
    series = {"timeseries": {"timeField": "date_created"}, "expireAfterSeconds": 3600}
    assert collection._storage_text(series, {}) == ("timeseries (records expire after 3600 s)")
    assert collection._storage_text({}, ttl) == "ttl (records expire after 86400 s (expiry))"
    assert collection._storage_text({}, {"_id_": {"key": [("_id", 1)]}}) == (
        "plain, no TTL index (records are never removed)"
    )
    assert collection._storage_text(collection._UNREPORTED, ttl) == (
        "ttl (records expire after 86400 s (expiry))"
    )
    assert collection._storage_text(collection._UNREPORTED, {}) == "unknown"


def test_info_says_when_the_collection_does_not_exist(runner: FlaskCliRunner, mongo: Any) -> None:
    # A server reports no options for a missing collection: info said "Capped: no".
    assert "tracking" not in mongo.list_collection_names()
    result = run(runner, "info")
    assert result.exit_code == 0, result.output
    assert "Exists:" in result.stdout and "Capped" not in result.stdout, result.stdout
    insert(stored_record())
    assert "Exists:" not in run(runner, "info").stdout

"""Tests for flask_tracking.cli.selection: the filter options, select_records, the connection
alias and database trouble turned into one sentence."""

from __future__ import annotations

from typing import Any, Callable

import mongoengine
import mongomock
import pytest
from bson import ObjectId
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_tracking.cli import tracking_cli
from flask_tracking.documents import Tracking

from .cli_support import assert_clear_error, cli_app, listed_paths, run
from .test_queries import insert, seeded_records, stored_record


@pytest.fixture
def app(mongo: Any) -> Flask:
    return cli_app()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


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


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "1000000d"],  # a duration further back than year 1
        ["--since", "99999999999999999999w"],
        ["--until", "0001-01-01T00:00+01:00"],  # an offset that takes it before year 1 in UTC
        ["--since", "9999-12-31T23:59-01:00"],  # ... or after year 9999
    ],
)
def test_an_out_of_range_date_is_one_sentence_and_exit_1(
    runner: FlaskCliRunner, args: list[str]
) -> None:
    # docs/cli.md: a bad date ends with one sentence and exit code 1, never a traceback.
    insert(stored_record())
    for command in ("list", "export", "stats", "timeline"):
        result = run(runner, command, *args)
        assert not isinstance(result.exception, OverflowError), (command, result.exception)
        assert_clear_error(result, args[0])


def test_data_in_with_a_value_that_is_not_a_list(runner: FlaskCliRunner) -> None:
    # "--data KEY=VALUE: VALUE is JSON when it parses, text otherwise". With the "in" operator
    # a scalar VALUE is a TypeError traceback (1) or split into characters (blue -> b, l, u, e).
    insert(stored_record(path="/b", custom_data={"team": "b"}))
    crashed = run(runner, "list", "--data", "team__in=1")
    assert not isinstance(crashed.exception, TypeError), crashed.exception
    assert crashed.exit_code in (0, 1), crashed.output
    listed = run(runner, "list", "--data", "team__in=blue")
    assert listed_paths(listed) == [], "team 'b' is not in 'blue'"


@pytest.mark.real
@pytest.mark.parametrize(
    "args", [["--status", "99999999999999999999"], ["--data", "order=99999999999999999999"]]
)
def test_a_number_beyond_8_bytes_is_one_sentence_and_exit_1(real_db: Any, args: list[str]) -> None:
    # On a server, BSON cannot encode the int: bson's OverflowError ("MongoDB can only handle
    # up to 8-byte ints") is neither a ValueError nor a PyMongoError, so it is a traceback
    # (and a 500 on the dashboard's /tracking/requests?status=99999999999999999999).
    insert(stored_record())
    result = run(cli_app().test_cli_runner(), "list", *args)
    assert not isinstance(result.exception, OverflowError), repr(result.exception)
    assert result.exit_code in (0, 1), result.output


@pytest.mark.parametrize(
    "command", [["list"], ["stats", "--records"], ["timeline", "--records"]], ids=" ".join
)
def test_deeply_nested_data_json_is_one_sentence_too(
    runner: FlaskCliRunner, command: list[str]
) -> None:
    # docs/cli.md: "A mistake (a bad date, ...) ends with one sentence and exit code 1, never a
    # traceback". A --data VALUE of deeply nested JSON raised RecursionError, uncaught.
    insert(stored_record())
    result = run(runner, *command, "--data", "tags=" + "[" * 5000)
    assert_clear_error(result, "--data tags: ", "too deeply")

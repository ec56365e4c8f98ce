"""Tests for the ``flask tracking`` group (flask_tracking.cli): its commands, their help and
their output, with app.test_cli_runner() on both backends.

The commands of each module of the package are tested in tests/test_cli_<module>.py; records
are inserted as raw dicts in the stored schema (see test_queries.stored_record).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskCliRunner

from flask_tracking import cli
from flask_tracking.cli import export, selection, tracking_cli

from .cli_support import cli_app, hostile_record, run
from .test_queries import insert


@pytest.fixture
def runner(mongo: Any) -> FlaskCliRunner:
    return cli_app().test_cli_runner()


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


RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
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


def test_the_group_holds_every_command() -> None:
    assert sorted(tracking_cli.commands) == [
        "curl",
        "export",
        "info",
        "list",
        "migrate",
        "replay",
        "show",
        "stats",
        "tail",
        "timeline",
    ]
    assert tracking_cli.help == "Read the requests flask_tracking recorded."


def test_the_names_the_documentation_gives_are_importable_from_the_package() -> None:
    """docs/cli.md, docs/rollups.md and the API page name them ``flask_tracking.cli.<name>``."""
    assert cli.select_records is selection.select_records
    assert cli.app_records is selection.app_records
    assert cli.select_rollups is selection.select_rollups
    assert cli.app_rollups is selection.app_rollups
    assert cli.CSV_COLUMNS is export.CSV_COLUMNS


def test_an_apps_own_tracking_command_is_not_replaced(mongo: Any) -> None:
    """An app that has a ``flask tracking`` command of its own (parcels, shipments) keeps it:
    Tracking(app) must not replace it silently."""
    from flask import Flask

    from flask_tracking import Tracking

    app = Flask("parcels")

    @app.cli.command("tracking")
    def parcel_tracking() -> None:
        print("parcel 42: delivered")

    Tracking(app)
    result = app.test_cli_runner().invoke(args=["tracking"])
    assert result.output == "parcel 42: delivered\n"

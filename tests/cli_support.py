"""What the tests of flask_tracking.cli share: an app with the ``tracking`` commands and the
views replayed requests reach, the runner's invocation, and checks of errors and list lines."""

from __future__ import annotations

import datetime as dt
from typing import Any

from click.testing import Result
from flask import Flask, jsonify, request
from flask.testing import FlaskCliRunner

from flask_tracking.cli import tracking_cli

from .test_queries import BASE, stored_record


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


#: Characters a terminal acts on or that reorder what it shows (ESC, BEL, C1 CSI, RLO, RLI...).
HOSTILE = "\x1b[2J\x07\x9b\u202e\u2066"


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


def cli_app() -> Flask:
    """A Flask app with the ``tracking`` commands and the views replayed requests reach, without
    the Tracking extension (the commands read the "default" connection)."""
    app = Flask("cli_test")
    app.config["TESTING"] = True
    add_views(app)
    app.cli.add_command(tracking_cli)
    return app

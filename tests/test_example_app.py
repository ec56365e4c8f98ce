"""The example app's own pages: its record pages are behind its login, like the dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.cli import NoAppException

from example_app.app import DEMO_PASSWORD, DEMO_USERNAME, create_app

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_RUNNING = "The example app's database is not running"


@pytest.fixture
def client(mongo: Any) -> Iterator[Any]:
    app = create_app({"SECRET_KEY": "example-test", "TESTING": True})
    yield app.test_client()
    app.extensions["tracking"]._apps[app].writer.shutdown(1.0)


@pytest.mark.parametrize("path", ["/requests", "/requests/0123456789abcdef01234567"])
def test_record_pages_need_a_login(client: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (302, 303)  # redirect(): 303 from Flask 3.2
    assert "/login" in response.headers["Location"]


def test_record_pages_open_after_logging_in(client: Any) -> None:
    client.post("/login", data={"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
    assert client.get("/requests").status_code == 200


def flask_command(instance: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``flask --app example_app.app ARGS`` with an empty instance folder: no database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKING_", "FLASK_"))}
    env.update(EXAMPLE_INSTANCE_PATH=str(instance), PYTHONPATH=str(REPO_ROOT), NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app.app", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args", [("tracking", "list"), ("tracking", "stats"), ("run",), ("--help",)]
)
def test_without_its_database_the_cli_says_so_in_one_sentence(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Flask looks the app's commands up by loading the app: a failed load must not end in
    "No such command 'tracking'" (nor a usage text, nor a traceback)."""
    done = flask_command(tmp_path / "instance", *args)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"Error: {NOT_RUNNING}") and "python -m example_app.app" in line


def test_create_app_outside_the_cli_raises_no_app_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXAMPLE_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.delenv("TRACKING_MONGODB_URI", raising=False)
    with pytest.raises(NoAppException, match=NOT_RUNNING):
        create_app({"TRACKING_DB_ALIAS": "example-unconnected"})

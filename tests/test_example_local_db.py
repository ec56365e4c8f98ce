"""End to end: ``python -m example_app.app`` without TRACKING_MONGODB_URI starts its own server,
``flask --app example_app.app tracking list`` in another process reads the same records, the
server stops with the app and its data is there again on the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from example_app import local_db
from example_app.mongo_server import free_port

from .conftest import REAL

pytestmark = REAL

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The first start may have to install the server into its cached virtualenv.
START_SECONDS = 120.0


@pytest.fixture
def instance(tmp_path: Path, real_server: object) -> Path:
    """A fresh instance folder (``real_server``: the server is installed and starts here)."""
    return tmp_path / "instance"


def environment(instance: Path, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKING_", "FLASK_"))}
    env.update(EXAMPLE_INSTANCE_PATH=str(instance), PYTHONPATH=str(REPO_ROOT))
    if "TRACKING_SECANTUS_VENV" in os.environ:
        env["TRACKING_SECANTUS_VENV"] = os.environ["TRACKING_SECANTUS_VENV"]
    if port:
        env["PORT"] = str(port)
    return env


class ExampleApp:
    """``python -m example_app.app`` as a child process on a free port."""

    def __init__(self, instance: Path, **env: str) -> None:
        self.port = free_port()
        self.log = (instance.parent / f"app-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "example_app.app"],
            cwd=REPO_ROOT,
            env={**environment(instance, self.port), **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_SECONDS
        while not self._answers():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            return self.get("/health") == 200
        except OSError:
            return False

    def get(self, path: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            return int(reply.status)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(30)
        finally:
            self.log.close()


@pytest.fixture
def start_app(instance: Path) -> Iterator[Callable[..., ExampleApp]]:
    """Start the example app (keyword arguments: extra environment variables); every app
    started is killed at the end if still running, and no server is left behind."""
    started: list[ExampleApp] = []

    def start(**env: str) -> ExampleApp:
        app = ExampleApp(instance, **env)
        started.append(app)
        return app

    yield start
    for app in started:
        if app.process.poll() is None:
            app.process.kill()
            app.process.wait()
    info = local_db._read(instance / local_db.ADDRESS_FILE)
    if info and local_db._alive(info.get("server_pid")):  # never leave a server behind
        os.kill(info["server_pid"], signal.SIGKILL)


def cli(instance: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app.app", "tracking", *args],
        cwd=REPO_ROOT,
        env=environment(instance),
        capture_output=True,
        text=True,
        timeout=60,
    )


def listed(instance: Path, text: str, timeout: float = 15.0) -> str:
    """``tracking list`` output once it shows ``text`` (the app writes every second)."""
    deadline = time.monotonic() + timeout
    while True:
        done = cli(instance, "list")
        assert done.returncode == 0, done.stdout + done.stderr
        if text in done.stdout or time.monotonic() > deadline:
            return done.stdout
        time.sleep(0.3)


def test_the_cli_reads_the_example_apps_records_and_the_server_stops_with_the_app(
    instance: Path, start_app: Callable[..., ExampleApp]
) -> None:
    missing = cli(instance, "list")
    assert missing.returncode != 0
    assert "The example app's database is not running" in missing.stderr
    assert "python -m example_app.app" in missing.stderr

    app = start_app()
    info = json.loads((instance / local_db.ADDRESS_FILE).read_text())
    assert (instance / local_db.DATA_DIR).is_dir()
    assert app.get("/?first=run") == 200
    assert "/?first=run" in listed(instance, "/?first=run")
    assert cli(instance, "stats").returncode == 0  # every subcommand finds the server

    # Still queued at the signal (the writer writes every second): flushed at exit, before
    # the server stops.
    assert app.get("/?just=before-exit") == 200
    assert app.stop() == 128 + signal.SIGTERM, app.output()
    assert not local_db._alive(info["server_pid"]), "the server outlived the app"
    assert not (instance / local_db.ADDRESS_FILE).exists()
    gone = cli(instance, "list")
    assert gone.returncode != 0 and "is not running" in gone.stderr

    again = start_app()  # the data is kept between runs
    assert again.get("/?second=run") == 200
    output = listed(instance, "/?second=run")
    assert "/?first=run" in output and "/?second=run" in output, output
    assert "/?just=before-exit" in output, output
    server_pid = json.loads((instance / local_db.ADDRESS_FILE).read_text())["server_pid"]
    assert again.stop(signal.SIGHUP) == 128 + signal.SIGHUP, again.output()
    assert not local_db._alive(server_pid), "the server outlived the app"


def test_a_stale_address_file_gets_a_clear_message(instance: Path) -> None:
    instance.mkdir(parents=True)
    port = free_port()
    (instance / local_db.ADDRESS_FILE).write_text(
        json.dumps({"uri": f"mongodb://127.0.0.1:{port}/x", "port": port, "server_pid": 0})
    )
    done = cli(instance, "list")
    assert done.returncode != 0
    assert f"listens at mongodb://127.0.0.1:{port}/x, but nothing answers there" in done.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the app reads /proc")
def test_a_server_left_by_a_killed_app_is_stopped_by_the_next_start(
    instance: Path, start_app: Callable[..., ExampleApp]
) -> None:
    first = start_app()
    orphan = json.loads((instance / local_db.ADDRESS_FILE).read_text())["server_pid"]
    first.stop(signal.SIGKILL)  # no atexit: the server is left running
    assert local_db._alive(orphan)
    second = start_app()
    assert not local_db._alive(orphan)
    assert second.get("/?after=kill") == 200
    assert "/?after=kill" in listed(instance, "/?after=kill")
    second.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_with_the_reloader_the_server_and_the_reloaded_app_stop_with_the_app(
    instance: Path, start_app: Callable[..., ExampleApp]
) -> None:
    app = start_app(FLASK_DEBUG="1")  # the reloader: the app runs in a child process
    server_pid = json.loads((instance / local_db.ADDRESS_FILE).read_text())["server_pid"]
    children = Path(f"/proc/{app.process.pid}/task/{app.process.pid}/children").read_text()
    [child] = [int(pid) for pid in children.split() if int(pid) != server_pid]
    assert app.get("/?with=reloader") == 200
    assert "/?with=reloader" in listed(instance, "/?with=reloader")
    app.stop()
    assert not local_db._alive(child), "the reloaded app outlived the reloader"
    assert not local_db._alive(server_pid), "the server outlived the app"
    assert not (instance / local_db.ADDRESS_FILE).exists()

"""A local MongoDB-compatible server (SecantusDB) for the example app, the tests and the benchmarks.

SecantusDB is a MongoDB-compatible server that installs from PyPI. It is GPL-licensed and pulls
numpy and shapely, so it lives in a virtualenv of its own (created once, then reused) and runs
as a separate process: nothing here imports it, and ``flask_tracking`` never depends on it.

The virtualenv is ``$TRACKING_SECANTUS_VENV`` or ``~/.cache/flask_tracking/secantusdb-<version>``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

#: The SecantusDB release the project is tested with.
SECANTUS_VERSION = "0.7.0b3"

#: Seconds to wait for a started server to answer a ping.
START_TIMEOUT_SECONDS = 30.0


#: Runs SecantusDB's server class with a TTL sweep interval: argv = storage path, port,
#: seconds, "1" to enable the test commands.
_SWEEPING_SERVER = """
import signal, sys
from secantus.server import SecantusDBServer
path, port, sweep, test_commands = sys.argv[1:5]
server = SecantusDBServer("127.0.0.1", int(port), path, ttl_sweep_seconds=float(sweep),
                          enable_test_commands=bool(test_commands),
                          oplog_max_entries=5000, oplog_retention_seconds=120)
signal.signal(signal.SIGTERM, lambda *_: (server.stop(), sys.exit(0)))
server.start()
server.wait()
"""


class ServerError(RuntimeError):
    """The server could not be installed or started."""


def venv_path() -> Path:
    """Where the server's own virtualenv lives."""
    configured = os.environ.get("TRACKING_SECANTUS_VENV")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "flask_tracking" / f"secantusdb-{SECANTUS_VERSION}"


def ensure_installed(venv: Path | None = None) -> Path:
    """Create the server's virtualenv and install SecantusDB into it unless that was done
    before; return the path of its ``secantusd-py`` launcher. Safe to call from several
    processes at once (a file lock serialises the install)."""
    venv = venv or venv_path()
    launcher = venv / "bin" / "secantusd-py"
    marker = venv / ".installed"
    if marker.exists() and launcher.exists():
        return launcher
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and launcher.exists():
            return launcher
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", f"secantusdb=={SECANTUS_VERSION}"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                raise ServerError(f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}")
        marker.write_text(SECANTUS_VERSION)
    return launcher


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalServer:
    """One SecantusDB process on 127.0.0.1.

    ``storage_path`` is a directory (kept across restarts) or ``":memory:"``;
    ``test_commands`` enables ``configureFailPoint`` (fault injection); ``ttl_sweep_seconds``
    sets how often the server deletes the records TTL indexes expire (60 s by default, as
    mongod's TTL monitor; tests set 1 s to see expiry without waiting). :meth:`start` may be
    called again after :meth:`stop` (or :meth:`kill`): the server comes back on the same port.
    """

    def __init__(
        self,
        storage_path: str = ":memory:",
        *,
        port: int | None = None,
        test_commands: bool = False,
        log_path: str | None = None,
        ttl_sweep_seconds: float | None = None,
        cache_size: str | None = None,
    ) -> None:
        self.storage_path = storage_path
        self.port = port or free_port()
        self.test_commands = test_commands
        self.log_path = log_path
        self.ttl_sweep_seconds = ttl_sweep_seconds
        self.cache_size = cache_size
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:PORT/``."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> LocalServer:
        """Start the process (installing the server first if needed) and wait until it
        accepts connections."""
        launcher = ensure_installed()
        command = [
            str(launcher),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            self.storage_path,
            "--log-level",
            "WARNING",
            # Keep the oplog small: the server's own advice for long write-heavy runs.
            "--oplog-max-entries",
            "5000",
            "--oplog-retention-seconds",
            "120",
        ]
        if self.test_commands:
            command.append("--enable-test-commands")
        if self.cache_size is not None:
            command += ["--cache-size", self.cache_size]
        if self.ttl_sweep_seconds is not None:
            # secantusd-py 0.7.0b3 reads ttl_sweep_seconds from its config file but does not
            # pass it on to the server: start the server class with it instead (still in its
            # own virtualenv and process).
            command = [
                str(launcher.parent / "python"),
                "-c",
                _SWEEPING_SERVER,
                self.storage_path,
                str(self.port),
                str(float(self.ttl_sweep_seconds)),
                "1" if self.test_commands else "",
            ]
        output = open(self.log_path or os.devnull, "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            output.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _answers(self.port):
            if self.process.poll() is not None:
                raise ServerError(f"secantusd-py exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"secantusd-py did not listen on {self.port} in time")
            time.sleep(0.05)
        return self

    def _end(self, sig: int, timeout: float) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM), killing it after ``timeout`` seconds."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        self._end(signal.SIGKILL, 10.0)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

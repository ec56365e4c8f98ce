"""The example app's own database when ``$TRACKING_MONGODB_URI`` is unset.

``python -m example_app.app`` starts a SecantusDB server (see :mod:`example_app.mongo_server`)
on a free port of 127.0.0.1, with its data in the app's instance folder (kept between runs),
writes where it listens to ``<instance>/mongodb.json`` and stops the server when the app exits
(normally, on Ctrl-C, SIGTERM or SIGHUP). Every other process that loads the app, such as
``flask --app example_app.app tracking list`` in a second shell, reads that file and uses the
same server; without the file, or when the server it names no longer answers, it says so.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .mongo_server import LocalServer, ensure_installed, venv_path

logger = logging.getLogger(__name__)

#: The file, in the instance folder, that says where the server listens.
ADDRESS_FILE = "mongodb.json"
#: The server's data directory, in the instance folder.
DATA_DIR = "secantusdb"
#: The server's log, in the instance folder.
LOG_FILE = "secantusdb.log"
#: The database the example app stores into.
DATABASE = "flask_tracking_example"
#: Seconds to wait for a server left behind by a killed app to stop.
ORPHAN_STOP_SECONDS = 10.0


class NoLocalServer(RuntimeError):
    """No server from ``python -m example_app.app`` is running; the message says what to do."""


def start(instance_path: str) -> str:
    """Start the example app's server unless one started by another running example app is
    there already; return its URI (with the database name).

    The server started here is stopped when this process exits; a server left behind by an
    app that was killed (SIGKILL) is stopped first, since it holds the data directory.
    """
    instance = Path(instance_path)
    (instance / DATA_DIR).mkdir(parents=True, exist_ok=True)
    address = instance / ADDRESS_FILE
    info = _read(address)
    if info is not None and _alive(info.get("server_pid")) and _answers(info.get("port")):
        if _alive(info.get("app_pid")):
            logger.info("example_app: using the server of the running app (%s)", address)
            return str(info["uri"])
        _stop_orphan(int(info["server_pid"]))
    if not (venv_path() / ".installed").exists():
        logger.warning("example_app: installing SecantusDB into %s (once, about 15 s)", venv_path())
        ensure_installed()
    server = LocalServer(str(instance / DATA_DIR), log_path=str(instance / LOG_FILE))
    server.start()
    assert server.process is not None
    uri = f"{server.uri}{DATABASE}"
    _write(
        address,
        {"uri": uri, "port": server.port, "server_pid": server.process.pid, "app_pid": os.getpid()},
    )
    atexit.register(_stop, server, address)
    _exit_on_signals()
    logger.warning(
        "example_app: tracking into a local SecantusDB at %s (data in %s); it stops with the app",
        uri,
        instance / DATA_DIR,
    )
    return uri


def find(instance_path: str) -> str:
    """The URI of the server a running ``python -m example_app.app`` started; raises
    :class:`NoLocalServer` with what to do when there is none."""
    address = Path(instance_path) / ADDRESS_FILE
    start_it = (
        "Start the example app first with `python -m example_app.app` (it starts a local "
        "SecantusDB and writes where it listens to that file), or set TRACKING_MONGODB_URI."
    )
    if not address.exists():
        raise NoLocalServer(f"The example app's database is not running: no {address}. {start_it}")
    info = _read(address)
    if info is None:
        raise NoLocalServer(f"{address} cannot be read. {start_it}")
    if not (_alive(info.get("server_pid")) and _answers(info.get("port"))):
        raise NoLocalServer(
            f"{address} says the example app's database listens at {info.get('uri')}, but "
            f"nothing answers there: the app that started it has stopped. {start_it}"
        )
    return str(info["uri"])


def _read(address: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(address.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "uri" in info else None


def _write(address: Path, info: dict[str, Any]) -> None:
    """Write the address file whole or not at all (a reader never sees half of it)."""
    partial = address.with_name(f".{address.name}.{os.getpid()}")
    partial.write_text(json.dumps(info), encoding="utf-8")
    os.replace(partial, address)


def _stop(server: LocalServer, address: Path) -> None:
    """Stop the server; remove the address file if it still names this server."""
    process = server.process
    server.stop()
    info = _read(address)
    if info is not None and process is not None and info.get("server_pid") == process.pid:
        with contextlib.suppress(OSError):
            address.unlink()


def _exit_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into a normal exit, so that the atexit hooks (the tracking
    writer's flush, then the server's stop) run; Ctrl-C already exits that way."""

    def exit_now(signum: int, frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, exit_now)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] == "Z"


def _answers(port: object) -> bool:
    if not isinstance(port, int):
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_orphan(pid: int) -> None:
    """Stop a server whose app was killed, if the process is indeed a SecantusDB server."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        command = b""
    if b"secantusd" not in command:
        return
    logger.warning("example_app: stopping the server left behind by a killed app (pid %d)", pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + ORPHAN_STOP_SECONDS
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)

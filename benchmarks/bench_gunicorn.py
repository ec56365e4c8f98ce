"""Requests per second under gunicorn: bare Flask, flask_tracking and the minimal tracker.

Three gunicorn servers (one sync worker each, ``gunicorn_app.py``) serve the same app: bare,
with ``Tracking(app)`` (default settings), and with the minimal tracker of
``floor_tracker.py``; with ``--schema-floor`` a fourth, the minimal tracker writing
flask_tracking's documented schema (``FloorTracker(..., schema=True)``), with ``--parts``
flask_tracking with redaction, the rollups, or those and the database activity off.
``wrk -t1 -c2`` on 127.0.0.1 loads one server at a time, for ``GET /hello`` and for
``POST /echo`` with 4 KB of JSON, the servers taking turns round by round; the medians of the
rounds are compared. The records go over the wire to ``null_mongo.py`` (a server that
acknowledges every write and stores nothing), started for the run, unless ``--uri`` names a
server. After each run the worker's writer is flushed and its counters read through
``GET /_served`` (never tracked): the process CPU per request (worker process, all its
threads, writer included, and the main thread's and the writer's apart) is reported beside
the throughput, and at the end the records written must equal the requests served.

Needs gunicorn (``pip install -e ".[test]"``) and wrk (Debian: ``apt-get install wrk``)::

    python benchmarks/bench_gunicorn.py                   # 3 rounds of 8 s per server and case
    python benchmarks/bench_gunicorn.py --rounds 5 --seconds 10
    python benchmarks/bench_gunicorn.py --schema-floor   # and the documented schema's floor
    python benchmarks/bench_gunicorn.py --parts --case hello   # what each part costs, GETs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

from backends import null_server
from bench_overhead import BODY_BYTES, BROWSER_HEADERS, json_body

from example_app.mongo_server import free_port

HERE = Path(__file__).resolve().parent
#: Each server: what it is (``BENCH_KIND`` of gunicorn_app.py), its label, its short name and
#: the tracked app's settings (``BENCH_TRACKING_*``, see gunicorn_app.py).
SERVERS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "bare": ("bare", "bare", "bare", {}),
    "tracked": ("tracked", "flask_tracking", "flask_tracking", {}),
    "minimal": ("minimal", "minimal tracker", "minimal", {}),
    "minimal-schema": ("minimal-schema", "minimal tracker, documented schema", "schema", {}),
    "no-redaction": (
        "tracked",
        "flask_tracking, redaction off",
        "no redaction",
        {"BENCH_TRACKING_REDACT": "false"},
    ),
    "no-rollups": (
        "tracked",
        "flask_tracking, rollups off",
        "no rollups",
        {"BENCH_TRACKING_ROLLUPS": "false"},
    ),
    "all-off": (
        "tracked",
        "flask_tracking, redaction, rollups and database activity off",
        "all off",
        {
            "BENCH_TRACKING_REDACT": "false",
            "BENCH_TRACKING_ROLLUPS": "false",
            "BENCH_TRACKING_DB_ACTIVITY": "false",
        },
    ),
}
LABELS = {name: server[1] for name, server in SERVERS.items()}
SHORT = {name: server[2] for name, server in SERVERS.items()}


def served(port: int) -> dict[str, Any]:
    """The worker's report (``GET /_served``: flushes its writer first)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_served", timeout=120) as answer:
        report: dict[str, Any] = json.load(answer)
        return report


@contextmanager
def gunicorn(server: str, uri: str, gc_freeze: bool) -> Iterator[int]:
    """A gunicorn server (1 sync worker) of ``gunicorn_app:app`` as ``server`` (a key of
    :data:`SERVERS`); yields its port."""
    port = free_port()
    kind, _, _, settings = SERVERS[server]
    environ = {**os.environ, **settings, "BENCH_KIND": kind, "BENCH_MONGODB_URI": uri}
    if gc_freeze:
        environ["BENCH_GC_FREEZE"] = "1"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers=1",
        "--worker-class=sync",
        f"--bind=127.0.0.1:{port}",
        "--log-level=warning",
        f"--chdir={HERE}",
        "gunicorn_app:app",
    ]
    process = subprocess.Popen(command, env=environ)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                served(port)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gunicorn ({server}) did not start") from None
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def thread_cpu(
    before: dict[str, float], after: dict[str, float], count: int
) -> tuple[float, float]:
    """µs of CPU per request of the worker's main thread and of its writer thread(s), from the
    per-thread CPU seconds of two reports."""
    per_request = {name: (after[name] - before.get(name, 0.0)) / count * 1e6 for name in after}
    writer = sum(value for name, value in per_request.items() if "writer" in name)
    return per_request.get("MainThread", 0.0), writer


def wrk(port: int, path: str, seconds: int, script: str | None) -> float:
    """Run wrk -t1 -c2 against ``path``; its requests per second."""
    command = ["wrk", "-t1", "-c2", f"-d{max(1, seconds)}s"]
    for name, value in BROWSER_HEADERS.items():
        if name not in ("Host", "Connection"):
            command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", script]
    command.append(f"http://127.0.0.1:{port}{path}")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"wrk got errors from {path}:\n{output}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise SystemExit(f"no Requests/sec in wrk's output:\n{output}")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="seconds per run (default 8)")
    parser.add_argument("--uri", help="a MongoDB server to write to (default: null_mongo.py)")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() in each worker after start-up"
    )
    parser.add_argument(
        "--schema-floor",
        action="store_true",
        help="a fourth server: the minimal tracker writing the documented schema",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="three more: flask_tracking with redaction, rollups, or those and the database "
        "activity off",
    )
    parser.add_argument(
        "--case", choices=("both", "hello", "echo"), default="both", help="the requests sent"
    )
    args = parser.parse_args(argv)
    kinds = ("bare", "tracked", "minimal") + (("minimal-schema",) if args.schema_floor else ())
    if args.parts:
        kinds += ("no-redaction", "no-rollups", "all-off")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    body = json_body(BODY_BYTES)
    scratch = tempfile.TemporaryDirectory()
    script = os.path.join(scratch.name, "echo.lua")
    with open(script, "w") as lua:
        lua.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["Accept"] = "application/json"\n'
        )
    cases = tuple(
        case
        for case in (
            ("GET /hello", "/hello", None),
            (f"POST /echo {BODY_BYTES // 1024} KB JSON", "/echo", script),
        )
        if args.case == "both" or case[1] == "/" + args.case
    )
    rps: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    collector: dict[tuple[str, str], list[float]] = {}
    threads: dict[tuple[str, str], list[tuple[float, float]]] = {}
    started = time.perf_counter()
    with ExitStack() as stack:
        uri = args.uri or stack.enter_context(null_server())
        ports = {kind: stack.enter_context(gunicorn(kind, uri, args.gc_freeze)) for kind in kinds}
        for kind in kinds:  # warm-up
            for _, path, lua in cases:
                wrk(ports[kind], path, 1, lua)
        for round_number in range(args.rounds):
            for name, path, lua in cases:
                shift = round_number % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    before = served(ports[kind])
                    rps.setdefault((name, kind), []).append(
                        wrk(ports[kind], path, args.seconds, lua)
                    )
                    after = served(ports[kind])
                    count = after["served"] - before["served"]
                    cpu.setdefault((name, kind), []).append(
                        (after["cpu"] - before["cpu"]) / count * 1e6
                    )
                    collector.setdefault((name, kind), []).append(
                        (after["gc"] - before["gc"]) / count * 1e6
                    )
                    threads.setdefault((name, kind), []).append(
                        thread_cpu(before["threads"], after["threads"], count)
                    )
                    print(
                        f"round {round_number + 1} {name} {LABELS[kind]}: "
                        f"{rps[(name, kind)][-1]:.0f} req/s, {cpu[(name, kind)][-1]:.1f} µs CPU",
                        flush=True,
                    )
        reports = {kind: served(ports[kind]) for kind in kinds}
    duration = time.perf_counter() - started

    print()
    print(
        f"gunicorn, 1 sync worker; wrk -t1 -c2, {args.rounds} interleaved rounds of "
        f"{args.seconds} s; medians of the rounds; CPU and GC: the worker process's, per request"
        f"{'; gc.freeze() after start-up' if args.gc_freeze else ''}"
    )
    print()
    trackers = kinds[1:]
    short = " / ".join(SHORT[kind] for kind in kinds)
    print(
        "| case | bare req/s | "
        + " | ".join(f"{LABELS[kind]} req/s | of bare" for kind in trackers)
        + f" | CPU µs/req {short} | of which GC |"
    )
    print("|---|---:|" + "---:|---:|" * len(trackers) + "---|---|")
    for name, _, _ in cases:
        median = {kind: statistics.median(rps[(name, kind)]) for kind in kinds}
        cpus = " / ".join(f"{statistics.median(cpu[(name, kind)]):.0f}" for kind in kinds)
        gcs = " / ".join(f"{statistics.median(collector[(name, kind)]):.1f}" for kind in kinds)
        columns = " | ".join(
            f"{median[kind]:.0f} | {median[kind] / median['bare']:.2f}" for kind in trackers
        )
        print(f"| {name} | {median['bare']:.0f} | {columns} | {cpus} | {gcs} |")
    print()
    print(f"Worker threads' CPU, µs per request, main thread + writer ({short}):")
    for name, _, _ in cases:
        split = (
            f"{statistics.median(main for main, _ in threads[(name, kind)]):.0f} + "
            f"{statistics.median(writer for _, writer in threads[(name, kind)]):.0f}"
            for kind in kinds
        )
        print(f"- {name}: " + " / ".join(split))
    print()
    print(f"Per round, req/s ({short}):")
    for name, _, _ in cases:
        rounds = zip(*(rps[(name, kind)] for kind in kinds))
        print(f"- {name}: " + ", ".join(" / ".join(f"{v:.0f}" for v in r) for r in rounds))
    print()
    failed = False
    for kind in trackers:
        report = reports[kind]
        drops = {k: v for k, v in report["counters"].items() if k.startswith("dropped_") and v}
        problem = report["written"] != report["served"] or bool(drops)
        failed = failed or problem
        print(
            f"{LABELS[kind]}: {report['served']} requests served, {report['written']} records "
            f"written{', drops: ' + str(drops) if drops else ''}"
            f"{'  <-- PROBLEM' if problem else ''}"
        )
    print(
        f"Records to: {'null_mongo.py' if args.uri is None else 'the server at --uri'}. "
        f"Python {platform.python_version()}, gunicorn {version('gunicorn')}, "
        f"Flask {version('flask')}, pymongo {version('pymongo')}; {os.cpu_count()} CPUs; "
        f"load average before the end: {os.getloadavg()[0]:.1f}."
    )
    print(f"Command: python {shlex.join(sys.argv)}  ({duration:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

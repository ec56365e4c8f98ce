"""Instructions per request of a gunicorn worker: bare Flask, flask_tracking, the minimal tracker.

``bench_gunicorn.py`` measures requests per second, which move by 10-20 % from round to round
on a shared machine. This counts what the same servers execute instead: each runs under
``valgrind --tool=callgrind`` (one sync worker, ``gunicorn_app.py``, ``PYTHONHASHSEED=0``),
serves a warm-up, then ``N1`` and ``N2`` requests, each followed by ``GET /_served`` (which
waits until the writer wrote every record); ``callgrind_control`` zeroes the worker's counters
before each batch and dumps them after it. The difference between the two dumps, divided by
``N2 - N1``, is what one request costs the worker, its main thread and its other threads (the
writer) apart: the server's parsing and socket work, Flask, the tracker, and pymongo's client
work for the records (BSON, the socket), all counted. Records go to ``null_mongo.py``. The
requests are sent one at a time over a new connection each (gunicorn's sync worker closes
every connection), with the headers of ``bench_overhead.py``.

The ratio of a tracker's instructions to bare's bounds the requests per second it can keep:
a worker that executes 1.2 times bare's instructions per request serves about 1/1.2 of bare's
requests (the machine's other core runs the load generator and the null server).

Needs valgrind (Debian: ``apt-get install valgrind``) and gunicorn (``pip install -e
".[test]"``); a run of the three servers and both cases takes about three minutes::

    python benchmarks/bench_gunicorn_instructions.py
    python benchmarks/bench_gunicorn_instructions.py --case hello --kinds bare,tracked
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backends import null_server
from bench_gunicorn import served
from bench_overhead import BODY_BYTES, BROWSER_HEADERS, json_body

from example_app.mongo_server import free_port

HERE = Path(__file__).resolve().parent
KINDS = ("bare", "tracked", "minimal", "minimal-schema")


def send(port: int, count: int, case: str) -> None:
    """``count`` requests of ``case``, one at a time, each over a new connection."""
    headers = {k: v for k, v in BROWSER_HEADERS.items() if k not in ("Host", "Connection")}
    method, path, body = "GET", "/hello", None
    if case == "echo":
        method, path, body = "POST", "/echo", json_body(BODY_BYTES)
        headers = {**headers, "Accept": "application/json", "Content-Type": "application/json"}
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        connection.close()
        if response.status != 200:
            raise SystemExit(f"{method} {path} answered {response.status}")


def thread_totals(directory: Path, prefix: str) -> dict[str, int]:
    """Instructions of each thread in the dump files ``prefix-NN`` (callgrind's ``summary``)."""
    totals = {}
    for path in directory.glob(f"{prefix}-*"):
        for line in path.read_text().splitlines():
            if line.startswith("summary:"):
                totals[path.name.rsplit("-", 1)[1]] = int(line.split()[1])
    return totals


def count(
    kind: str, uri: str, cases: list[str], sizes: tuple[int, int], warm_up: int
) -> dict[str, tuple[float, float]]:
    """Per-request instructions of ``kind``'s worker for each case: (main thread, others)."""
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        port = free_port()
        environ = {
            **os.environ,
            "BENCH_KIND": kind,
            "BENCH_MONGODB_URI": uri,
            "PYTHONHASHSEED": "0",
        }
        command = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--trace-children=yes",
            f"--callgrind-out-file={out}/cg.%p",
            sys.executable,
            "-m",
            "gunicorn",
            "--workers=1",
            "--worker-class=sync",
            "--timeout=900",
            f"--bind=127.0.0.1:{port}",
            "--log-level=warning",
            f"--chdir={HERE}",
            "gunicorn_app:app",
        ]
        process = subprocess.Popen(command, env=environ, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    pid = served(port)["pid"]
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"gunicorn ({kind}) did not start") from None
                    time.sleep(1)
            for case in cases:
                send(port, warm_up, case)
                served(port)
                totals = []
                for size in sizes:
                    control = ["callgrind_control"]
                    subprocess.run([*control, "-z", str(pid)], check=True, capture_output=True)
                    send(port, size, case)
                    served(port)
                    label = f"{case}{size}"
                    subprocess.run(
                        [*control, "-d", label, str(pid)], check=True, capture_output=True
                    )
                    dumps = sorted(out.glob(f"cg.{pid}.*-01"), key=os.path.getmtime)
                    totals.append(thread_totals(out, dumps[-1].name[:-3]))
                per_thread = {
                    thread: (totals[1][thread] - totals[0].get(thread, 0)) / (sizes[1] - sizes[0])
                    for thread in totals[1]
                }
                main = per_thread.pop("01")
                results[case] = (main, sum(per_thread.values()))
        finally:
            process.terminate()
            process.wait(120)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--case", choices=("hello", "echo", "both"), default="both")
    parser.add_argument("--kinds", default="bare,tracked,minimal", help=f"of {', '.join(KINDS)}")
    parser.add_argument("--requests", default="500,1500", help="the two batch sizes")
    parser.add_argument("--warm-up", type=int, default=300, help="requests before counting")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: each of {', '.join(KINDS)}")
    first, second = (int(size) for size in args.requests.split(","))
    cases = ["hello", "echo"] if args.case == "both" else [args.case]
    with null_server() as uri:
        results = {kind: count(kind, uri, cases, (first, second), args.warm_up) for kind in kinds}
    for case in cases:
        print(f"\n{'GET /hello' if case == 'hello' else 'POST /echo, 4 KB JSON'}")
        print("| worker | main thread | other threads | total | of bare |")
        print("|---|---:|---:|---:|---:|")
        bare = sum(results["bare"][case]) if "bare" in results else None
        for kind in kinds:
            main_thread, others = results[kind][case]
            total = main_thread + others
            ratio = f"{total / bare:.3f}" if bare else "-"
            print(
                f"| {kind} | {main_thread / 1e3:,.1f}k | {others / 1e3:,.1f}k | "
                f"{total / 1e3:,.1f}k | {ratio} |"
            )
    print(f"\nCommand: {' '.join(['python', *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

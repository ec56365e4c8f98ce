"""Soak test: many requests through a tracked Flask app, watching throughput, drops and RSS.

The app's ``wsgi_app`` is called directly in a loop, the way a WSGI server calls it (iterate the
response, then close it), from one or a few threads. The request mix: GET /hello, POST of a
1 KB JSON body, a 404 page and a 500 page.

Variants, each run in its own subprocess so that their memory does not mix:

- ``null`` (default set): records go over the wire protocol to ``null_mongo.py``, which
  acknowledges every write and stores nothing: pymongo's whole client cost is paid, no
  database's CPU is spent on this machine;
- ``noop`` (default set): mongomock's ``insert_many`` does nothing, which shows the tracker's
  own cost and memory: RSS should stay flat after warm-up;
- ``untracked`` (default set): the same app without Tracking, for the throughput baseline;
- ``real``: records go to a real server (SecantusDB started in memory, or
  ``$TRACKING_BENCH_MONGODB_URI``), an end-to-end check that every record is stored;
- ``mongomock``: records are inserted into mongomock, which keeps every document in memory, so
  RSS grows with the number of records stored (that growth is mongomock's, not the tracker's).

Usage::

    python benchmarks/bench_soak.py                 # 100,000 requests per default variant
    python benchmarks/bench_soak.py --quick         # 10,000 requests per variant
    python benchmarks/bench_soak.py --variant real --requests 20000
    python benchmarks/bench_soak.py --requests 50000 --threads 4 --variant noop

Prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("null", "real", "mongomock", "noop", "untracked")
#: What ``--variant all`` runs: the cost figures.
DEFAULT_VARIANTS = ("null", "noop", "untracked")
#: The backend (see backends.py) of each variant.
BACKEND = {"null": "null", "real": "real"}
JSON_BODY = json.dumps({"items": ["x" * 90] * 10}).encode()[:1024]
JSON_BODY += b" " * (1024 - len(JSON_BODY))  # exactly 1 KB, still valid JSON


def rss_kib() -> int:
    """Resident set size of this process in KiB (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def build_app(tracked: bool) -> Any:
    from flask import Flask, abort, request

    app = Flask("soak")
    app.config.update(TRACKING_FLUSH_INTERVAL_SECONDS=0.5)
    logging.getLogger(app.name).disabled = True  # the 500 page would log a traceback each time

    @app.get("/hello")
    def hello() -> str:
        return "Hello"

    @app.post("/api/items")
    def items() -> Any:
        payload = request.get_json()
        request._tracking_data = {"count": len(payload["items"])}
        return {"ok": True, "count": len(payload["items"])}

    @app.get("/missing")
    def missing() -> str:
        abort(404)

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("soak test error")

    if tracked:
        from flask_tracking import Tracking

        Tracking(app)
    return app


def environ_templates() -> list[tuple[dict[str, Any], bytes | None]]:
    from werkzeug.test import EnvironBuilder

    def template(path: str, method: str = "GET", body: bytes | None = None) -> Any:
        builder = EnvironBuilder(
            path=path,
            method=method,
            data=body,
            content_type="application/json" if body else None,
            headers={"User-Agent": "soak/1.0 (bench)", "Accept-Language": "en-GB"},
        )
        environ = builder.get_environ()
        builder.close()
        return environ, body

    # 10 slots: 5 x hello, 3 x JSON POST, 1 x 404, 1 x 500
    hello = template("/hello?page=1")
    post = template("/api/items", "POST", JSON_BODY)
    return [hello] * 5 + [post] * 3 + [template("/missing"), template("/boom")]


Sample = tuple[int, int, float]  # (requests done, RSS KiB, seconds since the start)


def drive(app: Any, count: int, offset: int, samples: list[Sample], every: int, tick: Any) -> None:
    """Serve ``count`` requests like a WSGI server: call, iterate, close."""
    templates = environ_templates()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return lambda data: None

    for i in range(count):
        template, body = templates[(offset + i) % len(templates)]
        environ = dict(template)
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
        app_iter = app.wsgi_app(environ, start_response)
        try:
            for _ in app_iter:
                pass
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        done, now = tick()
        if done % every == 0:
            samples.append((done, rss_kib(), now))


def run_variant(variant: str, requests: int, threads: int, every: int) -> dict[str, Any]:
    from backends import connected

    with connected(BACKEND.get(variant, "mongomock"), "flask_tracking_soak") as backend:
        result = run_connected(variant, requests, threads, every)
    if variant == "noop":
        backend += ", its insert_many a no-op"
    result["backend"] = "none (not tracked)" if variant == "untracked" else backend
    return result


def run_connected(variant: str, requests: int, threads: int, every: int) -> dict[str, Any]:
    import mongoengine
    import mongomock

    logging.getLogger("flask_tracking").setLevel(logging.ERROR)  # the capped-collection notice
    patcher = None
    if variant == "noop":
        patcher = mock.patch.object(
            mongomock.collection.Collection, "insert_many", lambda self, *a, **k: None
        )
        patcher.start()
    app = build_app(tracked=variant != "untracked")
    lock = threading.Lock()
    done = [0]
    started = time.perf_counter()

    def tick() -> tuple[int, float]:
        with lock:
            done[0] += 1
            return done[0], time.perf_counter() - started

    samples: list[Sample] = [(0, rss_kib(), 0.0)]
    per_thread = [
        requests // threads + (1 if n < requests % threads else 0) for n in range(threads)
    ]
    workers = [
        threading.Thread(target=drive, args=(app, count, n * 7, samples, every, tick))
        for n, count in enumerate(per_thread)
    ]
    cpu_started = time.process_time()
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "variant": variant,
        "requests": requests,
        "threads": threads,
        "every": every,
        "seconds": elapsed,
        "cpu_seconds": time.process_time() - cpu_started,
        "rps": requests / elapsed,
    }
    if variant != "untracked":
        tracking = app.extensions["tracking"]
        flush_started = time.perf_counter()
        result["flushed"] = tracking.flush(300)
        result["flush_seconds"] = time.perf_counter() - flush_started
        result["stats"] = tracking.stats(app)
        result["stored"] = mongoengine.get_db("default")["tracking"].count_documents({})
    result["samples"] = sorted(samples)
    result["rss_after_flush"] = rss_kib()
    if patcher is not None:
        patcher.stop()
    return result


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def summarise(results: list[dict[str, Any]], warmup: int) -> str:
    """A Markdown table of the results, then each variant's RSS over time."""
    lines = [
        "| variant | req/s | req/s after warm-up | wall s | CPU s | flush s | written "
        "| in collection | drops | capture errors | RSS MiB: start / warm-up / end / after "
        "flush / peak | RSS end - warm-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for result in results:
        samples = result["samples"]
        warm_done, warm_rss, warm_at = next(
            (sample for sample in samples if sample[0] >= warmup), samples[-1]
        )
        end_done, end_rss, end_at = samples[-1]
        late_rps = (end_done - warm_done) / (end_at - warm_at) if end_at > warm_at else 0.0
        stats = result.get("stats")
        if stats is None:  # untracked baseline
            tracking = "- | - | - | - | -"
        else:
            drops = {k[8:]: v for k, v in stats.items() if k.startswith("dropped_") and v}
            tracking = (
                f"{result['flush_seconds']:.1f} | {stats['written']:,} | {result['stored']:,} "
                f"| {drops or 0} | {stats['capture_errors']}"
            )
        peak = max(max(rss for _, rss, _ in samples), result["rss_after_flush"])
        rss = " / ".join(
            mib(kib) for kib in (samples[0][1], warm_rss, end_rss, result["rss_after_flush"], peak)
        )
        lines.append(
            f"| {result['variant']} | {result['rps']:,.0f} | {late_rps:,.0f} "
            f"| {result['seconds']:.1f} | {result['cpu_seconds']:.1f} | {tracking} "
            f"| {rss} | {(end_rss - warm_rss) / 1024:+.1f} MiB |"
        )
    lines += ["", "Storage of each variant:", ""]
    lines += [f"- {result['variant']}: {result['backend']}" for result in results]
    lines += ["", f"RSS over time (MiB; sampled every {results[0]['every']:,} requests):", ""]
    for result in results:
        points = result["samples"]
        step = max(1, len(points) // 10)
        shown = points[::step]
        if shown[-1] != points[-1]:
            shown.append(points[-1])
        series = ", ".join(f"{done / 1000:g}k={mib(rss)}" for done, rss, _ in shown)
        lines.append(f"- {result['variant']}: {series}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 requests per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--every", type=int, default=0, help="RSS sample interval (requests)")
    parser.add_argument("--variant", choices=(*VARIANTS, "all"), default="all")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    requests = 10_000 if args.quick else args.requests
    every = args.every or max(100, requests // 50)
    warmup = requests // 5

    if args.variant != "all":
        result = run_variant(args.variant, requests, args.threads, every)
        if args.json:
            print(json.dumps(result))
        else:
            print(summarise([result], warmup))
        return

    results = []
    for variant in DEFAULT_VARIANTS:
        command = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--requests",
            str(requests),
            "--threads",
            str(args.threads),
            "--every",
            str(every),
            "--json",
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(f"## flask_tracking soak: {requests:,} requests per variant\n")
    print(
        "Mix per 10 requests: 5 x GET /hello, 3 x POST /api/items (1 KB JSON), "
        "1 x 404 (abort), 1 x 500 (exception). `app.wsgi_app` called directly, "
        f"{args.threads} thread(s). Warm-up = first {warmup:,} requests.\n"
    )
    print(summarise(results, warmup))


if __name__ == "__main__":
    main()

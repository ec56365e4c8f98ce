"""Overhead of flask_tracking on the request path and in total CPU, against a bare Flask app.

Two identical Flask apps, one bare and one with ``Tracking(app)``, are called the way a WSGI
server calls them (``app.wsgi_app(environ, start_response)``, then the response iterable is
iterated and closed) for two cases: ``GET /hello`` answering ``"Hello"``, and ``POST /echo``
with a 4 KB JSON body answered with the same 4 KB of JSON. The apps are interleaved round by
round and the medians of the rounds are compared.

- Request path: wall time (``time.perf_counter``) per request, on the request thread. The
  tracked app's writer is held back during the timed loop (huge batch size and flush interval)
  and drained by ``flush()`` after it, untimed, so this is what a request pays itself.
- Total CPU: ``time.process_time`` (every thread of the process) from before the requests until
  after ``Tracking.flush()`` returned, per request, with a writer configured as in production
  (batches of 500, 1 s flush interval). By default the records go over the wire protocol to
  ``null_mongo.py`` (a server that acknowledges every write and stores nothing), so the figure
  is flask_tracking's work plus pymongo's whole client cost (BSON encoding, the socket), without
  a database's CPU on this machine. ``--backend real`` sends them to a real server (SecantusDB
  or ``$TRACKING_BENCH_MONGODB_URI``) as an end-to-end check; ``--backend mongomock`` makes the
  insert a no-op (mongomock's ``Collection.insert_many`` patched), which isolates the tracker's
  own work: capture, queueing, conversion to a document, user-agent parsing, BSON size check.

With ``--floor`` it also measures a reference app (:func:`make_floor_app`): the least a
request-capturing middleware can do, which shows how much of the overhead is the price of
capturing at all (a WSGI wrapper and one ``after_request`` hook) rather than this tracker's work.

Run ``python benchmarks/bench_overhead.py`` (``--quick`` for a smoke run). See README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import logging
import os
import platform
import pstats
import shlex
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Callable

import mongoengine
import mongomock
from backends import BACKENDS, connected
from flask import Flask, request
from floor_tracker import FloorTracker
from werkzeug.test import EnvironBuilder

# Run from a checkout without installing: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_tracking import Tracking
from flask_tracking.store import MongoSink
from flask_tracking.testing import adapt_mongomock

#: Headers of a typical desktop Chrome navigation (no cookies).
BROWSER_HEADERS = {
    "Host": "www.example.com",
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    ),
    "Accept": (
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
    ),
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "Connection": "keep-alive",
}
#: Size of the JSON request body of the POST case.
BODY_BYTES = 4096

WSGIEnviron = dict[str, Any]


@dataclass
class Case:
    """One kind of request: a name, how to build its environ, and the response it expects."""

    name: str
    make_environ: Callable[[], WSGIEnviron]
    expected_status: str
    expected_body_bytes: int


@dataclass
class Comparison:
    """Per-round measurements (µs per request) of the bare and the tracked app."""

    bare: list[float] = field(default_factory=list)
    tracked: list[float] = field(default_factory=list)
    #: The minimal tracker (benchmarks/floor_tracker.py), when measured.
    minimal: list[float] = field(default_factory=list)

    @property
    def bare_median(self) -> float:
        return statistics.median(self.bare)

    @property
    def tracked_median(self) -> float:
        return statistics.median(self.tracked)

    @property
    def ratio(self) -> float:
        return self.tracked_median / self.bare_median


def json_body(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes (an object holding a list of small items)."""
    items: list[dict[str, Any]] = []
    while True:
        number = len(items)
        item = {"id": number, "name": f"item-{number:04d}", "price": 9.99, "tags": ["a", "b"]}
        if len(json.dumps({"items": [*items, item], "pad": ""}).encode()) > size:
            break
        items.append(item)
    pad = size - len(json.dumps({"items": items, "pad": ""}).encode())
    body = json.dumps({"items": items, "pad": "x" * pad}).encode()
    assert len(body) == size, len(body)
    return body


def build_cases() -> list[Case]:
    """The GET /hello and POST /echo (4 KB JSON) cases, each environ built once."""
    get_environ = EnvironBuilder(path="/hello", method="GET", headers=BROWSER_HEADERS).get_environ()

    def get_hello() -> WSGIEnviron:
        return get_environ.copy()

    body = json_body(BODY_BYTES)
    post_headers = {**BROWSER_HEADERS, "Accept": "application/json"}
    post_environ = EnvironBuilder(
        path="/echo",
        method="POST",
        headers=post_headers,
        data=body,
        content_type="application/json",
    ).get_environ()

    def post_echo() -> WSGIEnviron:
        environ = post_environ.copy()
        environ["wsgi.input"] = io.BytesIO(body)
        return environ

    return [
        Case("GET /hello", get_hello, "200 OK", len(b"Hello")),
        Case(f"POST /echo {BODY_BYTES // 1024} KB JSON", post_echo, "200 OK", -1),
    ]


def make_app(name: str, tracking_config: dict[str, Any] | None) -> Flask:
    """A Flask app with the two views; with ``Tracking`` when ``tracking_config`` is given."""
    app = Flask(name)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if tracking_config is not None:
        app.config.update(tracking_config)
        Tracking(app)

    @app.get("/hello")
    def hello() -> str:
        return "Hello"

    @app.post("/echo")
    def echo() -> Any:
        return request.get_json()

    return app


def make_floor_app(name: str, kept: deque[Any]) -> Flask:
    """The reference for what any capture of this kind costs: the bare app wrapped by the
    least a tracker can do (a clock before and after, the status and headers through
    ``start_response``, a copy of the environ, one ``after_request`` hook that keeps the
    endpoint and the response body) appending to ``kept``; no policy, no redaction, no user,
    no bounds, no error handling, no writer."""
    app = make_app(name, None)
    flask_app = app.wsgi_app
    clock = time.perf_counter

    def minimal_capture(environ: WSGIEnviron, start_response: Any) -> Iterable[bytes]:
        started = clock()
        seen: list[Any] = []

        def capture_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen.append((status, headers))
            return start_response(status, headers, exc_info)

        result = flask_app(environ, capture_start_response)
        kept.append((environ.copy(), seen, clock() - started))
        return result

    @app.after_request
    def keep_view_and_body(response: Any) -> Any:
        environ = request.environ
        environ["floor.view"] = (request.endpoint, response.response)
        return response

    app.wsgi_app = minimal_capture  # type: ignore[method-assign]
    return app


def big_queue(requests: int) -> dict[str, Any]:
    """Queue limits no benchmark round can reach, so that nothing is dropped."""
    return {
        "TRACKING_QUEUE_MAX_RECORDS": max(100_000, 10 * requests),
        "TRACKING_QUEUE_MAX_BYTES": 1 << 40,
    }


def held_back_writer(requests: int) -> dict[str, Any]:
    """A writer that never wakes during a round: it only writes when flushed."""
    return {
        **big_queue(requests),
        "TRACKING_BATCH_MAX_RECORDS": max(100_000, 10 * requests),
        "TRACKING_FLUSH_INTERVAL_SECONDS": 3600.0,
    }


def production_writer(requests: int) -> dict[str, Any]:
    """The default batching (500 records, every second), with a queue that never overflows."""
    return big_queue(requests)


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
    return _write


def _write(data: bytes) -> None:
    return None


def call(wsgi_app: Callable[..., Iterable[bytes]], environ: WSGIEnviron) -> int:
    """Call ``wsgi_app`` like a server: iterate and close the response; return the body size."""
    result = wsgi_app(environ, _start_response)
    size = 0
    try:
        for chunk in result:
            size += len(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return size


def run_requests(app: Flask, case: Case, count: int) -> None:
    """The timed loop: ``count`` requests of ``case`` through ``app.wsgi_app``."""
    wsgi_app = app.wsgi_app
    make_environ = case.make_environ
    for _ in range(count):
        call(wsgi_app, make_environ())


def check_response(app: Flask, case: Case) -> int:
    """Make sure ``app`` answers ``case`` as expected; return the response body size."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return _write

    result = app.wsgi_app(case.make_environ(), start_response)
    size = sum(len(chunk) for chunk in result)
    getattr(result, "close", lambda: None)()
    if statuses != [case.expected_status] or (
        case.expected_body_bytes >= 0 and size != case.expected_body_bytes
    ):
        raise SystemExit(f"{app.name} answered {case.name} with {statuses} and {size} bytes")
    return size


def tracking_of(app: Flask) -> Tracking:
    """The app's Tracking extension."""
    return app.extensions["tracking"]


@dataclass
class RequestPath:
    """Request-path measurements: wall time and the request thread's own CPU time."""

    wall: Comparison = field(default_factory=Comparison)
    thread_cpu: Comparison = field(default_factory=Comparison)


def measure_request_path(
    bare: Flask, tracked: Flask, case: Case, rounds: int, requests: int, chunk: int
) -> RequestPath:
    """µs per request on the request thread, the writer drained between chunks (untimed).

    Each round runs ``requests`` requests per app in chunks of ``chunk``, the two apps taking
    turns chunk by chunk (who goes first alternates), so that a burst of load from elsewhere
    on the machine hits both alike. After each tracked chunk, ``flush()`` lets the writer
    convert and write its records outside the timed sections: the request thread never
    competes with the writer for the GIL, and no more records are pending than with the
    default writer (which writes every 500).
    """
    result = RequestPath()
    drain = tracking_of(tracked).flush if "tracking" in tracked.extensions else _drain_floor
    for _ in range(rounds):
        gc.collect()
        wall = {bare: 0.0, tracked: 0.0}
        cpu = {bare: 0.0, tracked: 0.0}
        for index, done in enumerate(range(0, requests, chunk)):
            count = min(chunk, requests - done)
            for app in (bare, tracked) if index % 2 == 0 else (tracked, bare):
                wall_start, cpu_start = time.perf_counter(), time.thread_time()
                run_requests(app, case, count)
                cpu[app] += time.thread_time() - cpu_start
                wall[app] += time.perf_counter() - wall_start
                if app is tracked and not drain(timeout=120):
                    raise SystemExit("the tracking writer did not drain its queue in time")
        for app, side in ((bare, "bare"), (tracked, "tracked")):
            getattr(result.wall, side).append(wall[app] / requests * 1e6)
            getattr(result.thread_cpu, side).append(cpu[app] / requests * 1e6)
    return result


#: What the reference app of :func:`make_floor_app` captured (emptied between chunks).
FLOOR_KEPT: deque[Any] = deque()


def _drain_floor(timeout: float) -> bool:
    FLOOR_KEPT.clear()
    return True


def measure_total_cpu(
    bare: Flask,
    tracked: Flask,
    case: Case,
    rounds: int,
    requests: int,
    minimal: Flask | None = None,
) -> Comparison:
    """Process CPU µs per request, for a tracked app until after its writer wrote everything
    (``flush()`` returned). With ``minimal`` (an app with a :class:`FloorTracker`), the
    minimal tracker too, the three apps taking turns round by round."""
    result = Comparison()
    apps = [bare, tracked] if minimal is None else [bare, tracked, minimal]
    flushes = {tracked: tracking_of(tracked).flush}
    if minimal is not None:
        flushes[minimal] = minimal.extensions["floor_tracker"].flush
    series = {bare: result.bare, tracked: result.tracked, minimal: result.minimal}
    for round_number in range(rounds):
        shift = round_number % len(apps)
        for app in apps[shift:] + apps[:shift]:
            gc.collect()
            started = time.process_time()
            run_requests(app, case, requests)
            flush = flushes.get(app)
            if flush is not None and not flush(timeout=120):
                raise SystemExit(f"the writer of {app.name} did not drain its queue in time")
            series[app].append((time.process_time() - started) / requests * 1e6)
    return result


def make_minimal_tracker_app(name: str) -> Flask:
    """The app with the minimal tracker (:mod:`floor_tracker`) writing to the connected
    database, collection ``floor``."""
    app = make_app(name, None)
    app.extensions["floor_tracker"] = FloorTracker(app, mongoengine.get_db("default")["floor"])
    return app


def check_storage(cases: list[Case]) -> int:
    """With the backend's real insert, make sure tracked requests are actually stored."""
    app = make_app("storage_check", {})
    for case in cases:
        for _ in range(5):
            call(app.wsgi_app, case.make_environ())
    tracking = tracking_of(app)
    if not tracking.flush(timeout=10):
        raise SystemExit("the storage check did not finish")
    stored = mongoengine.get_db("default")["tracking"].count_documents({})
    if stored != 5 * len(cases):
        raise SystemExit(f"expected {5 * len(cases)} stored records, found {stored}")
    mongoengine.get_db("default").drop_collection("tracking")
    return stored


def make_insert_a_no_op() -> None:
    """Patch mongomock's ``insert_many`` so the writer's own work is all that is measured
    (after flask_tracking adapted mongomock, which would otherwise wrap the no-op in a decoding
    of every encoded document)."""

    def insert_many(self: Any, documents: Any, ordered: bool = True, **kwargs: Any) -> None:
        return None

    adapt_mongomock()
    insert_many.accepts_raw = True  # type: ignore[attr-defined]
    mongomock.collection.Collection.insert_many = insert_many  # type: ignore[method-assign]


def profile_tracked(app: Flask, case: Case, requests: int, chunk: int) -> None:
    """cProfile the tracked app: its request path, then its writer (MongoSink) separately.

    The garbage collector is off while profiling: cProfile charges a collection to whatever
    function happens to allocate, which misleads. Profiling also inflates small functions, so
    read the shares, not the absolute times.
    """
    request_profile, writer_profile = cProfile.Profile(), cProfile.Profile()
    sink_call = MongoSink.__call__

    def profiled_sink(self: MongoSink, records: list[dict[str, Any]]) -> Any:
        writer_profile.enable()
        try:
            return sink_call(self, records)
        finally:
            writer_profile.disable()

    tracking = tracking_of(app)
    tracking.flush(timeout=60)
    MongoSink.__call__ = profiled_sink  # type: ignore[method-assign]
    gc.disable()
    try:
        for done in range(0, requests, chunk):
            request_profile.enable()
            run_requests(app, case, min(chunk, requests - done))
            request_profile.disable()
            tracking.flush(timeout=120)
    finally:
        gc.enable()
        MongoSink.__call__ = sink_call  # type: ignore[method-assign]
    for title, profile in (("request path", request_profile), ("writer", writer_profile)):
        print(f"\n### Profile of {case.name}, tracked, {title} ({requests} requests)\n")
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(r"flask_tracking[/\\]", 15)
        stats.sort_stats("cumulative").print_stats(r"flask_tracking[/\\]", 12)


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return "info"
    return "pass" if ratio <= target else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Overhead of flask_tracking against a bare Flask app."
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds per case (default 7)")
    parser.add_argument(
        "--requests", type=int, default=5000, help="requests per round and app (default 5000)"
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=500,
        help="request-path timing: requests per timed chunk, the writer drained in between "
        "(default 500, the default TRACKING_BATCH_MAX_RECORDS)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 3 rounds of 1000 requests"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="null",
        help="where the records go: null = over the wire to null_mongo.py, which stores "
        "nothing (default); real = a real server (SecantusDB, or $TRACKING_BENCH_MONGODB_URI); "
        "mongomock = an insert that does nothing, for the tracker's own cost alone",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure a reference: the least a request-capturing middleware can do "
        "(see make_floor_app), to show how much of the overhead any such capture costs",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the table, cProfile the tracked app (request path and writer) and print "
        "the top flask_tracking functions",
    )
    args = parser.parse_args(argv)
    rounds, requests = (3, 1000) if args.quick else (args.rounds, args.requests)
    if rounds < 1 or requests < 1 or args.chunk < 1:
        parser.error("--rounds, --requests and --chunk must be at least 1")
    # Warnings of flask_tracking (e.g. "capped collections not supported" by mongomock) in order.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s"
    )

    with connected(args.backend, "flask_tracking_bench") as backend:
        return run(args, rounds, requests, backend)


def run(args: argparse.Namespace, rounds: int, requests: int, backend: str) -> int:
    """Measure and print the report (the backend is connected)."""
    cases = build_cases()
    stored = check_storage(cases)
    insert = {
        "null": "insert over the wire, null server",
        "real": "insert into the real server",
        "mongomock": "insert no-op",
    }[args.backend]
    if args.backend == "mongomock":
        make_insert_a_no_op()

    bare = make_app("bare", None)
    held_back = make_app("tracked_request_path", held_back_writer(requests))
    production = make_app("tracked_total_cpu", production_writer(requests))
    for case in cases:
        sizes = {app.name: check_response(app, case) for app in (bare, held_back, production)}
        if len(set(sizes.values())) != 1:
            raise SystemExit(f"the apps answered {case.name} differently: {sizes}")
        for app in (bare, held_back, production):  # warm-up (caches, first-call costs)
            run_requests(app, case, min(requests, 1000))
    for app in (held_back, production):
        tracking_of(app).flush(timeout=60)

    get_case, post_case = cases
    started = time.perf_counter()
    get_path = measure_request_path(bare, held_back, get_case, rounds, requests, args.chunk)
    post_path = measure_request_path(bare, held_back, post_case, rounds, requests, args.chunk)
    minimal = make_minimal_tracker_app("minimal_tracker")
    for case in cases:
        check_response(minimal, case)
        run_requests(minimal, case, min(requests, 1000))
    minimal.extensions["floor_tracker"].flush()
    get_cpu = measure_total_cpu(bare, production, get_case, rounds, requests, minimal)
    post_cpu = measure_total_cpu(bare, production, post_case, rounds, requests, minimal)
    rows: list[tuple[str, Comparison, float | None]] = [
        (f"{get_case.name}: request path, wall", get_path.wall, 1.15),
        (f"{post_case.name}: request path, wall", post_path.wall, 1.10),
        (f"{get_case.name}: total CPU incl. writer, {insert}", get_cpu, 1.30),
        (f"{post_case.name}: total CPU incl. writer, {insert}", post_cpu, None),
        (f"{get_case.name}: request path, request-thread CPU", get_path.thread_cpu, None),
        (f"{post_case.name}: request path, request-thread CPU", post_path.thread_cpu, None),
    ]
    if args.floor:
        floor = make_floor_app("floor", FLOOR_KEPT)
        run_requests(floor, get_case, min(requests, 1000))
        floor_path = measure_request_path(bare, floor, get_case, rounds, requests, args.chunk)
        rows.append(
            (f"{get_case.name}: request path, minimal capture (reference)", floor_path.wall, None)
        )
    duration = time.perf_counter() - started

    print()
    print(
        f"flask_tracking overhead: {rounds} rounds x {requests} requests per app and case, "
        f"medians of the rounds (request path timed in chunks of {args.chunk})"
    )
    print()
    print("| case | bare µs/req | tracked µs/req | ratio | target | result |")
    print("|---|---:|---:|---:|---:|---|")
    for name, comparison, target in rows:
        target_text = f"≤ {target:.2f}x" if target is not None else "-"
        print(
            f"| {name} | {comparison.bare_median:.1f} | {comparison.tracked_median:.1f} "
            f"| {comparison.ratio:.3f}x | {target_text} | {verdict(comparison.ratio, target)} |"
        )
    print()
    print("Per-round µs/request (bare / tracked):")
    for name, comparison, _ in rows:
        pairs = ", ".join(f"{b:.1f}/{t:.1f}" for b, t in zip(comparison.bare, comparison.tracked))
        print(f"- {name}: {pairs}")
    print()
    print("Total CPU per request incl. the writer: bare, flask_tracking, and the minimal tracker")
    print("(benchmarks/floor_tracker.py: same capture, flat dict, deque, insert_many of 1,000):")
    print()
    print(
        "| case | bare µs | flask_tracking µs | ratio | minimal tracker µs | ratio "
        "| flask_tracking above minimal |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case, comparison in ((get_case, get_cpu), (post_case, post_cpu)):
        bare_us = comparison.bare_median
        tracked_us, minimal_us = comparison.tracked_median, statistics.median(comparison.minimal)
        print(
            f"| {case.name} | {bare_us:.1f} | {tracked_us:.1f} | {tracked_us / bare_us:.2f}x "
            f"| {minimal_us:.1f} | {minimal_us / bare_us:.2f}x | {tracked_us - minimal_us:+.1f} |"
        )
        print(f"  minimal tracker per round: {', '.join(f'{m:.1f}' for m in comparison.minimal)}")
    written = minimal.extensions["floor_tracker"].written
    print(f"Minimal tracker: {written} records written.")
    print()
    print("Writer counters (nothing may be dropped or pending):")
    failed_writer = False
    for app in (held_back, production):
        counters = tracking_of(app).stats(app)
        drops = {k: v for k, v in counters.items() if k.startswith("dropped_") and v}
        problem = drops or counters["pending"] or counters["capture_errors"]
        failed_writer = failed_writer or bool(problem)
        shown = ", ".join(f"{k}={v}" for k, v in sorted(counters.items()))
        print(f"- {app.name}: {shown}{'  <-- PROBLEM' if problem else ''}")
    print()
    print(f"Storage: {backend}; check before measuring: {stored} records stored as expected.")
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Flask {version('flask')}, Werkzeug {version('werkzeug')}, "
        f"pymongo {version('pymongo')}, mongomock {version('mongomock')}, "
        f"ua-parser {version('ua-parser')}; {os.cpu_count()} CPUs, {platform.machine()}, "
        f"{platform.system()} {platform.release()}; GC enabled (collected before each round)."
    )
    print(f"Command: python {shlex.join(sys.argv)}  ({duration:.0f} s measured)")

    if args.profile:
        for case in cases:
            profile_tracked(held_back, case, requests, args.chunk)
    missed = any(verdict(c.ratio, t) == "FAIL" for _, c, t in rows)
    return 1 if (missed or failed_writer) else 0


if __name__ == "__main__":
    sys.exit(main())

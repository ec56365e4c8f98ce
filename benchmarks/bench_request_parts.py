"""What each part of flask_tracking costs the request thread, in the flow of real requests.

A part's cost measured alone (``timeit`` of one function) says little: a request runs a few
hundred thousand instructions between two calls of the tracker, which leave its code and data
cold, so each part costs the request two to four times what a tight loop says. Here the bare
and the tracked app of ``bench_overhead.py`` answer chunks of requests through
``app.wsgi_app``, timed with ``time.thread_time()`` (the request thread's CPU), interleaved:
the bare app, then the tracked app once per variant, each variant with one part of the
tracker switched off (one function replaced for its chunk, outside the timed section).
Medians of the rounds; a part costs the full tracker's figure minus its variant's.

A variant that switches a part off changes what is recorded (without "finish" nothing is),
so these are figures of cost only. The tracked app's writer is held back during a chunk and
drained after it, untimed, as in ``bench_overhead.py``'s request-path rows.

    python benchmarks/bench_request_parts.py               # GET /hello
    python benchmarks/bench_request_parts.py --case echo   # POST /echo, 4 KB JSON
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any

import mongoengine
import mongomock
from bench_overhead import (
    build_cases,
    held_back_writer,
    make_app,
    make_insert_a_no_op,
    run_requests,
    tracking_of,
)
from flask import Flask

# Run from a checkout without installing: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_tracking import capture, extension, writer

Patch = tuple[Any, str, Any]


class _PidOfStart:
    """``os`` for the writer module with the process id read once: the writer's check for a
    fork (a system call per ``submit``) switched off."""

    def __init__(self) -> None:
        self._pid = os.getpid()

    def getpid(self) -> int:
        return self._pid


def variants(app: Flask, case: str) -> dict[str, list[Patch]]:
    """The variants: the full tracker, and each with one part switched off."""
    kept: list[Any] = []
    result: dict[str, list[Patch]] = {
        "flask_tracking": [],
        "without finishing the record (nothing queued)": [
            (capture.TrackingMiddleware, "_close", lambda self, state, environ, **kw: None)
        ],
        "without the response hook": [
            (app, "process_response", Flask.process_response.__get__(app))
        ],
        "without the queued size": [(extension, "_estimated_size", lambda state: 1)],
        "without the request-side redaction": [
            (extension, "scrub_request_side", lambda state, redactor: None)
        ],
        "without submit's fork check": [(writer, "os", _PidOfStart())],
        "with submit a bare list append": [
            (writer.BatchWriter, "submit", lambda self, record, size: kept.append(record))
        ],
    }
    if case == "echo":
        result["without the request body's copy"] = [
            (capture, "_may_have_body", lambda environ: False)
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("hello", "echo"), default="hello")
    parser.add_argument("--rounds", type=int, default=60, help="rounds (default 60)")
    parser.add_argument(
        "--requests", type=int, default=500, help="requests per chunk (default 500)"
    )
    args = parser.parse_args(argv)
    mongoengine.connect(
        "bench_request_parts",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )
    make_insert_a_no_op()
    case = {c.name.split()[1].strip("/"): c for c in build_cases()}[args.case]
    bare = make_app("bare", None)
    tracked = make_app("tracked", held_back_writer(args.requests))
    tracking = tracking_of(tracked)
    chosen = variants(tracked, args.case)
    originals = {
        (id(target), name): (target, name, getattr(target, name))
        for patches in chosen.values()
        for target, name, _ in patches
    }

    def switch(patches: list[Patch]) -> None:
        for target, name, value in originals.values():
            setattr(target, name, value)
        for target, name, value in patches:
            setattr(target, name, value)

    run_requests(bare, case, 1000)
    for patches in chosen.values():  # warm-up
        switch(patches)
        run_requests(tracked, case, args.requests)
        tracking.flush(60)
    times: dict[str, list[float]] = {"bare": [], **{name: [] for name in chosen}}
    order = list(times)
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            app = bare if name == "bare" else tracked
            if app is tracked:
                switch(chosen[name])
            gc.collect()
            started = time.thread_time()
            run_requests(app, case, args.requests)
            times[name].append((time.thread_time() - started) / args.requests * 1e6)
            if app is tracked:
                tracking.flush(60)
    switch([])
    medians = {name: statistics.median(values) for name, values in times.items()}
    full = medians["flask_tracking"]
    print(f"{case.name}: request thread's CPU per request, medians of {args.rounds} rounds")
    print(f"of {args.requests} requests\n")
    print("| app | µs per request | above bare | the part switched off costs |")
    print("|---|---:|---:|---:|")
    print(f"| bare | {medians['bare']:.1f} | | |")
    for name in chosen:
        part = "" if name == "flask_tracking" else f"{full - medians[name]:.1f}"
        print(f"| {name} | {medians[name]:.1f} | +{medians[name] - medians['bare']:.1f} | {part} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

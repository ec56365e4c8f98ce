"""The app ``bench_gunicorn.py`` serves with gunicorn: ``gunicorn_app:app``.

``BENCH_KIND`` picks the tracker: ``bare`` (none), ``tracked`` (flask_tracking, default
settings), ``minimal`` (the minimal tracker of ``floor_tracker.py``) or ``minimal-schema`` (the
same tracker writing flask_tracking's documented schema); records go to the
server at ``BENCH_MONGODB_URI``. With ``BENCH_GC_FREEZE`` set, ``gc.freeze()`` runs once the
app is set up. Besides ``GET /hello`` and ``POST /echo`` (the cases of
``bench_overhead.py``), ``GET /_served`` is answered before the app is reached (never tracked):
it waits until the writer wrote everything queued, then returns, as JSON, the requests served,
the records written, the process CPU time, the time spent in the garbage collector and the
tracker's counters.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import mongoengine
from flask import Flask, request
from floor_tracker import FloorTracker

# Run from a checkout without installing: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_tracking import Tracking

KIND = os.environ.get("BENCH_KIND", "bare")
URI = os.environ.get("BENCH_MONGODB_URI", "mongodb://127.0.0.1:27017/")

flask_app = Flask(f"gunicorn_{KIND}")
flask_app.json.sort_keys = False  # type: ignore[attr-defined]


@flask_app.get("/hello")
def hello() -> str:
    return "Hello"


@flask_app.post("/echo")
def echo() -> Any:
    return request.get_json()


# Settings for the tracker from the environment: BENCH_TRACKING_BATCH_MAX_RECORDS=100 sets
# TRACKING_BATCH_MAX_RECORDS (values parsed as JSON, see Flask's Config.from_prefixed_env).
flask_app.config.from_prefixed_env("BENCH")
tracking: Tracking | None = None
floor: FloorTracker | None = None
if KIND == "tracked":
    tracking = Tracking(flask_app)  # before the client exists: it counts its commands
mongoengine.connect("flask_tracking_bench", host=URI, uuidRepresentation="standard")
if KIND == "tracked":
    pass
elif KIND in ("minimal", "minimal-schema"):
    schema = KIND == "minimal-schema"
    floor = FloorTracker(flask_app, mongoengine.get_db()["floor"], schema=schema)
elif KIND != "bare":
    raise SystemExit(f"BENCH_KIND must be bare, tracked, minimal or minimal-schema, not {KIND!r}")

tracked_wsgi_app = flask_app.wsgi_app
served = 0
gc_seconds = 0.0
_gc_started = 0.0


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    """Adds up the time the garbage collector runs (``gc.callbacks``)."""
    global gc_seconds, _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        gc_seconds += time.perf_counter() - _gc_started


gc.callbacks.append(_time_gc)
if os.environ.get("BENCH_GC_FREEZE"):
    gc.freeze()  # what is alive after start-up is never examined again


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this worker, by thread name (Linux)."""
    seconds = {}
    for thread in threading.enumerate():
        try:
            clock = time.pthread_getcpuclockid(thread.ident)  # type: ignore[arg-type]
            seconds[thread.name] = time.clock_gettime(clock)
        except (AttributeError, OSError, TypeError):
            continue
    return seconds


def report() -> dict[str, Any]:
    """Flush the writer; the counters of this worker."""
    counters: dict[str, int] = {}
    written = served
    if tracking is not None:
        tracking.flush(timeout=60)
        counters = tracking.stats(flask_app)
        written = counters["written"]
    elif floor is not None:
        floor.flush(timeout=60)
        written = floor.written
    return {
        "kind": KIND,
        "served": served,
        "written": written,
        "cpu": time.process_time(),
        "threads": thread_cpu(),
        "gc": gc_seconds,
        "pid": os.getpid(),
        "counters": counters,
    }


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI entry point: counts the requests it passes on to the app."""
    global served
    if environ.get("PATH_INFO") == "/_served":
        body = json.dumps(report()).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    served += 1
    return tracked_wsgi_app(environ, start_response)

"""Requests for `valgrind --tool=callgrind`: instruction counts are stable where times are not.

Runs ``N`` GET /hello requests through ``app.wsgi_app`` (bare, tracked, or tracked without
rollups: ``tracked-no-rollups``; inserts and rollup writes are no-ops, the writer drained every
250 requests). Count the main thread's instructions for two values of N
and divide the difference by the difference of N (see benchmarks/README.md)::

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=t500 \\
        python benchmarks/bench_instructions.py tracked 500
"""

from __future__ import annotations

import gc
import io
import os
import sys
from typing import Any

import mongoengine
import mongomock
import mongomock.collection
from flask import Flask
from floor_tracker import FloorTracker
from werkzeug.test import EnvironBuilder

# Run from a checkout without installing: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_tracking import Tracking
from flask_tracking.testing import adapt_mongomock

HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
    ),
    "Accept": "text/html,*/*",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "Host": "localhost",
}


def main(kind: str, count: int) -> None:
    """Warm up, then run ``count`` requests of the ``kind`` ("bare" or "tracked") app."""
    mongoengine.connect(
        "bench", mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
    )
    adapt_mongomock()  # first: it would wrap the no-ops below in a decoding of each document

    def insert_many(self: Any, documents: Any, *args: Any, **kwargs: Any) -> None:
        return None

    insert_many.accepts_raw = True  # type: ignore[attr-defined]
    mongomock.collection.Collection.insert_many = insert_many  # type: ignore[method-assign]
    mongomock.collection.Collection.bulk_write = lambda self, requests, *a, **k: None
    app = Flask("bench")
    app.add_url_rule("/hello", "hello", lambda: "Hello")
    flush = None
    if kind in ("tracked", "tracked-no-rollups"):
        app.config.update(TRACKING_FLUSH_INTERVAL_SECONDS=3600, TRACKING_ROLLUPS=kind == "tracked")
        flush = Tracking(app).flush
    environ = EnvironBuilder(path="/hello", headers=HEADERS).get_environ()
    if kind == "minimal":  # the floor: the minimal tracker of floor_tracker.py
        flush = FloorTracker(app, mongoengine.get_db()["floor"]).flush

    def one() -> None:
        request = dict(environ, **{"wsgi.input": io.BytesIO(b"")})
        body = app.wsgi_app(request, lambda status, headers, exc_info=None: None)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    for _ in range(200):
        one()
    gc.collect()
    for index in range(count):
        one()
        if flush is not None and index % 250 == 249:
            flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

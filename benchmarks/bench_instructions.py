"""Requests for `valgrind --tool=callgrind`: instruction counts are stable where times are not.

Runs ``N`` requests through ``app.wsgi_app``: ``GET /hello``, or with a third argument ``echo``
``POST /echo`` with the 4 KB JSON body of ``bench_overhead.py``. The app is bare, tracked,
tracked without rollups (``tracked-no-rollups``) or wrapped by the minimal tracker
(``minimal``, ``floor_tracker.py``; ``minimal-schema``: writing flask_tracking's documented
schema instead of a flat dict); a fourth argument gives a tracked app more settings, as
JSON (``'{"TRACKING_REDACT": false}'``). Nothing is sent anywhere: ``insert_many`` does what
pymongo does on the client before it writes to its socket (an ``_id`` for a document without
one, the BSON encoding; a document flask_tracking encoded already is copied as it is) and
rollup writes are no-ops; the writer is drained every 250 requests. Count each thread's
instructions for two values of N and divide the difference by the difference of N (see
benchmarks/README.md)::

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=t500 \\
        python benchmarks/bench_instructions.py tracked 500
"""

from __future__ import annotations

import gc
import io
import json
import os
import sys
from typing import Any

import bson
import mongoengine
import mongomock
import mongomock.collection
from bench_overhead import BODY_BYTES, json_body
from bson import ObjectId
from bson.raw_bson import RawBSONDocument
from flask import Flask, request
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


def insert_many(self: Any, documents: Any, *args: Any, **kwargs: Any) -> None:
    """What pymongo's ``insert_many`` does before its socket: an ``_id`` where missing, then
    the BSON encoding of each document (an encoded one is copied as it is)."""
    for document in documents:
        if not isinstance(document, RawBSONDocument):
            if "_id" not in document:
                document["_id"] = ObjectId()
            bson.encode(document)


def main(kind: str, count: int, case: str = "hello", settings: str = "{}") -> None:
    """Warm up, then run ``count`` requests of ``case`` ("hello" or "echo") through the
    ``kind`` ("bare", "tracked", "tracked-no-rollups", "minimal" or "minimal-schema") app;
    ``settings``: more ``TRACKING_*`` settings of a tracked app, as JSON
    (``{"TRACKING_REDACT": false}``)."""
    mongoengine.connect(
        "bench", mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
    )
    adapt_mongomock()  # first: it would wrap the insert below in a decoding of each document
    insert_many.accepts_raw = True  # type: ignore[attr-defined]
    mongomock.collection.Collection.insert_many = insert_many  # type: ignore[method-assign]
    mongomock.collection.Collection.bulk_write = lambda self, requests, *a, **k: None
    app = Flask("bench")
    app.add_url_rule("/hello", "hello", lambda: "Hello")
    app.add_url_rule("/echo", "echo", lambda: request.get_json(), methods=["POST"])
    flush = None
    if kind in ("tracked", "tracked-no-rollups"):
        app.config.update(TRACKING_FLUSH_INTERVAL_SECONDS=3600, TRACKING_ROLLUPS=kind == "tracked")
        app.config.update(json.loads(settings))
        flush = Tracking(app).flush
    body = json_body(BODY_BYTES) if case == "echo" else b""
    if case == "echo":
        environ = EnvironBuilder(
            path="/echo",
            method="POST",
            headers={**HEADERS, "Accept": "application/json"},
            data=body,
            content_type="application/json",
        ).get_environ()
    else:
        environ = EnvironBuilder(path="/hello", headers=HEADERS).get_environ()
    if kind in ("minimal", "minimal-schema"):  # the floor: the minimal tracker
        schema = kind == "minimal-schema"  # writing flask_tracking's documented schema
        flush = FloorTracker(app, mongoengine.get_db()["floor"], schema=schema).flush

    def one() -> None:
        incoming = dict(environ, **{"wsgi.input": io.BytesIO(body)})
        answer = app.wsgi_app(incoming, lambda status, headers, exc_info=None: None)
        for _ in answer:
            pass
        close = getattr(answer, "close", None)
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
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:5])

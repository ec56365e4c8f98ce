"""Dashboard benchmark: how long each page takes on 100,000 records in mongomock.

Seeds records in the stored schema (``benchmarks/bench_reading.make_record``: about 1.3 KB of
BSON each) spread over the last 7 days, registers the dashboard on a Flask app and times one
request per page through the test client (server time, no network), two ways:

- ``mongomock``: mongomock 4.3 as it is. Its cursor copies every matching document into a
  list, then slices that list again for every document it hands out (quadratic in the number
  of matches), and ``aggregate`` starts by reading the whole collection through that cursor,
  whatever the ``$match``. The reports therefore do not aggregate on mongomock: one
  ``TrackingQuerySet.reports()`` per page reads the window once and computes them in Python;
- ``mongomock, cursor fixed``: the same, with the cursor's results sliced once per query
  instead of once per document (``--fixed-cursor``), which leaves the helpers' own cost.

Measured 2026-11-21, 100,000 records, mongomock 4.3.0, Python 3.11.7, 2 cores (before the
reports' mongomock path: overview 245-297 s, endpoint page 68 s; before ``fetch`` picked the
first records of a listing in process: endpoint page 1.55 s, request list first page 2.04 s,
live page 2.25 s):

- overview, last hour / 24 hours / 7 days: 0.49 / 0.58 / 1.47 s
- endpoint page, last 24 hours: 0.51 s
- request list, first page / a middle page: 0.40 / 0.63 s
- request list, status=5xx / path and slow: 0.46 / 0.43 s
- request detail: 0.20 s
- live page / live feed poll: 0.34 / 0.48 s

By default the records are read from a real server (``--backend real``: SecantusDB started in
memory, or ``$TRACKING_BENCH_MONGODB_URI``); the two ways above are ``--backend mongomock``.
Usage::

    python benchmarks/bench_dashboard.py                       # 100,000 records, real server
    python benchmarks/bench_dashboard.py --backend mongomock   # mongomock, as is
    python benchmarks/bench_dashboard.py --backend mongomock --fixed-cursor   # the cursor fixed
    python benchmarks/bench_dashboard.py --records 10000       # a quicker run

Progress goes to stderr; the result is a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mongomock
from backends import connected
from bench_reading import BATCH, make_record
from flask import Flask

from flask_tracking.dashboard import make_blueprint
from flask_tracking.documents import Tracking

WEEK_SECONDS = 7 * 24 * 3600


def seed(collection: Any, total: int) -> None:
    """``total`` records, one every ``7 days / total`` up to now, in storage (time) order."""
    rng = random.Random(2024)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    step = WEEK_SECONDS / total
    for first in range(0, total, BATCH):
        batch = []
        for index in range(first, min(total, first + BATCH)):
            record = make_record(rng, index)
            record["date_created"] = now - timedelta(seconds=(total - index) * step)
            record["sample_rate"] = 1.0
            record["request_id"] = f"{index:032x}"
            batch.append(record)
        collection.insert_many(batch)


def fixed_cursor() -> Any:
    """mongomock's Cursor.__next__ without the per-document slice of all results."""
    cursor_class = mongomock.collection.Cursor

    def next_document(self: Any) -> Any:
        page = getattr(self, "_bench_page", None)
        if page is None or page[0] is not self._factory:
            page = (self._factory, self._compute_results(with_limit_and_skip=True))
            self._bench_page = page
        try:
            document = page[1][self._emitted]
        except IndexError:
            raise StopIteration from None
        self._emitted += 1
        return document

    return mock.patch.object(cursor_class, "__next__", next_document)


def progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--fixed-cursor", action="store_true", help="mongomock only")
    parser.add_argument("--backend", choices=("real", "mongomock"), default="real")
    options = parser.parse_args()
    if options.fixed_cursor and options.backend != "mongomock":
        parser.error("--fixed-cursor fixes mongomock's cursor: use it with --backend mongomock")
    with connected(options.backend, "bench_dashboard") as backend:
        measure(options, backend)


def measure(options: argparse.Namespace, backend: str) -> None:
    """Seed, time the pages and print the table (the backend is connected)."""
    collection = Tracking._get_collection()
    collection.drop()
    started = time.perf_counter()
    seed(collection, options.records)
    progress(f"{options.records:,} records seeded in {time.perf_counter() - started:.0f} s")
    gc.collect()
    gc.freeze()  # the seeded store is not garbage; a real server keeps it out of Python

    app = Flask("bench_dashboard")
    app.register_blueprint(make_blueprint(public=True))
    client = app.test_client()
    oldest_first = [document["_id"] for document in collection.find({}, {"_id": 1})]
    middle, newest = oldest_first[len(oldest_first) // 2], oldest_first[-1]
    pages = [
        ("overview, last hour", "/tracking/?window=1h"),
        ("overview, last 24 hours", "/tracking/?window=24h"),
        ("overview, last 7 days", "/tracking/?window=7d"),
        ("endpoint page, last 24 hours", "/tracking/endpoints/api.resource_3?window=24h"),
        ("request list, first page", "/tracking/requests"),
        ("request list, a page in the middle (before=)", f"/tracking/requests?before={middle}"),
        ("request list, status=5xx", "/tracking/requests?status=5xx"),
        (
            "request list, path=/api.resource_3/&slow=50",
            "/tracking/requests?path=/api.resource_3/&slow=50",
        ),
        ("request detail", f"/tracking/requests/{middle}"),
        ("live page", "/tracking/live"),
        ("live feed poll (after= the newest)", f"/tracking/live.json?after={newest}"),
    ]
    rows = []
    context = fixed_cursor() if options.fixed_cursor else mock.patch.object(sys, "argv", sys.argv)
    with context:
        for label, url in pages:
            started = time.perf_counter()
            response = client.get(url)
            took = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.get_data()[:500]!r}")
            rows.append((label, took))
            progress(f"{label}: {took:.2f} s")

    kind = f"{backend}, cursor fixed" if options.fixed_cursor else backend
    python = sys.version.split()[0]
    print(f"{kind}, Python {python}, {options.records:,} records")
    print()
    print("| page | time |")
    print("|---|---|")
    for label, took in rows:
        print(f"| {label} | {took:.2f} s |")


if __name__ == "__main__":
    main()

"""Reading benchmark: ``stats`` by endpoint and ``export`` of every record.

Seeds records in the stored schema (about 1.3 KB of BSON each; ``insert_many`` in batches of
10,000, the reading indexes created as the writer creates them) into a real server (default:
SecantusDB started in memory, or ``$TRACKING_BENCH_MONGODB_URI``; ``--backend mongomock`` for
mongomock), and at 50,000 records and at the full count (default 200,000) measures:

- ``flask tracking export -o /dev/null`` (JSON Lines, bodies in base64) of every record: its
  time, and its peak memory with ``tracemalloc`` (allocations made during the export only; the
  seeded store is not counted). On a server, through the server's cursor. On mongomock, two
  ways:

  - ``streaming cursor``: ``Collection.find`` replaced by a cursor that hands out one copied
    document at a time, as a server's cursor does batch by batch. This is the export itself
    (QuerySet without cache, raw dicts, one line written per record);
  - ``mongomock cursor``: mongomock's own ``Cursor``, which copies every matching document into
    a list before handing out the first one and slices that list again for every document
    (``mongomock/collection.py``, ``_compute_results``): its memory grows with the record count
    and its time with the square of it, whatever the caller does;

- ``Tracking.objects.stats(group_by="endpoint")``: on mongomock, the rows computed in Python
  from one read of the stored documents (the aggregation pipeline, which a server runs, took
  minutes here: mongomock evaluates it in Python after copying the whole collection through
  that same cursor).

- ``Tracking.objects.stats(group_by="endpoint")``: on a server, its aggregation pipeline.

Usage::

    python benchmarks/bench_reading.py                    # 200,000 records on SecantusDB
    python benchmarks/bench_reading.py --records 50000    # a quicker run
    python benchmarks/bench_reading.py --rounds 3         # best of 3 for each time
    python benchmarks/bench_reading.py --backend mongomock --mongomock-cursor-up-to 200000

Progress goes to stderr; the result is a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import logging
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mongomock
from backends import connected
from bson import ObjectId
from flask import Flask
from mongomock.filtering import filter_applies

from flask_tracking.cli import tracking_cli
from flask_tracking.documents import Tracking
from flask_tracking.indexes import ensure_indexes

SMALL = 50_000
BATCH = 10_000
START = datetime(2024, 5, 1)
ENDPOINTS = [f"api.resource_{index}" for index in range(18)] + ["index", None]
AGENTS = [
    ("Chrome", "124.0.0", "Windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0"),
    ("Firefox", "125.0", "Linux", "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Firefox/125.0"),
    ("Safari", "17.4", "Mac OS X", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Safari/605"),
]


def make_record(rng: random.Random, index: int) -> dict[str, Any]:
    """One stored record of a typical API request: about 1.3 KB of BSON."""
    endpoint = rng.choice(ENDPOINTS)
    post = rng.random() < 0.2
    browser, version, platform, agent = rng.choice(AGENTS)
    request_body = b'{"name":"' + b"x" * rng.randrange(50, 400) + b'"}' if post else None
    response_body = b'{"items":[' + b'"abcdefgh",' * rng.randrange(5, 40) + b'"z"]}'
    status = 404 if endpoint is None else rng.choice([200] * 17 + [201, 400, 500])
    return {
        "_id": ObjectId(),
        "date_created": START + timedelta(milliseconds=index * 250),
        "host": "api.example.com",
        "scheme": "https",
        "method": "POST" if post else "GET",
        "path": f"/{endpoint or 'missing'}/{rng.randrange(1000)}",
        "query_params": "page=2&limit=50" if rng.random() < 0.3 else "",
        "ip": f"203.0.113.{rng.randrange(256)}",
        "endpoint": endpoint,
        "url_rule": f"/{endpoint}/<int:id>" if endpoint else None,
        "referrer": None,
        "user": None,
        "user_id": str(rng.randrange(5000)) if rng.random() < 0.7 else None,
        "user_agent": {
            "browser": browser,
            "version": version,
            "platform": platform,
            "device": "Other",
            "language": "en-US",
            "string": agent,
        },
        "request_headers": [
            ["Host", "api.example.com"],
            ["User-Agent", agent],
            ["Accept", "application/json"],
            ["Accept-Language", "en-US,en;q=0.9"],
            ["Accept-Encoding", "gzip, deflate, br"],
            ["Authorization", "[Filtered]"],
        ],
        "request_body": request_body,
        "request_body_size": len(request_body) if request_body else 0,
        "request_body_truncated": False,
        "request_body_omitted": None,
        "response_headers": [
            ["Content-Type", "application/json"],
            ["Content-Length", str(len(response_body))],
        ],
        "response_body": response_body,
        "response_body_size": len(response_body),
        "response_body_truncated": False,
        "response_body_omitted": None,
        "status_code": status,
        "execution_time": round(rng.lognormvariate(3, 0.8), 3),
        "total_time": None,
        "hostname": "web-1",
        "custom_data": {"tenant": rng.randrange(50)} if rng.random() < 0.3 else None,
        "exception": "ValueError: bad input" if status == 500 else None,
    }


def seed(collection: Any, rng: random.Random, start: int, stop: int) -> None:
    for first in range(start, stop, BATCH):
        last = min(stop, first + BATCH)
        collection.insert_many([make_record(rng, index) for index in range(first, last)])


class StreamingCursor:
    """Enough of a pymongo cursor for an export: documents one at a time, copied on the way."""

    def __init__(self, collection: Any, spec: dict[str, Any]) -> None:
        self._documents = (
            copy.deepcopy(document)
            for document in collection._store.documents
            if filter_applies(spec, document)
        )
        self._left: int | None = None

    def batch_size(self, size: int) -> StreamingCursor:
        return self

    def rewind(self) -> StreamingCursor:  # called by MongoEngine before the first document
        return self

    def limit(self, count: int) -> StreamingCursor:
        self._left = count or None
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._left is not None:
            if self._left <= 0:
                raise StopIteration
            self._left -= 1
        return next(self._documents)


def streaming_find(self: Any, filter: Any = None, *args: Any, **kwargs: Any) -> StreamingCursor:
    return StreamingCursor(self, filter or {})


def export_all(runner: Any) -> None:
    result = runner.invoke(args=["tracking", "export", "-o", "/dev/null"])
    if result.exit_code != 0:
        raise RuntimeError(result.output)


def best_of(rounds: int, function: Callable[[], Any]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def peak_memory(function: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def streaming() -> Any:
    """Within it, ``Collection.find`` returns a :class:`StreamingCursor`."""
    return mock.patch.object(mongomock.collection.Collection, "find", streaming_find)


def progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1, help="timed runs each; the best counts")
    parser.add_argument(
        "--mongomock-cursor-up-to",
        type=int,
        default=SMALL,
        metavar="N",
        help="also export through mongomock's own cursor at counts up to N (its time grows "
        "with the square of the count: about 20 minutes at 200,000)",
    )
    parser.add_argument(
        "--backend",
        choices=("real", "mongomock"),
        default="real",
        help="read from a real server (SecantusDB in memory, or $TRACKING_BENCH_MONGODB_URI; "
        "default) or from mongomock",
    )
    options = parser.parse_args()
    with connected(options.backend, "bench_reading") as backend:
        measure(options, backend)


def measure(options: argparse.Namespace, backend: str) -> None:
    """Seed, measure and print the table (the backend is connected)."""
    on_mongomock = options.backend == "mongomock"
    total = options.records
    small = min(SMALL, total)

    collection = Tracking._get_collection()
    collection.drop()
    ensure_indexes(collection, logging.getLogger("bench_reading"))
    app = Flask("bench_reading")
    app.cli.add_command(tracking_cli)
    runner = app.test_cli_runner()
    rng = random.Random(2024)

    rows: list[tuple[str, str]] = []
    seeding = best_of(1, lambda: seed(collection, rng, 0, small))
    for count in sorted({small, total}):
        if count > small:
            seeding += best_of(1, lambda: seed(collection, rng, small, total))
        progress(f"{count:,} records seeded ({seeding:.1f} s so far)")
        cursor = "streaming cursor" if on_mongomock else "server cursor"
        with streaming() if on_mongomock else contextlib.nullcontext():
            peak = peak_memory(lambda: export_all(runner))
            took = best_of(options.rounds, lambda: export_all(runner))
        rows.append((f"export, {count:,} records, {cursor}: time", seconds(took, count)))
        rows.append((f"export, {count:,} records, {cursor}: peak memory", mib(peak)))
        progress(rows[-1][0])
        if on_mongomock and count <= options.mongomock_cursor_up_to:
            peak = peak_memory(lambda: export_all(runner))
            took = best_of(options.rounds, lambda: export_all(runner))
            rows.append(
                (f"export, {count:,} records, mongomock cursor: time", seconds(took, count))
            )
            rows.append((f"export, {count:,} records, mongomock cursor: peak memory", mib(peak)))
            progress(rows[-1][0])
        results: list[list[dict[str, Any]]] = []
        took = best_of(options.rounds, functools.partial(stats_by_endpoint, results))
        groups = len(results[-1])
        rows.append(
            (f'`stats(group_by="endpoint")`, {count:,} records, {groups} groups', f"{took:.1f} s")
        )
        progress(rows[-1][0])

    print(f"{backend}, Python {sys.version.split()[0]}, {total:,} records")
    print(f"seeded in {seeding:.1f} s (insert_many, batches of {BATCH:,})")
    print()
    print("| measurement | result |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


def stats_by_endpoint(results: list[list[dict[str, Any]]]) -> None:
    results.append(Tracking.objects.stats(group_by="endpoint"))


def seconds(took: float, count: int) -> str:
    return f"{took:.1f} s ({count / took:,.0f} records/s)"


if __name__ == "__main__":
    main()

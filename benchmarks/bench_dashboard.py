"""Dashboard benchmark: how long each page takes on a real server with a month of rollups.

Seeds, on a MongoDB-compatible server, the rollups of 1,000,000 requests spread over the last
30 days (a busy app's month: 20 endpoints with Zipf-like popularity, 20 % POST, 5 % 5xx, 3 %
4xx, log-normal latencies) and 100,000 stored records (``benchmarks/bench_reading.make_record``,
about 1.3 KB of BSON each) over the last 7 days, registers the dashboard on a Flask app and
times one request per page through the test client (server time, no network), and how much
of it the rollup reports (``RollupQuerySet``) took.

The rollups are folded by the writer's own :class:`~flask_tracking.aggregate.RollupAggregator`
and stored as the documents its ``$inc`` upserts make (one minute and one hour rollup per
request), inserted with ``insert_many`` to seed faster.

By default a SecantusDB server is started for the run (``example_app/mongo_server``: its
venv is installed on first use), in memory, with a 4 GB cache and a short oplog; ``--uri``
uses a running server instead (a real mongod, say). Usage::

    python benchmarks/bench_dashboard.py            # 1,000,000 requests, 100,000 records
    python benchmarks/bench_dashboard.py --uri mongodb://127.0.0.1:27017/
    python benchmarks/bench_dashboard.py --requests 100000 --records 10000  # quicker

Progress goes to stderr; the result is a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mongoengine
from bench_reading import BATCH, ENDPOINTS, make_record
from flask import Flask

from example_app.mongo_server import LocalServer
from flask_tracking.aggregate import RollupAggregator, RollupOutcome
from flask_tracking.dashboard import make_blueprint
from flask_tracking.documents import Tracking
from flask_tracking.indexes import ensure_indexes
from flask_tracking.rollups import RollupQuerySet
from flask_tracking.store import ensure_rollup_indexes, rollup_update

DATABASE = "bench_dashboard"
MONTH_SECONDS = 30 * 24 * 3600
WEEK_SECONDS = 7 * 24 * 3600
#: Endpoint popularity: the n-th most requested endpoint gets 1 / n of the top one's traffic.
WEIGHTS = [1 / rank for rank in range(1, len(ENDPOINTS) + 1)]


def progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def rollup_documents(requests: int, now: datetime) -> list[dict[str, Any]]:
    """The rollup documents of ``requests`` requests over the 30 days before ``now``."""
    documents: list[dict[str, Any]] = []

    def collect(aggregates: list[Any]) -> RollupOutcome:
        for key, aggregate in aggregates:
            operation = rollup_update(key, aggregate)
            document: dict[str, Any] = dict(operation._filter)
            for name, value in operation._doc["$inc"].items():
                parent, _, child = name.partition(".")
                if child:
                    document.setdefault(parent, {})[child] = value
                else:
                    document[name] = value
            document["time_max"] = aggregate.time_max
            documents.append(document)
        return RollupOutcome(written=len(aggregates))

    aggregator = RollupAggregator(collect)
    rng = random.Random(2024)
    end = now.replace(tzinfo=timezone.utc).timestamp()
    step = MONTH_SECONDS / requests
    for index in range(requests):
        endpoint = rng.choices(ENDPOINTS, WEIGHTS)[0]
        draw = rng.random()
        status = (
            "500 INTERNAL SERVER ERROR"
            if draw < 0.05
            else "404 NOT FOUND"
            if draw < 0.08
            else "200 OK"
        )
        aggregator.add(
            (
                end - (requests - index) * step,
                endpoint,
                "POST" if rng.random() < 0.2 else "GET",
                status,
                rng.lognormvariate(math.log(20), 0.9),
                False,
                rng.randrange(0, 400),
                rng.randrange(100, 4000),
            )
        )
        if index % 100_000 == 99_999:
            aggregator.fold()
    aggregator.write()
    return documents


def seed_records(collection: Any, total: int, now: datetime) -> None:
    """``total`` records, one every ``7 days / total`` up to now, in storage (time) order."""
    rng = random.Random(2024)
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


class RollupClock:
    """Adds up the time spent in the rollup reports (the rest of a page reads records)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def install(self) -> None:
        for name in ("stats", "summary", "timeline", "latency_histogram"):
            original = getattr(RollupQuerySet, name)
            setattr(RollupQuerySet, name, self._timed(original))

    def _timed(self, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--uri", help="a running server (default: start SecantusDB)")
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=100_000)
    options = parser.parse_args()

    server = None
    uri = options.uri
    if uri is None:
        # A bigger cache than the default, as FACTS.md recommends for long write-heavy runs.
        server = LocalServer(cache_size="4G").start()
        uri = server.uri
    try:
        mongoengine.connect(DATABASE, host=uri, uuidRepresentation="standard", tz_aware=False)
        database = mongoengine.get_db()
        database.client.drop_database(DATABASE)
        now = datetime.now(timezone.utc).replace(tzinfo=None)

        started = time.perf_counter()
        documents = rollup_documents(options.requests, now)
        progress(f"{options.requests:,} requests folded into {len(documents):,} rollups")
        rollups = database["tracking_rollups"]
        ensure_rollup_indexes(rollups, 90 * 86400, logging.getLogger("bench"))
        for first in range(0, len(documents), BATCH):
            rollups.insert_many(documents[first : first + BATCH])
        progress(f"rollups stored in {time.perf_counter() - started:.0f} s")

        started = time.perf_counter()
        collection = Tracking._get_collection()
        seed_records(collection, options.records, now)
        ensure_indexes(collection)
        progress(f"{options.records:,} records stored in {time.perf_counter() - started:.0f} s")

        app = Flask("bench_dashboard")
        app.register_blueprint(make_blueprint(public=True))
        client = app.test_client()
        newest = collection.find_one({}, {"_id": 1}, sort=[("_id", -1)])["_id"]
        middle = collection.find_one({}, {"_id": 1}, skip=options.records // 2, sort=[("_id", 1)])
        middle_id = middle["_id"]
        pages = [
            ("overview, last hour", "/tracking/?window=1h"),
            ("overview, last 24 hours", "/tracking/?window=24h"),
            ("overview, last 7 days", "/tracking/?window=7d"),
            ("endpoint page, last 24 hours", "/tracking/endpoints/api.resource_3?window=24h"),
            ("endpoint page, last 7 days", "/tracking/endpoints/api.resource_3?window=7d"),
            ("request list, first page", "/tracking/requests"),
            (
                "request list, a page in the middle (before=)",
                f"/tracking/requests?before={middle_id}",
            ),
            ("request list, status=5xx", "/tracking/requests?status=5xx"),
            ("request detail", f"/tracking/requests/{middle_id}"),
            ("live page", "/tracking/live"),
            ("live feed poll (after= the newest)", f"/tracking/live.json?after={newest}"),
        ]
        rows = []
        clock = RollupClock()
        clock.install()
        for label, url in pages:
            clock.seconds = 0.0
            started = time.perf_counter()
            response = client.get(url)
            took = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.get_data()[:500]!r}")
            rows.append((label, took, clock.seconds))
            progress(f"{label}: {took:.2f} s (rollups {clock.seconds:.2f} s)")
        version = database.client.server_info().get("version")
        name = "SecantusDB" if options.uri is None else "server"
        print(
            f"{name} (says {version}), Python {sys.version.split()[0]}, "
            f"{options.requests:,} requests in {len(documents):,} rollups, "
            f"{options.records:,} records"
        )
        print()
        print("| page | time | of which rollup reports |")
        print("|---|---|---|")
        for label, took, rollups in rows:
            print(f"| {label} | {took:.2f} s | {rollups:.2f} s |")
    finally:
        mongoengine.disconnect()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()

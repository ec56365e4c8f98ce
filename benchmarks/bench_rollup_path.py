"""What the rollups cost the request thread, and the writer thread.

Three measurements, in process (no server: the rollups are written to mongomock):

- ``sample``: building the sample tuple of a finished request and appending it to the
  aggregator's deque, what ``finish()`` adds per request (``timeit``, best of 5);
- ``fold``: folding one sample into its minute aggregate on the writer thread (the hour
  aggregates are sums of those, made once per key and round);
- ``request``: a whole request through the Flask test client with ``TRACKING_ROLLUPS`` on and
  off (``TRACKING_SAMPLE_RATE=0``: no record is kept, so the rollups are all that is written),
  alternating blocks of requests to even out the machine's noise; median of the blocks.

Usage::

    python benchmarks/bench_rollup_path.py
    python benchmarks/bench_rollup_path.py --blocks 20 --requests 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mongoengine
import mongomock
from flask import Flask

from flask_tracking import Tracking
from flask_tracking.aggregate import RollupAggregator, RollupOutcome
from flask_tracking.capture import BodyCapture, RequestState
from flask_tracking.extension import _rollup_sample
from flask_tracking.testing import accept_pymongo_bulk_updates


def finished_state() -> RequestState:
    state = RequestState()
    state.endpoint = "api.items"
    state.environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/items/1"}
    state.status = "200 OK"
    state.execution_time = 12.5
    state.response_body = BodyCapture(65536)
    return state


def per_call(statement: str, namespace: dict[str, object], number: int) -> float:
    """Nanoseconds per execution, best of 5 runs."""
    runs = timeit.repeat(statement, globals=namespace, number=number, repeat=5)
    return min(runs) / number * 1e9


def app_with(rollups: bool) -> Flask:
    app = Flask(f"bench_{rollups}")
    app.config.update(
        TRACKING_ROLLUPS=rollups, TRACKING_SAMPLE_RATE=0.0, TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS=None
    )

    @app.get("/api/items/<int:item>")
    def item(item: int) -> str:
        return "ok"

    Tracking(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    options = parser.parse_args()

    aggregator = RollupAggregator(lambda aggregates: RollupOutcome(written=len(aggregates)))
    state = finished_state()
    namespace = {"aggregator": aggregator, "state": state, "sample": _rollup_sample}
    sample_ns = per_call("aggregator.add(sample(state))", namespace, 200_000)
    aggregator.reset()
    for _ in range(200_000):
        aggregator.add(_rollup_sample(state))
    started = time.perf_counter()
    aggregator.fold()
    fold_ns = (time.perf_counter() - started) / 200_000 * 1e9

    accept_pymongo_bulk_updates()
    mongoengine.connect(
        "bench_rollup_path", mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
    )
    clients = {flag: app_with(flag).test_client() for flag in (False, True)}
    for client in clients.values():
        for _ in range(500):
            client.get("/api/items/1")
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(options.blocks):
        for flag, client in clients.items():
            started = time.perf_counter()
            for _ in range(options.requests):
                client.get("/api/items/1")
            times[flag].append((time.perf_counter() - started) / options.requests * 1e6)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"Python {sys.version.split()[0]}")
    print()
    print("| measurement | time |")
    print("|---|---|")
    print(f"| sample tuple + deque append (request thread) | {sample_ns:.0f} ns |")
    print(f"| fold one sample into its minute aggregate (writer thread) | {fold_ns:.0f} ns |")
    print(f"| request through the test client, rollups off | {off:.1f} µs |")
    print(f"| request through the test client, rollups on | {on:.1f} µs ({on - off:+.1f} µs) |")


if __name__ == "__main__":
    main()

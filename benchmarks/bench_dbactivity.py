"""What counting a request's database work costs per MongoDB command, on a real server.

Starts one SecantusDB (``example_app.mongo_server.LocalServer``, in memory) unless
``--uri`` names a server, and measures three things:

- ``listener``: the time :data:`flask_tracking.dbactivity.LISTENER` spends per command inside
  a tracked request: its ``started`` and ``succeeded`` callbacks replayed on the very events
  pymongo published for a mix of real commands (``find`` with a filter of three keys and an
  operator, ``insert``, ``update``, ``aggregate`` of two stages), best of ``--rounds``;
- ``listener, no request``: the same callbacks outside any request (a background job's
  commands), where the listener only reads its context variable;
- ``end to end``: ``find_one`` round trips through a client that reports to the listener,
  inside a tracked request, against a client without any listener, rounds alternating (median
  per command). This includes pymongo building its event objects, and the server's noise.

Usage::

    python benchmarks/bench_dbactivity.py                 # about 30 seconds
    python benchmarks/bench_dbactivity.py --rounds 9 --commands 2000
    python benchmarks/bench_dbactivity.py --uri mongodb://127.0.0.1:27017/

The result is a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymongo
from pymongo import monitoring

from flask_tracking.capture import RequestState
from flask_tracking.dbactivity import LISTENER, attach, detach


class _Recorder(monitoring.CommandListener):
    """Keeps the events pymongo publishes (to replay them through the listener)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, Any]] = []
        self._started: dict[int, Any] = {}

    def started(self, event: Any) -> None:
        self._started[event.request_id] = event

    def succeeded(self, event: Any) -> None:
        self.events.append((self._started.pop(event.request_id), event))

    def failed(self, event: Any) -> None:
        self._started.pop(event.request_id, None)


def _real_events(uri: str) -> list[tuple[Any, Any]]:
    recorder = _Recorder()
    client: Any = pymongo.MongoClient(uri, event_listeners=[recorder])
    try:
        items = client.bench_dbactivity.items
        items.insert_one({"sku": "a", "price": 3, "tags": ["x"]})
        items.find_one({"sku": "a", "price": {"$gte": 1}, "tags": "x"})
        items.update_one({"sku": "a"}, {"$set": {"price": 4}})
        list(items.aggregate([{"$match": {"sku": "a"}}, {"$group": {"_id": "$sku"}}]))
    finally:
        client.drop_database("bench_dbactivity")
        client.close()
    wanted = {"insert", "find", "update", "aggregate"}
    return [pair for pair in recorder.events if pair[0].command_name in wanted]


def _replay(events: list[tuple[Any, Any]], repeat: int, in_request: bool) -> tuple[float, float]:
    """Seconds per command of the listener's callbacks: wall time, and this thread's CPU
    time (not disturbed by other processes on a busy machine)."""
    state = RequestState()
    token = attach(state) if in_request else None
    started_cb, succeeded_cb = LISTENER.started, LISTENER.succeeded
    try:
        begin, begin_cpu = time.perf_counter(), time.thread_time()
        for _ in range(repeat):
            for started, succeeded in events:
                started_cb(started)
                succeeded_cb(succeeded)
        elapsed, cpu = time.perf_counter() - begin, time.thread_time() - begin_cpu
    finally:
        if token is not None:
            detach(token)
    if in_request:
        assert state.db.count == repeat * len(events)
    count = repeat * len(events)
    return elapsed / count, cpu / count


def _round_trips(collection: Any, commands: int, in_request: bool) -> float:
    state = RequestState()
    token = attach(state) if in_request else None
    try:
        begin = time.perf_counter()
        for i in range(commands):
            collection.find_one({"sku": "a", "n": i % 7})
        elapsed = time.perf_counter() - begin
    finally:
        if token is not None:
            detach(token)
    return elapsed / commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uri", help="a running server (default: start a SecantusDB)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", type=int, default=1000, help="round trips per round")
    parser.add_argument("--replays", type=int, default=20000, help="commands replayed per round")
    parser.add_argument(
        "--replay-only",
        type=int,
        metavar="N",
        help="only record the events, then replay N commands once inside a request, and exit "
        "(for instruction counts: see benchmarks/README.md)",
    )
    args = parser.parse_args()

    server = None
    uri = args.uri
    if uri is None:
        from example_app.mongo_server import LocalServer

        server = LocalServer().start()
        uri = server.uri
    try:
        events = _real_events(uri)
        if args.replay_only is not None:
            if server is not None:
                server.stop()
                server = None
            _replay(events, max(1, args.replay_only // len(events)), True)
            return
        repeat = max(1, args.replays // len(events))
        listener = [_replay(events, repeat, True) for _ in range(args.rounds)]
        idle = [_replay(events, repeat, False) for _ in range(args.rounds)]

        watched: Any = pymongo.MongoClient(uri, event_listeners=[LISTENER])
        plain: Any = pymongo.MongoClient(uri)
        try:
            watched.bench_dbactivity.items.insert_one({"sku": "a", "n": 1})
            with_listener, without = [], []
            for round_number in range(args.rounds):
                pair = [
                    (with_listener, watched.bench_dbactivity.items, True),
                    (without, plain.bench_dbactivity.items, False),
                ]
                for times, collection, in_request in pair[:: 1 if round_number % 2 else -1]:
                    times.append(_round_trips(collection, args.commands, in_request))
        finally:
            plain.drop_database("bench_dbactivity")
            watched.close()
            plain.close()
    finally:
        if server is not None:
            server.stop()

    with_median, without_median = statistics.median(with_listener), statistics.median(without)
    print(f"Server: {uri} ({'SecantusDB, started here' if server else 'given'})")
    print(f"Commands replayed: {', '.join(started.command_name for started, _ in events)}\n")
    print("| measure | per command |")
    print("|---|---|")
    for label, times in (("in a tracked request", listener), ("no request", idle)):
        wall = min(wall for wall, _ in times) * 1e6
        cpu = min(cpu for _, cpu in times) * 1e6
        print(
            f"| listener, {label} (best of {args.rounds}) | {wall:.2f} µs wall, "
            f"{cpu:.2f} µs thread CPU |"
        )
    print(f"| find_one round trip, no listener (median) | {without_median * 1e6:.0f} µs |")
    print(f"| find_one round trip, listener + request (median) | {with_median * 1e6:.0f} µs |")
    print(
        f"| end-to-end difference | {(with_median - without_median) * 1e6:+.0f} µs "
        f"({(with_median / without_median - 1) * 100:+.1f} %) |"
    )
    spread = [f"{t * 1e6:.0f}" for t in without]
    print(f"\nRound trips without listener, per round (µs): {', '.join(spread)}")
    spread = [f"{t * 1e6:.0f}" for t in with_listener]
    print(f"Round trips with listener, per round (µs): {', '.join(spread)}")


if __name__ == "__main__":
    main()

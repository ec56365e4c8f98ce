"""Sizing figures for docs/deployment.md: bytes per record, collection and index sizes per
storage mode, and the records per second one writer sustains.

Requests are captured by a real app (Flask test client, flask_tracking's own middleware and
hooks), then written by the real ``MongoSink`` (conversion, redaction, ``insert_many``) into:

- SecantusDB, started here (``example_app/mongo_server.py``, in memory), and
- the null server (``/work/shared/tools/null_mongo.py`` or ``--null PATH``), which acknowledges
  writes and stores nothing: the writer's own cost, as against a database on another host.

Usage: ``python benchmarks/bench_storage.py [--records 3000] [--throughput 5000]``
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bson
import pymongo
from flask import Flask, Response, request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from example_app.mongo_server import LocalServer
from flask_tracking import Tracking
from flask_tracking.store import MongoSink
from flask_tracking.writer import BatchOutcome

CHROME = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;"
    "q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "Cookie": "session=" + "s" * 180 + "; theme=dark",
}
#: The mixture written to measure collection sizes and throughput: GET pages, JSON calls, uploads.
MIX = (("get", 80), ("json", 15), ("upload", 5))


def make_app(max_body: int) -> tuple[Flask, list[Any]]:
    """An app with three kinds of views whose records are kept in a list, not written."""
    app = Flask("sizing")
    app.config.update(TRACKING_MAX_BODY_LENGTH=max_body, TRACKING_MONGODB_URI=None)

    @app.get("/products/<int:product>")
    def product(product: int) -> str:
        rows = "".join(f"<li>Item {product}-{i}: {'x' * 40}</li>" for i in range(80))
        return f"<html><body><h1>Product {product}</h1><ul>{rows}</ul></body></html>"

    @app.post("/api/orders")
    def orders() -> Response:
        order = request.get_json()
        reply = {"id": 1234, "status": "accepted", "lines": order["lines"], "total": 99.5}
        return Response(json.dumps(reply), mimetype="application/json", status=201)

    @app.post("/upload")
    def upload() -> Response:
        sizes = {name: len(file.read()) for name, file in request.files.items()}
        return Response(json.dumps(sizes), mimetype="application/json")

    Tracking(app)
    captured: list[Any] = []
    writer = app.extensions["tracking"]._apps[app].writer

    def keep(records: list[Any]) -> BatchOutcome:
        captured.extend(records)
        return BatchOutcome(written=len(records))

    writer._write_batch = keep
    return app, captured


def run_requests(app: Flask, kind: str, count: int) -> None:
    client = app.test_client()
    for i in range(count):
        if kind == "get":
            client.get(f"/products/{i}?page={i % 7}&sort=price", headers=CHROME)
        elif kind == "json":
            lines = [{"sku": f"SKU-{i}-{n}", "quantity": n + 1, "price": 9.99} for n in range(8)]
            body = {"customer": f"c{i}", "lines": lines, "note": "leave at the door"}
            client.post(
                "/api/orders",
                json=body,
                headers={"Authorization": "Bearer " + "t" * 40, "User-Agent": "python-requests"},
            )
        else:
            data = {"file": (io.BytesIO(os.urandom(200_000)), f"photo{i}.jpg")}
            client.post("/upload", data=data, headers=CHROME)
    assert app.extensions["tracking"].flush(30)


def capture(kind: str, count: int, max_body: int) -> list[Any]:
    app, captured = make_app(max_body)
    run_requests(app, kind, count)
    return captured


def sink_for(database: Any, mode: str) -> MongoSink:
    return MongoSink(
        lambda: database,
        capped_size_bytes=1024**3,
        capped_max_documents=10_000_000,
        max_record_bytes=2 * 1024 * 1024,
        write_timeout_seconds=60,
        storage_mode=mode,
        retention_seconds=7 * 24 * 3600,
        logger=logging.getLogger("bench"),
    )


def percentiles(values: list[int]) -> tuple[int, int]:
    ordered = sorted(values)
    return int(statistics.median(ordered)), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def record_sizes(client: Any, count: int) -> list[dict[str, Any]]:
    rows = []
    for kind, _ in MIX:
        for bodies, max_body in (("with bodies", 65536), ("without bodies", 0)):
            states = capture(kind, count, max_body)
            database = client[f"size_{kind}_{max_body}"]
            assert sink_for(database, "capped")(states).written == len(states)
            sizes = [len(bson.encode(doc)) for doc in database["tracking"].find()]
            median, p99 = percentiles(sizes)
            rows.append({"kind": kind, "bodies": bodies, "median": median, "p99": p99})
            client.drop_database(database.name)
    return rows


def mixture(scale: int) -> list[Any]:
    states: list[Any] = []
    for kind, share in MIX:
        states += capture(kind, max(1, scale * share // 100), 65536)
    return states


def collection_sizes(client: Any, states: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for mode in ("capped", "ttl", "timeseries"):
        database = client[f"modes_{mode}"]
        sink = sink_for(database, mode)
        for start in range(0, len(states), 500):
            assert sink(states[start : start + 500]).written == len(states[start : start + 500])
        stats = database.command("collStats", "tracking")
        rows.append(
            {
                "mode": mode,
                "count": stats.get("count"),
                "size": stats.get("size"),
                "avgObjSize": stats.get("avgObjSize"),
                "storageSize": stats.get("storageSize"),
                "totalIndexSize": stats.get("totalIndexSize"),
                "indexSizes": stats.get("indexSizes"),
            }
        )
        client.drop_database(database.name)
    return rows


def throughput(uri: str, states: list[Any], total: int, modes: tuple[str, ...]) -> dict[str, float]:
    client: Any = pymongo.MongoClient(uri)
    rates = {}
    try:
        for mode in modes:
            database = client[f"rate_{mode}"]
            sink = sink_for(database, mode)
            sink(states[:1])  # collection and indexes set up outside the timing
            written, started = 0, time.perf_counter()
            while written < total:
                for start in range(0, len(states), 500):
                    written += sink(states[start : start + 500]).written
            rates[mode] = written / (time.perf_counter() - started)
            client.drop_database(database.name)
    finally:
        client.close()
    return rates


def start_null(path: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, path, "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200, help="requests per kind for sizes")
    parser.add_argument("--mix", type=int, default=3000, help="records of the mixture per mode")
    parser.add_argument("--throughput", type=int, default=5000, help="records per rate run")
    parser.add_argument("--null", default="/work/shared/tools/null_mongo.py")
    args = parser.parse_args()
    logging.getLogger("flask_tracking").setLevel(logging.ERROR)
    results: dict[str, Any] = {}
    with LocalServer() as server:
        client: Any = pymongo.MongoClient(server.uri)
        results["record_sizes"] = record_sizes(client, args.records)
        states = mixture(args.mix)
        results["collections_secantus"] = collection_sizes(client, states)
        client.close()
        results["records_per_second_secantus"] = throughput(
            server.uri, states, args.throughput, ("capped", "ttl", "timeseries")
        )
    process, uri = start_null(args.null)
    try:
        results["records_per_second_null"] = throughput(
            uri, states, args.throughput * 4, ("capped", "ttl", "timeseries")
        )
    finally:
        process.terminate()
        process.wait()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

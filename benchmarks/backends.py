"""Where the benchmarks store their records and read them from.

- ``null``: ``benchmarks/null_mongo.py``, a wire-protocol server that acknowledges every write
  and stores nothing, started as a child process. pymongo pays its whole client cost (BSON
  encoding, the socket, batching) while the server spends next to no CPU: the cost figures.
- ``real``: a real MongoDB-compatible server: ``$TRACKING_BENCH_MONGODB_URI`` when set (a
  mongod), else a SecantusDB started in memory for the run (example_app/mongo_server.py).
- ``mongomock``: mongomock, in process (no server at all).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import mongoengine

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("null", "real", "mongomock")


@contextlib.contextmanager
def connected(backend: str, database: str, alias: str = "default") -> Iterator[str]:
    """Connect MongoEngine's ``alias`` to ``database`` on ``backend`` for the duration; yield a
    description of the backend for the report. The database is dropped at the end."""
    with _server(backend) as (uri, description):
        if uri is None:
            import mongomock

            mongoengine.connect(
                database,
                alias=alias,
                mongo_client_class=mongomock.MongoClient,
                uuidRepresentation="standard",
            )
        else:
            mongoengine.connect(
                database,
                alias=alias,
                host=uri,
                uuidRepresentation="standard",
                serverSelectionTimeoutMS=10_000,
            )
        try:
            yield description
        finally:
            db = mongoengine.get_db(alias)
            with contextlib.suppress(Exception):
                db.client.drop_database(db.name)
            mongoengine.disconnect(alias)


@contextlib.contextmanager
def _server(backend: str) -> Iterator[tuple[str | None, str]]:
    if backend == "mongomock":
        yield None, f"mongomock {version('mongomock')}, in process"
    elif backend == "null":
        with null_server() as uri:
            yield uri, "null server (benchmarks/null_mongo.py: acknowledges writes, stores nothing)"
    elif backend == "real":
        given = os.environ.get("TRACKING_BENCH_MONGODB_URI")
        if given:
            yield given, "the MongoDB server at $TRACKING_BENCH_MONGODB_URI"
            return
        sys.path.insert(0, str(ROOT))
        from example_app.mongo_server import SECANTUS_VERSION, LocalServer

        with LocalServer() as server:
            yield server.uri, f"SecantusDB {SECANTUS_VERSION} (in memory, a separate process)"
    else:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")


@contextlib.contextmanager
def null_server() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("null_mongo.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        uri = process.stdout.readline().strip()
        if not uri.startswith("mongodb://"):
            raise RuntimeError(f"null_mongo.py did not start (it said {uri!r})")
        yield uri
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

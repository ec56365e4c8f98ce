"""Against the real server (SecantusDB, or the mongod named by TRACKING_TEST_MONGODB_URI).

mongomock cannot create capped collections, evict, fail or time out; this module checks those
paths on a real server. Example: ``TRACKING_TEST_MONGODB_URI=mongodb://localhost:27017/ pytest``.
Each test uses a fresh database named ``flask_tracking_test_<random>`` and drops it afterwards.
"""

from __future__ import annotations

import uuid
from typing import Any

import bson
from flask import Flask

from flask_tracking import Tracking
from flask_tracking.documents import Tracking as TrackingDocument

from .conftest import FAST_WRITER, REAL, add_routes, secantus_differs

pytestmark = REAL


def tracked_app(**config: Any) -> Flask:
    app = Flask(f"real_{uuid.uuid4().hex[:6]}")
    app.config.update(TESTING=True, **FAST_WRITER)
    app.config.update(config)
    add_routes(app)
    Tracking(app)
    return app


def test_collection_is_created_capped_with_the_configured_size(real_db: Any) -> None:
    app = tracked_app(TRACKING_TABLE_SIZE=1024 * 1024, TRACKING_MAX_DOCUMENTS=1000)
    app.test_client().get("/hello")
    assert app.extensions["tracking"].flush(10)
    options = real_db["tracking"].options()
    assert options["capped"] is True
    assert 1024 * 1024 <= options["size"] <= 1024 * 1024 + 256
    assert options["max"] == 1000


def test_capped_collection_evicts_the_oldest_records(real_db: Any) -> None:
    app = tracked_app(TRACKING_TABLE_SIZE=64 * 1024, TRACKING_MAX_DOCUMENTS=20)
    client = app.test_client()
    for index in range(50):
        client.get(f"/hello?i={index}")
        assert app.extensions["tracking"].flush(10)
    queries = [doc["query_params"] for doc in real_db["tracking"].find().sort("$natural", 1)]
    assert queries == [f"i={index}" for index in range(30, 50)]


def test_capped_collection_evicts_within_one_batch(real_db: Any, real_server: Any) -> None:
    secantus_differs(real_server, "no eviction inside one insert_many batch")
    app = tracked_app(TRACKING_TABLE_SIZE=64 * 1024, TRACKING_MAX_DOCUMENTS=20)
    client = app.test_client()
    for index in range(50):
        client.get(f"/hello?i={index}")
    assert app.extensions["tracking"].flush(10)
    queries = [doc["query_params"] for doc in real_db["tracking"].find().sort("$natural", 1)]
    assert len(queries) == 20
    assert queries[-1] == "i=49"
    assert "i=0" not in queries


def test_written_records_read_back_and_encode(real_db: Any) -> None:
    app = tracked_app()
    client = app.test_client()
    client.post("/echo", json={"k": "v", "password": "hunter2"})
    client.get("/custom")
    assert app.extensions["tracking"].flush(10)
    raw = list(real_db["tracking"].find())
    assert len(raw) == 2
    for document in raw:
        bson.encode(document)
    echo = TrackingDocument.objects.get(path="/echo")
    assert b"hunter2" not in echo.request_body
    assert TrackingDocument.objects.get(path="/custom").custom_data["order"] == 42


def test_existing_uncapped_collection_is_used_as_is(real_db: Any, caplog: Any) -> None:
    real_db.create_collection("tracking")
    app = tracked_app()
    app.test_client().get("/hello")
    assert app.extensions["tracking"].flush(10)
    assert real_db["tracking"].options().get("capped") is not True
    assert real_db["tracking"].count_documents({}) == 1
    assert "convertToCapped" in caplog.text


def test_retried_batch_creates_no_duplicates(real_db: Any) -> None:
    from flask_tracking.store import MongoSink

    sink = MongoSink(
        lambda: real_db,
        capped_size_bytes=1024 * 1024,
        capped_max_documents=1000,
        max_record_bytes=2 * 1024 * 1024,
        write_timeout_seconds=5,
    )
    documents = [{"_id": bson.ObjectId(), "path": f"/{i}"} for i in range(10)]
    real_db["tracking"].insert_many(documents[:5])
    outcome = sink(documents)
    assert outcome.written == 10 and not outcome.dropped and not outcome.retry
    assert real_db["tracking"].count_documents({}) == 10

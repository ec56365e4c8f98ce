"""flask_tracking.migrate and ``flask tracking migrate``: every pair of modes, an interruption in
the middle and its resumption (no record lost, none stored twice), and the refusals."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bson import ObjectId, Timestamp
from flask import Flask
from pymongo.errors import BulkWriteError

from flask_tracking import Tracking
from flask_tracking.migrate import CHECKPOINTS, MigrationError, migrate, source_name
from flask_tracking.storage import SERIES_FIELD, ensure_collection, tracking_spec

from .conftest import FAST_WRITER, REAL, add_routes, failing_once

RECORDS = 25
BATCH = 10
LOGGER = logging.getLogger("tests.migrate")


def spec(mode: str, name: str = "tracking") -> Any:
    return tracking_spec(
        mode, name=name, size_bytes=1 << 20, max_documents=10_000, retention_seconds=86_400
    )


def seed(database: Any, mode: str) -> list[ObjectId]:
    """``RECORDS`` records in a ``mode`` collection, ids shuffled against insertion order."""
    ensure_collection(database, spec(mode), LOGGER)
    now = datetime.now(timezone.utc)
    documents = [
        {
            "_id": ObjectId(),
            "date_created": now - timedelta(minutes=i),
            "path": f"/items/{i}",
            "endpoint": "items",
            "method": "GET",
            "status_code": 200 if i % 5 else 500,
        }
        for i in range(RECORDS)
    ]
    database["tracking"].insert_many(documents[::2] + documents[1::2])
    return sorted(document["_id"] for document in documents)


def options_of(database: Any, name: str = "tracking") -> dict[str, Any] | None:
    try:
        return dict(database[name].options())
    except Exception:  # mongomock has no options()
        return None


def assert_moved(database: Any, ids: list[ObjectId], mode: str) -> None:
    stored = [document["_id"] for document in database["tracking"].find({}, {"_id": 1})]
    assert Counter(stored) == Counter(ids)  # nothing lost, nothing twice
    assert database[CHECKPOINTS].count_documents({}) == 0
    options = options_of(database)
    if options is not None:
        assert bool(options.get("capped")) == (mode == "capped")
        assert ("timeseries" in options) == (mode == "timeseries")
    if mode == "timeseries":
        document = database["tracking"].find_one({"status_code": 500})
        assert document[SERIES_FIELD] == {"endpoint": "items", "method": "GET", "status_code": 500}
    if mode == "ttl":
        index = database["tracking"].index_information()["tracking_date_created"]
        assert index["expireAfterSeconds"] == 86_400


@pytest.mark.parametrize(
    ("source", "target"),
    [("capped", "ttl"), ("capped", "timeseries"), ("ttl", "capped"), ("ttl", "timeseries")],
)
def test_migration_moves_every_record(mongo: Any, source: str, target: str) -> None:
    ids = seed(mongo, source)
    progress: list[tuple[int, int]] = []
    result = migrate(
        mongo, spec(target), batch_size=BATCH, on_batch=lambda *done: progress.append(done)
    )
    assert (result.copied, result.total, result.source) == (
        RECORDS,
        RECORDS,
        source_name("tracking"),
    )
    assert progress == [(10, RECORDS), (20, RECORDS), (25, RECORDS)]
    assert_moved(mongo, ids, target)
    assert mongo[source_name("tracking")].count_documents({}) == RECORDS  # kept by default


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("target", ["ttl", "timeseries", "capped"])
def test_interrupted_migration_resumes_without_loss_or_duplicates(mongo: Any, target: str) -> None:
    ids = seed(mongo, "ttl" if target == "capped" else "capped")

    def stop_after_two(copied: int, total: int) -> None:
        if copied >= 2 * BATCH:  # the second batch is stored but not checkpointed yet
            raise Interrupted

    with pytest.raises(Interrupted):
        migrate(mongo, spec(target), batch_size=BATCH, on_batch=stop_after_two)
    assert mongo["tracking"].count_documents({}) == 2 * BATCH
    assert mongo[CHECKPOINTS].find_one({"_id": "tracking"})["copied"] == BATCH
    result = migrate(mongo, spec(target), batch_size=BATCH, drop_source=True)
    assert result.copied == RECORDS - BATCH  # resumed after the first batch
    assert result.source is None
    assert source_name("tracking") not in mongo.list_collection_names()
    assert_moved(mongo, ids, target)


def test_records_written_during_the_migration_stay(mongo: Any) -> None:
    ids = seed(mongo, "capped")
    fresh = {"_id": ObjectId(), "date_created": datetime.now(timezone.utc), "path": "/live"}

    def live_write(copied: int, total: int) -> None:
        if copied == BATCH:
            mongo["tracking"].insert_one(dict(fresh))  # the app writes by name meanwhile

    migrate(mongo, spec("ttl"), batch_size=BATCH, on_batch=live_write)
    assert_moved(mongo, [*ids, fresh["_id"]], "ttl")


def test_another_mode_cannot_start_while_one_is_under_way(mongo: Any) -> None:
    seed(mongo, "capped")

    def stop(copied: int, total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        migrate(mongo, spec("ttl"), batch_size=BATCH, on_batch=stop)
    with pytest.raises(MigrationError, match="--to ttl"):
        migrate(mongo, spec("timeseries"), batch_size=BATCH)


def test_old_records_of_an_earlier_migration_block_the_next(mongo: Any) -> None:
    seed(mongo, "capped")
    migrate(mongo, spec("ttl"), batch_size=BATCH)
    with pytest.raises(MigrationError, match="earlier migration"):
        migrate(mongo, spec("capped"), batch_size=BATCH)


def test_nothing_to_do_when_the_collection_is_missing(mongo: Any) -> None:
    assert migrate(mongo, spec("ttl")).nothing_to_do
    assert "tracking" in mongo.list_collection_names()
    index = mongo["tracking"].index_information()["tracking_date_created"]
    assert index["expireAfterSeconds"] == 86_400


@REAL
@pytest.mark.parametrize(("current", "target"), [("ttl", "ttl"), ("capped", "capped")])
def test_nothing_to_do_when_in_the_mode_already(real_db: Any, current: str, target: str) -> None:
    seed(real_db, current)
    if current == "ttl":
        real_db["tracking"].drop_index("tracking_date_created")  # a plain collection
    assert migrate(real_db, spec(target)).nothing_to_do
    assert source_name("tracking") not in real_db.list_collection_names()
    assert real_db["tracking"].count_documents({}) == RECORDS
    if target == "ttl":  # a plain collection gets its TTL index
        index = real_db["tracking"].index_information()["tracking_date_created"]
        assert index["expireAfterSeconds"] == 86_400


@REAL
def test_timeseries_source_is_refused_with_the_way_out(real_db: Any) -> None:
    seed(real_db, "timeseries")
    with pytest.raises(MigrationError, match=r"\$out"):
        migrate(real_db, spec("capped"))
    assert real_db["tracking"].count_documents({}) == RECORDS


@REAL
def test_a_target_created_in_another_mode_meanwhile_is_refused(real_db: Any) -> None:
    seed(real_db, "capped")
    real_db[CHECKPOINTS].insert_one({"_id": "tracking", "to": "timeseries", "last_id": None})
    real_db["tracking"].rename(source_name("tracking"))
    real_db.create_collection("tracking")  # a writer inserted before the target was created
    with pytest.raises(MigrationError, match="Stop that writer"):
        migrate(real_db, spec("timeseries"))


# --- the command ------------------------------------------------------------------------


def test_cli_migrates_with_progress(mongo: Any, backend: str) -> None:
    ids = seed(mongo, "capped")
    app = Flask(f"migrate_{uuid.uuid4().hex[:6]}")
    app.config.update(TESTING=True, TRACKING_RETENTION_HOURS=24, **FAST_WRITER)
    add_routes(app)
    Tracking(app)
    try:
        runner = app.test_cli_runner()
        result = runner.invoke(args=["tracking", "migrate", "--to", "ttl", "--batch-size", "10"])
        assert result.exit_code == 0, result.output
        assert "copied 10 of 25 records (40%)" in result.output
        assert "Done: 25 records copied into 'tracking' (ttl)." in result.output
        assert "tracking_before_migration" in result.output
        assert_moved(mongo, ids, "ttl")
        if backend == "real":  # mongomock does not say a collection is plain
            again = runner.invoke(args=["tracking", "migrate", "--to", "ttl"])
            assert again.exit_code == 0 and "nothing to copy" in again.output
        refused = runner.invoke(args=["tracking", "migrate", "--to", "capped"])
        assert refused.exit_code == 1 and "earlier migration" in refused.output
    finally:
        app.extensions["tracking"]._apps[app].writer.shutdown(1.0)


def test_a_record_another_unique_index_refuses_fails_the_migration(real_db: Any) -> None:
    # Only a duplicate _id was stored by an earlier run: a duplicate key of another unique
    # index (one made on the new collection meanwhile) is a record the copy would lose.
    ids = seed(real_db, "capped")
    for record_id in ids:  # copied in _id order: the second batch holds one request id twice
        request_id = "twice" if record_id in ids[BATCH : BATCH + 2] else str(record_id)
        real_db["tracking"].update_one({"_id": record_id}, {"$set": {"request_id": request_id}})

    def unique_request_ids(copied: int, total: int) -> None:
        if copied == BATCH:
            real_db["tracking"].create_index("request_id", unique=True, name="one_per_id")

    with pytest.raises(BulkWriteError):
        migrate(real_db, spec("ttl"), batch_size=BATCH, on_batch=unique_request_ids)
    assert real_db[CHECKPOINTS].find_one({"_id": "tracking"})["copied"] == BATCH


def test_records_with_ids_of_other_types_are_all_moved(mongo: Any) -> None:
    """Old records whose ``_id`` is not an ObjectId (inserted by hand, by another tool) are
    records too: ``$gt`` on the last id copied compares within one BSON type only, so once a
    batch ends on a string id the ObjectId records after it are never copied, and
    ``--drop-source`` would then drop them."""
    ensure_collection(mongo, spec("ttl"), LOGGER)
    now = datetime.now(timezone.utc)
    documents: list[dict[str, Any]] = [
        {"_id": f"legacy-{i}", "date_created": now, "path": "/old"} for i in range(3)
    ]
    documents += [{"_id": ObjectId(), "date_created": now, "path": "/new"} for _ in range(5)]
    mongo["tracking"].insert_many(documents)
    result = migrate(mongo, spec("capped"), batch_size=2)
    stored = {document["_id"] for document in mongo["tracking"].find({}, {"_id": 1})}
    assert stored == {document["_id"] for document in documents}
    assert result.copied == len(documents)


@REAL
def test_the_old_collection_is_kept_when_a_record_was_not_copied(real_db: Any) -> None:
    """An ``_id`` of a type the copy does not walk (a timestamp; mongomock cannot compare one)
    leaves its record behind: the migration says so and ``--drop-source`` keeps the records."""
    ids = seed(real_db, "ttl")
    real_db["tracking"].insert_one({"_id": Timestamp(1, 1), "path": "/odd"})
    with pytest.raises(MigrationError, match=f"Only {len(ids)} of the {len(ids) + 1} records"):
        migrate(real_db, spec("capped"), batch_size=BATCH, drop_source=True)
    assert real_db[source_name("tracking")].count_documents({}) == len(ids) + 1


@REAL
def test_a_plain_collection_with_the_reading_date_index_is_not_ttl_already(real_db: Any) -> None:
    """A plain ``tracking`` that a capped-mode writer used as it was ("exists and is not capped")
    carries the reading indexes of ``ensure_indexes``, among them ``tracking_date_created``
    without ``expireAfterSeconds``. ``migrate --to ttl`` takes any plain collection for one that
    "only lacks its TTL index" and returns ``nothing_to_do`` (the CLI prints "stored as ttl
    already"), but ``ensure_ttl_index`` only warns about the index of that name, so nothing
    will ever expire."""
    from flask_tracking.indexes import ensure_indexes

    real_db.create_collection("tracking")
    ensure_indexes(real_db["tracking"], LOGGER)
    real_db["tracking"].insert_one({"date_created": datetime.now(timezone.utc), "path": "/"})
    result = migrate(real_db, spec("ttl"))
    index = real_db["tracking"].index_information()["tracking_date_created"]
    assert index.get("expireAfterSeconds") == 86_400, result


@REAL
def test_a_date_index_the_server_cannot_make_ttl_stops_with_the_way_out(
    real_server: Any, real_db: Any
) -> None:
    """A server before 5.1 refuses ``collMod`` of an index without expiry: the command says
    how to recreate the index instead of calling the collection ttl."""
    real_db.create_collection("tracking")
    real_db["tracking"].create_index([("date_created", -1)], name="tracking_date_created")
    refused = pytest.raises(MigrationError, match=r"dropIndex\('tracking_date_created'\)")
    with failing_once(real_server, "collMod", 72), refused:  # 72: InvalidOptions
        migrate(real_db, spec("ttl"))


def test_a_checkpoint_of_the_earlier_format_resumes_without_copying_again(mongo: Any) -> None:
    """Review: a migration interrupted under the previous release left the checkpoint
    ``{"last_id": <ObjectId>, "copied": n}`` (no ``kind``). Resumed by this release ("run again
    after an interruption, it resumes where it stopped"), it reads that as ``kind`` 0 (null
    ids) resumed ``$gt`` an ObjectId, copies the rest, then walks every ObjectId again from
    the ObjectId floor: each record is counted again, the progress passes the total, and the
    inflated count also defeats the check that keeps an old collection with uncopied records."""
    ids = seed(mongo, "ttl")
    # What the previous release left after storing and checkpointing its first batch.
    mongo["tracking"].rename(source_name("tracking"))
    target = ensure_collection(mongo, spec("capped"), LOGGER)
    target.insert_many(list(mongo[source_name("tracking")].find().sort("_id", 1).limit(BATCH)))
    mongo[CHECKPOINTS].insert_one(
        {"_id": "tracking", "to": "capped", "last_id": ids[BATCH - 1], "copied": BATCH}
    )
    progress: list[tuple[int, int]] = []
    result = migrate(
        mongo, spec("capped"), batch_size=BATCH, on_batch=lambda *done: progress.append(done)
    )
    assert_moved(mongo, ids, "capped")
    assert max(copied for copied, _ in progress) <= RECORDS, progress
    assert result.copied == RECORDS - BATCH


@REAL
def test_a_checkpoint_of_the_earlier_format_keeps_records_not_copied(real_db: Any) -> None:
    """Review: same resume as above with a record whose _id the copy does not walk (a
    Timestamp): the re-counted ObjectIds make "copied" reach the number held, so
    ``drop_source=True`` drops the old collection with that record, which is lost."""
    ids = seed(real_db, "ttl")
    real_db["tracking"].insert_one({"_id": Timestamp(1, 1), "path": "/odd"})
    real_db["tracking"].rename(source_name("tracking"))
    target = ensure_collection(real_db, spec("capped"), LOGGER)
    target.insert_many(
        list(real_db[source_name("tracking")].find({"_id": {"$in": ids[:BATCH]}}).sort("_id", 1))
    )
    real_db[CHECKPOINTS].insert_one(
        {"_id": "tracking", "to": "capped", "last_id": ids[BATCH - 1], "copied": BATCH}
    )
    with pytest.raises(MigrationError, match="Only"):
        migrate(real_db, spec("capped"), batch_size=BATCH, drop_source=True)
    assert real_db[source_name("tracking")].count_documents({}) == len(ids) + 1

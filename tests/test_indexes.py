"""Tests for flask_tracking.indexes.ensure_indexes (mongomock, and fakes for server errors)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import mongomock
import pytest
from pymongo.errors import AutoReconnect, ExecutionTimeout, OperationFailure

from flask_tracking.indexes import INDEX_NAMES, INDEXES, ensure_indexes


@pytest.fixture
def collection() -> Iterator[Any]:
    client: Any = mongomock.MongoClient()
    yield client["test_indexes"]["tracking"]
    client.close()


def test_creates_every_index_the_helpers_use(collection: Any) -> None:
    names = ensure_indexes(collection)
    assert names == [name for name, _ in INDEXES]
    info = collection.index_information()
    for name, keys in INDEXES:
        assert info[name]["key"] == keys
    indexed = {keys[0][0] for _, keys in INDEXES}
    assert indexed >= {"date_created", "path", "status_code", "execution_time", "user_id"}
    assert indexed >= {"endpoint", "ip"}


def test_is_idempotent(collection: Any) -> None:
    collection.insert_one({"path": "/x"})
    ensure_indexes(collection)
    before = collection.index_information()
    assert ensure_indexes(collection) == [name for name, _ in INDEXES]
    assert collection.index_information() == before
    assert collection.count_documents({}) == 1


class FlakyCollection:
    """Records create_index calls; raises the error given for an index name."""

    name = "tracking"

    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        self.created: list[str] = []

    def create_index(self, keys: Any, name: str) -> str:
        if name in self.errors:
            raise self.errors[name]
        self.created.append(name)
        return name


def test_an_index_that_exists_under_another_name_is_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conflict = OperationFailure("Index already exists with a different name: path_1", code=85)
    collection = FlakyCollection({"tracking_path": conflict})
    with caplog.at_level(logging.INFO, logger="flask_tracking"):
        names = ensure_indexes(collection)  # type: ignore[arg-type]
    assert "tracking_path" not in names
    assert collection.created == names
    assert len(names) == len(INDEXES) - 1
    assert "an index like 'tracking_path' exists already" in caplog.text


def test_other_failures_are_warned_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    collection = FlakyCollection(
        {
            "tracking_ip": OperationFailure("not authorized", code=13),
            "tracking_user_id": NotImplementedError("no indexes here"),
        }
    )
    names = ensure_indexes(collection)  # type: ignore[arg-type]
    assert "tracking_ip" not in names
    assert "tracking_user_id" not in names
    assert "tracking_date_created" in names
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "could not create index 'tracking_ip': not authorized" in warnings[1]


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("connection reset"),
        ExecutionTimeout("operation exceeded time limit", code=50),
    ],
)
def test_network_errors_and_timeouts_propagate_for_a_retry(error: BaseException) -> None:
    collection = FlakyCollection({"tracking_path": error})
    with pytest.raises(type(error)):
        ensure_indexes(collection)  # type: ignore[arg-type]
    assert collection.created == ["tracking_date_created"]


def test_a_custom_logger_is_used(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("my_app.tracking")
    collection = FlakyCollection({"tracking_ip": OperationFailure("no", code=2)})
    ensure_indexes(collection, logger=logger)  # type: ignore[arg-type]
    assert [record.name for record in caplog.records] == ["my_app.tracking"]


def test_an_index_dropped_as_the_docs_advise_stays_dropped_after_a_restart(
    make_app: Any, mongo: Any
) -> None:
    """docs/querying.md, "What they cost": leave the indexes you do not query out of
    TRACKING_INDEXES and drop them (``db.tracking.dropIndex("tracking_ip")``). Every writer
    that sets up the collection (each process start, each forked worker) runs
    ``ensure_indexes``; were it with every index of INDEXES, the dropped index (and its cost on
    every insert) would be back after the next restart."""
    first = make_app()
    first.test_client().get("/hello")
    assert first.extensions["tracking"].flush(5)
    assert "tracking_ip" in mongo["tracking"].index_information()
    mongo["tracking"].drop_index("tracking_ip")
    first.extensions["tracking"]._apps[first].writer.shutdown(1.0)

    # The app started again (a deploy, a new gunicorn worker) without tracking_ip.
    restarted = make_app(TRACKING_INDEXES=[name for name in INDEX_NAMES if name != "tracking_ip"])
    restarted.test_client().get("/hello")
    assert restarted.extensions["tracking"].flush(5)
    assert mongo["tracking"].count_documents({}) == 2
    assert "tracking_ip" not in mongo["tracking"].index_information()


def test_only_the_named_indexes_are_created(collection: Any) -> None:
    assert ensure_indexes(collection, names=("tracking_path",)) == ["tracking_path"]
    assert set(collection.index_information()) == {"_id_", "tracking_path"}
    assert ensure_indexes(collection, names=()) == []

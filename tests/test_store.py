"""Tests for flask_tracking.store: MongoSink (the writer's write_batch) and collection setup."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Callable
from unittest import mock

import bson
import mongomock
import pymongo
import pytest
from bson import ObjectId
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    CollectionInvalid,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from flask_tracking import prefilter, store
from flask_tracking.capture import BodyCapture, RequestState
from flask_tracking.record import scrub_request_side
from flask_tracking.redact import (
    DEFAULT_REDACT_FIELDS,
    DEFAULT_REDACT_HEADERS,
    Redactor,
    ScrubbedBody,
)
from flask_tracking.storage import COLLECTION_NAME, CollectionSpec, ensure_collection
from flask_tracking.store import (
    CUSTOM_DATA_CUT,
    MongoSink,
    encode_document,
)
from flask_tracking.writer import BatchOutcome, BatchWriter

from .conftest import MONGOMOCK_ONLY

LOGGER_NAME = "tests.store"
SIZE = 1_048_576
MAX_DOCS = 1000
MAX_RECORD = 128 * 1024
#: How the fake "client" encodes, like a MongoEngine connection with uuidRepresentation set.
CLIENT_CODEC = CodecOptions(uuid_representation=UuidRepresentation.STANDARD)


# --------------------------------------------------------------------------- helpers


def capped(name: str, size: int, maximum: int) -> CollectionSpec:
    return CollectionSpec(name, "capped", size_bytes=size, max_documents=maximum)


def make_state(i: int = 0, **attributes: Any) -> RequestState:
    state = RequestState()
    state.environ = {
        "REQUEST_METHOD": "GET",
        "wsgi.url_scheme": "http",
        "PATH_INFO": f"/items/{i}",
        "QUERY_STRING": f"i={i}",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "5000",
        "HTTP_HOST": "example.com",
        "HTTP_USER_AGENT": "curl/8.4.0",
    }
    state.endpoint = "items"
    state.url_rule = "/items/<int:i>"
    state.status = "200 OK"
    state.response_headers = [("Content-Type", "text/plain")]
    state.execution_time = state.total_time = 1.5
    for name, value in attributes.items():
        setattr(state, name, value)
    return state


def items(count: int, start: int = 0, **attributes: Any) -> list[Any]:
    return [make_state(i, **attributes) for i in range(start, start + count)]


def make_sink(get_database: Callable[[], Any], **options: Any) -> MongoSink:
    settings: dict[str, Any] = {
        "capped_size_bytes": SIZE,
        "capped_max_documents": MAX_DOCS,
        "max_record_bytes": MAX_RECORD,
        "write_timeout_seconds": 2.0,
        "logger": logging.getLogger(LOGGER_NAME),
    }
    settings.update(options)
    return MongoSink(get_database, **settings)


def total(outcome: BatchOutcome) -> int:
    return outcome.written + sum(outcome.dropped.values()) + len(outcome.retry)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER_NAME and r.levelno == logging.WARNING
    ]


def capture(data: bytes, limit: int) -> BodyCapture:
    body = BodyCapture(limit)
    body.add(data)
    return body


class FakeCollection:
    """A pymongo-like collection: records every call; ``insert_many`` follows ``plan``.

    A plan step is None (store everything) or an exception to raise. Calls past the plan store.
    """

    codec_options = CLIENT_CODEC

    def __init__(self, name: str = COLLECTION_NAME, options: dict[str, Any] | None = None):
        self.name = name
        self._options = options
        self.options_error: BaseException | None = None
        self.plan: list[BaseException | None] = []
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.stored: list[dict[str, Any]] = []
        self.indexes: list[str] = []
        self.lock = threading.Lock()

    def options(self) -> dict[str, Any]:
        self.calls.append(("options", (), {}))
        if self.options_error is not None:
            raise self.options_error
        return dict(self._options or {})

    def insert_many(self, documents: list[dict[str, Any]], **kwargs: Any) -> Any:
        with self.lock:
            self.calls.append(("insert_many", (documents,), kwargs))
            step = self.plan.pop(0) if self.plan else None
            if step is not None:
                raise step
            for document in documents:
                if isinstance(document, RawBSONDocument):  # as the server stores it
                    document = bson.decode(document.raw, codec_options=CLIENT_CODEC)
                bson.encode(document, codec_options=CLIENT_CODEC)  # what the driver refuses
                self.stored.append(document)

    def create_index(self, keys: Any, **kwargs: Any) -> str:
        """The reading indexes made once at setup: recorded apart, they change no data."""
        self.indexes.append(kwargs["name"])
        return str(kwargs["name"])

    def __getattr__(self, name: str) -> Any:  # update_one, replace_one, command, ...
        def forbidden(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            raise AssertionError(f"the sink must not call {name}")

        return forbidden

    def call_names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


class FakeDatabase:
    """A pymongo-like database: ``create_collection`` follows ``create_plan`` then succeeds
    once (later creates raise CollectionInvalid, as a server does for an existing name)."""

    def __init__(self, collection: FakeCollection | None = None) -> None:
        self.collection = collection or FakeCollection()
        self.create_plan: list[BaseException | None] = []
        self.creates: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.commands: list[Any] = []
        self.exists = False
        self.created = 0
        self.lock = threading.Lock()

    def create_collection(self, name: str, **kwargs: Any) -> FakeCollection:
        with self.lock:
            self.creates.append(((name,), kwargs))
            step = self.create_plan.pop(0) if self.create_plan else None
            if step is not None:
                raise step
            if self.exists:
                raise CollectionInvalid(f"collection {name} already exists")
            self.exists = True
            self.created += 1
            self.collection._options = {"capped": True, **kwargs}
            return self.collection

    def __getitem__(self, name: str) -> FakeCollection:
        assert name == self.collection.name
        return self.collection

    def command(self, *args: Any, **kwargs: Any) -> Any:
        self.commands.append((args, kwargs))
        raise AssertionError("the sink must not run database commands")


# --------------------------------------------------------------------------- writing


def test_writes_a_batch_to_mongomock(mongo: Any) -> None:
    sink = make_sink(lambda: mongo)
    outcome = sink(items(5))
    assert outcome == BatchOutcome(written=5)
    documents = list(mongo[COLLECTION_NAME].find().sort("path", 1))
    assert [d["path"] for d in documents] == [f"/items/{i}" for i in range(5)]
    for document in documents:
        bson.encode(document)
        assert "_state" not in document
        assert document["host"] == "example.com"
        assert document["status_code"] == 200


def test_empty_batch_does_nothing() -> None:
    database = FakeDatabase()
    outcome = make_sink(lambda: database)([])
    assert outcome == BatchOutcome()
    assert database.creates == []
    assert database.collection.calls == []


def test_insert_is_unordered_insert_many_inside_pymongo_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active: list[float] = []
    entered: list[float] = []

    @contextlib.contextmanager
    def spy_timeout(seconds: float) -> Iterator[None]:
        entered.append(seconds)
        active.append(seconds)
        try:
            yield
        finally:
            active.pop()

    inside: list[list[float]] = []
    database = FakeDatabase()
    original = database.collection.insert_many

    def insert_many(documents: list[dict[str, Any]], **kwargs: Any) -> Any:
        inside.append(list(active))
        return original(documents, **kwargs)

    database.collection.insert_many = insert_many  # type: ignore[method-assign]
    monkeypatch.setattr(pymongo, "timeout", spy_timeout)
    sink = make_sink(lambda: database, write_timeout_seconds=3.5)
    sink(items(3))
    database.collection.plan = [AutoReconnect("down")]
    retry = sink(items(2)).retry
    sink(retry)  # the retry path inserts the same way
    assert entered == [3.5, 3.5, 3.5, 3.5]  # the collection's setup (once), then each insert
    assert inside == [[3.5], [3.5], [3.5]]
    assert database.collection.call_names() == ["insert_many"] * 3
    for _, args, kwargs in database.collection.calls:
        assert kwargs == {"ordered": False}
        assert isinstance(args[0], list)


@MONGOMOCK_ONLY
def test_mongomock_collection_only_sees_insert_many(mongo: Any) -> None:
    real = mongo[COLLECTION_NAME]
    spy = mock.MagicMock(wraps=real)
    spy.codec_options = real.codec_options

    class SpyDatabase:
        def create_collection(self, name: str, **kwargs: Any) -> Any:
            return mongo.create_collection(name, **kwargs)

        def __getitem__(self, name: str) -> Any:
            return spy

    sink = make_sink(SpyDatabase)
    assert sink(items(4)).written == 4
    ids = [d["_id"] for d in real.find()]
    sink([{"_id": ids[0], "path": "/dup"}, {"path": "/new"}])  # a retry with one duplicate
    data_calls = [call for call in spy.method_calls if call[0] != "create_index"]
    assert {call[0] for call in data_calls} == {"insert_many"}
    for call in data_calls:
        assert call.kwargs == {"ordered": False}
    assert real.count_documents({}) == 5
    assert real.find_one({"_id": ids[0]})["path"] == "/items/0"  # never replaced


def test_no_insert_command_holds_more_documents_than_pymongo_sends_in_one() -> None:
    # pymongo splits an insert_many of more than maxWriteBatchSize (100,000) documents into
    # several commands, whatever their bytes: TRACKING_BATCH_MAX_RECORDS has no upper bound.
    database = FakeDatabase()
    document = RawBSONDocument(bson.encode({"path": "/"}))
    outcome = make_sink(lambda: database)([document] * 100_001)
    assert outcome == BatchOutcome(written=100_001)
    sizes = [len(args[0]) for name, args, _ in database.collection.calls if name == "insert_many"]
    assert sum(sizes) == 100_001
    assert max(sizes) <= 100_000, sizes


def test_bulk_write_error_counts_inserted_and_drops_other_errors() -> None:
    database = FakeDatabase()
    database.collection.plan = [
        BulkWriteError(
            {
                "nInserted": 3,
                "writeErrors": [
                    {"index": 1, "code": 121, "errmsg": "Document failed validation"},
                    {"index": 4, "code": 10334, "errmsg": "BSONObj size is invalid"},
                ],
            }
        )
    ]
    outcome = make_sink(lambda: database)(items(5))
    assert outcome.written == 3
    assert outcome.dropped == {"db_error": 2}
    assert outcome.retry == []


def test_bulk_write_error_duplicate_keys_count_as_written() -> None:
    database = FakeDatabase()
    database.collection.plan = [
        BulkWriteError(
            {
                "nInserted": 2,
                "writeErrors": [
                    {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"},
                    {"index": 2, "code": 11000, "errmsg": "E11000 duplicate key"},
                    {"index": 3, "code": 2, "errmsg": "bad value"},
                ],
            }
        )
    ]
    outcome = make_sink(lambda: database)(items(5))
    assert outcome.written == 4
    assert outcome.dropped == {"db_error": 1}
    assert total(outcome) == 5


def test_retry_after_partial_success_creates_no_duplicates(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def connection_reset(self: Any, documents: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection reset")

    sink = make_sink(lambda: mongo)
    monkeypatch.setattr(type(mongo[COLLECTION_NAME]), "insert_many", connection_reset)
    outcome = sink(items(6))
    monkeypatch.undo()
    assert outcome.written == 0
    assert len(outcome.retry) == 6
    retry = outcome.retry
    assert all(isinstance(d["_id"], ObjectId) for d in retry)
    ids = [d["_id"] for d in retry]
    # half of them reached the server before the connection dropped
    mongo[COLLECTION_NAME].insert_many([dict(d) for d in retry[:3]])

    outcome = sink(retry)
    assert outcome == BatchOutcome(written=6)
    collection = mongo[COLLECTION_NAME]
    assert collection.count_documents({}) == 6
    assert sorted(d["_id"] for d in collection.find()) == sorted(ids)
    for document in collection.find():
        bson.encode(document)


def test_retry_of_a_fully_stored_batch_counts_all_written(mongo: Any) -> None:
    sink = make_sink(lambda: mongo)
    first = items(3)
    documents: list[dict[str, Any]] = []
    convert = store.to_document

    def keep(*args: Any, **kwargs: Any) -> dict[str, Any]:
        documents.append(convert(*args, **kwargs))
        return documents[-1]

    with mock.patch.object(store, "to_document", keep):
        sink(first)
    assert sink(documents) == BatchOutcome(written=3)
    assert mongo[COLLECTION_NAME].count_documents({}) == 3


class SlowError(Exception):
    """Not a pymongo error, but says it timed out."""

    timeout = True


TRANSIENT = [
    AutoReconnect("connection reset"),
    ServerSelectionTimeoutError("no servers"),
    NetworkTimeout("timed out"),
    OperationFailure("operation exceeded time limit", code=50),
    SlowError("slow"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors_hand_back_the_same_documents(error: Exception) -> None:
    database = FakeDatabase()
    database.collection.plan = [error, error]
    sink = make_sink(lambda: database)
    outcome = sink(items(4))
    assert outcome.written == 0
    assert outcome.dropped == {}
    assert len(outcome.retry) == 4
    inserted = database.collection.calls[0][1][0]
    assert all(a is b for a, b in zip(outcome.retry, inserted))
    assert [d["path"] for d in outcome.retry] == [f"/items/{i}" for i in range(4)]
    # the retry is handed back again unchanged (the same dict objects, in order)
    again = sink(outcome.retry)
    assert again.dropped == {}
    assert len(again.retry) == 4
    assert all(a is b for a, b in zip(again.retry, outcome.retry))
    # and written once the server is back
    assert sink(again.retry) == BatchOutcome(written=4)
    assert len(database.collection.stored) == 4


def run_writer(sink: MongoSink, batch: list[dict[str, Any]]) -> dict[str, int]:
    writer = BatchWriter(
        sink,
        flush_interval_seconds=0.01,
        retry_initial_backoff_seconds=0.01,
        retry_max_backoff_seconds=0.05,
        logger=logging.getLogger(LOGGER_NAME),
    )
    try:
        for item in batch:
            assert writer.submit(item, 1000)
        assert writer.flush(5)
        return writer.stats()
    finally:
        writer.shutdown(1)


def test_writer_and_sink_survive_a_transient_error(caplog: pytest.LogCaptureFixture) -> None:
    """The sink hands back converted documents; the writer must requeue them, not lose them."""
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    database.collection.plan = [AutoReconnect("down"), NetworkTimeout("slow")]
    stats = run_writer(make_sink(lambda: database, before_save=lambda: [_drop_odd]), items(5))
    assert stats["written"] == 3
    assert stats["dropped_by_hook"] == 2
    assert stats.get("dropped_unaccounted", 0) == 0
    assert stats["pending"] == 0
    assert [d["path"] for d in database.collection.stored] == ["/items/0", "/items/2", "/items/4"]
    assert len(database.collection.calls) == 3  # two failures, then one insert of the same docs
    assert not [m for m in warnings_of(caplog) if "write_batch reported" in m]  # consistent


def test_an_unreachable_server_is_logged_once_while_the_records_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong host or a server that is down: the records wait and are retried, and the log
    says why nothing is written (once per minute, not once per retry)."""
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    database.collection.plan = [AutoReconnect("db.internal:27017: connection refused")] * 3
    stats = run_writer(make_sink(lambda: database), items(2))
    assert stats["written"] == 2 and stats["pending"] == 0
    (warning,) = warnings_of(caplog)
    assert "cannot write to MongoDB" in warning
    assert "AutoReconnect: db.internal:27017: connection refused" in warning
    assert "retried" in warning


def test_transient_error_keeps_drops_of_the_same_batch() -> None:
    database = FakeDatabase()
    database.collection.plan = [AutoReconnect("down")]
    sink = make_sink(lambda: database, before_save=lambda: [_drop_odd])
    outcome = sink(items(5))
    assert outcome.dropped == {"by_hook": 2}
    assert len(outcome.retry) == 3
    assert total(outcome) == 5


def _drop_odd(document: dict[str, Any]) -> dict[str, Any] | None:
    return None if int(document["path"].rsplit("/", 1)[1]) % 2 else document


@pytest.mark.parametrize(
    "error",
    [OperationFailure("not authorized on db to execute command", code=13), RuntimeError("x")],
    ids=["unauthorized", "generic"],
)
def test_non_transient_error_drops_the_batch_and_the_next_is_written(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    database.collection.plan = [error]  # documents are encoded (and checked) before insert_many
    sink = make_sink(lambda: database)
    outcome = sink(items(3))
    assert outcome.written == 0
    assert outcome.dropped == {"db_error": 3}
    assert outcome.retry == []
    assert len(warnings_of(caplog)) == 1
    assert type(error).__name__ in warnings_of(caplog)[0]
    outcome = sink(items(2, start=3))
    assert outcome == BatchOutcome(written=2)
    assert [d["path"] for d in database.collection.stored] == ["/items/3", "/items/4"]


def test_conversion_error_drops_one_record(
    mongo: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, LOGGER_NAME)
    bad = make_state(99)
    real = store.to_document

    def to_document(state: RequestState, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if state is bad:
            raise ValueError("cannot convert")
        return real(state, *args, **kwargs)

    monkeypatch.setattr(store, "to_document", to_document)
    batch = [*items(2), bad, *items(2, start=2)]
    outcome = make_sink(lambda: mongo)(batch)
    assert outcome.written == 4
    assert outcome.dropped == {"encode_error": 1}
    paths = sorted(d["path"] for d in mongo[COLLECTION_NAME].find())
    assert paths == [f"/items/{i}" for i in range(4)]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    "custom_data",
    [
        {1: "int key"},
        {"a set": {1, 2}},
        {"big": 2**70},
        {"bad": "\udcff"},
        {"nul\x00key": 1},
        "x" * (MAX_RECORD + 1),
        {"blob": b"\x00" * (MAX_RECORD * 2)},
    ],
    ids=["int_key", "set", "big_int", "surrogate", "nul_key", "too_large", "big_blob"],
)
def test_unstorable_custom_data_is_replaced(mongo: Any, custom_data: Any) -> None:
    # The request thread's sanitiser reports the size of what it kept; big data is checked
    # up front, odd small data is caught when the insert fails to encode it.
    size = len(custom_data) if isinstance(custom_data, str) else len(str(custom_data))
    batch = items(1, custom_data=custom_data, custom_data_size=size) + items(1, start=1)
    outcome = make_sink(lambda: mongo)(batch)
    assert outcome == BatchOutcome(written=2)
    cut = mongo[COLLECTION_NAME].find_one({"path": "/items/0"})
    assert cut["custom_data"] == CUSTOM_DATA_CUT
    assert len(bson.encode(cut)) <= MAX_RECORD
    assert cut["request_headers"] == [["Host", "example.com"], ["User-Agent", "curl/8.4.0"]]
    other = mongo[COLLECTION_NAME].find_one({"path": "/items/1"})
    assert other["custom_data"] is None


def test_good_custom_data_is_kept(mongo: Any) -> None:
    data = {"order": 42, "tags": ["a", "b"]}
    assert make_sink(lambda: mongo)(items(1, custom_data=data)).written == 1
    assert mongo[COLLECTION_NAME].find_one()["custom_data"] == data


def test_a_record_that_cannot_fit_is_dropped(mongo: Any) -> None:
    huge_path = make_state(0)
    assert huge_path.environ is not None
    # Headers are cut to 200 of 1,280 characters at most: still more than the limit.
    huge_path.environ.update({f"HTTP_X_H{i}": "v" * 2000 for i in range(300)})
    outcome = make_sink(lambda: mongo)([huge_path, *items(1, start=1)])
    assert outcome.written == 1
    assert outcome.dropped == {"encode_error": 1}
    assert [d["path"] for d in mongo[COLLECTION_NAME].find()] == ["/items/1"]


def test_the_sink_filters_the_bodies_of_a_batch_together(mongo: Any) -> None:
    class Scrubber(Redactor):
        def __init__(self) -> None:
            super().__init__(headers=(), fields=())
            self.calls: list[list[tuple[bytes, str]]] = []

        def scrub_bodies(self, bodies: Any) -> list[ScrubbedBody]:
            self.calls.append([(body, content_type) for body, content_type, *_ in bodies])
            return [ScrubbedBody(b"[scrubbed]", None)] * len(bodies)

    redactor = Scrubber()
    sink = make_sink(lambda: mongo, redactor=redactor)
    assert sink(items(3, request_body=capture(b"password=x", 100))).written == 3
    assert redactor.calls == [[(b"password=x", "")] * 3]  # one call for the batch
    assert [d["request_body"] for d in mongo[COLLECTION_NAME].find()] == [b"[scrubbed]"] * 3


def test_bodies_the_batch_could_not_filter_are_filtered_record_by_record(
    mongo: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, LOGGER_NAME)

    def failing(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "scrub_bodies", failing)
    sink = make_sink(lambda: mongo, redactor=Redactor((), ("password",)))
    body = capture(b"password=hunter2", 100)
    assert sink(items(2, request_body=body)).written == 2
    stored = [d["request_body"] for d in mongo[COLLECTION_NAME].find()]
    assert stored == [b"password=[Filtered]"] * 2
    assert "could not filter the bodies of a batch" in caplog.text


_BODY_PIECES = [
    b"password", b"pass", b"word", b"Bearer ", b"eyJhbGciOi", b"://", b"https://ada:pw@x.org/",
    b"%70assword", b"\\u0070assword", b"%", b"4111 1111 1111 1111", b"\nQ\n", b"=", b"&", b"{",
    b"}", b'"', b":", b" ", b"x", b"AKIAIOSFODNN7EXAMPLE", b"\x00",
]  # fmt: skip
_BODY_KINDS = [
    "", "application/json", "text/plain", "application/x-www-form-urlencoded", "text/html",
    "application/yaml", "image/png", "application/zip", "application/json; charset=utf-16",
    "text/plain; charset=cp500",
    "multipart/form-data; boundary=x", "application/xml",
]  # fmt: skip
#: One side of a record: body, content type, gzip or not, capture limit.
_SIDES = st.tuples(
    st.lists(st.sampled_from(_BODY_PIECES) | st.binary(max_size=3), max_size=20).map(b"".join),
    st.sampled_from(_BODY_KINDS),
    st.booleans(),
    st.sampled_from([1, 50, 65536]),
)


def _record_with_bodies(index: int, request: Any, response: Any, redactor: Redactor) -> Any:
    def side(body: bytes, gzipped: bool, limit: int) -> BodyCapture:
        return capture(gzip.compress(body) if gzipped else body, limit)

    headers = [("Content-Type", response[1])]
    if response[2]:
        headers.append(("Content-Encoding", "gzip"))
    state = make_state(
        index,
        request_body=side(request[0], request[2], request[3]),
        response_body=side(response[0], response[2], response[3]),
        response_headers=headers,
    )
    state.environ["CONTENT_TYPE"] = request[1]
    if request[2]:
        state.environ["HTTP_CONTENT_ENCODING"] = "gzip"
    scrub_request_side(state, redactor)
    return state


@settings(max_examples=100, deadline=None)
@given(
    sides=st.lists(st.tuples(_SIDES, _SIDES), min_size=1, max_size=8),
    group_bytes=st.sampled_from([1, 16, 262144]),
)
def test_the_bodies_of_a_batch_are_stored_as_each_is_filtered_alone(
    sides: list[tuple[Any, Any]], group_bytes: int
) -> None:
    """The sink pre-filters the bodies of a batch together (in groups of about
    ``group_bytes``): each body is stored as :meth:`Redactor.scrub_body` filters it alone."""
    redactor = Redactor(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_FIELDS)
    records = [_record_with_bodies(i, *pair, redactor) for i, pair in enumerate(sides)]
    expected = {}
    for state in records:
        row = []
        kinds = (state.environ["CONTENT_TYPE"], dict(state.response_headers)["Content-Type"])
        codings = (state.environ.get("HTTP_CONTENT_ENCODING", ""),)
        codings += (dict(state.response_headers).get("Content-Encoding", ""),)
        for body, kind, coding in zip((state.request_body, state.response_body), kinds, codings):
            kept = ScrubbedBody(bytes(body.buffer), None)
            if kept.body:
                try:
                    kept = redactor.scrub_body(kept.body, kind, coding, body.limit)
                except Exception:
                    kept = ScrubbedBody(None, "redaction failed")
            row += [kept.body, kept.omitted]
        expected[state.environ["PATH_INFO"]] = row
    database = mongomock.MongoClient()["tracking"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefilter, "_GROUP_BYTES", group_bytes)
        assert make_sink(lambda: database, redactor=redactor)(records).written == len(records)
    keys = ("request_body", "request_body_omitted", "response_body", "response_body_omitted")
    stored = {d["path"]: [d.get(key) for key in keys] for d in database[COLLECTION_NAME].find()}
    assert stored == expected


# ------------------------------------------------------------------------ encode_document

# The codec the writer uses when the client names no UUID representation.
STANDARD_UUIDS: CodecOptions[Any] = CodecOptions(uuid_representation=UuidRepresentation.STANDARD)


def fits(document: dict[str, Any]) -> bool:
    """Whether ``document`` could be encoded within MAX_RECORD (shrunk in place as needed)."""
    return encode_document(document, MAX_RECORD, STANDARD_UUIDS) is not None


def base_document(**fields: Any) -> dict[str, Any]:
    document = store.to_document(make_state())
    document.update(fields)
    return document


def test_encode_document_leaves_a_small_document_alone() -> None:
    document = base_document(custom_data={"a": 1})
    before = dict(document)
    assert fits(document)
    assert document == before


def test_fit_stage_one_custom_data_only() -> None:
    headers = [[f"X-H{i}", "v" * 100] for i in range(50)]
    document = base_document(
        custom_data="c" * MAX_RECORD,
        request_headers=headers,
        request_body=b"b" * 1000,
    )
    assert fits(document)
    assert document["custom_data"] == CUSTOM_DATA_CUT
    assert document["request_headers"] == headers
    assert document["request_body"] == b"b" * 1000
    assert len(bson.encode(document)) <= MAX_RECORD


def test_fit_stage_two_headers_10000() -> None:
    headers = [[f"X-Header-{i}", "v" * 50] for i in range(10_000)]
    document = base_document(
        custom_data={"small": 1},
        request_headers=headers,
        response_headers=[["Set-Cookie", "c" * 5000]] * 10,
        request_body=b"b" * 1000,
        response_body=b"r" * 1000,
    )
    assert len(bson.encode(document)) > MAX_RECORD
    assert fits(document)
    assert document["custom_data"] == CUSTOM_DATA_CUT  # it gives way first, even when small
    assert document["request_headers"] == headers[:200]
    assert document["response_headers"] == [["Set-Cookie", "c" * 1024]] * 10
    assert document["request_body"] == b"b" * 1000  # bodies untouched at this stage
    assert document["response_body"] == b"r" * 1000
    assert len(bson.encode(document)) <= MAX_RECORD


def test_fit_headers_cut_names_and_values() -> None:
    document = base_document(request_headers=[["N" * 1000, "v" * 200_000]])
    assert fits(document)
    assert document["request_headers"] == [["N" * 256, "v" * 1024]]
    assert document["custom_data"] is None  # nothing to replace


def test_fit_stage_three_bodies() -> None:
    document = base_document(
        custom_data={"small": 1},
        request_headers=[["X-Many", "v"]] * 300,
        request_body=b"q" * (MAX_RECORD // 2 + 10),
        request_body_size=MAX_RECORD // 2 + 10,
        response_body=b"r" * (MAX_RECORD // 2 + 10),
        response_body_size=MAX_RECORD // 2 + 10,
    )
    assert fits(document)
    assert document["custom_data"] == CUSTOM_DATA_CUT
    assert len(document["request_headers"]) == 200
    for prefix in ("request", "response"):
        assert document[f"{prefix}_body"] is None
        assert document[f"{prefix}_body_omitted"] == "too large for the record"
        assert document[f"{prefix}_body_size"] == MAX_RECORD // 2 + 10  # the real size is kept
    assert len(bson.encode(document)) <= MAX_RECORD


def test_fit_impossible_returns_false() -> None:
    document = base_document(request_headers=[[f"X-H{i}", "v" * 2000] for i in range(300)])
    assert not fits(document)


def test_fit_unencodable_custom_data_even_when_small() -> None:
    document = base_document(custom_data={"s": {1}})
    assert fits(document)
    assert document["custom_data"] == CUSTOM_DATA_CUT
    bson.encode(document)


def test_user_with_uuid_primary_key_is_stored() -> None:
    pk = uuid.uuid4()
    document = store.to_document(make_state(user_ref=("User", "user", pk), user_id=str(pk)))
    assert fits(document)
    database = FakeDatabase()
    outcome = make_sink(lambda: database)([make_state(user_ref=("User", "user", pk))])
    assert outcome.dropped == {}


# --------------------------------------------------------------------------- before_save


def test_before_save_hook_changes_the_document(mongo: Any) -> None:
    def tag(document: dict[str, Any]) -> dict[str, Any]:
        document["custom_data"] = {"tagged": True}
        document["path"] = document["path"].upper()
        return document

    def replace(document: dict[str, Any]) -> dict[str, Any]:
        return {**document, "ip": "0.0.0.0"}  # a new dict works as well

    outcome = make_sink(lambda: mongo, before_save=lambda: [tag, replace])(items(2))
    assert outcome == BatchOutcome(written=2)
    for document in mongo[COLLECTION_NAME].find():
        assert document["path"].startswith("/ITEMS/")
        assert document["custom_data"] == {"tagged": True}
        assert document["ip"] == "0.0.0.0"
        bson.encode(document)


def test_before_save_hook_returning_none_drops(mongo: Any) -> None:
    seen: list[str] = []

    def later(document: dict[str, Any]) -> dict[str, Any]:
        seen.append(document["path"])
        return document

    outcome = make_sink(lambda: mongo, before_save=lambda: [_drop_odd, later])(items(4))
    assert outcome.written == 2
    assert outcome.dropped == {"by_hook": 2}
    assert seen == ["/items/0", "/items/2"]  # a dropped record goes no further
    assert sorted(d["path"] for d in mongo[COLLECTION_NAME].find()) == ["/items/0", "/items/2"]


def test_before_save_hook_raising_drops_and_never_stores(
    mongo: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, LOGGER_NAME)

    def redact(document: dict[str, Any]) -> dict[str, Any]:
        if document["path"] == "/items/1":
            document["ip"] = "half-redacted"
            raise KeyError("secret")
        document["ip"] = "redacted"
        return document

    outcome = make_sink(lambda: mongo, before_save=lambda: [redact])(items(3))
    assert outcome.written == 2
    assert outcome.dropped == {"hook_error": 1}
    stored = list(mongo[COLLECTION_NAME].find())
    assert sorted(d["path"] for d in stored) == ["/items/0", "/items/2"]
    assert {d["ip"] for d in stored} == {"redacted"}
    assert any(r.exc_info for r in caplog.records if r.name == LOGGER_NAME)


def test_before_save_hooks_are_read_for_each_batch(mongo: Any) -> None:
    hooks: list[Callable[[dict[str, Any]], Any]] = []
    sink = make_sink(lambda: mongo, before_save=lambda: hooks)
    assert sink(items(1)).written == 1
    hooks.append(lambda document: None)
    assert sink(items(1)).dropped == {"by_hook": 1}


def test_hooks_do_not_run_again_on_retry() -> None:
    runs: list[str] = []

    def hook(document: dict[str, Any]) -> dict[str, Any]:
        runs.append(document["path"])
        return document

    database = FakeDatabase()
    database.collection.plan = [AutoReconnect("down")]
    sink = make_sink(lambda: database, before_save=lambda: [hook])
    retry = sink(items(2)).retry
    assert sink(retry).written == 2
    assert runs == ["/items/0", "/items/1"]


# --------------------------------------------------------------------------- ensure_collection


@MONGOMOCK_ONLY
def test_mongomock_falls_back_to_a_plain_collection_with_one_warning(
    mongo: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    sink = make_sink(lambda: mongo)
    assert sink(items(2)).written == 2
    assert sink(items(2, start=2)).written == 2
    warnings = warnings_of(caplog)
    assert len(warnings) == 1
    assert "capped" in warnings[0]
    assert mongo[COLLECTION_NAME].count_documents({}) == 4


@MONGOMOCK_ONLY
def test_ensure_collection_on_mongomock_returns_the_plain_collection(
    mongo: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    collection = ensure_collection(
        mongo, capped("plain", SIZE, MAX_DOCS), logging.getLogger(LOGGER_NAME)
    )
    assert collection.name == "plain"
    assert collection.database.name == mongo.name
    assert len(warnings_of(caplog)) == 1


def test_missing_collection_is_created_capped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    sink = make_sink(lambda: database, capped_size_bytes=123_456, capped_max_documents=789)
    assert sink(items(2)).written == 2
    assert sink(items(1)).written == 1
    assert database.creates == [(("tracking",), {"capped": True, "size": 123_456, "max": 789})]
    assert warnings_of(caplog) == []
    assert database.commands == []


def test_collection_name_is_configurable() -> None:
    database = FakeDatabase(FakeCollection("requests"))
    sink = make_sink(lambda: database, collection_name="requests")
    assert sink(items(1)).written == 1
    assert database.creates[0][0] == ("requests",)


EXISTS = [
    CollectionInvalid("collection tracking already exists"),
    OperationFailure("Collection already exists. NS: db.tracking", code=48),
]


@pytest.mark.parametrize("exists", EXISTS, ids=["CollectionInvalid", "code48"])
@pytest.mark.parametrize(
    ("size", "maximum"),
    [(SIZE, MAX_DOCS), (SIZE + 256, MAX_DOCS), (SIZE + 1, MAX_DOCS)],
    ids=["same", "rounded_256", "rounded_1"],
)
def test_existing_capped_collection_with_same_options_is_used_quietly(
    exists: Exception, size: int, maximum: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase(FakeCollection(options={"capped": True, "size": size, "max": maximum}))
    database.create_plan = [exists]
    collection = ensure_collection(
        database, capped(COLLECTION_NAME, SIZE, MAX_DOCS), logging.getLogger(LOGGER_NAME)
    )
    assert collection is database.collection
    assert warnings_of(caplog) == []
    assert database.collection.call_names() == ["options"]


def test_small_size_rounded_up_to_4096_is_the_same_cap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase(FakeCollection(options={"capped": True, "size": 4096, "max": 10}))
    database.create_plan = [EXISTS[0]]
    ensure_collection(database, capped(COLLECTION_NAME, 1000, 10), logging.getLogger(LOGGER_NAME))
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(
    "options",
    [
        {"capped": True, "size": SIZE * 2, "max": MAX_DOCS},
        {"capped": True, "size": SIZE - 256, "max": MAX_DOCS},
        {"capped": True, "size": SIZE + 257, "max": MAX_DOCS},
        {"capped": True, "size": SIZE, "max": MAX_DOCS + 1},
        {"capped": True, "size": SIZE},
    ],
    ids=["bigger", "smaller", "rounded_too_much", "other_max", "no_max"],
)
def test_existing_capped_collection_with_other_options_warns_once(
    options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase(FakeCollection(options=options))
    database.exists = True
    sink = make_sink(lambda: database)
    assert sink(items(2)).written == 2
    assert sink(items(2)).written == 2
    warnings = warnings_of(caplog)
    assert len(warnings) == 1
    assert "used as it is" in warnings[0]
    assert str(options["size"]) in warnings[0]
    assert len(database.creates) == 1
    assert database.collection.call_names() == ["options", "insert_many", "insert_many"]


def test_existing_uncapped_collection_warns_and_is_never_converted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase(FakeCollection(options={}))
    database.exists = True
    sink = make_sink(lambda: database)
    for start in range(3):
        assert sink(items(1, start=start)).written == 1
    warnings = warnings_of(caplog)
    assert len(warnings) == 1
    assert "convertToCapped" in warnings[0]
    assert "not capped" in warnings[0]
    assert database.commands == []
    # Read once: its options and, a plain collection, whether a TTL index bounds it.
    assert set(database.collection.call_names()) == {"options", "index_information", "insert_many"}
    assert database.collection.call_names().count("options") == 1
    assert database.collection.call_names().count("index_information") == 1


def test_create_refused_otherwise_uses_the_collection_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    database.create_plan = [OperationFailure("not authorized to create", code=13)]
    sink = make_sink(lambda: database)
    assert sink(items(2)).written == 2
    assert len(warnings_of(caplog)) == 1
    assert "could not create" in warnings_of(caplog)[0]
    assert len(database.creates) == 1


@pytest.mark.parametrize("code", [2, 13, 72, None])
def test_create_refused_does_not_compare_options(
    code: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase(FakeCollection(options={"capped": True, "size": SIZE, "max": MAX_DOCS}))
    database.create_plan = [OperationFailure("refused", code=code)]
    collection = ensure_collection(
        database, capped(COLLECTION_NAME, SIZE, MAX_DOCS), logging.getLogger(LOGGER_NAME)
    )
    assert collection is database.collection
    assert database.collection.calls == []  # used as is: no options() round trip
    assert len(warnings_of(caplog)) == 1
    assert "could not create" in warnings_of(caplog)[0]


def test_options_unavailable_is_tolerated(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    database.exists = True
    database.collection.options_error = TypeError("'Collection' object is not callable")
    assert make_sink(lambda: database)(items(1)).written == 1
    assert warnings_of(caplog) == []


NETWORK = [
    AutoReconnect("connection refused"),
    ServerSelectionTimeoutError("no servers"),
    NetworkTimeout("timed out"),
]


@pytest.mark.parametrize("error", NETWORK, ids=lambda e: type(e).__name__)
def test_network_error_during_create_propagates(error: Exception) -> None:
    database = FakeDatabase()
    database.create_plan = [error]
    with pytest.raises(type(error)):
        ensure_collection(database, capped(COLLECTION_NAME, SIZE, MAX_DOCS), logging.getLogger("x"))


@pytest.mark.parametrize("error", NETWORK, ids=lambda e: type(e).__name__)
def test_network_error_during_options_propagates(error: Exception) -> None:
    database = FakeDatabase()
    database.exists = True
    database.collection.options_error = error
    with pytest.raises(type(error)):
        ensure_collection(database, capped(COLLECTION_NAME, SIZE, MAX_DOCS), logging.getLogger("x"))


@pytest.mark.parametrize("where", ["create", "options", "get_database"])
def test_setup_network_error_retries_the_batch_and_the_setup(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase(FakeCollection(options={"capped": True, "size": SIZE, "max": MAX_DOCS}))
    lookups: list[int] = []

    def get_database() -> FakeDatabase:
        lookups.append(1)
        if where == "get_database" and len(lookups) == 1:
            raise ServerSelectionTimeoutError("no servers")
        return database

    if where == "create":
        database.create_plan = [AutoReconnect("refused")]
    elif where == "options":
        database.exists = True
        database.collection.options_error = AutoReconnect("reset")
    sink = make_sink(get_database)
    outcome = sink(items(3))
    assert outcome.written == 0
    assert outcome.dropped == {}
    assert len(outcome.retry) == 3
    assert database.collection.stored == []
    database.collection.options_error = None
    assert sink(outcome.retry) == BatchOutcome(written=3)
    assert len(lookups) == 2  # the database was looked up again: setup is retried
    assert len(database.creates) == {"create": 2, "options": 2, "get_database": 1}[where]
    # the one line saying why nothing was written yet, nothing else
    assert [m for m in warnings_of(caplog) if "cannot write to MongoDB" not in m] == []
    assert [d["path"] for d in database.collection.stored] == [f"/items/{i}" for i in range(3)]


def test_timeout_during_create_is_retried() -> None:
    database = FakeDatabase()
    database.create_plan = [OperationFailure("operation exceeded time limit", code=50)]
    sink = make_sink(lambda: database)
    outcome = sink(items(2))
    assert len(outcome.retry) == 2
    assert sink(outcome.retry).written == 2
    assert len(database.creates) == 2
    assert database.collection.call_names() == ["insert_many"]


# --------------------------------------------------------------------------- threads and fork


def test_four_threads_on_the_first_batch_mongomock(mongo: Any) -> None:
    sink = make_sink(lambda: mongo)
    barrier = threading.Barrier(4)
    outcomes: list[BatchOutcome] = []
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(5)
            outcomes.append(sink(items(25, start=index * 25)))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert sorted(o.written for o in outcomes) == [25, 25, 25, 25]
    assert all(o.dropped == {} and o.retry == [] for o in outcomes)
    assert mongo.list_collection_names().count(COLLECTION_NAME) == 1
    collection = mongo[COLLECTION_NAME]
    assert collection.count_documents({}) == 100
    assert len({d["_id"] for d in collection.find()}) == 100


def test_four_threads_race_on_a_server_like_database(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    sink = make_sink(lambda: database)
    barrier = threading.Barrier(4)
    outcomes: list[BatchOutcome] = []

    def run(index: int) -> None:
        barrier.wait(5)
        outcomes.append(sink(items(10, start=index * 10)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(o.written for o in outcomes) == 40
    # created once; any thread that lost the race saw "exists" with the same options
    assert database.created == 1
    assert all(
        kwargs == {"capped": True, "size": SIZE, "max": MAX_DOCS} for _, kwargs in database.creates
    )
    assert warnings_of(caplog) == []
    assert len(database.collection.stored) == 40


def test_after_fork_the_database_is_resolved_again(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[int] = []

    def get_database() -> Any:
        lookups.append(os.getpid())
        return mongo

    sink = make_sink(get_database)
    assert sink(items(1)).written == 1
    assert sink(items(1, start=1)).written == 1
    assert len(lookups) == 1
    child_pid = os.getpid() + 1
    monkeypatch.setattr(store.os, "getpid", lambda: child_pid)
    assert sink(items(1, start=2)).written == 1
    assert lookups == [lookups[0], child_pid]
    assert sink(items(1, start=3)).written == 1
    assert len(lookups) == 2  # once per process
    assert mongo[COLLECTION_NAME].count_documents({}) == 4


# --------------------------------------------------------------------------- reading indexes


def test_setup_creates_the_reading_indexes_once() -> None:
    from flask_tracking.indexes import INDEXES

    database = FakeDatabase()
    sink = make_sink(lambda: database)
    sink(items(2))
    sink(items(2, start=2))
    assert database.collection.indexes == [name for name, _ in INDEXES]


def test_records_are_written_when_the_indexes_cannot_be_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER_NAME)
    database = FakeDatabase()
    with mock.patch.object(store, "ensure_indexes", side_effect=NetworkTimeout("index build")):
        outcome = make_sink(lambda: database)(items(3))
    assert outcome == BatchOutcome(written=3)
    assert any("indexes" in message for message in warnings_of(caplog))

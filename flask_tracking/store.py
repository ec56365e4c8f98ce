"""MongoDB side of the writer: collection setup, per-record checks, ``insert_many``.

:class:`MongoSink` is the ``write_batch`` callable the :class:`~flask_tracking.writer.BatchWriter`
calls on its own thread. It never raises: every record ends up written, dropped with a reason
(counted by the writer) or handed back for a retry after a network error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, Callable

import bson
import pymongo
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

from .aggregate import Aggregate, Key, RollupOutcome
from .capture import RequestState
from .dbactivity import ignore_collection, uncounted
from .indexes import INDEX_NAMES, ensure_indexes
from .logs import RateLimitedLog
from .record import scrub_bodies, to_document
from .redact import Redactor, ScrubbedBody
from .sanitize import TRUNCATED
from .storage import (
    COLLECTION_NAME,
    DUPLICATE_KEY,
    ROLLUP_COLLECTION_NAME,
    SERIES_FIELD,
    ensure_collection,
    is_duplicate_id,
    is_transient,
    series_of,
    tracking_spec,
    ttl_indexes,
)
from .testing import adapt_mongomock
from .writer import BatchOutcome

#: The index that makes each (period, start, endpoint, method) one document; the TTL index.
ROLLUP_KEY_INDEX = "tracking_rollups_key"
ROLLUP_TTL_INDEX = "tracking_rollups_ttl"
#: Serves the reports of one endpoint over a window.
ROLLUP_ENDPOINT_INDEX = "tracking_rollups_endpoint"
#: Characters kept of a long text field (path, query, referrer, ...) when a record is too large.
MAX_TEXT_CHARS = 8192
_TEXT_FIELDS = ("path", "query_params", "referrer", "host", "exception", "url_rule", "user_id")
#: Stored in place of custom data that could not be encoded or did not fit.
CUSTOM_DATA_CUT = "[cut: custom data could not be stored]"

#: Most bytes of documents sent in one insert command: well under the server's
#: maxMessageSizeBytes (48 MB), so that pymongo never splits one ``insert_many`` into several
#: commands. It stops such a split bulk at the first command that fails and says nothing of the
#: documents of the commands it did not send; one command per call keeps every outcome known.
MAX_COMMAND_BYTES = 16 * 1024 * 1024
#: Most documents in one insert command: the servers' maxWriteBatchSize, past which pymongo
#: splits an ``insert_many`` however small its documents.
MAX_COMMAND_DOCUMENTS = 100_000
#: A hook that sees each document before it is stored: return it (changed) or None to drop it.
BeforeSave = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class MongoSink:
    """Prepares records and inserts them into the tracking collection.

    The collection is set up once, on the writer thread, on the first batch, by
    :func:`flask_tracking.storage.ensure_collection` for ``storage_mode`` (capped with
    ``size``/``max``, a TTL index, or time-series): created when missing; used as it is (with
    one warning) when it exists otherwise; a plain collection where the server refuses the
    options (mongomock). Inserts are ``insert_many(ordered=False)`` bounded by
    ``pymongo.timeout``: unordered and retryable (pymongo's default ``retryWrites=true``), they
    need no single primary and suit a sharded collection, where mongos splits the batch.
    """

    def __init__(
        self,
        get_database: Callable[[], Database[Any]],
        *,
        capped_size_bytes: int,
        capped_max_documents: int,
        max_record_bytes: int,
        write_timeout_seconds: float,
        redactor: Redactor | None = None,
        anonymize_ip: bool = False,
        before_save: Callable[[], list[BeforeSave]] = list,
        omitted_fields: tuple[str, ...] = (),
        request_id_key: str | None = None,
        logger: logging.Logger | None = None,
        collection_name: str = COLLECTION_NAME,
        storage_mode: str = "capped",
        retention_seconds: int = 7 * 24 * 3600,
        db_repeat_threshold: int = 5,
        indexes: Sequence[str] = INDEX_NAMES,
    ) -> None:
        """``omitted_fields``: stored fields removed from every document after the
        ``before_save`` hooks (which see the whole document), from TRACKING_FIELDS or
        TRACKING_EXCLUDE_FIELDS; keys a hook adds are kept. ``request_id_key``: the environ key
        of the incoming request-id header and ``db_repeat_threshold`` the repetitions that make
        a query shape repeated (see :func:`~flask_tracking.record.to_document`).
        ``storage_mode`` and ``retention_seconds``: TRACKING_STORAGE and the retention of the
        ``ttl`` and ``timeseries`` modes (see :mod:`flask_tracking.storage`). ``indexes``: the
        reading indexes to create (TRACKING_INDEXES). Its own database work is never counted
        as a request's (:func:`~flask_tracking.dbactivity.uncounted`)."""
        self._get_database = get_database
        self._max_record_bytes = max_record_bytes
        self._write_timeout = write_timeout_seconds
        self._redactor = redactor
        self._anonymize_ip = anonymize_ip
        self._before_save = before_save
        self._omitted_fields = omitted_fields
        self._request_id_key = request_id_key
        self._logger = logger or logging.getLogger("flask_tracking")
        #: Why nothing is written while the server cannot be reached (once a minute).
        self._unreachable_log = RateLimitedLog(self._logger)
        self._spec = tracking_spec(
            storage_mode,
            name=collection_name,
            size_bytes=capped_size_bytes,
            max_documents=capped_max_documents,
            retention_seconds=retention_seconds,
        )
        self._db_repeat_threshold = db_repeat_threshold
        self._indexes = tuple(indexes)
        self._collection: Collection[Any] | None = None
        self._pid = os.getpid()

    def __call__(self, records: list[Any]) -> BatchOutcome:
        """Write one batch; see :class:`~flask_tracking.writer.BatchOutcome`."""
        with uncounted():
            return self._write(records)

    def _write(self, records: list[Any]) -> BatchOutcome:
        if not records:
            return BatchOutcome()
        try:
            collection = self._get_collection()
        except Exception as error:
            return self._refused(records, error)
        dropped: Counter[str] = Counter()
        codec_options = _encoding_options(collection.codec_options)
        bodies = iter(self._filtered_bodies(records))
        documents = []
        for record in records:
            # A document handed back for a retry is inserted as it is.
            document = (
                self._prepare(record, next(bodies), dropped, codec_options)
                if isinstance(record, RequestState)
                else record
            )
            if document is not None:
                documents.append(document)
        outcome = self._insert(collection, documents) if documents else BatchOutcome()
        for reason, count in dropped.items():
            outcome.dropped[reason] = outcome.dropped.get(reason, 0) + count
        return outcome

    def _filtered_bodies(
        self, records: list[Any]
    ) -> Sequence[tuple[ScrubbedBody | None, ScrubbedBody | None] | None]:
        """The filtered bodies of the batch's new records, in order (None: not filtered yet),
        all at once: the pre-filter then reads them together, in one pass."""
        states = [record for record in records if isinstance(record, RequestState)]
        if self._redactor is not None:
            try:
                return scrub_bodies(states, self._redactor)
            except Exception:  # each record's bodies are then filtered on their own
                self._logger.exception("flask_tracking: could not filter the bodies of a batch")
        return [None] * len(states)

    def _prepare(
        self,
        record: RequestState,
        bodies: tuple[ScrubbedBody | None, ScrubbedBody | None] | None,
        dropped: Counter[str],
        codec_options: CodecOptions[Any],
    ) -> Mapping[str, Any] | None:
        """The document to insert, encoded once (a :class:`~bson.raw_bson.RawBSONDocument`
        that pymongo sends as it is), or None when it is dropped (counted in ``dropped``)."""
        try:
            document: dict[str, Any] = to_document(
                record,
                self._redactor,
                self._anonymize_ip,
                self._request_id_key,
                self._db_repeat_threshold,
                bodies=bodies,
            )
        except Exception:
            self._logger.exception("flask_tracking: could not convert a record; dropped")
            dropped["encode_error"] += 1
            return None
        for hook in self._before_save():
            try:
                changed = hook(document)
            except Exception:
                self._logger.exception("flask_tracking: a before_save hook raised; record dropped")
                dropped["hook_error"] += 1
                return None
            if changed is None:
                dropped["by_hook"] += 1
                return None
            if not isinstance(changed, dict):
                self._logger.error(
                    "flask_tracking: a before_save hook returned %s, not a dict or None; "
                    "record dropped",
                    type(changed).__name__,
                )
                dropped["hook_error"] += 1
                return None
            document = changed
        for name in self._omitted_fields:
            document.pop(name, None)
        if self._spec.meta_field == SERIES_FIELD:
            document[SERIES_FIELD] = series_of(document)
        encoded = encode_document(document, self._max_record_bytes, codec_options)
        if encoded is None:
            dropped["encode_error"] += 1
        return encoded

    def _insert(self, collection: Collection[Any], documents: list[Any]) -> BatchOutcome:
        """Insert ``documents`` in commands of at most :data:`MAX_COMMAND_BYTES`, all within
        the write timeout. A command to retry holds back the later ones (retried with it, in
        order); a refused one is dropped and the next is sent."""
        outcome = BatchOutcome()
        chunks = _command_chunks(documents)
        with pymongo.timeout(self._write_timeout):
            for number, chunk in enumerate(chunks):
                part = self._insert_command(collection, chunk)
                outcome.written += part.written
                for reason, count in part.dropped.items():
                    outcome.dropped[reason] = outcome.dropped.get(reason, 0) + count
                if part.retry:
                    outcome.retry.extend(part.retry)
                    outcome.retry.extend(chain.from_iterable(chunks[number + 1 :]))
                    break
        return outcome

    def _insert_command(self, collection: Collection[Any], documents: list[Any]) -> BatchOutcome:
        try:
            collection.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            return _partial_outcome(error, documents)
        except Exception as error:
            return self._refused(documents, error)
        return BatchOutcome(written=len(documents))

    def _refused(self, entries: list[Any], error: Exception) -> BatchOutcome:
        """The outcome of a batch whose collection setup or insert raised ``error``: handed
        back for a retry when the error is transient, else dropped (logged)."""
        if is_transient(error):
            self._unreachable_log.warning(
                "unreachable",
                "flask_tracking: cannot write to MongoDB (%s: %s); the records wait in the "
                "queue and are retried",
                type(error).__name__,
                error,
            )
            return BatchOutcome(retry=entries)
        self._logger.warning(
            "flask_tracking: MongoDB refused a batch of %d records (%s: %s); dropped",
            len(entries),
            type(error).__name__,
            error,
        )
        return BatchOutcome(dropped={"db_error": len(entries)})

    def _get_collection(self) -> Collection[Any]:
        if self._pid != os.getpid():  # forked: resolve the client again in this process
            self._collection, self._pid = None, os.getpid()
        if self._collection is None:
            with pymongo.timeout(self._write_timeout):
                self._collection = self._set_up_collection()
        return self._collection

    def _set_up_collection(self) -> Collection[Any]:
        """The collection, created in its storage mode when missing, with its indexes."""
        database = _own_database(self._get_database, self._spec.name)
        collection = ensure_collection(database, self._spec, self._logger)
        try:
            ensure_indexes(
                collection,
                self._logger,
                names=self._indexes,
                skip=ttl_indexes(collection, self._spec),
            )
        except Exception as error:  # e.g. a long build on a big collection timed out
            self._logger.warning(
                "flask_tracking: could not create the reading indexes (%s: %s); records "
                "are written without them (create them with flask_tracking.indexes."
                "ensure_indexes)",
                type(error).__name__,
                error,
            )
        return collection


def _own_database(get_database: Callable[[], Database[Any]], collection: str) -> Database[Any]:
    """The database of one of the tracker's own collections, ready for its first write: the
    collection is left out of the requests' database activity, and when mongomock is imported
    it is taught what pymongo sends and it does not take (raw documents, the rollups' bulk
    updates; see :func:`flask_tracking.testing.adapt_mongomock`). Never imports mongomock."""
    if "mongomock" in sys.modules:
        adapt_mongomock()
    database = get_database()
    database_name = getattr(database, "name", None)
    if isinstance(database_name, str):  # never count the tracker's own commands
        ignore_collection(database_name, collection)
    return database


def _encoding_options(options: Any) -> CodecOptions[Any]:
    """How to encode documents as the collection's client would (its UUID representation and
    type registry), with UUIDs in the standard representation when the client names none
    (pymongo would refuse a user's UUID primary key otherwise)."""
    representation = options.uuid_representation
    if representation == UuidRepresentation.UNSPECIFIED:
        representation = UuidRepresentation.STANDARD
    return CodecOptions(uuid_representation=representation, type_registry=options.type_registry)


def _command_chunks(documents: list[Any]) -> list[list[Any]]:
    """``documents`` in runs of at most :data:`MAX_COMMAND_BYTES` (encoded documents; one of
    another kind counts as empty) and :data:`MAX_COMMAND_DOCUMENTS`, each holding at least one
    document."""
    chunks: list[list[Any]] = [[]]
    size = 0
    for document in documents:
        length = len(document.raw) if isinstance(document, RawBSONDocument) else 0
        if chunks[-1] and (
            size + length > MAX_COMMAND_BYTES or len(chunks[-1]) >= MAX_COMMAND_DOCUMENTS
        ):
            chunks.append([])
            size = 0
        chunks[-1].append(document)
        size += length
    return chunks


def _partial_outcome(error: BulkWriteError, documents: list[Any]) -> BatchOutcome:
    """Count what an unordered insert_many of ``documents`` stored; a duplicate _id on a retry
    was stored before (a duplicate key of another index is a refused document). When the
    answer does not account for every document (pymongo stops at a write concern error of a
    retryable code; a server interrupted mid-batch), every document without a write error is
    retried: the retry's duplicate keys count those already stored."""
    details = error.details or {}
    inserted = int(details.get("nInserted", 0))
    write_errors = details.get("writeErrors", [])
    duplicates = failed = 0
    answered = set()
    for write_error in write_errors:
        answered.add(write_error.get("index"))
        if is_duplicate_id(write_error):
            duplicates += 1
        else:
            failed += 1
    if inserted + len(write_errors) >= len(documents):
        outcome = BatchOutcome(written=inserted + duplicates)
    else:
        retry = [document for index, document in enumerate(documents) if index not in answered]
        outcome = BatchOutcome(written=duplicates, retry=retry)
    if failed:
        outcome.dropped["db_error"] = failed
    return outcome


def encode_document(
    document: dict[str, Any], max_bytes: int, codec_options: CodecOptions[Any]
) -> RawBSONDocument | None:
    """``document`` encoded with the collection's ``codec_options``, at most ``max_bytes`` long;
    None when it cannot be stored. Encoding each document once, here, gives its exact size, and
    the batch holds bytes instead of the documents' dicts and lists.

    A document that is larger or cannot be encoded as it is gives way, step by step (in place),
    until it fits: custom data, header values, long text fields, then the bodies.
    """
    for shrink in (None, _cut_custom_data, _cut_headers, _cut_text, _cut_bodies):
        if shrink is not None:
            shrink(document)
        try:
            encoded = bson.encode(document, codec_options=codec_options)
        except Exception:  # only custom data can be odd; the next step replaces it
            continue
        if len(encoded) <= max_bytes:
            return RawBSONDocument(encoded)
    return None


def _cut_custom_data(document: dict[str, Any]) -> None:
    if document.get("custom_data") is not None:
        document["custom_data"] = CUSTOM_DATA_CUT


def _cut_headers(document: dict[str, Any]) -> None:
    for key in ("request_headers", "response_headers"):
        headers = document.get(key) or []
        document[key] = [[name[:256], value[:1024]] for name, value in headers[:200]]


def _cut_text(document: dict[str, Any]) -> None:
    agent = document.get("user_agent") or {}
    for holder, key in [*((document, name) for name in _TEXT_FIELDS), (agent, "string")]:
        value = holder.get(key)
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            holder[key] = value[:MAX_TEXT_CHARS] + TRUNCATED


def _cut_bodies(document: dict[str, Any]) -> None:
    for prefix in ("request", "response"):
        if document.get(f"{prefix}_body"):
            document[f"{prefix}_body"] = None
            document[f"{prefix}_body_omitted"] = "too large for the record"


class RollupSink:
    """The ``write_rollups`` callable of :class:`~flask_tracking.aggregate.RollupAggregator`:
    adds each aggregate to its rollup document with one ``UpdateOne(..., upsert=True)`` of
    ``$inc`` (and ``$max`` for the slowest time), all in one unordered ``bulk_write``.

    No read-modify-write: any number of processes and hosts add to the same documents. The
    collection gets, on the first write, a unique index on (period, start, endpoint, method),
    an index on (endpoint, period, start) and a TTL index on ``start`` expiring rollups after
    ``retention_days``. Network errors and timeouts hand every aggregate back for a retry;
    a duplicate key (two processes creating the same rollup at once) hands back that one;
    any other refusal drops it (counted). A network error in the middle of a ``bulk_write``
    can leave some updates applied and retried again: rollups are exact unless that happens.
    """

    def __init__(
        self,
        get_database: Callable[[], Database[Any]],
        *,
        retention_days: int,
        write_timeout_seconds: float,
        collection_name: str = ROLLUP_COLLECTION_NAME,
        logger: logging.Logger | None = None,
    ) -> None:
        self._get_database = get_database
        self._retention_seconds = retention_days * 86400
        self._write_timeout = write_timeout_seconds
        self._collection_name = collection_name
        self._logger = logger or logging.getLogger("flask_tracking")
        self._collection: Collection[Any] | None = None
        self._pid = os.getpid()

    def __call__(self, aggregates: list[tuple[Key, Aggregate]]) -> RollupOutcome:
        """Write one round of aggregates; see :class:`~flask_tracking.aggregate.RollupOutcome`.
        Its database work is never counted as a request's."""
        with uncounted():
            return self._write(aggregates)

    def _write(self, aggregates: list[tuple[Key, Aggregate]]) -> RollupOutcome:
        if not aggregates:
            return RollupOutcome()
        operations = [rollup_update(key, aggregate) for key, aggregate in aggregates]
        try:
            with pymongo.timeout(self._write_timeout):
                self._rollup_collection().bulk_write(operations, ordered=False)
        except BulkWriteError as error:
            retry, dropped = [], 0
            for write_error in (error.details or {}).get("writeErrors", []):
                index = write_error.get("index")
                if not isinstance(index, int) or not 0 <= index < len(aggregates):
                    continue
                if write_error.get("code") == DUPLICATE_KEY:
                    retry.append(aggregates[index])
                else:
                    dropped += 1
            if dropped:
                self._logger.warning(
                    "flask_tracking: MongoDB refused %d rollup update(s); dropped", dropped
                )
            return RollupOutcome(
                written=len(aggregates) - len(retry) - dropped, dropped=dropped, retry=retry
            )
        except Exception as error:
            if is_transient(error):
                return RollupOutcome(retry=aggregates)
            self._logger.warning(
                "flask_tracking: could not write %d rollup(s) (%s: %s); dropped",
                len(aggregates),
                type(error).__name__,
                error,
            )
            return RollupOutcome(dropped=len(aggregates))
        return RollupOutcome(written=len(aggregates))

    def _rollup_collection(self) -> Collection[Any]:
        if self._pid != os.getpid():
            self._collection, self._pid = None, os.getpid()
        if self._collection is None:
            database = _own_database(self._get_database, self._collection_name)
            collection = database[self._collection_name]
            ensure_rollup_indexes(collection, self._retention_seconds, self._logger)
            self._collection = collection
        return self._collection


def rollup_update(key: Key, aggregate: Aggregate) -> UpdateOne:
    """The upsert that adds ``aggregate`` to the rollup of ``key`` (period, start, endpoint,
    method)."""
    period, start, endpoint, method = key
    increments: dict[str, Any] = {
        "count": aggregate.count,
        "errors": aggregate.errors,
        "client_errors": aggregate.client_errors,
        "timed": aggregate.timed,
        "time_sum": aggregate.time_sum,
        "bytes_in": aggregate.bytes_in,
        "bytes_out": aggregate.bytes_out,
    }
    for name, count in aggregate.status.items():
        increments[f"status.{name}"] = count
    for bucket, count in aggregate.histogram.items():
        increments[f"histogram.{bucket}"] = count
    update: dict[str, Any] = {"$inc": increments}
    if aggregate.time_max is not None:
        update["$max"] = {"time_max": aggregate.time_max}
    return UpdateOne(
        {"period": period, "start": start, "endpoint": endpoint, "method": method},
        update,
        upsert=True,
    )


def ensure_rollup_indexes(
    collection: Collection[Any], retention_seconds: int, logger: logging.Logger
) -> None:
    """Create the rollup indexes; a TTL index with another expiry is changed with ``collMod``.

    Raises only for network trouble, a timeout or a "try again later" answer (see
    :func:`~flask_tracking.storage.is_transient`; the caller retries later).
    """
    wanted: tuple[tuple[str, list[tuple[str, int]], dict[str, Any]], ...] = (
        (
            ROLLUP_KEY_INDEX,
            [("period", 1), ("start", 1), ("endpoint", 1), ("method", 1)],
            {"unique": True},
        ),
        (ROLLUP_ENDPOINT_INDEX, [("endpoint", 1), ("period", 1), ("start", 1)], {}),
        (ROLLUP_TTL_INDEX, [("start", 1)], {"expireAfterSeconds": retention_seconds}),
    )
    for name, keys, options in wanted:
        try:
            collection.create_index(keys, name=name, **options)
        except ConnectionFailure:
            raise
        except OperationFailure as error:
            if is_transient(error):
                raise
            if name == ROLLUP_TTL_INDEX and error.code in (85, 86):
                _change_expiry(collection, retention_seconds, logger)
                continue
            logger.warning("flask_tracking: could not create index %r: %s", name, error)
        except Exception as error:
            logger.warning("flask_tracking: could not create index %r: %r", name, error)


def _change_expiry(collection: Collection[Any], seconds: int, logger: logging.Logger) -> None:
    """Give the existing TTL index on ``start`` the configured expiry."""
    try:
        collection.database.command(
            "collMod",
            collection.name,
            index={"keyPattern": {"start": 1}, "expireAfterSeconds": seconds},
        )
    except Exception as error:
        if is_transient(error):  # network trouble too
            raise  # the caller tries the round again later
        logger.warning(
            "flask_tracking: the TTL index of %r has another expiry and could not be changed "
            "(%s); rollups expire as it says",
            collection.name,
            error,
        )

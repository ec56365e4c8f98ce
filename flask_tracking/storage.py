"""Storage modes of the tracking collection, and the one place that creates collections.

Three modes (``TRACKING_STORAGE``):

- ``"capped"``: a capped collection of ``TRACKING_TABLE_SIZE`` bytes and at most
  ``TRACKING_MAX_DOCUMENTS`` documents. Bounded by construction, insertion order, tailable; one
  server only (a capped collection cannot be sharded) and its writes are serialized.
- ``"ttl"``: a plain collection with a TTL index on ``date_created``: the server deletes
  records older than ``TRACKING_RETENTION_HOURS``. Shardable; bounded by age, not by size.
- ``"timeseries"``: a time-series collection (MongoDB 5.0+): timeField ``date_created``,
  metaField ``series`` (what the reports group by: endpoint, method, status code),
  granularity ``"seconds"``, and ``expireAfterSeconds`` for the retention. Compact, shardable
  on 5.1+; a measurement is at most 4 MB.

:func:`ensure_collection` creates a collection as a :class:`CollectionSpec` describes it, or,
when it exists, compares it with the spec and logs one warning (with the shell command that
would fix it) when they differ. It never converts, drops or renames anything. It runs on the
writer thread (or in a CLI command), never on the request path. It knows nothing about what
the collection holds, so any collection of the package can use it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, ConnectionFailure, OperationFailure

from .indexes import DATE_INDEX_NAME

#: The collection :class:`flask_tracking.documents.Tracking` reads.
COLLECTION_NAME = "tracking"
#: The collection :class:`flask_tracking.rollups.Rollup` reads (``TRACKING_ROLLUP_COLLECTION``).
ROLLUP_COLLECTION_NAME = "tracking_rollups"
#: The collection :func:`flask_tracking.migrate.migrate` keeps one checkpoint per migration in.
MIGRATIONS_COLLECTION_NAME = "tracking_migrations"


def source_name(name: str) -> str:
    """The name the old collection ``name`` gets while (and after) it is migrated."""
    return f"{name}_before_migration"


#: The package's collections the rollups may not be written into (TRACKING_ROLLUP_COLLECTION):
#: the records', the old records' of a migration, the migrations' checkpoints.
RESERVED_COLLECTION_NAMES = (
    COLLECTION_NAME,
    source_name(COLLECTION_NAME),
    MIGRATIONS_COLLECTION_NAME,
)

__all__ = [
    "COLLECTION_NAME",
    "GRANULARITY",
    "MIGRATIONS_COLLECTION_NAME",
    "MODES",
    "RESERVED_COLLECTION_NAMES",
    "ROLLUP_COLLECTION_NAME",
    "SERIES_FIELD",
    "SERIES_KEYS",
    "TIME_FIELD",
    "CollectionSpec",
    "ensure_collection",
    "ensure_ttl_index",
    "is_transient",
    "mode_of",
    "series_of",
    "tracking_spec",
    "ttl_indexes",
]

#: The values of ``TRACKING_STORAGE``.
MODES = ("capped", "ttl", "timeseries")
#: The field every record's time is in (the TTL index's field, the time-series timeField).
TIME_FIELD = "date_created"
#: The time-series metaField: a small document naming the series a record belongs to.
SERIES_FIELD = "series"
#: The record fields copied into :data:`SERIES_FIELD`: the reports' low-cardinality groups.
#: ``path`` and ``user_id`` stay out: one bucket per distinct value would defeat bucketing.
SERIES_KEYS = ("endpoint", "method", "status_code")
#: Time-series granularity. MongoDB advises the interval between two measurements of the same
#: series; a busy endpoint sees a request every second or less, and "seconds" buckets span one
#: hour, which is also the dashboard's shortest window. A quiet endpoint costs one small bucket
#: per hour it is used.
GRANULARITY = "seconds"
#: Largest document a time-series collection accepts (a "measurement"): 4 MB.
MAX_MEASUREMENT_BYTES = 4 * 1024 * 1024
#: Largest ``expireAfterSeconds`` MongoDB accepts.
MAX_EXPIRE_SECONDS = 2**31 - 1

_NAMESPACE_EXISTS = 48
#: Server answers that mean "try again later" (the codes pymongo retries a write on: not
#: primary, shutting down, host unreachable, network timeout, ...).
_TRANSIENT_CODES = frozenset(
    {6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436}
)


@dataclass(frozen=True)
class CollectionSpec:
    """How one collection should be stored.

    ``mode`` is one of :data:`MODES`. ``capped`` needs ``size_bytes`` (and takes
    ``max_documents``); ``ttl`` and ``timeseries`` need ``retention_seconds`` and use
    ``time_field``; ``timeseries`` also takes ``meta_field`` and ``granularity``.
    ``ttl_index_keys`` and ``ttl_index_name`` name the TTL index of the ``ttl`` mode.
    """

    name: str
    mode: str
    size_bytes: int = 0
    max_documents: int | None = None
    retention_seconds: int = 0
    time_field: str = TIME_FIELD
    meta_field: str | None = None
    granularity: str = GRANULARITY
    ttl_index_name: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"storage mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode == "capped" and self.size_bytes <= 0:
            raise ValueError("a capped collection needs size_bytes > 0")
        if self.mode != "capped" and not 0 < self.retention_seconds <= MAX_EXPIRE_SECONDS:
            raise ValueError(f"retention_seconds must be within 1..{MAX_EXPIRE_SECONDS}")

    @property
    def ttl_keys(self) -> list[tuple[str, int]]:
        """Keys of the TTL index (``ttl`` mode): the time field, newest first, so the same
        index also serves newest-first reads and time windows."""
        return [(self.time_field, -1)]

    @property
    def index_name(self) -> str:
        """Name of the TTL index (``ttl`` mode)."""
        return self.ttl_index_name or f"{self.name}_{self.time_field}"

    def create_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Database.create_collection`` for this spec."""
        if self.mode == "capped":
            options: dict[str, Any] = {"capped": True, "size": self.size_bytes}
            if self.max_documents is not None:
                options["max"] = self.max_documents
            return options
        if self.mode == "timeseries":
            series: dict[str, Any] = {"timeField": self.time_field, "granularity": self.granularity}
            if self.meta_field:
                series["metaField"] = self.meta_field
            return {"timeseries": series, "expireAfterSeconds": self.retention_seconds}
        return {}

    def shell_create(self) -> str:
        """The ``mongosh`` command creating the collection as this spec says."""
        options = json.dumps(self.create_options())
        create = f"db.createCollection({json.dumps(self.name)}, {options})"
        if self.mode == "ttl":
            keys = json.dumps(dict(self.ttl_keys))
            ttl = json.dumps(
                {"name": self.index_name, "expireAfterSeconds": self.retention_seconds}
            )
            create += f"; db.getCollection({json.dumps(self.name)}).createIndex({keys}, {ttl})"
        return create


def tracking_spec(
    mode: str,
    *,
    name: str,
    size_bytes: int,
    max_documents: int,
    retention_seconds: int,
) -> CollectionSpec:
    """The spec of the tracking collection for ``TRACKING_STORAGE = mode``; in the ``ttl``
    mode its TTL index is the reading index on ``date_created``."""
    if mode == "capped":
        return CollectionSpec(name, mode, size_bytes=size_bytes, max_documents=max_documents)
    return CollectionSpec(
        name,
        mode,
        retention_seconds=retention_seconds,
        meta_field=SERIES_FIELD if mode == "timeseries" else None,
        ttl_index_name=DATE_INDEX_NAME,
    )


def series_of(document: dict[str, Any]) -> dict[str, Any]:
    """The time-series metaField value of a tracking ``document``: its :data:`SERIES_KEYS`."""
    return {key: document.get(key) for key in SERIES_KEYS}


def is_transient(error: Exception) -> bool:
    """Network trouble, a timeout or a server saying "try again later": the same operation
    may succeed later."""
    if isinstance(error, ConnectionFailure) or bool(getattr(error, "timeout", False)):
        return True
    return isinstance(error, OperationFailure) and (
        error.code in _TRANSIENT_CODES or error.has_error_label("RetryableWriteError")
    )


def ensure_collection(
    database: Database[Any], spec: CollectionSpec, logger: logging.Logger
) -> Collection[Any]:
    """Create ``spec.name`` as ``spec`` says when it is missing; otherwise use it as it is,
    warning once (with the command that would fix it) when it differs from ``spec``.

    Where the server refuses the options (mongomock raises NotImplementedError; MongoDB 4.4
    does not know time-series options) the collection is a plain one, with one warning; outside
    the capped mode it gets the TTL index, so records still expire. Raises only for network
    trouble, timeouts and "try again later" answers (so the writer tries again later, and the
    collection is never left to an insert to create).
    """
    name = spec.name
    try:
        collection = database.create_collection(name, **spec.create_options())
    except NotImplementedError:  # mongomock: "Special options not supported"
        logger.warning(
            "flask_tracking: this server does not support %s collections; writing %r as a "
            "plain collection",
            spec.mode,
            name,
        )
        return _plain_fallback(database, spec, logger)
    except CollectionInvalid:
        pass  # exists already (perhaps created by another worker a moment ago)
    except OperationFailure as error:
        if is_transient(error):  # try again on the next batch; never fall back silently
            raise
        if error.code != _NAMESPACE_EXISTS:
            logger.warning(
                "flask_tracking: could not create the %s collection %r (%s); writing it as a "
                "plain collection",
                spec.mode,
                name,
                error,
            )
            return _plain_fallback(database, spec, logger)
    else:
        if spec.mode == "ttl":
            ensure_ttl_index(collection, spec, logger)
        return collection
    collection = database[name]
    _check_existing(collection, spec, logger)
    return collection


def _plain_fallback(
    database: Database[Any], spec: CollectionSpec, logger: logging.Logger
) -> Collection[Any]:
    """The collection written when the server refused ``spec``'s options: a plain one (made by
    the first insert or index), with the TTL index outside the capped mode."""
    collection = database[spec.name]
    if spec.mode != "capped":
        ensure_ttl_index(collection, spec, logger)
    return collection


def ensure_ttl_index(
    collection: Collection[Any], spec: CollectionSpec, logger: logging.Logger
) -> None:
    """Create the TTL index of ``spec`` unless it is there; when an index of that name exists
    with other options, leave it and warn with the ``collMod`` that would fix it. Raises for
    network trouble, timeouts and "try again later" answers (see :func:`is_transient`): the
    caller sets the collection up again later, before anything makes an index of that name
    without an expiry."""
    try:
        existing = collection.index_information().get(spec.index_name)
        if existing is None:
            collection.create_index(
                spec.ttl_keys, name=spec.index_name, expireAfterSeconds=spec.retention_seconds
            )
            return
    except OperationFailure as error:
        if is_transient(error):
            raise
        logger.warning(
            "flask_tracking: could not create the TTL index %r on %r (%s); records will not "
            "expire. Create it with: %s",
            spec.index_name,
            spec.name,
            error,
            spec.shell_create().split("; ", 1)[-1],
        )
        return
    if existing.get("expireAfterSeconds") != spec.retention_seconds:
        logger.warning(
            "flask_tracking: collection %r has an index %r expiring records after %s seconds, "
            "not %d; used as it is. To fix it, run: %s",
            spec.name,
            spec.index_name,
            existing.get("expireAfterSeconds", "no"),
            spec.retention_seconds,
            _coll_mod_ttl(spec),
        )


def ttl_indexes(collection: Collection[Any], spec: CollectionSpec) -> tuple[str, ...]:
    """``(spec.index_name,)`` when ``collection`` has it as a TTL index (the ``ttl`` mode, or a
    plain fallback of ``timeseries``), else ``()``: the reading indexes must leave it alone."""
    if spec.mode == "capped":
        return ()
    index = _index_information(collection).get(spec.index_name) or {}
    return (spec.index_name,) if index.get("expireAfterSeconds") is not None else ()


def _index_information(collection: Collection[Any]) -> Mapping[str, Any]:
    """``collection.index_information()``; ``{}`` when the server will not list the indexes
    (not allowed): nothing to tell of them. A transient error is raised, for the setup to be
    tried again later, as for the other commands."""
    try:
        return collection.index_information()
    except Exception as error:
        if is_transient(error):
            raise
        return {}


def mode_of(options: Mapping[str, Any]) -> str:
    """``"capped"``, ``"timeseries"`` or ``"plain"``, from ``Collection.options()``."""
    if options.get("capped"):
        return "capped"
    if options.get("timeseries"):
        return "timeseries"
    return "plain"


def _check_existing(
    collection: Collection[Any], spec: CollectionSpec, logger: logging.Logger
) -> None:
    try:
        options: Mapping[str, Any] | None = collection.options()
    except Exception as error:
        if is_transient(error):
            raise  # the writer sets the collection up again later
        options = None  # mongomock has no options(); nothing to compare
    plain = options is None or mode_of(options) == "plain"
    if (spec.mode == "ttl" and plain) or (spec.mode == "timeseries" and options is None):
        ensure_ttl_index(collection, spec, logger)  # a plain collection expires by its index
    expiry = _ttl_expiry(collection) if spec.mode == "capped" and plain else None
    problem = None if options is None else _difference(options, spec, expiry)
    if problem is not None:
        logger.warning("flask_tracking: collection %r %s", spec.name, problem)


def _ttl_expiry(collection: Collection[Any]) -> tuple[str, int] | None:
    """The name and ``expireAfterSeconds`` of ``collection``'s TTL index (``flask tracking
    migrate --to ttl`` made one), or None when it has none."""
    for index_name, index in _index_information(collection).items():
        seconds = index.get("expireAfterSeconds")
        # A server may hold NaN or infinity (MongoDB before 5.0 took NaN): no age to tell of.
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            return index_name, int(seconds)
    return None


def _difference(
    options: Mapping[str, Any],
    spec: CollectionSpec,
    expiry: tuple[str, int] | None = None,
) -> str | None:
    """What differs between an existing collection's ``options`` (and, for a plain one, its TTL
    index's ``expiry``: name and seconds) and ``spec``, with the command that would fix it;
    None when they match."""
    actual = mode_of(options)
    name = spec.name
    if spec.mode == "capped":
        if actual == "plain" and expiry is not None:
            index_name, seconds = expiry
            retention = (
                f"with TRACKING_RETENTION_HOURS = {_hours(seconds)}"
                if seconds >= 1  # the least TRACKING_RETENTION_HOURS can say
                else "and the TRACKING_RETENTION_HOURS to keep records for: it cannot be 0"
            )
            return (
                f"is a TTL collection, not capped: its index {index_name!r} deletes records "
                f"after {seconds} seconds, so it is bounded by age, and used as it is. To match "
                f'it, set TRACKING_STORAGE = "ttl" ({retention}); to move its records into a '
                "capped collection instead, run: flask tracking migrate --to capped"
            )
        if actual != "capped":
            if actual == "timeseries":
                return (
                    "is a time-series collection, not capped; it is used as it is. To move its "
                    "records into a capped collection, run: flask tracking migrate --to capped"
                )
            return (
                "exists and is not capped; it will grow without bound. It is used as it is "
                "and never converted automatically. To cap it, run in the shell: "
                f"db.runCommand({{convertToCapped: {json.dumps(name)}, size: {spec.size_bytes}}}) "
                "(this locks the database while it runs and drops all indexes but _id), "
                "or copy its records with: flask tracking migrate --to capped"
            )
        if not _same_cap(options, spec.size_bytes, spec.max_documents or 0):
            return (
                f"is capped with size={options.get('size')} max={options.get('max')}, not "
                f"size={spec.size_bytes} max={spec.max_documents}; used as it is. To resize "
                f"it (MongoDB 6.0+), run: db.runCommand({{collMod: {json.dumps(name)}, "
                f"cappedSize: {spec.size_bytes}, cappedMax: {spec.max_documents or 0}}})"
            )
        return None
    migrate = f"flask tracking migrate --to {spec.mode}"
    if spec.mode == "ttl":
        if actual != "plain":
            return (
                f"is a {actual} collection, which cannot expire records by age; it is used as "
                f"it is. To move its records into a collection with a TTL index, run: {migrate}"
            )
        return None
    if actual != "timeseries":
        return (
            f"is a {actual} collection, not a time-series one; it is used as it is. To move "
            f"its records into a time-series collection, run: {migrate}"
        )
    series = options.get("timeseries") or {}
    if series.get("timeField") != spec.time_field or series.get("metaField") != spec.meta_field:
        return (
            f"is a time-series collection with timeField={series.get('timeField')!r} "
            f"metaField={series.get('metaField')!r}, not {spec.time_field!r} and "
            f"{spec.meta_field!r}; they cannot be changed. It is used as it is; to copy its "
            f"records into a new one, run: {migrate}"
        )
    if options.get("expireAfterSeconds") != spec.retention_seconds:
        return (
            f"expires records after {options.get('expireAfterSeconds')} seconds, not "
            f"{spec.retention_seconds}; used as it is. To change it, run: "
            f"db.runCommand({{collMod: {json.dumps(name)}, "
            f"expireAfterSeconds: {spec.retention_seconds}}})"
        )
    if series.get("granularity") != spec.granularity:
        return (
            f"has time-series granularity {series.get('granularity')!r}, not "
            f"{spec.granularity!r}; used as it is (granularity can only be raised: "
            f"db.runCommand({{collMod: {json.dumps(name)}, timeseries: "
            f"{{granularity: {json.dumps(spec.granularity)}}}}}))"
        )
    return None


def _hours(seconds: int) -> str:
    """``seconds`` as TRACKING_RETENTION_HOURS would say it (``7200`` -> ``2``), in full: the
    setting gives ``seconds`` back (``34293.6`` hours would be 171 seconds more than
    ``123456789``)."""
    hours = seconds / 3600
    return str(int(hours)) if hours.is_integer() else repr(hours)


def _coll_mod_ttl(spec: CollectionSpec) -> str:
    return (
        f"db.runCommand({{collMod: {json.dumps(spec.name)}, index: {{name: "
        f"{json.dumps(spec.index_name)}, expireAfterSeconds: {spec.retention_seconds}}}}})"
    )


def _same_cap(options: Mapping[str, Any], size_bytes: int, max_documents: int) -> bool:
    """Servers round sizes up (to 256 bytes, formerly 4096 minimum), so compare tolerantly."""
    size = options.get("size") or 0
    size_matches = size_bytes <= size <= max(4096, size_bytes + 256)
    return size_matches and (options.get("max") or 0) == max_documents


#: MongoDB's error code for a duplicate key of a unique index.
DUPLICATE_KEY = 11000


def is_duplicate_id(write_error: Mapping[str, Any]) -> bool:
    """Whether a write error is a duplicate ``_id`` (the document is stored already), not a
    duplicate key of another unique index someone made (the document was refused). Servers
    before 4.4 name the index only in the message; one that names none (mongomock) is taken
    for ``_id``."""
    if write_error.get("code") != DUPLICATE_KEY:
        return False
    key_pattern = write_error.get("keyPattern")
    if key_pattern is not None:
        return isinstance(key_pattern, Mapping) and list(key_pattern) == ["_id"]
    message = str(write_error.get("errmsg", ""))
    return " index: " not in message or " index: _id_ " in message

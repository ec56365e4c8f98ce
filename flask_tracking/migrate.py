"""Move the stored records into a collection of another storage mode, in batches, resumably.

:func:`migrate` (the ``flask tracking migrate --to MODE`` command) renames the collection to
``<name>_before_migration``, creates ``<name>`` in the new mode with
:func:`~flask_tracking.storage.ensure_collection`, and copies the records over in ``_id``
order, one batch at a time. After each batch it saves the last ``_id`` copied in the
``tracking_migrations`` collection, so an interrupted run (Ctrl-C, a lost connection, a crash)
resumes where it stopped when run again with the same ``--to``. A batch that was stored but not
yet checkpointed is not stored twice: the ids already in the new collection are skipped (a
time-series collection has no unique ``_id`` index to refuse them).

``$gt`` compares values of one BSON type only, so the copy walks the ``_id`` types one after the
other in MongoDB's sort order (records inserted by hand or by another tool may have string or
numeric ids). The old collection is dropped only when as many records were copied as it holds.

New records keep arriving in ``<name>`` while it runs: the app writes by collection name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

from .indexes import INDEX_NAMES, ensure_indexes
from .storage import (
    MIGRATIONS_COLLECTION_NAME,
    SERIES_FIELD,
    CollectionSpec,
    ensure_collection,
    is_duplicate_id,
    is_transient,
    mode_of,
    series_of,
    source_name,
    ttl_indexes,
)

__all__ = ["CHECKPOINTS", "MigrationError", "MigrationResult", "migrate", "source_name"]

#: The collection holding one checkpoint document per migration under way.
CHECKPOINTS = MIGRATIONS_COLLECTION_NAME

#: ``on_batch(copied, total)``: called after each batch is stored.
OnBatch = Callable[[int, int], None]

#: The least value of each BSON type an ``_id`` can have, in the order MongoDB sorts the types:
#: null, numbers, strings, documents, binary data, ObjectIds, booleans, dates. ``$gte`` one of
#: them matches the whole type and no other. An ``_id`` of another type (a timestamp, NaN) is not
#: reached; the count kept before dropping the old collection tells.
_ID_FLOORS: tuple[Any, ...] = (
    None,
    float("-inf"),
    "",
    {},
    b"",
    ObjectId("0" * 24),
    False,
    datetime.min,
)
#: The place of ObjectIds in :data:`_ID_FLOORS`.
_OBJECT_ID_KIND = next(kind for kind, floor in enumerate(_ID_FLOORS) if type(floor) is ObjectId)


class MigrationError(RuntimeError):
    """The migration cannot start or go on; the message says why and what to do."""


@dataclass
class MigrationResult:
    """What one run of :func:`migrate` did."""

    #: Records copied by this run (not counting those a previous, interrupted run copied).
    copied: int = 0
    #: Records in the old collection when this run started copying.
    total: int = 0
    #: The collection the old records are in afterwards (None when dropped or there were none).
    source: str | None = None
    #: True when there was nothing to move (the collection was missing or already in the mode).
    nothing_to_do: bool = False


def migrate(
    database: Database[Any],
    spec: CollectionSpec,
    *,
    batch_size: int = 1000,
    drop_source: bool = False,
    indexes: Sequence[str] = INDEX_NAMES,
    on_batch: OnBatch | None = None,
    logger: logging.Logger | None = None,
) -> MigrationResult:
    """Move the records of ``spec.name`` into a new collection stored as ``spec`` says.

    Resumable: run it again after an interruption (with the same spec) and it goes on after
    the last batch it saved. Raises :class:`MigrationError` when it cannot start (another
    migration is under way, an earlier one's old records are still there, the collection is
    time-series and cannot be renamed, the new collection exists in another mode).
    ``indexes``: the reading indexes the new collection gets (the app's TRACKING_INDEXES).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    log = logger or logging.getLogger("flask_tracking")
    name, old = spec.name, source_name(spec.name)
    checkpoints = database[CHECKPOINTS]
    state = checkpoints.find_one({"_id": name})
    if state is not None and state.get("to") != spec.mode:
        raise MigrationError(
            f"A migration of {name!r} to {state.get('to')!r} is under way; finish it with "
            f"flask tracking migrate --to {state.get('to')}."
        )
    existing = set(database.list_collection_names())
    if state is None:
        current = _mode(database[name]) if name in existing else None
        if current == spec.mode or (spec.mode == "ttl" and current == "plain"):
            # A plain collection only lacks its TTL index, or the expiry of its date index (a
            # capped-mode writer used it as it was). A server that does not say (mongomock)
            # gets the copy: nothing is assumed about its collection.
            if spec.mode == "ttl":
                _expire_date_index(database[name], spec)
            ensure_collection(database, spec, log)
            return MigrationResult(nothing_to_do=True)
        if name in existing and old in existing:
            raise MigrationError(
                f"{old!r} holds the records of an earlier migration. Drop it once you no "
                f"longer need them (db.getCollection({old!r}).drop()), then run this again."
            )
        if current == "timeseries":
            raise MigrationError(
                f"{name!r} is a time-series collection, which MongoDB cannot rename. Copy "
                f"its records out first: db.getCollection({name!r}).aggregate([{{$out: "
                f"{old!r}}}]); then db.getCollection({name!r}).drop(); then run this again."
            )
        if name not in existing and old not in existing:
            ensure_collection(database, spec, log)
            return MigrationResult(nothing_to_do=True)
        checkpoints.insert_one({"_id": name, "to": spec.mode, "kind": 0, "copied": 0})
        state = {"kind": 0, "copied": 0}
    if name in existing and old not in existing:
        database[name].rename(old)
    target = _target(database, spec, log, indexes)
    source = database[old]
    result = _copy(source, target, spec, checkpoints, state, batch_size, on_batch)
    checkpoints.delete_one({"_id": name})
    _check_all_copied(source, int(state.get("copied") or 0) + result.copied)
    if drop_source:
        source.drop()
    else:
        result.source = old
    return result


def _mode(collection: Collection[Any]) -> str | None:
    """The storage mode of an existing collection: capped, timeseries or plain; None when the
    server does not say (mongomock has no ``options()``)."""
    try:
        return mode_of(collection.options())
    except ConnectionFailure:
        raise
    except Exception:
        return None


def _expire_date_index(collection: Collection[Any], spec: CollectionSpec) -> None:
    """Make the index ``spec.index_name`` of a plain collection expire records after
    ``spec.retention_seconds`` (``collMod``; MongoDB 5.1+ for an index without expiry). A
    missing index is left to :func:`~flask_tracking.storage.ensure_collection` to create."""
    index = collection.index_information().get(spec.index_name)
    if index is None or index.get("expireAfterSeconds") == spec.retention_seconds:
        return
    try:
        collection.database.command(
            "collMod",
            spec.name,
            index={"name": spec.index_name, "expireAfterSeconds": spec.retention_seconds},
        )
    except OperationFailure as error:
        if is_transient(error):
            raise
        raise MigrationError(
            f"{spec.name!r} has an index {spec.index_name!r} that does not expire records "
            f"after {spec.retention_seconds} seconds, and the server refused to change it "
            f"({error}). Recreate it: db.getCollection({spec.name!r}).dropIndex("
            f"{spec.index_name!r}); {spec.shell_create().split('; ', 1)[-1]}"
        ) from None


def _target(
    database: Database[Any], spec: CollectionSpec, log: logging.Logger, indexes: Sequence[str]
) -> Collection[Any]:
    """The new collection, created as ``spec`` says, with the reading ``indexes``; refuses one
    that exists otherwise (a writer still configured for the old mode may have created it
    meanwhile)."""
    target = ensure_collection(database, spec, log)
    wanted = "plain" if spec.mode == "ttl" else spec.mode
    actual = _mode(target)
    if actual is not None and actual != wanted:
        raise MigrationError(
            f"{spec.name!r} exists as a {actual} collection, not {spec.mode}: something wrote "
            f"to it before it could be created (an app still configured for another "
            f"TRACKING_STORAGE?). Stop that writer, move its records aside "
            f"(db.getCollection({spec.name!r}).renameCollection('{spec.name}_stray')), and "
            "run this again."
        )
    ensure_indexes(target, log, names=indexes, skip=ttl_indexes(target, spec))
    return target


def _copy(
    source: Collection[Any],
    target: Collection[Any],
    spec: CollectionSpec,
    checkpoints: Collection[Any],
    state: dict[str, Any],
    batch_size: int,
    on_batch: OnBatch | None,
) -> MigrationResult:
    """Copy the records of ``source`` after the checkpoint ``state`` into ``target``, one
    ``_id`` type after the other (:data:`_ID_FLOORS`), saving the checkpoint after each batch."""
    # A checkpoint saved before the copy walked _id types one after the other has no "kind":
    # that copy walked ObjectIds alone.
    first = int(state["kind"]) if "kind" in state else _OBJECT_ID_KIND if "last_id" in state else 0
    copied_before = int(state.get("copied") or 0)
    total = source.count_documents({})
    result = MigrationResult(total=total)
    for kind in range(first, len(_ID_FLOORS)):
        resumed = kind == first and copied_before > 0
        bounds = {"$gt": state["last_id"]} if resumed else {"$gte": _ID_FLOORS[kind]}
        while batch := list(source.find({"_id": bounds}).sort("_id", 1).limit(batch_size)):
            _store(target, batch, spec)
            bounds = {"$gt": batch[-1]["_id"]}
            result.copied += len(batch)
            if on_batch is not None:
                on_batch(copied_before + result.copied, total)
            checkpoints.update_one(
                {"_id": spec.name},
                {
                    "$set": {
                        "kind": kind,
                        "last_id": batch[-1]["_id"],
                        "copied": copied_before + result.copied,
                    }
                },
            )
    return result


def _check_all_copied(source: Collection[Any], copied: int) -> None:
    """Raise :class:`MigrationError` when ``source`` holds more records than were copied out
    of it (their ``_id`` is of a type the copy does not walk), before it could be dropped."""
    # A TTL source may lose expired records meanwhile: compare with what it holds now.
    held = source.count_documents({})
    if copied < held:
        raise MigrationError(
            f"Only {copied} of the {held} records in {source.name!r} were copied: the others "
            "have an _id of a type the copy does not walk (it copies null, numbers, strings, "
            "documents, binary data, ObjectIds, booleans and dates). The old collection is "
            "kept: copy those records yourself, then drop it."
        )


def _store(target: Collection[Any], batch: list[dict[str, Any]], spec: CollectionSpec) -> None:
    """Insert the records of ``batch`` that ``target`` does not hold yet."""
    ids = [document["_id"] for document in batch]
    present = {row["_id"] for row in target.find({"_id": {"$in": ids}}, {"_id": 1})}
    fresh = [document for document in batch if document["_id"] not in present]
    for document in fresh:
        if spec.meta_field == SERIES_FIELD:
            document[SERIES_FIELD] = series_of(document)
        else:
            document.pop(SERIES_FIELD, None)
    if not fresh:
        return
    try:
        target.insert_many(fresh, ordered=False)
    except BulkWriteError as error:
        errors = (error.details or {}).get("writeErrors", [])
        if not all(is_duplicate_id(item) for item in errors):
            raise  # a duplicate _id was stored by an earlier run; anything else is a failure

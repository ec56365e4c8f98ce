"""Helpers for testing an app that uses flask_tracking without a MongoDB server.

:func:`connect_mongomock` connects a MongoEngine alias to an in-process mongomock database, as
``mongoengine.connect(..., mongo_client_class=mongomock.MongoClient)`` does, after
:func:`adapt_mongomock` taught mongomock two things pymongo and MongoDB accept and mongomock 4.3
does not: the bulk updates of current pymongo releases (pymongo's ``UpdateOne`` hands the bulk
builder a ``sort`` argument mongomock does not know, so every ``bulk_write`` of the writer's
rollup upserts would fail with a ``TypeError``), and documents already encoded to BSON
(:class:`~bson.raw_bson.RawBSONDocument`, how the writer hands its records to ``insert_many``).
The writer adapts mongomock itself when it finds it imported, so an app connected to mongomock
without this helper is recorded the same way. mongomock is not a dependency of flask_tracking:
install it with your tests.
"""

from __future__ import annotations

from typing import Any

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

#: How :func:`accept_raw_documents` decodes an encoded document for mongomock: UUIDs as the
#: writer encodes them when the client names no representation.
_DECODING: CodecOptions[dict[str, Any]] = CodecOptions(
    uuid_representation=UuidRepresentation.STANDARD
)


def adapt_mongomock() -> None:
    """Apply :func:`accept_pymongo_bulk_updates` and :func:`accept_raw_documents` (idempotent;
    the writer calls it on its first write when mongomock is imported)."""
    accept_pymongo_bulk_updates()
    accept_raw_documents()


def accept_raw_documents() -> None:
    """Let mongomock's ``insert_one`` and ``insert_many`` take documents encoded to BSON
    (:class:`~bson.raw_bson.RawBSONDocument`), as pymongo does: each is decoded to a dict
    first. Idempotent; other documents pass through untouched."""
    from mongomock.collection import Collection

    if getattr(Collection.insert_many, "accepts_raw", False):
        return
    insert_one, insert_many = Collection.insert_one, Collection.insert_many

    def insert_one_raw(self: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        return insert_one(self, _decoded(document), *args, **kwargs)

    def insert_many_raw(self: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(documents, (list, tuple)):
            documents = [_decoded(document) for document in documents]
        return insert_many(self, documents, *args, **kwargs)

    insert_many_raw.accepts_raw = True  # type: ignore[attr-defined]
    Collection.insert_one = insert_one_raw
    Collection.insert_many = insert_many_raw


def _decoded(document: Any) -> Any:
    if isinstance(document, RawBSONDocument):
        return bson.decode(document.raw, codec_options=_DECODING)
    return document


def accept_pymongo_bulk_updates() -> None:
    """Let mongomock's ``BulkOperationBuilder.add_update`` take (and ignore) ``sort=None``;
    idempotent, and harmless on a mongomock that knows the argument already."""
    from mongomock.collection import BulkOperationBuilder

    original = BulkOperationBuilder.add_update
    if getattr(original, "accepts_sort", False):
        return

    def add_update(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock cannot sort the documents of an update")
        return original(self, *args, **kwargs)

    add_update.accepts_sort = True  # type: ignore[attr-defined]
    BulkOperationBuilder.add_update = add_update


def connect_mongomock(db: str = "test", alias: str = "default") -> Any:
    """Connect MongoEngine's ``alias`` to a fresh in-process mongomock database ``db`` (with
    ``uuidRepresentation="standard"``) and return the database. Disconnect it with
    ``mongoengine.disconnect(alias)``."""
    import mongoengine
    import mongomock

    adapt_mongomock()
    mongoengine.connect(
        db, alias=alias, mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
    )
    return mongoengine.get_db(alias)

"""Helpers for testing an app that uses flask_tracking without a MongoDB server.

:func:`connect_mongomock` connects a MongoEngine alias to an in-process mongomock database, as
``mongoengine.connect(..., mongo_client_class=mongomock.MongoClient)`` does, after teaching
mongomock 4.3 the bulk updates of current pymongo releases: pymongo's ``UpdateOne`` hands the bulk
builder a ``sort`` argument that mongomock does not know, so every ``bulk_write`` of updates (the
writer's rollup upserts) fails on an unpatched mongomock with a ``TypeError``. mongomock is not a
dependency of flask_tracking: install it with your tests.
"""

from __future__ import annotations

from typing import Any


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

    accept_pymongo_bulk_updates()
    mongoengine.connect(
        db, alias=alias, mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
    )
    return mongoengine.get_db(alias)

"""The indexes the query helpers of :class:`~flask_tracking.documents.TrackingQuerySet` use.

:func:`ensure_indexes` runs on the writer thread once the collection is set up, never on the
request path. Capped collections accept secondary indexes; each one costs every insert a B-tree
insert, and every eviction from a full capped collection a B-tree delete.
"""

from __future__ import annotations

import logging
from collections.abc import Collection as Collection_
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, OperationFailure

__all__ = ["DATE_INDEX_NAME", "INDEXES", "INDEX_NAMES", "ensure_indexes"]

#: Name of the ``date_created`` index (the TTL index in the ``ttl`` storage mode).
DATE_INDEX_NAME = "tracking_date_created"

#: ``(name, keys)`` of each index. ``date_created`` descending serves the default newest-first
#: order and time windows; the compound ones answer a filter on their first field in that order.
INDEXES: tuple[tuple[str, list[tuple[str, int]]], ...] = (
    (DATE_INDEX_NAME, [("date_created", -1)]),
    ("tracking_path", [("path", 1), ("date_created", -1)]),
    ("tracking_endpoint", [("endpoint", 1), ("date_created", -1)]),
    ("tracking_status_code", [("status_code", 1), ("date_created", -1)]),
    ("tracking_execution_time", [("execution_time", -1)]),
    ("tracking_user_id", [("user_id", 1), ("date_created", -1)]),
    ("tracking_ip", [("ip", 1), ("date_created", -1)]),
    ("tracking_request_id", [("request_id", 1)]),
)

#: The names of :data:`INDEXES`, the values ``TRACKING_INDEXES`` may list.
INDEX_NAMES = tuple(name for name, _keys in INDEXES)

# Server codes meaning "an equivalent index is there already, under another name or options".
_INDEX_EXISTS_CODES = frozenset({68, 85, 86})  # IndexAlreadyExists, OptionsConflict, KeySpecs


def ensure_indexes(
    collection: Collection[Any],
    logger: logging.Logger | None = None,
    *,
    names: Collection_[str] = INDEX_NAMES,
    skip: Collection_[str] = (),
) -> list[str]:
    """Create the indexes of :data:`INDEXES` named in ``names`` (all by default, or those of
    ``TRACKING_INDEXES``) that ``collection`` lacks; return the names ensured.

    Indexes named in ``skip`` are left alone (the ``ttl`` storage mode makes its TTL index the
    ``date_created`` one). Indexes not named are neither created nor dropped.

    Idempotent: ``create_index`` with the same keys and name is a no-op on the server. An index
    that cannot be created (an equivalent one under another name, a backend without indexes,
    missing privileges) is logged as a warning and skipped; the others are still created.

    Raises only :class:`pymongo.errors.ConnectionFailure` (server unreachable, network timeout)
    and a timed-out :class:`~pymongo.errors.OperationFailure`, so the caller can try again later.
    """
    log = logger or logging.getLogger("flask_tracking")
    ensured = []
    for name, keys in INDEXES:
        if name in skip or name not in names:
            continue
        try:
            collection.create_index(keys, name=name)
        except ConnectionFailure:
            raise
        except OperationFailure as error:
            if error.timeout:
                raise
            if error.code in _INDEX_EXISTS_CODES:
                log.info(
                    "flask_tracking: an index like %r exists already on %r (%s); left as it is",
                    name,
                    collection.name,
                    error,
                )
                continue
            log.warning("flask_tracking: could not create index %r: %s", name, error)
            continue
        except Exception as error:  # e.g. NotImplementedError from a test double
            log.warning("flask_tracking: could not create index %r: %r", name, error)
            continue
        ensured.append(name)
    return ensured

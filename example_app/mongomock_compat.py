"""Make mongomock 4.3 accept the bulk updates of pymongo 4.20.

pymongo's ``UpdateOne`` hands mongomock's bulk builder a ``sort`` argument (added for
MongoDB 8's sorted ``updateOne``) that mongomock 4.3 does not know, so every
``bulk_write([UpdateOne(...)])`` (the writer's rollup upserts) fails on mongomock with a
``TypeError``. The embedded storage of the example app and the tests apply this patch; the
library itself never looks at mongomock.
"""

from __future__ import annotations

from typing import Any


def accept_pymongo_bulk_updates() -> None:
    """Let mongomock's ``BulkOperationBuilder.add_update`` take (and ignore) ``sort=None``."""
    from mongomock.collection import BulkOperationBuilder

    original = BulkOperationBuilder.add_update
    if getattr(original, "accepts_sort", False):
        return

    def add_update(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock cannot sort the documents of an update")
        return original(self, *args, **kwargs)

    add_update.accepts_sort = True  # type: ignore[attr-defined]
    BulkOperationBuilder.add_update = add_update  # type: ignore[method-assign]

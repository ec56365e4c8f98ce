"""``flask tracking info`` and ``migrate``: the collection the records are stored in."""

from __future__ import annotations

from typing import Any

import click
from flask import current_app
from pymongo.errors import ConnectionFailure

from ..documents import Tracking, TrackingQuerySet
from ..migrate import MigrationError, migrate
from ..storage import MODES, mode_of, tracking_spec
from .reports import bytes_text
from .selection import app_config, app_records, command, connection_alias


@command("info")
def info_command() -> None:
    """The collection: name, capped or not, size, count, oldest and newest record, indexes,
    and the writer's counters of this process."""
    records = app_records()
    collection = records._collection
    database = collection.database
    named = (
        "Collection",
        f"{collection.name} (database {database.name}, connection {connection_alias()!r})",
    )
    if not _exists(collection):
        missing = "no: the writer creates it with the first request it records"
        _echo_rows([named, ("Exists", missing), ("Writer", _writer_text())])
        return
    options = _options(collection)
    indexes = collection.index_information()
    rows = [
        named,
        ("Capped", _capped_text(options)),
        ("Storage", _storage_text(options, indexes)),
        ("Size", _size_text(database, collection.name)),
        ("Records", str(collection.estimated_document_count())),
        ("Oldest", _edge_text(records.filter(date_created__ne=None).order_by("date_created"))),
        ("Newest", _edge_text(records.filter(date_created__ne=None).order_by("-date_created"))),
        ("Indexes", _indexes_text(indexes)),
        ("Writer", _writer_text()),
    ]
    _echo_rows(rows)


def _echo_rows(rows: list[tuple[str, str]]) -> None:
    """``Label: text`` lines, the texts aligned."""
    width = max(len(label) for label, _ in rows) + 1
    for label, text in rows:
        click.echo(f"{click.style((label + ':').ljust(width), bold=True)} {text}")


def _exists(collection: Any) -> bool:
    """Whether the collection exists; True when the server does not say (a user without the
    listCollections privilege)."""
    try:
        return collection.name in collection.database.list_collection_names(
            filter={"name": collection.name}
        )
    except ConnectionFailure:
        raise
    except Exception:
        return True


#: What :func:`_options` gives for a server that does not report collection options.
_UNREPORTED = object()


def _options(collection: Any) -> Any:
    """The collection's options (one round trip for the rows that read them)."""
    try:
        return collection.options()
    except ConnectionFailure:
        raise
    except Exception:
        return _UNREPORTED


def _capped_text(options: Any) -> str:
    if options is _UNREPORTED:
        return "unknown (this server does not report collection options)"
    if not isinstance(options, dict) or not options.get("capped"):
        return "no"
    maximum = f", at most {options['max']} records" if options.get("max") else ""
    return f"yes ({bytes_text(int(options.get('size') or 0))}{maximum})"


def _storage_text(options: Any, indexes: dict[str, Any]) -> str:
    """The storage mode (TRACKING_STORAGE) the collection is in, and how records leave it."""
    mode = mode_of(options) if isinstance(options, dict) else None
    if mode == "capped":
        return "capped (the oldest records go when it is full)"
    if mode == "timeseries":
        return f"timeseries (records expire after {options.get('expireAfterSeconds')} s)"
    expiry = [
        f"{spec['expireAfterSeconds']} s ({name})"
        for name, spec in indexes.items()
        if spec.get("expireAfterSeconds") is not None
    ]
    if expiry:
        return f"ttl (records expire after {', '.join(expiry)})"
    return "plain, no TTL index (records are never removed)" if mode else "unknown"


def _size_text(database: Any, name: str) -> str:
    try:
        stats = database.command("collStats", name)
    except ConnectionFailure:
        raise
    except Exception:
        return "unknown (this server does not answer collStats)"
    return (
        f"{bytes_text(int(stats.get('size') or 0))} of data, "
        f"{bytes_text(int(stats.get('storageSize') or 0))} on disk, "
        f"{bytes_text(int(stats.get('totalIndexSize') or 0))} of indexes"
    )


def _edge_text(records: TrackingQuerySet) -> str:
    record = records.only("id", "date_created").first()
    if record is None:
        return "-"
    when = (
        record.date_created.isoformat(sep=" ", timespec="seconds") if record.date_created else "-"
    )
    return f"{when} UTC ({record.pk})"


def _indexes_text(indexes: dict[str, Any]) -> str:
    names = []
    for name, spec in indexes.items():
        keys = ", ".join(f"{field} {direction}" for field, direction in spec.get("key", []))
        names.append(f"{name} ({keys})")
    return "; ".join(names) or "-"


def _writer_text() -> str:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    extension = app.extensions.get("tracking")
    if extension is None:
        return "no Tracking extension on this app"
    try:
        counters = extension.stats(app)
    except Exception as error:
        return f"unavailable ({error})"
    return ", ".join(f"{key} {value}" for key, value in sorted(counters.items()))


@command("migrate")
@click.option(
    "--to",
    "mode",
    type=click.Choice(MODES),
    required=True,
    help="The storage mode to move the records into (set TRACKING_STORAGE to it too).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Records per batch.",
)
@click.option(
    "--drop-source",
    is_flag=True,
    help="Drop the old collection once every record is copied (it is kept by default).",
)
def migrate_command(mode: str, batch_size: int, drop_source: bool) -> None:
    """Copy the stored records into a new collection in another storage mode.

    The collection is renamed to <name>_before_migration, created again in MODE (with the
    app's TRACKING_TABLE_SIZE, TRACKING_MAX_DOCUMENTS or TRACKING_RETENTION_HOURS), and the
    records are copied over in batches. Interrupted, it resumes where it stopped when run again.
    """
    from mongoengine.connection import get_db

    config = app_config()
    spec = tracking_spec(
        mode,
        name=Tracking._get_collection_name(),
        size_bytes=config.table_size_bytes,
        max_documents=config.max_documents,
        retention_seconds=config.retention_seconds,
    )

    def progress(copied: int, total: int) -> None:
        share = f" ({100 * copied // total}%)" if total else ""
        click.echo(f"copied {copied} of {total} records{share}")

    try:
        result = migrate(
            get_db(connection_alias()),
            spec,
            batch_size=batch_size,
            drop_source=drop_source,
            indexes=config.indexes,
            on_batch=progress,
        )
    except MigrationError as error:
        raise click.ClickException(str(error)) from None
    if result.nothing_to_do:
        click.echo(f"{spec.name!r} is stored as {mode} already; nothing to copy.")
        return
    click.echo(f"Done: {result.copied} records copied into {spec.name!r} ({mode}).")
    if result.source is not None:
        click.echo(
            f"The old records are still in {result.source!r}; drop it when you no longer need "
            f"them: db.getCollection({result.source!r}).drop()"
        )

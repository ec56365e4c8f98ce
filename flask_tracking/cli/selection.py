"""What the commands of ``flask tracking`` read, chosen from their options.

The connection alias the app's :class:`~flask_tracking.Tracking` extension writes to
(``TRACKING_DB_ALIAS``, ``"default"`` without the extension), the records and rollups read
through it, the filter options that narrow them (:func:`select_records`,
:func:`select_rollups`), one record by its id, :func:`command`, which makes a function a
command that turns database trouble into one sentence and exit code 1, and
:func:`writing_to`, which does the same for a file a command cannot write.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Callable, TypeVar

import click
from bson import ObjectId
from flask import current_app
from flask.cli import with_appcontext
from mongoengine.connection import ConnectionFailure as NotConnected
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from ..config import TrackingConfig, load_config
from ..documents import Tracking, TrackingQuerySet, parse_datetime, time_ago
from ..rollups import Rollup, RollupQuerySet
from ..storage import ROLLUP_COLLECTION_NAME

_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_STATUS_RE = re.compile(r"^\s*([1-5])(?:xx|XX)\s*$")

#: The whole numbers MongoDB stores (BSON's 8-byte integers); a filter on a larger one is
#: refused by the driver.
_INT64 = range(-(2**63), 2**63)

F = TypeVar("F", bound=Callable[..., Any])


def tracked_config() -> TrackingConfig | None:
    """The validated settings the current app's Tracking extension tracks it with; None
    without the extension."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    config_of = getattr(app.extensions.get("tracking"), "config_of", None)
    return config_of(app) if callable(config_of) else None


def app_config() -> TrackingConfig:
    """The current app's validated tracking settings (its extension's, else from its config)."""
    return tracked_config() or load_config(dict(current_app.config))


def connection_alias() -> str:
    """The connection alias the app's Tracking extension writes through, else
    ``TRACKING_DB_ALIAS`` or "default"."""
    config = tracked_config()
    if config is not None:
        return str(config.db_alias)
    return str(current_app.config.get("TRACKING_DB_ALIAS") or "default")


def app_records() -> TrackingQuerySet:
    """``Tracking.objects`` through the connection alias the current app's extension writes to
    (``TRACKING_DB_ALIAS``; ``"default"`` without the extension). Needs an application context."""
    alias = connection_alias()
    return Tracking.objects if alias == "default" else Tracking.objects.using(alias)


def app_rollups() -> RollupQuerySet:
    """``Rollup.objects`` on the connection alias and rollup collection the current app's
    extension writes to (``TRACKING_DB_ALIAS``, ``TRACKING_ROLLUP_COLLECTION``). Needs an
    application context."""
    alias = connection_alias()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    name = str(app.config.get("TRACKING_ROLLUP_COLLECTION") or ROLLUP_COLLECTION_NAME)
    if alias == "default" and name == ROLLUP_COLLECTION_NAME:
        return Rollup.objects
    from mongoengine.connection import get_db

    return RollupQuerySet(Rollup, get_db(alias)[name])


def select_rollups(
    rollups: RollupQuerySet | None = None,
    *,
    endpoint: str | None = None,
    method: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> RollupQuerySet:
    """``rollups`` (default :func:`app_rollups`) narrowed by the options of ``flask tracking
    stats`` that rollups know: endpoint, method, since and until (as :func:`select_records`).
    Raises :class:`ValueError` with a sentence for a bad value."""
    if rollups is None:
        rollups = app_rollups()
    if endpoint:
        rollups = rollups.for_endpoint(endpoint)
    if method:
        rollups = rollups.for_method(method)
    if since or until:
        rollups = rollups.between(_moment(since, "--since"), _moment(until, "--until"))
    return rollups


def _database_errors(function: F) -> F:
    """Turn database trouble into one sentence and exit code 1."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except NotConnected as error:
            raise click.ClickException(
                f"No MongoDB connection {connection_alias()!r}: {error}. Connect it with "
                "mongoengine.connect(...) or set TRACKING_MONGODB_URI."
            ) from None
        except ConnectionFailure as error:
            raise click.ClickException(
                f"Cannot reach MongoDB (connection {connection_alias()!r}): {_first_part(error)}."
            ) from None
        except OperationFailure as error:
            raise click.ClickException(refusal(error)) from None
        except PyMongoError as error:
            raise click.ClickException(f"MongoDB error: {_first_part(error)}.") from None

    return run  # type: ignore[return-value]


def refusal(error: OperationFailure) -> str:
    """One sentence for a query the server refused (an invalid regex, a forbidden operator),
    with its reason only (the reply's ``errmsg``)."""
    message = (error.details or {}).get("errmsg") or _first_part(error)
    return f"MongoDB refused the query: {message}."


def _first_part(error: BaseException) -> str:
    """The useful start of a pymongo message (without the topology description)."""
    text = str(error).split(", Timeout:")[0].split(" (configured timeouts")[0]
    return text.strip().rstrip(".") or type(error).__name__


def command(name: str) -> Callable[[Callable[..., Any]], click.Command]:
    """Make a function the command ``name`` of ``flask tracking``: run in the application
    context, with database trouble turned into one sentence and exit code 1. The package adds
    the command to the ``tracking`` group."""

    def make(function: Callable[..., Any]) -> click.Command:
        return click.command(name)(with_appcontext(_database_errors(function)))

    return make


@contextlib.contextmanager
def writing_to(path: str) -> Iterator[None]:
    """Turn an :class:`OSError` in the block (a missing directory, a directory given as the
    file, no permission) into one sentence about ``path`` and exit code 1."""
    try:
        yield
    except OSError as error:
        raise click.ClickException(f"Cannot write {path}: {error.strerror or error}.") from None


def filter_options(function: F) -> F:
    """The options that select records, shared by list, tail, export, stats and timeline."""
    options = [
        click.option(
            "--path",
            help="Paths matching this regular expression at their start (a plain path is a "
            "prefix: --path /api/).",
        ),
        click.option("--endpoint", help="The Flask endpoint, such as users.show."),
        click.option("--status", help="A status code (404) or a class (4xx, 5xx)."),
        click.option("--method", help="The HTTP method (GET, POST...)."),
        click.option("--user", help="The user id (what current_user.get_id() returned)."),
        click.option("--ip", help="The client address."),
        click.option(
            "--since",
            help="From this time on: '2024-05-01 10:00', ISO 8601, or a duration ago such as "
            "30m, 2h, 7d. Times are UTC unless they carry an offset.",
        ),
        click.option("--until", help="Before this time (same forms as --since)."),
        click.option("--slow", type=float, metavar="MS", help="At least MS milliseconds."),
        click.option(
            "--errors", is_flag=True, help="Only server errors (5xx) and requests that raised."
        ),
        click.option(
            "--data",
            multiple=True,
            metavar="KEY=VALUE",
            help="Custom data: KEY (nested with __) equals VALUE (JSON, else text). Repeatable.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def filtered(records: TrackingQuerySet, options: dict[str, Any]) -> TrackingQuerySet:
    """``records`` narrowed by the options of :func:`filter_options` (popped from ``options``)."""
    names = ("path", "endpoint", "status", "method", "user", "ip", "since", "until", "slow")
    filters = {name: options.pop(name) for name in (*names, "errors", "data")}
    try:
        return select_records(records, **filters)
    except ValueError as error:
        raise click.ClickException(str(error)) from None


def select_records(
    records: TrackingQuerySet | None = None,
    *,
    path: str | None = None,
    endpoint: str | None = None,
    status: str | None = None,
    method: str | None = None,
    user: str | None = None,
    ip: str | None = None,
    since: str | None = None,
    until: str | None = None,
    slow: float | None = None,
    errors: bool = False,
    data: Iterable[str] = (),
) -> TrackingQuerySet:
    """``records`` (default :func:`app_records`) narrowed like ``flask tracking list`` does
    with the options of the same names; empty ones select everything.

    ``path`` is a regex matched at the start, ``status`` a code (``"404"``) or a class
    (``"4xx"``), ``since``/``until`` a date (``"2024-05-01 10:00"``, ISO 8601) or a duration
    ago (``"30m"``, ``"2h"``, ``"7d"``), ``slow`` milliseconds, ``errors`` server errors only,
    ``data`` ``KEY=VALUE`` custom-data filters (VALUE as JSON, else text). The dashboard's
    request list and live view use it too. Raises :class:`ValueError` with a sentence (naming
    the command-line option) for a bad value. Needs an application context.
    """
    if records is None:
        records = app_records()
    if path:
        records = records.for_path(path)
    if endpoint:
        records = records.for_endpoint(endpoint)
    if status:
        records = _with_status(records, status)
    if method:
        records = records.filter(method=method.upper())
    if user:
        records = records.for_user(user)
    if ip:
        records = records.for_ip(ip)
    if since or until:
        records = records.between(_moment(since, "--since"), _moment(until, "--until"))
    if slow is not None:
        records = records.slow(slow)
    if errors:
        records = records.errors()
    if data:
        records = records.with_data(**dict(_data_filter(item) for item in data))
    return records


def _with_status(records: TrackingQuerySet, status: str) -> TrackingQuerySet:
    match = _STATUS_RE.match(status)
    if match:
        low = int(match.group(1)) * 100
        return records.filter(status_code__gte=low, status_code__lt=low + 100)
    if status.strip().isdigit():
        return records.filter(status_code=_storable(int(status), "--status"))
    raise ValueError(f"--status takes a code such as 404 or a class such as 5xx, not {status!r}.")


def _moment(value: str | None, option: str) -> datetime | None:
    """A naive UTC datetime from --since/--until: a date, or a duration ago (30m, 2h, 7d)."""
    if value is None:
        return None
    match = _SINCE_RE.match(value)
    if match:
        try:
            return time_ago(**{_UNITS[match.group(2)]: float(match.group(1))})
        except ValueError:
            raise ValueError(f"{option}: {value.strip()} ago is before year 1.") from None
    try:
        return parse_datetime(value)
    except ValueError as error:
        raise ValueError(f"{option}: {error} Or a duration ago such as 30m, 2h, 7d.") from None


def _data_filter(item: str) -> tuple[str, Any]:
    key, separator, text = item.partition("=")
    if not separator or not key:
        raise ValueError(f"--data takes KEY=VALUE, such as --data order=42, not {item!r}.")
    try:
        value = json.loads(text)
    except ValueError:
        return key, text
    except RecursionError:
        raise ValueError(
            f"--data {key}: the value nests JSON arrays or objects too deeply to be read."
        ) from None
    return key, _storable(value, "--data")


def _storable(value: Any, option: str) -> Any:
    """``value`` when every whole number in it (in lists and objects too) fits in 8 bytes, as
    MongoDB stores them; else :class:`ValueError` with a sentence naming ``option``."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, int) and not isinstance(item, bool) and item not in _INT64:
            raise ValueError(
                f"{option}: {item} is out of range: MongoDB stores whole numbers from "
                f"{_INT64.start} to {_INT64.stop - 1}."
            )
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


def record_by_id(records: TrackingQuerySet, record_id: str) -> Tracking:
    """The record with id ``record_id``, or a ClickException saying why there is none."""
    if not ObjectId.is_valid(record_id):
        raise click.ClickException(
            f"{record_id!r} is not a record id: ids are 24 hexadecimal characters, as "
            "'flask tracking list' prints them."
        )
    record: Tracking | None = records.filter(id=ObjectId(record_id)).first()
    if record is None:
        raise click.ClickException(
            f"No record has the id {record_id} (a full capped collection drops its oldest records)."
        )
    return record

"""``flask tracking ...``: read the recorded requests from a shell.

A thin layer over :class:`~flask_tracking.documents.TrackingQuerySet`: every command turns its
options into query helpers and prints the result. Records are read through the connection
alias the app's :class:`~flask_tracking.Tracking` extension writes to (``TRACKING_DB_ALIAS``),
``"default"`` without the extension. Mistakes (a bad date, an unknown id, no database) end with
one sentence on stderr and exit code 1, never a traceback; colour only on a terminal.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import difflib
import functools
import io
import json
import os
import re
import shlex
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, TextIO, TypeVar
from urllib.parse import quote
from uuid import UUID

import click
from bson import DBRef, ObjectId
from flask import current_app
from flask.cli import AppGroup
from mongoengine.connection import ConnectionFailure as NotConnected
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from .config import TrackingConfig, load_config
from .display import CONTROL_RE as _CONTROL_RE
from .display import escape as _escape
from .display import is_binary as _is_binary
from .display import pretty_json as _pretty_json
from .display import status_line as _status_line
from .documents import Tracking, TrackingQuerySet, parse_datetime
from .migrate import MigrationError, migrate
from .reports import STATS_GROUPS, TIMELINE_BUCKETS
from .rollups import ROLLUP_GROUPS, Rollup, RollupQuerySet
from .storage import MODES, mode_of, tracking_spec
from .store import ROLLUP_COLLECTION_NAME

__all__ = ["app_records", "select_records", "tracking_cli"]

#: Methods ``replay`` sends without ``--force``: the safe ones (RFC 9110). PUT and DELETE are
#: idempotent but change data, which may have changed since; they need ``--force`` too.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Columns of ``export --format csv``, in order (bodies and headers only in JSON Lines).
CSV_COLUMNS = (
    "_id",
    "date_created",
    "method",
    "scheme",
    "host",
    "path",
    "query_params",
    "status_code",
    "execution_time",
    "total_time",
    "ip",
    "user_id",
    "endpoint",
    "url_rule",
    "referrer",
    "user_agent.browser",
    "user_agent.version",
    "user_agent.platform",
    "user_agent.device",
    "user_agent.language",
    "user_agent.string",
    "request_body_size",
    "request_body_truncated",
    "response_body_size",
    "response_body_truncated",
    "hostname",
    "exception",
    "request_id",
    "sample_rate",
    "custom_data",
)
_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_STATUS_RE = re.compile(r"^\s*([1-5])(?:xx|XX)\s*$")
_BAR_WIDTH = 40
_MAX_FILLED_BUCKETS = 1000

tracking_cli = AppGroup("tracking", help="Read the requests flask_tracking recorded.")

F = TypeVar("F", bound=Callable[..., Any])


# --- plumbing ---------------------------------------------------------------------------


def _alias() -> str:
    """The connection alias the app's Tracking extension writes through, else "default"."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    extension = app.extensions.get("tracking")
    tracked = getattr(extension, "_apps", {}).get(app) if extension is not None else None
    if tracked is not None:
        return str(tracked.config.db_alias)
    return str(app.config.get("TRACKING_DB_ALIAS") or "default")


def app_records() -> TrackingQuerySet:
    """``Tracking.objects`` through the connection alias the current app's extension writes to
    (``TRACKING_DB_ALIAS``; ``"default"`` without the extension). Needs an application context."""
    alias = _alias()
    return Tracking.objects if alias == "default" else Tracking.objects.using(alias)


def app_rollups() -> RollupQuerySet:
    """``Rollup.objects`` on the connection alias and rollup collection the current app's
    extension writes to (``TRACKING_DB_ALIAS``, ``TRACKING_ROLLUP_COLLECTION``). Needs an
    application context."""
    alias = _alias()
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


def _reported(options: dict[str, Any], records: bool) -> TrackingQuerySet | RollupQuerySet:
    """What ``stats`` and ``timeline`` report on: the rollups, or with ``--records`` the
    stored records (popping the filter options)."""
    if records:
        return _filtered(app_records(), options)
    only_records = [
        f"--{name}" for name in _RECORD_ONLY_FILTERS if options.get(name) not in (None, False, ())
    ]
    if only_records:
        raise click.ClickException(
            f"{', '.join(only_records)} can only select stored records: add --records (the "
            "rollups count every request by endpoint and method only)."
        )
    try:
        return select_rollups(
            endpoint=options.get("endpoint"),
            method=options.get("method"),
            since=options.get("since"),
            until=options.get("until"),
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from None


#: Filter options only the stored records can answer.
_RECORD_ONLY_FILTERS = ("path", "status", "user", "ip", "slow", "errors", "data")


def _database_errors(command: F) -> F:
    """Turn database trouble into one sentence and exit code 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except NotConnected as error:
            raise click.ClickException(
                f"No MongoDB connection {_alias()!r}: {error}. Connect it with "
                "mongoengine.connect(...) or set TRACKING_MONGODB_URI."
            ) from None
        except ConnectionFailure as error:
            raise click.ClickException(
                f"Cannot reach MongoDB (connection {_alias()!r}): {_first_part(error)}."
            ) from None
        except OperationFailure as error:
            message = (error.details or {}).get("errmsg") or _first_part(error)
            raise click.ClickException(f"MongoDB refused the query: {message}.") from None
        except PyMongoError as error:
            raise click.ClickException(f"MongoDB error: {_first_part(error)}.") from None

    return run  # type: ignore[return-value]


def _first_part(error: BaseException) -> str:
    """The useful start of a pymongo message (without the topology description)."""
    text = str(error).split(", Timeout:")[0].split(" (configured timeouts")[0]
    return text.strip().rstrip(".") or type(error).__name__


def _command(name: str, **settings: Any) -> Callable[[F], F]:
    """Register a command of ``tracking_cli`` with database errors made readable."""

    def register(function: F) -> F:
        return tracking_cli.command(name, **settings)(_database_errors(function))  # type: ignore[return-value]

    return register


def _filter_options(command: F) -> F:
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
        command = option(command)
    return command


def _filtered(records: TrackingQuerySet, options: dict[str, Any]) -> TrackingQuerySet:
    """``records`` narrowed by the options of :func:`_filter_options` (popped from ``options``)."""
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
        return records.filter(status_code=int(status))
    raise ValueError(f"--status takes a code such as 404 or a class such as 5xx, not {status!r}.")


def _moment(value: str | None, option: str) -> datetime | None:
    """A naive UTC datetime from --since/--until: a date, or a duration ago (30m, 2h, 7d)."""
    if value is None:
        return None
    match = _SINCE_RE.match(value)
    if match:
        ago = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return datetime.now(timezone.utc).replace(tzinfo=None) - ago
    try:
        return parse_datetime(value)
    except ValueError as error:
        raise ValueError(f"{option}: {error} Or a duration ago such as 30m, 2h, 7d.") from None


def _data_filter(item: str) -> tuple[str, Any]:
    key, separator, text = item.partition("=")
    if not separator or not key:
        raise ValueError(f"--data takes KEY=VALUE, such as --data order=42, not {item!r}.")
    try:
        return key, json.loads(text)
    except ValueError:
        return key, text


def _record(records: TrackingQuerySet, record_id: str) -> Tracking:
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


def _line(record: Tracking) -> str:
    """``<id> <record as one line>``, coloured by status (shown only on a terminal)."""
    status = record.status_code or 0
    colour = None
    if status >= 500 or record.exception:
        colour = "red"
    elif status >= 400:
        colour = "yellow"
    elif 300 <= status < 400:
        colour = "cyan"
    return f"{click.style(str(record.pk), dim=True)} {click.style(str(record), fg=colour)}"


def _db_columns(record: Tracking) -> str:
    """``db 12 cmd 3.4ms`` (and ``repeated 12x find items``), or ``db -`` without database
    work, for ``list --db``."""
    db = record.db
    if db is None:
        return "db -"
    took = f"{db.time_ms:.1f}ms" if db.time_ms is not None else "-"
    columns = f"db {db.count or 0} cmd {took}"
    if db.repeated:
        top = db.repeated[0]
        where = " ".join(str(part) for part in (top.get("command"), top.get("collection")) if part)
        columns += click.style(f" repeated {top.get('count')}x {_escape(where)}", fg="yellow")
    return columns


# --- list, show, curl, replay -----------------------------------------------------------


@_command("list")
@_filter_options
@click.option("--limit", type=int, default=20, show_default=True, help="At most this many; 0: all.")
@click.option(
    "--db",
    "with_db",
    is_flag=True,
    help="Add the database work of each request: commands, time in the database, and the "
    "most repeated query shape when one repeats.",
)
def list_command(limit: int, with_db: bool, **options: Any) -> None:
    """Recorded requests, newest first, one line each."""
    records = _filtered(app_records(), options)
    if limit > 0:
        records = records.limit(limit)
    shown = 0
    for record in records.no_cache():
        click.echo(f"{_line(record)}  {_db_columns(record)}" if with_db else _line(record))
        shown += 1
    if not shown:
        click.echo("No records match.", err=True)


@_command("show")
@click.argument("record_id")
def show_command(record_id: str) -> None:
    """Everything recorded about one request: request, response and context."""
    click.echo(_record(app_records(), record_id).debug())


@_command("curl")
@click.argument("record_id")
@click.option(
    "--data-file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the stored request body to this file and send it with --data-binary @FILE "
    "(for binary bodies, which are otherwise inlined with printf or, when truncated, left out).",
)
@click.option(
    "--base-url",
    help="Where to send it, e.g. http://localhost:5000 (default: the recorded scheme and Host, "
    "which the client chose).",
)
def curl_command(record_id: str, data_file: str | None, base_url: str | None) -> None:
    """A curl command that sends the recorded request again (filtered headers left out)."""
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise click.BadParameter("must start with http:// or https://", param_hint="--base-url")
    record = _record(app_records(), record_id)
    if data_file is not None:
        with open(data_file, "wb") as stream:
            stream.write(bytes(record.request_body or b""))
    command, notes = curl_for(record, data_file, base_url)
    if base_url is None:
        target = _escape(f"{record.scheme or 'http'}://{record.host or 'localhost'}")
        notes.insert(0, f"Target: the recorded host {target}; choose another with --base-url.")
    for note in notes:
        click.echo(f"# {note}", err=True)
    click.echo(command)


def curl_for(
    record: Tracking, data_file: str | None = None, base_url: str | None = None
) -> tuple[str, list[str]]:
    """A shell command (POSIX quoting) re-sending ``record`` with curl, and notes about it.

    The target is ``base_url`` (``http://localhost:5000``) or else the recorded scheme and
    host. Headers stored as ``[Filtered]`` are left out, as are Host (in the URL),
    Content-Length and Transfer-Encoding (curl sets them). With ``data_file`` (where the caller
    wrote the stored body) the body is sent with ``--data-binary @data_file``. Otherwise a text
    body goes in ``--data-raw``; a binary one (or one holding control or bidirectional
    characters) is piped in by ``printf`` with octal escapes, unless it was truncated: then it
    is left out and a note says so (a partial binary body is rarely worth sending, and its
    printf would be tens of kilobytes of escapes). A word holding a control or bidirectional
    character is given as ``"$(printf ...)"`` with octal escapes, so the printed command shows
    none of them raw (nothing a terminal would act on).
    """
    method = (record.method or "GET").upper()
    body = bytes(record.request_body) if record.request_body is not None else b""
    if base_url is None:
        url = f"{record.scheme or 'http'}://{record.host or 'localhost'}"
    else:
        url = base_url.rstrip("/")
    url += quote(record.path or "/", safe="/:@!$&'()*+,;=")
    if record.query_params:
        url += f"?{record.query_params}"
    words = ["curl"]
    if method == "HEAD":
        words.append("--head")
    elif method != "GET" or body:
        words += ["-X", method]
    words.append(url)
    lines = [" ".join(_shell_word(word) for word in words)]
    lines += [
        f"-H {_shell_word(f'{name}: {value}' if value else f'{name};')}"
        for name, value in record.resendable_headers()
    ]
    prefix = ""
    binary = bool(body) and (
        _is_binary(body) or _CONTROL_RE.search(body.decode("utf-8", "replace")) is not None
    )
    if data_file is not None:
        lines.append(f"--data-binary {_shell_word('@' + data_file)}")
    elif binary and record.request_body_truncated:
        pass  # left out; _curl_notes says why and how to get it
    elif binary:
        prefix = f"printf {shlex.quote(_printf_format(body))} | "
        lines.append("--data-binary @-")
    elif body:
        lines.append(f"--data-raw {shlex.quote(body.decode('utf-8', 'replace'))}")
    return prefix + " \\\n  ".join(lines), _curl_notes(record, binary, data_file)


def _shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell; with control or bidirectional characters, as a
    printf command substitution that prints them from octal escapes."""
    if _CONTROL_RE.search(word) is None:
        return shlex.quote(word)
    return f'"$(printf {shlex.quote(_printf_format(word.encode("utf-8", "surrogateescape")))})"'


def _printf_format(body: bytes) -> str:
    """A printf format that prints exactly ``body`` (octal escapes; POSIX printf)."""
    out = []
    for byte in body:
        char = chr(byte)
        if char == "%":
            out.append("%%")
        elif char == "\\":
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def _curl_notes(record: Tracking, binary: bool, data_file: str | None) -> list[str]:
    notes = []
    filtered = record.filtered_header_names()
    if filtered:
        notes.append(f"Left out filtered headers: {_escape(', '.join(filtered))}.")
    kept = len(record.request_body or b"")
    if record.request_body_truncated and binary and data_file is None:
        notes.append(
            f"The stored request body is binary and truncated ({kept} of "
            f"{record.request_body_size} bytes kept): it is left out. 'flask tracking curl "
            f"{record.pk} --data-file FILE' writes the kept bytes to FILE and sends them with "
            "--data-binary @FILE."
        )
    elif record.request_body_truncated:
        notes.append(
            f"The stored request body was truncated ({kept} of {record.request_body_size} "
            "bytes kept): this command sends only the kept part."
        )
    elif record.request_body is None and record.request_body_omitted:
        notes.append(
            f"The request body was not recorded ({_escape(record.request_body_omitted)}): this "
            "command sends none."
        )
    return notes


@_command("replay")
@click.argument("record_id")
@click.option("--force", is_flag=True, help="Also replay methods that change data (POST...).")
@click.option(
    "--allow-truncated",
    is_flag=True,
    help="Replay even when the request body was not recorded in full.",
)
def replay_command(record_id: str, force: bool, allow_truncated: bool) -> None:
    """Send a recorded request again through the app's test client, and compare responses.

    Prints the new status and a unified diff of the new response body against the recorded
    one. Only GET, HEAD, OPTIONS and TRACE without --force. The replay is not tracked.
    """
    record = _record(app_records(), record_id)
    method = (record.method or "GET").upper()
    if method not in SAFE_METHODS and not force:
        raise click.ClickException(
            f"Not replaying a {method} request: it may change data again. "
            "Pass --force to replay it anyway."
        )
    try:
        record._check_replayable(allow_truncated)
    except ValueError as error:
        message = str(error).replace("pass allow_truncated=True", "pass --allow-truncated")
        raise click.ClickException(message) from None
    try:
        response = record.replay(allow_truncated=True)  # checked just above
    except Exception as error:
        raise click.ClickException(
            f"The app raised {type(error).__name__} while handling the replayed request: {error}"
        ) from None
    with response:
        new_body = response.get_data()
        new_status, new_type = response.status_code, response.content_type or ""
    recorded = _status_line(record.status_code)
    same = new_status == record.status_code
    click.echo(
        f"{method} {_escape(record._target())} -> "
        f"{click.style(_status_line(new_status), fg=None if same else 'yellow')} "
        f"(recorded: {recorded})"
    )
    for line in _body_diff(record, new_body, new_type):
        click.echo(line)


def _body_diff(record: Tracking, new_body: bytes, new_type: str) -> Iterator[str]:
    """Lines comparing the recorded response body with ``new_body``."""
    if record.response_body is None:
        reason = record.response_body_omitted or "none was recorded"
        yield f"The recorded response body is not available ({reason}); nothing to compare."
        return
    old = bytes(record.response_body)
    if record.response_body_truncated:
        yield f"The recorded body was truncated: comparing the first {len(old)} bytes."
        new_body = new_body[: len(old)]
    if _is_binary(old) or _is_binary(new_body):
        if old == new_body:
            yield f"Binary response body identical to the recorded one ({len(old)} bytes)."
        else:
            yield f"Binary response bodies differ: {len(old)} bytes recorded, {len(new_body)} now."
        return
    old_text = _comparable(old, record.get_response_header("content-type"))
    new_text = _comparable(new_body, new_type)
    diff = list(
        difflib.unified_diff(
            old_text.splitlines(), new_text.splitlines(), "recorded", "replayed", lineterm=""
        )
    )
    if not diff:
        yield "Response body identical to the recorded one."
        return
    colours = {"+": "green", "-": "red", "@": "cyan"}
    for line in diff:
        colour = None if line[:3] in ("---", "+++") else colours.get(line[:1])
        yield click.style(_escape(line, keep="\t"), fg=colour)


def _comparable(body: bytes, content_type: str) -> str:
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    return _pretty_json(text, content_type) or text


# --- stats, timeline --------------------------------------------------------------------

_STATS_SORTS = ("count", "errors", "error_rate", "mean", "p50", "p95", "p99", "max", "name")
_RECORDS_OPTION = click.option(
    "--records",
    is_flag=True,
    help="Report on the stored records (sampled, evicted ones gone) instead of the rollups "
    "(every request); needed for --path, --status, --user, --ip, --slow, --errors, --data.",
)


@_command("stats")
@_filter_options
@_RECORDS_OPTION
@click.option(
    "--by",
    type=click.Choice(list(dict.fromkeys((*ROLLUP_GROUPS, *STATS_GROUPS)))),
    default="endpoint",
    show_default=True,
    help="Rollups group by endpoint, method or status_class; --records by endpoint, path, "
    "status_code or user_id.",
)
@click.option(
    "--sort",
    type=click.Choice(_STATS_SORTS),
    default="count",
    show_default=True,
    help="Column to sort on, largest first (name: alphabetical).",
)
@click.option("--limit", type=int, default=0, help="Show only the first N rows.")
def stats_command(by: str, sort: str, limit: int, records: bool, **options: Any) -> None:
    """A table per endpoint (or --by): requests, errors and execution-time percentiles (ms),
    from the rollups (every request; percentiles within 5 %) or, with --records, from the
    stored records."""
    groups = STATS_GROUPS if records else ROLLUP_GROUPS
    if by not in groups:
        source = "--records" if records else "the rollups (without --records)"
        raise click.ClickException(
            f"--by {by} is not available with {source}: {', '.join(groups)}."
        )
    rows = _reported(options, records).stats(group_by=by)
    if not rows:
        click.echo("No records match.", err=True)
        return
    if sort == "name":
        rows.sort(key=lambda row: str(row[by]))
    else:
        rows.sort(key=lambda row: (row[sort] is not None, row[sort] or 0), reverse=True)
    if limit > 0:
        rows = rows[:limit]
    header = [by, "count", "errors", "err%", "mean", "p50", "p95", "p99", "max", "in", "out"]
    table = [
        [
            "-" if row[by] is None else _escape(row[by]),
            str(row["count"]),
            str(row["errors"]),
            f"{row['error_rate'] * 100:.1f}",
            *(_ms(row[key]) for key in ("mean", "p50", "p95", "p99", "max")),
            _bytes(row["bytes_in"]),
            _bytes(row["bytes_out"]),
        ]
        for row in rows
    ]
    styles = [("red" if row["errors"] else None) for row in rows]
    for line in _table(header, table, styles):
        click.echo(line)


@_command("timeline")
@_filter_options
@_RECORDS_OPTION
@click.option(
    "--bucket",
    type=click.Choice(list(TIMELINE_BUCKETS)),
    default="hour",
    show_default=True,
    help="Length of one row (UTC).",
)
def timeline_command(bucket: str, records: bool, **options: Any) -> None:
    """Requests, errors and p95 (ms) per minute, hour or day (UTC), with a bar of the count,
    from the rollups or, with --records, from the stored records."""
    rows = _filled(_reported(options, records).timeline(bucket=bucket), bucket)
    if not rows:
        click.echo("No records match.", err=True)
        return
    layout = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}[bucket]
    most = max(row["count"] for row in rows) or 1
    header = ["start (UTC)", "count", "errors", "p95", ""]
    table = [
        [
            row["start"].strftime(layout),
            str(row["count"]),
            str(row["errors"]),
            _ms(row["p95"]),
            "#" * round(row["count"] / most * _BAR_WIDTH),
        ]
        for row in rows
    ]
    styles = [("red" if row["errors"] else None) for row in rows]
    for line in _table(header, table, styles):
        click.echo(line)


def _filled(rows: list[dict[str, Any]], bucket: str) -> list[dict[str, Any]]:
    """``rows`` with the empty buckets between them added (unless there would be too many)."""
    if len(rows) < 2:
        return rows
    step = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[
        bucket
    ]
    if (rows[-1]["start"] - rows[0]["start"]) / step > _MAX_FILLED_BUCKETS:
        return rows
    by_start = {row["start"]: row for row in rows}
    empty = {"count": 0, "errors": 0, "p95": None}
    filled, start = [], rows[0]["start"]
    while start <= rows[-1]["start"]:
        filled.append(by_start.get(start) or {"start": start, **empty})
        start += step
    return filled


def _table(header: list[str], rows: list[list[str]], styles: list[str | None]) -> Iterator[str]:
    """Aligned columns: the first left-aligned, the others right-aligned (the last, a bar,
    left-aligned when its header is empty)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def render(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        for index, cell in enumerate(cells[1:], 1):
            bar = index == len(cells) - 1 and not header[index]
            parts.append(cell.ljust(widths[index]) if bar else cell.rjust(widths[index]))
        return "  ".join(parts).rstrip()

    yield click.style(render(header), bold=True)
    for cells, colour in zip(rows, styles):
        yield click.style(render(cells), fg=colour)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover (the loop always returns)


# --- tail -------------------------------------------------------------------------------


@_command("tail")
@_filter_options
@click.option(
    "-n", "--lines", type=int, default=10, show_default=True, help="Recent records shown first."
)
@click.option(
    "--interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between polls (or the longest wait of the tailable cursor).",
)
@click.option("--max-records", type=int, help="Stop after this many new records.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
def tail_command(
    lines: int, interval: float, max_records: int | None, timeout: float | None, **options: Any
) -> None:
    """Follow new records as they are stored, until Ctrl-C (or --max-records / --timeout).

    A capped collection is followed with a tailable cursor; the others (TRACKING_STORAGE "ttl"
    or "timeseries", mongomock) are polled every --interval seconds.
    """
    records = _filtered(app_records(), options)
    if lines > 0:
        for record in reversed(list(records.limit(lines))):
            click.echo(_line(record))
    followed = records.follow(interval=interval, timeout=timeout)
    try:
        for count, record in enumerate(followed, 1):
            click.echo(_line(record))
            if max_records is not None and count >= max_records:
                break
    except KeyboardInterrupt:
        pass
    finally:
        followed.close()


# --- export -----------------------------------------------------------------------------


@_command("export")
@_filter_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON Lines (every field, bodies in base64) or CSV (the scalar fields).",
)
@click.option("-o", "--output", default="-", show_default=True, help="File to write; - is stdout.")
@click.option(
    "--limit",
    type=int,
    default=0,
    help="At most this many records, taken in storage order: the OLDEST first (list shows the "
    "newest first; add --since to export recent ones); 0: all.",
)
@click.option("--batch-size", type=int, default=500, show_default=True, help="Records per fetch.")
def export_command(
    output_format: str, output: str, limit: int, batch_size: int, **options: Any
) -> None:
    """Write the records as JSON Lines (bodies in base64) or CSV, in storage order.

    Streams: records are fetched batch by batch and written as they come, so memory does not
    grow with their number. The capped collection's storage order is oldest first.
    """
    records = _filtered(app_records(), options).order_by()
    if limit > 0:
        records = records.limit(limit)
    documents = records.no_cache().as_pymongo().batch_size(max(1, batch_size))
    with _open_output(output) as stream:
        writer = _write_jsonl if output_format == "jsonl" else _write_csv
        count = writer(documents, stream)
    where = "stdout" if output == "-" else output
    click.echo(f"Exported {count} records to {where}.", err=True)


@contextlib.contextmanager
def _open_output(output: str) -> Iterator[TextIO]:
    """A UTF-8 text stream to ``output`` ("-": stdout, left open).

    A regular file is written to a temporary file beside it, renamed over it only once the
    export is complete: a failed export leaves the previous file (or none). A new file is
    readable by its owner only (it holds request data); a replaced one keeps its mode.
    /dev/null, pipes and other special files are written in place.
    """
    if output == "-":
        # sys.stdout.buffer: click.get_binary_stream is deprecated since Click 8.2.
        stream = io.TextIOWrapper(sys.stdout.buffer, "utf-8", newline="")
        try:
            yield stream
        finally:
            stream.flush()
            stream.detach()
        return
    if os.path.exists(output) and not os.path.isfile(output):
        with open(output, "w", encoding="utf-8", newline="") as stream:
            yield stream
        return
    descriptor, temporary = tempfile.mkstemp(
        dir=os.path.dirname(os.path.abspath(output)), prefix=".export-", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as stream:
            yield stream
        if os.path.exists(output):
            os.chmod(temporary, stat.S_IMODE(os.stat(output).st_mode))
        os.replace(temporary, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _write_jsonl(documents: Iterable[dict[str, Any]], stream: Any) -> int:
    count = 0
    for document in documents:
        ordered = {"_id": document.get("_id"), **document}  # the id first, for readers
        line = json.dumps(jsonable(ordered), ensure_ascii=False, separators=(",", ":"))
        # JSON escapes C0 controls itself; the rest (C1, bidi controls) only appear in strings.
        stream.write(_CONTROL_RE.sub(_json_escape, line))
        stream.write("\n")
        count += 1
    return count


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _write_csv(documents: Iterable[dict[str, Any]], stream: Any) -> int:
    writer = csv.writer(stream)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for document in documents:
        writer.writerow([_csv_cell(document, column) for column in CSV_COLUMNS])
        count += 1
    return count


def _csv_cell(document: dict[str, Any], column: str) -> Any:
    value: Any = document
    for part in column.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        value = json.dumps(jsonable(value), ensure_ascii=False, sort_keys=True)
    value = jsonable(value)
    return _safe_cell(value) if isinstance(value, str) else value


def _safe_cell(text: str) -> str:
    """A CSV cell no spreadsheet runs as a formula (OWASP: a leading ``=``, ``+``, ``-``,
    ``@``, tab or carriage return gets a ``'`` before it), with control and bidirectional
    characters escaped."""
    text = _escape(text)
    return "'" + text if text[:1] in _FORMULA_STARTS else text


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def jsonable(value: Any) -> Any:
    """``value`` (a raw stored record or part of it) as JSON-ready data.

    ObjectIds and UUIDs become strings, datetimes ISO 8601 with ``Z`` (UTC), bytes base64,
    a DBRef ``{"$ref": collection, "$id": id}``; anything else unknown its ``str``.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, DBRef):
        return {"$ref": value.collection, "$id": jsonable(value.id)}
    if isinstance(value, (ObjectId, UUID)):
        return str(value)
    return str(value)


# --- migrate ----------------------------------------------------------------------------


@_command("migrate")
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

    config = _app_config()
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
            get_db(_alias()),
            spec,
            batch_size=batch_size,
            drop_source=drop_source,
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


def _app_config() -> TrackingConfig:
    """The current app's validated tracking settings (its extension's, else from its config)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    extension = app.extensions.get("tracking")
    tracked = getattr(extension, "_apps", {}).get(app) if extension is not None else None
    if tracked is not None:
        return tracked.config  # type: ignore[no-any-return]
    return load_config(dict(app.config))


# --- info -------------------------------------------------------------------------------


@_command("info")
def info_command() -> None:
    """The collection: name, capped or not, size, count, oldest and newest record, indexes,
    and the writer's counters of this process."""
    records = app_records()
    collection = records._collection
    database = collection.database
    rows = [
        ("Collection", f"{collection.name} (database {database.name}, connection {_alias()!r})"),
        ("Capped", _capped_text(collection)),
        ("Storage", _storage_text(collection)),
        ("Size", _size_text(database, collection.name)),
        ("Records", str(collection.estimated_document_count())),
        ("Oldest", _edge_text(records.filter(date_created__ne=None).order_by("date_created"))),
        ("Newest", _edge_text(records.filter(date_created__ne=None).order_by("-date_created"))),
        ("Indexes", _indexes_text(collection)),
        ("Writer", _writer_text()),
    ]
    width = max(len(label) for label, _ in rows) + 1
    for label, text in rows:
        click.echo(f"{click.style((label + ':').ljust(width), bold=True)} {text}")


def _capped_text(collection: Any) -> str:
    try:
        options = collection.options()
    except ConnectionFailure:
        raise
    except Exception:
        return "unknown (this server does not report collection options)"
    if not isinstance(options, dict) or not options.get("capped"):
        return "no"
    maximum = f", at most {options['max']} records" if options.get("max") else ""
    return f"yes ({_bytes(int(options.get('size') or 0))}{maximum})"


def _storage_text(collection: Any) -> str:
    """The storage mode (TRACKING_STORAGE) the collection is in, and how records leave it."""
    try:
        options = collection.options()
    except ConnectionFailure:
        raise
    except Exception:
        options = None
    mode = mode_of(options) if isinstance(options, dict) else None
    if mode == "capped":
        return "capped (the oldest records go when it is full)"
    if mode == "timeseries":
        return f"timeseries (records expire after {options.get('expireAfterSeconds')} s)"
    expiry = [
        f"{spec['expireAfterSeconds']} s ({name})"
        for name, spec in collection.index_information().items()
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
        f"{_bytes(int(stats.get('size') or 0))} of data, "
        f"{_bytes(int(stats.get('storageSize') or 0))} on disk, "
        f"{_bytes(int(stats.get('totalIndexSize') or 0))} of indexes"
    )


def _edge_text(records: TrackingQuerySet) -> str:
    record = records.only("id", "date_created").first()
    if record is None:
        return "-"
    when = (
        record.date_created.isoformat(sep=" ", timespec="seconds") if record.date_created else "-"
    )
    return f"{when} UTC ({record.pk})"


def _indexes_text(collection: Any) -> str:
    names = []
    for name, spec in collection.index_information().items():
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

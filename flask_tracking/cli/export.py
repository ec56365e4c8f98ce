"""``flask tracking export``: the records as JSON Lines or CSV, streamed to a file or stdout."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timezone
from typing import Any, TextIO
from uuid import UUID

import click
from bson import DBRef, ObjectId

from ..display import CONTROL_RE, escape
from .selection import app_records, command, filter_options, filtered, writing_to

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


@command("export")
@filter_options
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
    records = filtered(app_records(), options).order_by()
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
    /dev/null, pipes and other special files are written in place. A file that cannot be
    written (a missing directory, a directory, a full disk) is one sentence and exit code 1.
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
    with writing_to(output):
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
        line = json.dumps(
            jsonable(ordered), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
        # JSON escapes C0 controls itself; the rest (C1, bidi controls) only appear in strings.
        stream.write(CONTROL_RE.sub(_json_escape, line))
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
        value = json.dumps(jsonable(value), ensure_ascii=False, sort_keys=True, allow_nan=False)
    value = jsonable(value)
    return _safe_cell(value) if isinstance(value, str) else value


def _safe_cell(text: str) -> str:
    """A CSV cell no spreadsheet runs as a formula (OWASP: a leading ``=``, ``+``, ``-``,
    ``@``, tab or carriage return gets a ``'`` before it), with control and bidirectional
    characters escaped."""
    text = escape(text)
    return "'" + text if text[:1] in _FORMULA_STARTS else text


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def jsonable(value: Any) -> Any:
    """``value`` (a raw stored record or part of it) as JSON-ready data.

    ObjectIds and UUIDs become strings, datetimes ISO 8601 with ``Z`` (UTC), bytes base64,
    a DBRef ``{"$ref": collection, "$id": id}``; anything else unknown its ``str``. NaN and
    the infinities, which BSON stores but JSON has not, become None (``null``), as
    JavaScript's ``JSON.stringify`` writes them.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
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

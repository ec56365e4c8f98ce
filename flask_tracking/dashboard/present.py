"""How stored records are shown: list rows, headers, bodies, custom data.

Everything here turns stored values into text; the templates escape it (autoescape) and
nothing is ever marked safe. Control characters coming from clients are made visible
(``\\r``, ``\\x1b``) the way ``str(record)`` and ``record.debug()`` show them, so a crafted
value cannot disguise itself on the page. Filtered values are shown as they are stored:
``[Filtered]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import display
from ..cli.export import jsonable
from ..display import escape, find_header, header_pairs, is_binary, pretty_json, status_line
from ..documents import Tracking
from .charts import format_ms

#: Bytes of a binary body shown as a hex dump.
HEX_PREVIEW_BYTES = 512
_HEX_ROW_BYTES = 16
#: The fields a list row needs (the list reads only these).
ROW_FIELDS = (
    "id",
    "date_created",
    "method",
    "path",
    "query_params",
    "status_code",
    "execution_time",
    "user_id",
    "ip",
    "endpoint",
    "exception",
    "db",
)


@dataclass(frozen=True)
class BodyView:
    """A request or response body ready to show.

    ``kind``: "none" (not recorded), "empty", "json" (pretty-printed), "text" or "binary"
    (``text`` is then a hex dump of the first :data:`HEX_PREVIEW_BYTES`); ``notes`` say what
    is missing (truncated, omitted, preview only).
    """

    kind: str
    text: str
    notes: tuple[str, ...]


def visible(value: Any) -> str:
    """``value`` as text with control characters escaped (``None`` is "")."""
    return escape(value)


def headers(pairs: Any) -> list[tuple[str, str]]:
    """Stored ``[name, value]`` pairs, malformed entries left out, control characters escaped."""
    return [(escape(name), escape(value)) for name, value in header_pairs(pairs)]


def body_view(
    body: bytes | None,
    *,
    content_type: str,
    truncated: bool,
    omitted: str | None,
    size: int | None,
) -> BodyView:
    """How to show one stored body (see :class:`BodyView`)."""
    notes: list[str] = []
    if body is None:
        reason = f"not recorded: {omitted}" if omitted else "no body"
        return BodyView("none", "", (reason,))
    data = bytes(body)
    if truncated:
        notes.append(
            f"truncated: the first {len(data)} of {size} bytes"
            if size is not None
            else f"truncated: the first {len(data)} bytes"
        )
    if not data:
        return BodyView("empty", "", tuple(notes))
    if is_binary(data):
        if len(data) > HEX_PREVIEW_BYTES:
            notes.append(f"binary: hex preview of the first {HEX_PREVIEW_BYTES} bytes")
        return BodyView("binary", hexdump(data[:HEX_PREVIEW_BYTES]), tuple(notes))
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    pretty = pretty_json(text, content_type)
    if pretty is not None:
        return BodyView("json", escape(pretty, keep="\n\t"), tuple(notes))
    return BodyView("text", escape(text, keep="\n\t"), tuple(notes))


def hexdump(data: bytes) -> str:
    """Offset, hex bytes and printable ASCII, 16 bytes a line (like ``hexdump -C``)."""
    lines = []
    for offset in range(0, len(data), _HEX_ROW_BYTES):
        chunk = data[offset : offset + _HEX_ROW_BYTES]
        printable = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  |{printable}|")
    return "\n".join(lines)


def record_bodies(record: Tracking) -> dict[str, BodyView]:
    """The request and the response body of ``record``, by "request" and "response"."""
    return {
        prefix: body_view(
            getattr(record, f"{prefix}_body"),
            content_type=_content_type(getattr(record, f"{prefix}_headers")),
            truncated=bool(getattr(record, f"{prefix}_body_truncated")),
            omitted=getattr(record, f"{prefix}_body_omitted"),
            size=getattr(record, f"{prefix}_body_size"),
        )
        for prefix in ("request", "response")
    }


def custom_data_text(value: Any) -> str | None:
    """Custom data as indented JSON (ids, dates, bytes as text), or None when there is none."""
    if value is None:
        return None
    dumped = json.dumps(jsonable(value), indent=2, ensure_ascii=False, sort_keys=True)
    return escape(dumped, keep="\n")


def target(record: Tracking) -> str:
    """``path?query`` with control characters escaped."""
    return escape(display.target(record.path, record.query_params))


def status_text(status: int | None) -> str:
    """``"404 Not Found"``, or the bare number for unknown codes, or "-"."""
    return status_line(status)


def status_class(record: Tracking) -> str:
    """CSS class of a status: "error" (5xx or an exception), "warn" (4xx), "redirect" or ""."""
    status = record.status_code or 0
    if status >= 500 or record.exception:
        return "error"
    if status >= 400:
        return "warn"
    if 300 <= status < 400:
        return "redirect"
    return ""


def list_row(record: Tracking) -> dict[str, Any]:
    """One request as the list, the live view and its JSON show it (all values text)."""
    return {
        "id": str(record.pk),
        "date": record.date_created.isoformat(sep=" ", timespec="seconds")
        if record.date_created
        else "-",
        "method": escape(record.method or "-"),
        "target": target(record),
        "status": "-" if record.status_code is None else str(record.status_code),
        "status_class": status_class(record),
        "time": format_ms(record.execution_time),
        "user": escape(record.user_id or "-"),
        "ip": escape(record.ip or "-"),
        "endpoint": escape(record.endpoint or "-"),
        **db_cells(record),
    }


def db_cells(record: Tracking) -> dict[str, str]:
    """The database work of a request as list cells: ``db_count`` (commands), ``db_time``
    and ``db_repeated`` (``"12x"`` for the most repeated query shape, or "")."""
    db = record.db
    if db is None:
        return {"db_count": "-", "db_time": "-", "db_repeated": ""}
    repeated = db.repeated[0].get("count") if db.repeated else None
    return {
        "db_count": str(db.count or 0),
        "db_time": format_ms(db.time_ms),
        "db_repeated": f"{repeated}x" if repeated is not None else "",
    }


def db_view(record: Tracking) -> dict[str, Any] | None:
    """The database work of a request as the detail page shows it (all values text), or
    None when it ran no command: ``summary`` (commands, time, share of the time in the app),
    ``commands`` (name, count), ``slowest`` and ``repeated`` (command, collection, shape,
    and ``ms`` or ``count``)."""
    db = record.db
    if db is None:
        return None
    summary = f"{db.count or 0} commands, {format_ms(db.time_ms)} in the database"
    if db.time_ms is not None and record.execution_time:
        summary += f" ({db.time_ms / record.execution_time:.0%} of the time in the app)"
    commands = db.commands or {}
    return {
        "summary": summary,
        "commands": [(escape(name), str(count)) for name, count in commands.items()],
        "slowest": [_db_entry(entry) for entry in db.slowest or []],
        "repeated": [_db_entry(entry) for entry in db.repeated or []],
    }


def _db_entry(entry: Any) -> dict[str, str]:
    """A ``slowest`` or ``repeated`` entry as text (what is malformed shows as "-")."""
    if not isinstance(entry, dict):
        entry = {}
    ms = entry.get("ms")
    return {
        "ms": format_ms(ms if isinstance(ms, (int, float)) else None),
        "count": escape(entry.get("count", "-")),
        "command": escape(entry.get("command") or "-"),
        "collection": escape(entry.get("collection") or "-"),
        "shape": escape(entry.get("shape") or ""),
    }


def _content_type(stored_headers: Any) -> str:
    return find_header(stored_headers, "content-type", "")

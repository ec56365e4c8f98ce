"""Stored values as text for people: ``str(record)``, ``debug()``, the commands, the dashboard.

Everything here takes plain values (strings, numbers, bytes, stored ``[name, value]`` header
lists) and returns text; nothing reads the database. Values that come from clients have their
control characters escaped (``\\r``, ``\\x1b``, ``\\u202e``), so that a crafted path, header or
body cannot forge a log line or reorder what a terminal shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

__all__ = [
    "CONTROL_RE",
    "command_label",
    "context_lines",
    "db_activity_label",
    "decode_body",
    "escape",
    "find_header",
    "header_pairs",
    "is_binary",
    "log_line",
    "message_lines",
    "pretty_json",
    "request_line",
    "status_line",
    "target",
    "timing_label",
    "user_agent_label",
]

#: Control characters (C0, DEL, C1), the Unicode line and paragraph separators, and the
#: bidirectional controls that can reorder what a terminal shows (Trojan Source).
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
#: Bytes of a binary body shown in hex by :func:`message_lines`.
_HEX_PREVIEW_BYTES = 32


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(value: object, keep: str = "") -> str:
    """Render ``value`` as text with control characters escaped (``None`` is ``""``).

    CR becomes the two characters ``\\r``, LF ``\\n``, TAB ``\\t`` and any other
    control character ``\\xNN``, so that untrusted values cannot forge log lines.
    Characters listed in ``keep`` are left untouched.
    """
    text = "" if value is None else str(value)
    return CONTROL_RE.sub(lambda m: m.group() if m.group() in keep else _escape_char(m), text)


def header_pairs(headers: Any) -> Iterator[tuple[str, str]]:
    """Yield ``(name, value)`` from a stored header list, skipping malformed entries."""
    for pair in headers or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            yield str(pair[0]), "" if pair[1] is None else str(pair[1])


def find_header(headers: Any, name: str, default: str) -> str:
    """Value of the first header called ``name`` (case-insensitive) in a stored header list."""
    wanted = name.lower()
    return next((v for k, v in header_pairs(headers) if k.lower() == wanted), default)


def decode_body(body: bytes | None) -> str | None:
    """A stored body decoded as UTF-8 (with replacement), or ``None``."""
    return None if body is None else bytes(body).decode("utf-8", errors="replace")


def is_binary(body: bytes) -> bool:
    """True when ``body`` has NUL bytes or is not UTF-8 (a cut at the very end is fine)."""
    if b"\x00" in body:
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut_at_end = exc.reason == "unexpected end of data" and exc.start >= len(body) - 3
        return not cut_at_end
    return False


def pretty_json(text: str, content_type: str) -> str | None:
    """Pretty-print ``text`` when it is JSON (declared, or looking like an object/array)."""
    looks_like_json = text.lstrip()[:1] in ("{", "[")
    if "json" not in content_type.lower() and not looks_like_json:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # a hostile body nested thousands deep
        return None


def _body_lines(
    body: bytes | None,
    *,
    content_type: str,
    truncated: bool,
    omitted: str | None,
    size: int | None,
) -> list[str]:
    """Human-readable rendering of a stored request or response body."""
    if body is None:
        return [f"(body not recorded: {escape(omitted)})" if omitted else "(no body)"]
    body = bytes(body)
    if not body:
        lines = ["(empty body)"]
    elif is_binary(body):
        more = " ..." if len(body) > _HEX_PREVIEW_BYTES else ""
        preview = body[:_HEX_PREVIEW_BYTES].hex(" ")
        lines = [f"(binary, {len(body)} bytes) {preview}{more}"]
    else:
        text = (decode_body(body) or "").replace("\r\n", "\n")
        lines = [escape(pretty_json(text, content_type) or text, keep="\n\t")]
    if truncated:
        lines.append(f"(truncated, {size} bytes in all)" if size is not None else "(truncated)")
    return lines


def status_line(status: int | None) -> str:
    """``"404 Not Found"``, the bare number for an unknown code, or ``"-"``."""
    if status is None:
        return "-"
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status}"


def target(path: str | None, query_params: str | None) -> str:
    """``path[?query]`` (``/`` without a path), not escaped."""
    path = path or "/"
    return f"{path}?{query_params}" if query_params else path


def log_line(
    date_created: datetime | None,
    method: str | None,
    user_id: str | None,
    target: str,
    status_code: int | None,
    execution_time: float | None,
) -> str:
    """One log line: ``"<date> <METHOD> <user id or -> <target> <status> <ms>ms"``, escaped;
    the date in UTC without an offset, whether or not the connection is ``tz_aware``."""
    if date_created is not None and date_created.tzinfo is not None:
        date_created = date_created.astimezone(timezone.utc).replace(tzinfo=None)
    date = date_created.isoformat(timespec="seconds") if date_created else "-"
    took = f"{execution_time:.1f}ms" if execution_time is not None else "-"
    status = status_code if status_code is not None else "-"
    parts = (date, method or "-", user_id or "-", target, status, took)
    return " ".join(escape(part) for part in parts)


def request_line(method: str | None, scheme: str | None, host: str | None, target: str) -> str:
    """``"POST https://host/path?query"`` (``/path?query`` without a host), not escaped."""
    origin = f"{scheme or 'http'}://{host}" if host else ""
    return f"{method or '-'} {origin}{target}"


def message_lines(
    first_line: str,
    headers: Any,
    body: bytes | None,
    *,
    truncated: bool,
    omitted: str | None,
    size: int | None,
) -> list[str]:
    """First line, headers, blank line and body of a stored request or response, escaped.

    The body is pretty-printed when it is JSON, shown as a hex preview with its size when it
    is binary, and followed by a note when only its first bytes were kept.
    """
    body_lines = _body_lines(
        body,
        content_type=find_header(headers, "content-type", ""),
        truncated=truncated,
        omitted=omitted,
        size=size,
    )
    header_lines = [f"{escape(k)}: {escape(v)}" for k, v in header_pairs(headers)]
    return [escape(first_line), *header_lines, "", *body_lines]


def context_lines(
    fields: Sequence[tuple[str, object]], extra: Sequence[str], custom_data: Any
) -> list[str]:
    """``"Label: value"`` for each field with a value (escaped), the ``extra`` lines as they
    are, then the custom data as indented JSON (escaped, real newlines kept)."""
    lines = [f"{label}: {escape(value)}" for label, value in fields if value]
    lines += extra
    if custom_data is not None:
        dumped = json.dumps(custom_data, indent=2, default=str, ensure_ascii=False)
        lines.append("Custom data: " + escape(dumped, keep="\n"))
    return lines


def timing_label(execution_time: float | None, total_time: float | None) -> str | None:
    """``"3.2 ms in the app, 4.5 ms in all"`` (the parts known), or None."""
    timings = ((execution_time, "in the app"), (total_time, "in all"))
    parts = [f"{ms:.1f} ms {label}" for ms, label in timings if ms is not None]
    return ", ".join(parts) or None


def user_agent_label(
    browser: str | None, version: str | None, platform: str | None, string: str | None
) -> str:
    """Short form such as ``"Firefox 120.0 on Linux"``; the raw string as a fallback; escaped."""
    name = " ".join(part for part in (browser, version) if part)
    if platform:
        name = f"{name} on {platform}" if name else platform
    return escape(name or string or "unknown")


def db_activity_label(
    count: int | None, time_ms: float | None, commands: Mapping[str, Any] | None
) -> str:
    """``"12 commands, 3.4 ms (find 12)"``, escaped."""
    names = ", ".join(f"{name} {n}" for name, n in (commands or {}).items())
    took = f"{time_ms:.1f} ms" if time_ms is not None else "-"
    text = f"{count or 0} commands, {took}"
    return escape(f"{text} ({names})" if names else text)


def command_label(entry: Mapping[str, Any]) -> str:
    """``find items {"sku":"?"}`` for a ``slowest`` or ``repeated`` entry, escaped."""
    parts = (entry.get("command"), entry.get("collection"), entry.get("shape"))
    return escape(" ".join(str(part) for part in parts if part is not None))

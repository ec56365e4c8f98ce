"""Turn a finished request (as captured on the request thread) into the document to store.

Runs on the writer thread, so the request never pays for it: header names, the query string,
the host, the user agent (parsed by ``ua-parser``), the user reference, the status code. The
result is the schema that :class:`flask_tracking.documents.Tracking` reads.
"""

from __future__ import annotations

import socket
from typing import Any

from bson import DBRef, ObjectId
from ua_parser import parse as parse_ua

from .capture import BodyCapture, RequestState
from .redact import Redactor

#: The keys of every stored document (besides ``_id``).
FIELDS = (
    "date_created",
    "host",
    "scheme",
    "method",
    "path",
    "query_params",
    "ip",
    "endpoint",
    "url_rule",
    "referrer",
    "user",
    "user_id",
    "user_agent",
    "request_headers",
    "request_body",
    "request_body_size",
    "request_body_truncated",
    "request_body_omitted",
    "response_headers",
    "response_body",
    "response_body_size",
    "response_body_truncated",
    "response_body_omitted",
    "status_code",
    "execution_time",
    "total_time",
    "hostname",
    "custom_data",
    "exception",
)

_HOSTNAME = socket.gethostname()
_SPECIAL_HEADER_NAMES = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


def status_code_of(status: str) -> int:
    """The integer code of a WSGI status line such as ``"404 NOT FOUND"``."""
    try:
        return int(status.split(None, 1)[0])
    except (ValueError, IndexError):
        return 0


def to_document(state: RequestState, redactor: Redactor | None = None) -> dict[str, Any]:
    """The document to insert for a finished request (a new dict with an ``_id``).

    With a ``redactor``, secret fields in the bodies are filtered (headers, query string and
    custom data were filtered on the request thread already).
    """
    request = state.request or {}
    headers = [[_header_name(key), value] for key, value in request.get("environ_headers", ())]
    header_map = {name.lower(): value for name, value in reversed(headers)}
    document: dict[str, Any] = {
        "_id": ObjectId(),
        "date_created": state.date_created,
        "host": header_map.get("host") or _server_host(request.get("server")),
        "scheme": request.get("scheme"),
        "method": request.get("method"),
        "path": request.get("path"),
        "query_params": _decode_wsgi(request.get("query_string", "")),
        "ip": request.get("ip"),
        "endpoint": request.get("endpoint"),
        "url_rule": request.get("url_rule"),
        "referrer": header_map.get("referer"),
        "user": _user_reference(state.user_ref),
        "user_id": state.user_id,
        "user_agent": parse_user_agent(
            header_map.get("user-agent", ""), header_map.get("accept-language", "")
        ),
        "request_headers": headers,
        "response_headers": [[str(name), str(value)] for name, value in state.response_headers],
        "status_code": status_code_of(state.status),
        "execution_time": state.execution_time,
        "total_time": state.total_time,
        "hostname": _HOSTNAME,
        "custom_data": state.custom_data,
        "exception": state.exception,
    }
    _add_body(document, "request", state.request_body, state.request_body_omitted)
    _add_body(document, "response", state.response_body, state.response_body_omitted)
    if redactor is not None:
        response_type = next(
            (value for name, value in state.response_headers if name.lower() == "content-type"),
            "",
        )
        _scrub_body(document, "request", redactor, header_map.get("content-type", ""))
        _scrub_body(document, "response", redactor, response_type)
    return document


def _scrub_body(document: dict[str, Any], prefix: str, redactor: Redactor, kind: str) -> None:
    """Filter secrets in one body; if scrubbing fails, keep no body at all (fail closed)."""
    body = document[f"{prefix}_body"]
    if not body:
        return
    try:
        document[f"{prefix}_body"] = redactor.body(body, kind)
    except Exception:
        document[f"{prefix}_body"] = None
        document[f"{prefix}_body_omitted"] = "redaction failed"


def _add_body(
    document: dict[str, Any], prefix: str, capture: BodyCapture | None, omitted: str | None
) -> None:
    if capture is None:
        document[f"{prefix}_body"] = None
        document[f"{prefix}_body_size"] = None
        document[f"{prefix}_body_truncated"] = False
    else:
        document[f"{prefix}_body"] = bytes(capture.buffer)
        document[f"{prefix}_body_size"] = capture.size
        document[f"{prefix}_body_truncated"] = capture.truncated
    document[f"{prefix}_body_omitted"] = omitted


def _header_name(environ_key: str) -> str:
    special = _SPECIAL_HEADER_NAMES.get(environ_key)
    if special is not None:
        return special
    return environ_key[5:].replace("_", "-").title()


def _server_host(server: tuple[str | None, str | None] | None) -> str | None:
    if not server or not server[0]:
        return None
    name, port = server
    return name if port in (None, "", "80", "443") else f"{name}:{port}"


def _decode_wsgi(text: str) -> str:
    """WSGI strings carry bytes as latin-1; give back the UTF-8 text they encode."""
    if text.isascii():
        return text
    return text.encode("latin-1", "replace").decode("utf-8", "replace")


def _user_reference(user_ref: tuple[str, str, Any] | None) -> dict[str, Any] | None:
    """MongoEngine's GenericReferenceField layout: ``{"_cls": ..., "_ref": DBRef(...)}``."""
    if user_ref is None:
        return None
    class_name, collection, primary_key = user_ref
    return {"_cls": class_name, "_ref": DBRef(collection, primary_key)}


def parse_user_agent(user_agent: str, accept_language: str = "") -> dict[str, str | None]:
    """Browser, version, platform, device and language of a User-Agent header (a new dict).

    ``language`` comes from the first Accept-Language tag (user agents stopped naming it).
    Parsed agents are remembered (a few thousand distinct strings), as traffic repeats them.
    """
    parsed = _PARSED_AGENTS.get(user_agent)
    if parsed is None:
        parsed = _parse_agent(user_agent)
        if len(user_agent) <= _MAX_REMEMBERED_AGENT_LENGTH:
            if len(_PARSED_AGENTS) >= _MAX_PARSED_AGENTS:
                _PARSED_AGENTS.clear()
            _PARSED_AGENTS[user_agent] = parsed
    language = accept_language.split(",", 1)[0].split(";", 1)[0].strip() or None
    return {**parsed, "language": language}


_PARSED_AGENTS: dict[str, dict[str, str | None]] = {}
_MAX_PARSED_AGENTS = 4096
_MAX_REMEMBERED_AGENT_LENGTH = 512


def _parse_agent(user_agent: str) -> dict[str, str | None]:
    result = parse_ua(user_agent) if user_agent else None
    browser = result.user_agent if result else None
    os = result.os if result else None
    device = result.device if result else None
    return {
        "browser": browser.family if browser else None,
        "version": _version(browser.major, browser.minor, browser.patch) if browser else None,
        "platform": os.family if os else None,
        "device": device.family if device else None,
        "string": user_agent,
    }


def _version(*parts: str | None) -> str | None:
    kept = [part for part in parts if part]
    return ".".join(kept) or None

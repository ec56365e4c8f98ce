"""Sending a stored request again through the app's test client (:meth:`Tracking.replay`).

Flask is imported only when a request is replayed. The record is read through the few fields
:class:`Replayable` names, so this module does not import the document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from .credentials import FILTERED
from .display import header_pairs

if TYPE_CHECKING:
    from werkzeug.test import TestResponse

__all__ = ["Replayable", "check_replayable", "replay_request", "resendable_headers"]

#: Headers never resent (the test client sets them). Stored bodies are decoded: a
#: Content-Encoding would no longer describe them.
_SKIPPED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "content-encoding"})


class Replayable(Protocol):
    """The fields of a stored record a replay reads (:class:`~flask_tracking.documents.Tracking`
    has them all)."""

    method: str | None
    path: str | None
    query_params: str | None
    request_headers: Any
    request_body: bytes | None
    request_body_size: int | None
    request_body_truncated: bool | None
    request_body_omitted: str | None


def resendable_headers(stored: Any, overrides: Any) -> list[tuple[str, str]]:
    """Stored headers fit to resend, with ``overrides`` (a mapping or pairs) replacing
    same-named ones: the ``FILTERED`` ones and Host, Content-Length, Transfer-Encoding and
    Content-Encoding are left out."""
    extra = list(overrides.items() if hasattr(overrides, "items") else overrides or ())
    replaced = {str(name).lower() for name, _ in extra} | _SKIPPED_HEADERS
    kept = [(k, v) for k, v in header_pairs(stored) if k.lower() not in replaced]
    return [(k, v) for k, v in kept if v != FILTERED] + extra


def check_replayable(record: Replayable, allow_truncated: bool) -> None:
    """Raise :class:`ValueError` when the stored request body is truncated, or was not
    recorded although the request had one, unless ``allow_truncated``."""
    if allow_truncated:
        return
    if record.request_body_truncated:
        raise ValueError(
            "The stored request body was truncated; the replay would not be faithful "
            "(pass allow_truncated=True to replay it anyway)."
        )
    if (
        record.request_body is None
        and record.request_body_omitted
        and record.request_body_size != 0
    ):
        raise ValueError(
            f"The request body was not recorded ({record.request_body_omitted}); the replay "
            "would not be faithful (pass allow_truncated=True to replay it anyway)."
        )


def replay_request(
    record: Replayable, *, allow_truncated: bool = False, **kwargs: Any
) -> TestResponse:
    """Re-issue ``record``'s request through ``flask.current_app.test_client()``: see
    :meth:`flask_tracking.documents.Tracking.replay`."""
    check_replayable(record, allow_truncated)
    from flask import current_app

    environ = {"flask_tracking.skip": True, **(kwargs.pop("environ_overrides", None) or {})}
    options: dict[str, Any] = {
        "method": record.method or "GET",
        "query_string": record.query_params or "",
        "headers": resendable_headers(record.request_headers, kwargs.pop("headers", None)),
        "environ_overrides": environ,
    }
    if "json" not in kwargs:
        options["data"] = bytes(record.request_body or b"")
    options.update(kwargs)
    path = options.pop("path", None)
    if path is None:
        path = quote(record.path or "/", safe="/:@!$&'()*+,;=")
        if path.startswith("//"):  # not a host: the client asked for this path ("//a/b")
            path = "/%2F" + path[2:]
    return current_app.test_client().open(path, **options)

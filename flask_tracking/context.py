"""What a view (or a hook, decorator or error handler) can call during a request.

:func:`add_data` adds custom data to the record, :func:`skip` leaves the request out, and
:func:`request_id` gives the id the record is stored under. They read the request's tracking
state, which the WSGI middleware put in the environ before Flask ran.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from flask import current_app, has_request_context, request

from .capture import ENVIRON_KEY, RequestState


def add_data(**values: Any) -> None:
    """Merge ``values`` into the request's custom data (``request._tracking_data``), stored in
    ``custom_data``: a key given again replaces the earlier value.

    Works from the view, ``before_request`` hooks, decorators and error handlers: anything
    that runs before the response is complete (the data is copied when the view is done and
    again after the error handlers ran). Raises :class:`RuntimeError` outside a request, and
    :class:`TypeError` when ``request._tracking_data`` already holds something else than a
    mapping.
    """
    current = _current_request("add_data")
    data = current.__dict__.get("_tracking_data")
    if data is None:
        current._tracking_data = dict(values)
    elif isinstance(data, MutableMapping):
        data.update(values)
    else:
        raise TypeError(
            "flask_tracking.add_data() merges into a dict, but request._tracking_data holds "
            f"a {type(data).__name__}; set it to a dict, or use only add_data()."
        )


def skip() -> None:
    """Do not record the current request (nothing is stored, whatever its outcome).

    Raises :class:`RuntimeError` outside a request; does nothing for a request that is not
    tracked anyway.
    """
    state = _state(_current_request("skip"))
    if state is not None:
        state.skipped = True


def request_id() -> str | None:
    """The id of the current request (stored in its record's ``request_id``): the valid
    incoming TRACKING_REQUEST_ID_HEADER, or one made for it. None outside a request, and for
    requests that are not tracked at all (TRACKING_EXCLUDE, TRACKING_INCLUDE,
    TRACKING_EXCLUDE_METHODS, TRACKING_HONOR_DNT)."""
    if not has_request_context():
        return None
    current = request._get_current_object()  # type: ignore[attr-defined]
    state = _state(current)
    if state is None:
        return None
    if state.request_id is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        # The extension is found through the app, not imported: it imports this module's
        # neighbours (the dashboard uses skip()), and an import back would make a circle.
        lookup = getattr(app.extensions.get("tracking"), "request_id_environ_key", None)
        key = lookup(app) if callable(lookup) else None
        return state.resolve_request_id(current.environ, key)
    return state.request_id


def _current_request(name: str) -> Any:
    if not has_request_context():
        raise RuntimeError(
            f"flask_tracking.{name}() was called outside a request: call it from a view, a "
            "request hook or an error handler (or inside app.test_request_context())."
        )
    return request._get_current_object()  # type: ignore[attr-defined]


def _state(current: Any) -> RequestState | None:
    state = current.environ.get(ENVIRON_KEY)
    return state if isinstance(state, RequestState) else None

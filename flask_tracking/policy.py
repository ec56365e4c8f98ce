"""Pure decisions about one request: record it? keep its bodies? keep its record?

No Flask globals and no I/O: every rule is precompiled in
:class:`~flask_tracking.config.TrackingConfig` and answered from plain values the caller passes in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import TrackingConfig

#: WSGI environ key that turns tracking off for one request (set by ``Tracking.replay()``).
SKIP_ENVIRON_KEY = "flask_tracking.skip"

#: :meth:`Policy.decide` answers.
SKIP, TRACK, TRACK_WITH_BODIES = 0, 1, 2


class Policy:
    """The recording rules of one app."""

    __slots__ = ("_always_bodies", "_config", "_filters_requests", "filters_outcomes")

    def __init__(self, config: TrackingConfig) -> None:
        self._config = config
        self._filters_requests = bool(config.exclude or config.exclude_methods)
        self._always_bodies = config.max_body_length > 0 and not config.exclude_body
        #: Whether :meth:`should_keep_record` can ever say no (else callers may skip it).
        self.filters_outcomes = bool(config.exclude_status_codes)

    def decide(self, environ: Mapping[str, Any]) -> int:
        """One call for the request path: :data:`SKIP`, :data:`TRACK` (without bodies) or
        :data:`TRACK_WITH_BODIES`."""
        if not self.should_track(environ):
            return SKIP
        if self._always_bodies or self.should_keep_bodies(environ):
            return TRACK_WITH_BODIES
        return TRACK

    def should_track(self, environ: Mapping[str, Any]) -> bool:
        """Whether to record this request at all, from its method and path alone."""
        if environ.get(SKIP_ENVIRON_KEY):
            return False
        if not self._filters_requests:
            return True
        config = self._config
        methods = config.exclude_methods
        if methods and environ.get("REQUEST_METHOD", "GET").upper() in methods:
            return False
        if config.exclude:
            return not any(pattern.match(wsgi_path(environ)) for pattern in config.exclude)
        return True

    def should_keep_bodies(self, environ: Mapping[str, Any]) -> bool:
        """Whether request and response bodies of this request may be stored."""
        config = self._config
        if config.max_body_length == 0:
            return False
        if not config.exclude_body:
            return True
        path = wsgi_path(environ)
        return not any(pattern.match(path) for pattern in config.exclude_body)

    def should_keep_record(self, status_code: int, execution_time_ms: float) -> bool:
        """Whether a finished request is stored: excluded statuses are kept only when slow."""
        config = self._config
        if status_code not in config.exclude_status_codes:
            return True
        minimum = config.min_execution_time_ms
        return minimum > 0 and execution_time_ms >= minimum


def wsgi_path(environ: Mapping[str, Any]) -> str:
    """The request path as Werkzeug's ``request.path`` gives it (UTF-8 decoded, leading "/")."""
    path = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    return "/" + path.lstrip("/")

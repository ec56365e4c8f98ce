"""Pure decisions about one request: record it? keep its bodies? keep its record?

No Flask globals and no I/O: every rule is precompiled in
:class:`~flask_tracking.config.TrackingConfig` and answered from plain values the caller passes in.
Rules on the view and blueprint (known only after routing) live in :mod:`flask_tracking.scope`.
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config imports record, which uses this module's WSGI helpers
    from .config import TrackingConfig

#: WSGI environ key that turns tracking off for one request (set by ``Tracking.replay()``).
SKIP_ENVIRON_KEY = "flask_tracking.skip"

#: :meth:`Policy.decide` answers.
SKIP, TRACK, TRACK_WITH_BODIES = 0, 1, 2


class Policy:
    """The recording rules of one app."""

    __slots__ = (
        "_always_bodies",
        "_config",
        "_filters_requests",
        "_sample_threshold",
        "filters_outcomes",
        "samples",
    )

    def __init__(self, config: TrackingConfig) -> None:
        self._config = config
        self._filters_requests = bool(
            config.exclude or config.exclude_methods or config.include or config.honor_dnt
        )
        self._always_bodies = config.max_body_length > 0 and not config.exclude_body
        # A request is sampled in when the first 64 bits of a hash of its id are below this;
        # None when every request is kept.
        self._sample_threshold = (
            None if config.sample_rate >= 1.0 else int(config.sample_rate * _HASH_SPACE)
        )
        #: Whether some requests are sampled out (then the request id is needed to decide).
        self.samples = self._sample_threshold is not None
        #: Whether :meth:`kept_sample_rate` can ever say no (else callers may skip it).
        self.filters_outcomes = bool(
            config.exclude_status_codes
            or config.only_errors
            or config.skip_errors
            or self._sample_threshold is not None
        )

    def decide(self, environ: Mapping[str, Any]) -> int:
        """One call for the request path: :data:`SKIP`, :data:`TRACK` (without bodies) or
        :data:`TRACK_WITH_BODIES`."""
        if not self.should_track(environ):
            return SKIP
        if self._always_bodies or self.should_keep_bodies(environ):
            return TRACK_WITH_BODIES
        return TRACK

    def should_track(self, environ: Mapping[str, Any]) -> bool:
        """Whether to record this request at all, from its method, path and opt-out headers
        alone: TRACKING_EXCLUDE_METHODS, TRACKING_EXCLUDE (always wins), TRACKING_INCLUDE,
        TRACKING_HONOR_DNT."""
        if environ.get(SKIP_ENVIRON_KEY):
            return False
        if not self._filters_requests:
            return True
        config = self._config
        methods = config.exclude_methods
        if methods and environ.get("REQUEST_METHOD", "GET").upper() in methods:
            return False
        if config.honor_dnt and (
            environ.get("HTTP_DNT", "").strip() == "1"
            or environ.get("HTTP_SEC_GPC", "").strip() == "1"
        ):
            return False
        if config.exclude or config.include:
            path = wsgi_path(environ)
            if any(pattern.match(path) for pattern in config.exclude):
                return False
            if config.include:
                return any(pattern.match(path) for pattern in config.include)
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

    def should_keep_record(self, status_code: int | None, execution_time_ms: float) -> bool:
        """Whether a finished request is stored: excluded statuses are kept only when slow."""
        config = self._config
        if status_code not in config.exclude_status_codes:
            return True
        minimum = config.min_execution_time_ms
        return minimum > 0 and execution_time_ms >= minimum

    def kept_sample_rate(
        self,
        status_code: int | None,
        execution_time_ms: float,
        raised: bool,
        request_id: str | None,
    ) -> float | None:
        """None when a finished request is not stored, else the ``sample_rate`` to store with it.
        ``status_code`` is None when the app gave no response (it raised a SystemExit or
        KeyboardInterrupt: ``raised``).

        Every rule must agree: the status-code rule (:meth:`should_keep_record`),
        TRACKING_ONLY_ERRORS / TRACKING_SKIP_ERRORS (``raised``: an unhandled exception), then
        sampling. Errors (status >= 500 or ``raised``) and requests slower than
        TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS are never sampled out and carry 1.0; the others
        are kept when :meth:`sampled_in` and carry the configured rate.
        """
        config = self._config
        if not self.should_keep_record(status_code, execution_time_ms):
            return None
        if raised:
            if config.skip_errors:
                return None
        elif config.only_errors:
            return None
        if self._sample_threshold is None or raised or (status_code or 0) >= 500:
            return 1.0
        slow = config.sample_keep_slower_than_ms
        if slow is not None and execution_time_ms > slow:
            return 1.0
        return config.sample_rate if self.sampled_in(request_id) else None

    def sampled_in(self, request_id: str | None) -> bool:
        """Whether an ordinary request with this id is kept by sampling. The same id gets the
        same answer in every process and service that uses the same rate."""
        threshold = self._sample_threshold
        if threshold is None:
            return True
        return request_id is not None and sample_point(request_id) < threshold


_HASH_SPACE = 1 << 64


def sample_point(request_id: str) -> int:
    """Where a request id falls in ``[0, 2**64)``: the first 64 bits of its BLAKE2b hash, so
    ids that differ by one character (``req-1``, ``req-2``) still spread evenly."""
    digest = blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def wsgi_path(environ: Mapping[str, Any]) -> str:
    """The request path as Werkzeug's ``request.path`` gives it (UTF-8 decoded, leading "/")."""
    return "/" + decode_wsgi(environ.get("PATH_INFO") or "/").lstrip("/")


def decode_wsgi(text: str) -> str:
    """WSGI strings carry bytes as latin-1; give back the UTF-8 text they encode."""
    if text.isascii():
        return text
    return text.encode("latin-1", "replace").decode("utf-8", "replace")

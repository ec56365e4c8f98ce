"""The Flask extension: wires config, capture, policy and the background writer into an app.

This is the only module that touches Flask hooks. Every hook runs inside :meth:`Tracking._guard`,
so nothing the tracker does can raise into the app; an error is logged (rate-limited) and
counted in ``stats()["capture_errors"]``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, got_request_exception, request

from .capture import (
    ENVIRON_KEY,
    RequestState,
    TrackingMiddleware,
    snapshot_request,
    tee_response_body,
)
from .config import TrackingConfig, load_config
from .logs import RateLimitedLog
from .policy import Policy
from .record import status_code_of
from .redact import Redactor, anonymize_ip
from .signals import record_dropped, record_written
from .store import BeforeSave, MongoSink, queue_item
from .writer import BatchWriter

if TYPE_CHECKING:
    from blinker import NamedSignal
    from pymongo.database import Database

#: Fixed part of the estimated in-queue size of a record, in bytes (dicts, strings, numbers).
RECORD_OVERHEAD_BYTES = 2048


class _AppTracking:
    """Everything one app's tracking needs at run time."""

    def __init__(self, config: TrackingConfig, writer: BatchWriter) -> None:
        self.config = config
        self.policy = Policy(config)
        self.writer = writer
        self.capture_errors = 0
        self.lock = threading.Lock()


class Tracking:
    """Records every request and response of a Flask app into MongoDB.

    ``Tracking(app)`` or, in an app factory, ``tracking = Tracking()`` then
    ``tracking.init_app(app)``. One instance may serve several apps; each keeps its own
    configuration, queue and writer thread. Install it early (right after creating the app),
    and after compression extensions so stored bodies are uncompressed.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._apps: weakref.WeakKeyDictionary[Flask, _AppTracking] = weakref.WeakKeyDictionary()
        self._before_save: list[BeforeSave] = []
        self._log = RateLimitedLog()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``TRACKING_*`` config of ``app`` and start tracking its requests.

        Raises :class:`ValueError` for a bad setting and :class:`RuntimeError` when the app
        already has a Tracking extension.
        """
        if "tracking" in app.extensions:
            raise RuntimeError(
                f"Tracking is already registered on app {app.name!r}. Call init_app once per "
                "app (create one Tracking, or one per app, and initialise each app once)."
            )
        config = load_config(app.config)
        _connect_if_configured(config)
        sink = MongoSink(
            _database_getter(config.db_alias),
            capped_size_bytes=config.table_size_bytes,
            capped_max_documents=config.max_documents,
            max_record_bytes=config.max_record_bytes,
            write_timeout_seconds=config.write_timeout_seconds,
            redactor=config.redactor,
            before_save=lambda: self._before_save,
        )
        writer = BatchWriter(
            sink,
            max_queue_records=config.queue_max_records,
            max_queue_bytes=config.queue_max_bytes,
            batch_max_records=config.batch_max_records,
            flush_interval_seconds=config.flush_interval_seconds,
            retry_initial_backoff_seconds=config.retry_initial_backoff_seconds,
            retry_max_backoff_seconds=config.retry_max_backoff_seconds,
            shutdown_timeout_seconds=config.shutdown_timeout_seconds,
            on_written=_signal_sender(app, record_written, lambda count: {"count": count}),
            on_dropped=_signal_sender(
                app, record_dropped, lambda reason, count: {"reason": reason, "count": count}
            ),
            name=f"flask-tracking-writer[{app.name}]",
        )
        tracked = _AppTracking(config, writer)
        self._apps[app] = tracked
        app.extensions["tracking"] = self
        app.wsgi_app = TrackingMiddleware(  # type: ignore[method-assign]
            app.wsgi_app,
            tracked.policy,
            config.max_body_length,
            finish=lambda state: self._finish(tracked, state),
            guard=lambda: self._guard(tracked),
        )
        app.after_request(lambda response: self._after_request(tracked, response))
        app.teardown_request(lambda error: self._teardown_request(tracked, error))
        got_request_exception.connect(
            lambda sender, exception, **extra: self._note_exception(tracked, exception),
            app,
            weak=False,
        )

    def before_save(self, hook: BeforeSave) -> BeforeSave:
        """Register ``hook(document) -> document | None``, run on the writer thread.

        Return the document (changed or not) to store it, or None to drop it. A hook that
        raises drops the record (counted as ``dropped_hook_error``), never stores it unchecked.
        Usable as a decorator.
        """
        self._before_save.append(hook)
        return hook

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every record queued before the call is written or dropped (True), or
        ``timeout`` seconds passed (False). Never raises because the database is down."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        for tracked in list(self._apps.values()):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = tracked.writer.flush(remaining) and done
        return done

    def stats(self, app: Flask | None = None) -> dict[str, int]:
        """Counters of ``app`` (default: the current app, else all apps of this instance summed).

        Keys: enqueued, written, pending, dropped_<reason> for each reason (queue_full,
        db_error, encode_error, hook_error, ...) and capture_errors.
        """
        apps = [self._tracked_for(app)] if app is not None or _has_app() else self._apps.values()
        totals: dict[str, int] = {}
        for tracked in list(apps):
            counters = tracked.writer.stats()
            counters["capture_errors"] = tracked.capture_errors
            for key, value in counters.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def _tracked_for(self, app: Flask | None) -> _AppTracking:
        from flask import current_app

        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._apps[target]
        except KeyError:
            raise RuntimeError(f"Tracking was not initialised on app {target.name!r}.") from None

    @contextmanager
    def _guard(self, tracked: _AppTracking) -> Iterator[None]:
        """Swallow and count any error of the tracker's own code (never the app's)."""
        try:
            yield
        except Exception:
            with tracked.lock:
                tracked.capture_errors += 1
            self._log.warning(
                "capture_error", "flask_tracking: error while tracking a request", exc_info=True
            )

    def _after_request(self, tracked: _AppTracking, response: Response) -> Response:
        with self._guard(tracked):
            state = request.environ.get(ENVIRON_KEY)
            if state is not None:
                tee_response_body(state, response, tracked.config.max_body_length)
        return response

    def _teardown_request(self, tracked: _AppTracking, error: BaseException | None) -> None:
        with self._guard(tracked):
            state: RequestState | None = request.environ.get(ENVIRON_KEY)
            if state is None:
                return
            if error is not None:
                state.note_exception(error)
            snapshot_request(
                state,
                request._get_current_object(),  # type: ignore[attr-defined]
                g.get("_login_user"),
                tracked.config.max_custom_data_bytes,
            )

    def _note_exception(self, tracked: _AppTracking, exception: BaseException) -> None:
        with self._guard(tracked):
            state: RequestState | None = request.environ.get(ENVIRON_KEY)
            if state is not None:
                state.note_exception(exception)

    def _finish(self, tracked: _AppTracking, state: RequestState) -> None:
        """Decide whether to keep a finished request, and queue it (request thread, cheap)."""
        if state.exception is not None and status_code_of(state.status) < 500:
            state.status = "500 INTERNAL SERVER ERROR"
        config = tracked.config
        if not tracked.policy.should_keep_record(
            status_code_of(state.status), state.execution_time or 0.0
        ):
            return
        if config.redactor is not None:
            _scrub_request_side(state, config.redactor)
        if config.anonymize_ip and state.request is not None:
            state.request["ip"] = anonymize_ip(state.request["ip"])
        tracked.writer.submit(queue_item(state), _estimated_size(state))


def _scrub_request_side(state: RequestState, redactor: Redactor) -> None:
    """Filter headers, query string and custom data on the request thread, on our copies.

    Bodies are scrubbed on the writer thread, before any hook or the database sees them:
    parsing them here would cost the request more than everything else the tracker does.
    """
    fields = state.request
    if fields is not None:
        fields["environ_headers"] = redactor.headers(fields["environ_headers"])
        fields["query_string"] = redactor.query(fields["query_string"])
    state.response_headers = redactor.headers(state.response_headers)
    if state.custom_data is not None:
        state.custom_data = redactor.data(state.custom_data)


def _estimated_size(state: RequestState) -> int:
    """Rough in-memory size of a queued record, for the queue's byte bound."""
    size = RECORD_OVERHEAD_BYTES + state.custom_data_size
    for capture in (state.request_body, state.response_body):
        if capture is not None:
            size += len(capture.buffer)
    if state.request is not None:
        size += sum(len(key) + len(value) for key, value in state.request["environ_headers"])
    return size


def _signal_sender(
    app: Flask, signal: NamedSignal, keywords: Callable[..., dict[str, Any]]
) -> Callable[..., None]:
    """A writer callback that sends ``signal`` from ``app`` (held weakly: no cycle)."""
    app_ref = weakref.ref(app)

    def send(*args: Any) -> None:
        sender = app_ref()
        if sender is not None and signal.receivers:
            signal.send(sender, **keywords(*args))

    return send


def _has_app() -> bool:
    from flask import has_app_context

    return has_app_context()


def _database_getter(alias: str) -> Any:
    def get_database() -> Database[Any]:
        from mongoengine.connection import get_db

        return get_db(alias)

    return get_database


def _connect_if_configured(config: TrackingConfig) -> None:
    """Connect TRACKING_DB_ALIAS to TRACKING_MONGODB_URI unless it is connected already."""
    if config.mongodb_uri is None:
        return
    from mongoengine.connection import _connection_settings, connect

    if config.db_alias in _connection_settings:
        return
    connect(
        host=config.mongodb_uri,
        alias=config.db_alias,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=2000,
        connectTimeoutMS=2000,
        socketTimeoutMS=int(config.write_timeout_seconds * 1000),
        tz_aware=False,
    )

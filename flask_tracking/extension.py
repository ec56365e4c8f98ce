"""The Flask extension: wires config, capture, policy and the background writer into an app.

This is the only module that touches Flask hooks: a WSGI middleware around ``app.wsgi_app``, a
wrapper around ``app.process_response`` (it runs once Flask ran every ``after_request`` hook and
saved the session), the ``got_request_exception`` signal and, for the errors Flask sends no
signal for (SystemExit, KeyboardInterrupt), a wrapper around ``app.should_ignore_error`` (a
``teardown_request`` function on a Flask without that method: 3.2 deprecates it).
Each catches every error of the tracker's own code, so nothing the tracker does can raise into
the app; such an error is logged (rate-limited) and counted in ``stats()["capture_errors"]``.

Who decides what, on the request thread: the middleware applies the path, method and
Do-Not-Track rules before Flask runs (a request they exclude costs next to nothing); the
response hook (or the exception signal) applies the view and blueprint rules and the
``skip_if`` predicates once the request is routed, and stops copying an excluded request; the
finisher applies the outcome rules (status codes, errors, sampling) and queues the record.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    g,
    got_request_exception,
    has_request_context,
    request,
)
from werkzeug.exceptions import HTTPException

from .aggregate import RollupAggregator, Sample
from .capture import (
    ENVIRON_KEY,
    RequestState,
    TrackingMiddleware,
    note_signed_out,
    snapshot_request,
    tee_response_body,
)
from .cli import tracking_cli
from .config import TrackingConfig, load_config
from .connection import connect_if_configured, database_getter
from .dbactivity import ignore_collection, register, watch_sqlalchemy
from .logs import RateLimitedLog
from .policy import Policy
from .record import prepare_user_agent_parser, scrub_request_side, status_code_of
from .scope import EXCLUDE, INCLUDE, EndpointVerdicts, View, mark_view
from .signals import record_dropped, record_written
from .storage import COLLECTION_NAME
from .store import BeforeSave, MongoSink, RollupSink
from .writer import BatchWriter

if TYPE_CHECKING:
    from blinker import NamedSignal
    from werkzeug.routing import Map

    from .dashboard import AccessCheck
    from .redact import Redactor

#: Fixed part of the estimated in-queue size of a record, in bytes (dicts, strings, numbers).
RECORD_OVERHEAD_BYTES = 4096
#: What Python adds to each (name, value) pair a queued record keeps: two string objects and
#: a slot of a dict or list, in bytes.
ITEM_OVERHEAD_BYTES = 128

#: The dashboard's answer (and log line) while it has no access check.
NO_DASHBOARD_ACCESS = (
    "The tracking dashboard has no access check yet, so it serves no record. Register one: "
    "@tracking.dashboard_access on a function returning True for the users allowed in (such as "
    "current_user.is_authenticated), or set TRACKING_DASHBOARD_PUBLIC = True to open it to "
    "anybody on purpose."
)

#: ``predicate(request) -> bool``: True leaves the request out (see :meth:`Tracking.skip_if`).
SkipPredicate = Callable[[Request], bool]


class _AppTracking:
    """Everything one app's tracking needs at run time."""

    def __init__(
        self,
        config: TrackingConfig,
        writer: BatchWriter,
        verdicts: EndpointVerdicts,
        rollups: RollupAggregator | None = None,
    ) -> None:
        self.config = config
        self.max_body_length = config.max_body_length
        self.max_custom_data_bytes = config.max_custom_data_bytes
        self.policy = Policy(config)
        #: Environ key of the incoming request-id header, or None.
        self.request_id_key = config.request_id_environ_key
        self.verdicts = verdicts
        self.writer = writer
        #: Per-minute aggregates of every request past the path, method and view rules.
        self.rollups = rollups
        self.capture_errors = 0
        self.lock = threading.Lock()
        #: The got_request_exception receiver, connected weakly: it lives as long as the app.
        self.on_exception: Callable[..., None] | None = None
        #: Flask-Login's user_logged_out receiver (when Flask-Login is installed), the same way.
        self.on_sign_out: Callable[..., None] | None = None


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
        self._skip_if: list[SkipPredicate] = []
        self._blueprint_rules: dict[object, str] = {}
        self._dashboard_access: AccessCheck | None = None
        self._warned_no_dashboard_access = False
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
        if config.db_activity:
            # Before connecting: the client TRACKING_MONGODB_URI makes (which the app may use
            # too) is then watched like any client created after init_app.
            register()
            watch_sqlalchemy()
        get_database = database_getter(config.db_alias, connect_if_configured(config))
        if config.redactor is not None:
            _learn_rules_on_the_writer(config.redactor, app.url_map)
        prepare_user_agent_parser()  # now, not while the app serves its first requests
        if config.db_activity:
            _ignore_own_collection(config.db_alias)
        sink = MongoSink(
            get_database,
            capped_size_bytes=config.table_size_bytes,
            capped_max_documents=config.max_documents,
            storage_mode=config.storage,
            retention_seconds=config.retention_seconds,
            max_record_bytes=config.max_record_bytes,
            write_timeout_seconds=config.write_timeout_seconds,
            redactor=config.redactor,
            anonymize_ip=config.anonymize_ip,
            before_save=lambda: self._before_save,
            omitted_fields=config.omitted_fields,
            request_id_key=config.request_id_environ_key,
            db_repeat_threshold=config.db_repeat_threshold,
            indexes=config.indexes,
        )
        rollups = None
        if config.rollups:
            rollups = RollupAggregator(
                RollupSink(
                    get_database,
                    retention_days=config.rollup_retention_days,
                    write_timeout_seconds=config.write_timeout_seconds,
                    collection_name=config.rollup_collection,
                )
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
            rollups=rollups,
        )
        verdicts = EndpointVerdicts(app, self._blueprint_rules, config.track_by_default)
        tracked = _AppTracking(config, writer, verdicts, rollups)
        verdicts.on_error = lambda: self._count_error(tracked)
        self._apps[app] = tracked
        app.extensions["tracking"] = self
        if tracking_cli.name in app.cli.commands:  # the app's own command stays
            logging.getLogger("flask_tracking").warning(
                "flask_tracking: app %r already has a %r command; the tracking commands are not "
                "registered (add them under another name: app.cli.add_command(tracking_cli, "
                "name=...))",
                app.name,
                tracking_cli.name,
            )
        else:
            app.cli.add_command(tracking_cli)
        app.wsgi_app = TrackingMiddleware(  # type: ignore[method-assign]
            app.wsgi_app,
            tracked.policy,
            config.max_body_length,
            finish=self._finisher(tracked),
            on_error=lambda: self._count_error(tracked),
            request_id_key=config.request_id_environ_key,
            request_id_response_header=config.request_id_response_header,
            watch_db=config.db_activity,
            flush_before_exit=self._flush_before_exit(tracked),
        )
        # Wrapped rather than registered as an after_request hook: Flask checks every hook for
        # a coroutine on every request, and the response is then the one that is sent, after
        # every hook of the app (whatever their order of registration) and the session.
        app.process_response = self._response_hook(  # type: ignore[method-assign]
            tracked, app.process_response
        )
        tracked.on_exception = lambda sender, exception, **extra: self._on_exception(
            tracked, exception
        )
        got_request_exception.connect(tracked.on_exception, app)
        # Flask sends that signal for an Exception only; it asks should_ignore_error about any
        # error that escaped the view (never on a request that did not raise), before it pops
        # the request context. Flask 3.2 deprecates that method (the attribute is None; set,
        # it would warn): there a teardown function, which gets the same error, is called.
        if app.should_ignore_error is None:
            app.teardown_request(self._teardown_hook(tracked))
        else:
            app.should_ignore_error = self._error_hook(  # type: ignore[method-assign,assignment]
                tracked, app.should_ignore_error
            )
        self._watch_sign_outs(tracked, app)
        # The writer serves this app only: once the app is garbage collected, it writes what
        # is pending and its thread ends (stop_soon takes no lock: safe from any thread).
        weakref.finalize(app, writer.stop_soon).atexit = False
        if config.dashboard:
            self._register_dashboard(app, config)

    def dashboard_access(self, check: AccessCheck) -> AccessCheck:
        """Register the dashboard's access check (for TRACKING_DASHBOARD = True).

        ``check()`` runs before every dashboard request, in its request context: True lets
        it in, a Response is sent instead (a redirect to the login page), anything else is
        answered 403. Register it before or after ``init_app``; until one is registered the
        dashboard answers every request 403, saying how to register one (unless
        TRACKING_DASHBOARD_PUBLIC is True). Usable as a decorator.
        """
        if not callable(check):
            raise TypeError(f"dashboard_access takes a callable, not {check!r}")
        self._dashboard_access = check
        return check

    def _register_dashboard(self, app: Flask, config: TrackingConfig) -> None:
        from .dashboard import make_blueprint

        public = config.dashboard_public
        app.register_blueprint(
            make_blueprint(
                access=lambda: self._run_dashboard_access(public),
                public=public,
                url_prefix=config.dashboard_url_prefix,
                default_window=config.dashboard_default_window,
                live_interval_seconds=config.dashboard_live_interval_seconds,
            )
        )

    def _run_dashboard_access(self, public: bool) -> Any:
        """The registered access check's verdict; without one, True for a public dashboard,
        else a 403 answer saying how to register one (logged once)."""
        check = self._dashboard_access
        if check is not None:
            return check()
        if public:
            return True
        if not self._warned_no_dashboard_access:
            self._warned_no_dashboard_access = True
            logging.getLogger("flask_tracking").warning(NO_DASHBOARD_ACCESS)
        return Response(NO_DASHBOARD_ACCESS, status=403, mimetype="text/plain")

    def include(self, view: View) -> View:
        """Decorator: track this view, also with TRACKING_DEFAULT = "exclude" or inside an
        excluded blueprint. Works above or below ``@app.route`` (it marks the function)."""
        return mark_view(view, INCLUDE)

    def exclude(self, view: View) -> View:
        """Decorator: never record requests to this view, even inside an included blueprint.
        Works above or below ``@app.route`` (it marks the function). Path rules still come
        first: TRACKING_EXCLUDE always wins over ``@tracking.include``."""
        return mark_view(view, EXCLUDE)

    def include_blueprint(self, blueprint: Blueprint | str) -> None:
        """Track every view of ``blueprint`` (a Blueprint, or its registered name, dotted when
        nested), unless the view itself is marked ``@tracking.exclude``."""
        self._set_blueprint_rule(blueprint, INCLUDE)

    def exclude_blueprint(self, blueprint: Blueprint | str) -> None:
        """Record no request to a view of ``blueprint`` (a Blueprint, or its registered name),
        unless the view itself is marked ``@tracking.include``."""
        self._set_blueprint_rule(blueprint, EXCLUDE)

    def skip_if(self, predicate: SkipPredicate) -> SkipPredicate:
        """Register ``predicate(request) -> bool``; a request for which it returns True is not
        recorded (an opt-out cookie, a header). Runs after the view, on the request thread, for
        tracked requests only: keep it cheap. One that raises counts as a capture error and
        the request is not recorded. Usable as a decorator."""
        self._skip_if.append(predicate)
        return predicate

    def _set_blueprint_rule(self, blueprint: Blueprint | str, rule: str) -> None:
        if not isinstance(blueprint, (Blueprint, str)) or not blueprint:
            raise TypeError(f"expected a Blueprint or a blueprint name, got {blueprint!r}")
        self._blueprint_rules[blueprint] = rule
        for tracked in list(self._apps.values()):
            tracked.verdicts.clear()

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

    def close(self, timeout: float | None = None) -> bool:
        """Write what is pending and stop the writer of every app of this instance.

        Waits at most ``timeout`` seconds in all (None: each app's
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS); records still pending then are counted as
        ``dropped_shutdown``. Returns True when nothing had to be dropped. Afterwards no
        thread of the tracker runs; the apps keep answering, and their later requests are
        counted as ``dropped_shutdown`` instead of being recorded. Idempotent; never raises.
        The writers are all told to stop first, so that they drain at once.
        """
        deadlines = [
            (tracked.writer, tracked.writer.begin_shutdown(timeout))
            for tracked in list(self._apps.values())
        ]
        done = True
        for writer, deadline in deadlines:
            done = writer.shutdown(max(0.0, deadline - time.monotonic())) and done
        return done

    def stats(self, app: Flask | None = None) -> dict[str, int]:
        """Counters of ``app`` (default: the current app, else all apps of this instance summed).

        Keys: enqueued, written, pending, dropped_<reason> for each reason (queue_full,
        db_error, encode_error, hook_error, ...) and capture_errors; with rollups on, also
        rollup_requests (requests counted into rollups), rollup_writes (rollup updates
        written), rollup_retries (updates to try again after a failed write), rollup_dropped
        (updates the server refused) and rollup_pending.
        """
        apps = [self._tracked_for(app)] if app is not None or _has_app() else self._apps.values()
        totals: dict[str, int] = {}
        for tracked in list(apps):
            counters = tracked.writer.stats()
            counters["capture_errors"] = tracked.capture_errors
            for key, value in counters.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def config_of(self, app: Flask) -> TrackingConfig | None:
        """The validated settings this instance tracks ``app`` with (read from its
        ``TRACKING_*`` keys at :meth:`init_app`); None when it does not track ``app``."""
        tracked = self._apps.get(app)
        return None if tracked is None else tracked.config

    def request_id_environ_key(self, app: Flask) -> str | None:
        """The WSGI environ key of the incoming request-id header ``app`` is tracked with
        (``TRACKING_REQUEST_ID_HEADER``, e.g. ``HTTP_X_REQUEST_ID``); None when there is none,
        or when this instance does not track ``app``. :func:`flask_tracking.request_id` reads
        an incoming id through it."""
        tracked = self._apps.get(app)
        return None if tracked is None else tracked.request_id_key

    def _tracked_for(self, app: Flask | None) -> _AppTracking:
        from flask import current_app

        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._apps[target]
        except KeyError:
            raise RuntimeError(f"Tracking was not initialised on app {target.name!r}.") from None

    def _count_error(self, tracked: _AppTracking) -> None:
        """Count and log (rate-limited) an error of the tracker's own code; never re-raise."""
        with tracked.lock:
            tracked.capture_errors += 1
        self._log.warning(
            "capture_error", "flask_tracking: error while tracking a request", exc_info=True
        )

    def _response_hook(
        self,
        tracked: _AppTracking,
        process_response: Callable[..., Response],
    ) -> Callable[..., Response]:
        """``app.process_response`` wrapped: once Flask has run the ``after_request`` hooks and
        saved the session, apply the view, blueprint and ``skip_if`` rules, then copy what the
        request context knows and tee the body of the response that is sent. Its arguments
        are passed on as they came: ``(response)``, or ``(ctx, response)`` from Flask 3.2."""
        max_body_length = tracked.max_body_length
        verdicts = tracked.verdicts.cache
        resolve = tracked.verdicts.resolve_and_cache
        predicates = self._skip_if

        def tracked_process_response(*args: Any) -> Response:
            response = process_response(*args)
            try:
                current = request._get_current_object()  # type: ignore[attr-defined]
                state: RequestState | None = current.environ.get(ENVIRON_KEY)
                if state is None or state.skipped:
                    return response
                rule = current.url_rule  # None: no view matched; the path rules decided
                if rule is not None:
                    endpoint = rule.endpoint
                    tracked_view = verdicts.get(endpoint)
                    if not (resolve(endpoint) if tracked_view is None else tracked_view):
                        state.skipped = True
                        return response
                if predicates and self._skipped_by_predicate(tracked, state, current):
                    return response
                try:
                    self._snapshot(tracked, state, current)
                except Exception:  # counted; the response's body is kept all the same
                    self._count_error(tracked)
                tee_response_body(state, response, max_body_length)
            except Exception:
                self._count_error(tracked)
            return response

        return tracked_process_response

    def _error_hook(
        self,
        tracked: _AppTracking,
        should_ignore_error: Callable[[BaseException | None], bool],
    ) -> Callable[[BaseException | None], bool]:
        """``app.should_ignore_error`` wrapped, its answer unchanged: for a BaseException that
        is no Exception (SystemExit: a view's sys.exit, gunicorn's worker timeout;
        KeyboardInterrupt), the view rules apply and the request context is copied, as
        :meth:`_on_exception` does for an Exception."""

        def tracked_should_ignore_error(error: BaseException | None) -> bool:
            if not isinstance(error, Exception) and error is not None and has_request_context():
                self._on_exception(tracked, error)
            return should_ignore_error(error)

        return tracked_should_ignore_error

    def _teardown_hook(self, tracked: _AppTracking) -> Callable[[BaseException | None], None]:
        """What :meth:`_error_hook` does, as a ``teardown_request`` function (Flask calls it
        with the error that escaped the request, if any, before it pops the context)."""

        def tracked_teardown(error: BaseException | None) -> None:
            if error is not None and not isinstance(error, Exception):
                self._on_exception(tracked, error)

        return tracked_teardown

    def _watch_sign_outs(self, tracked: _AppTracking, app: Flask) -> None:
        """Connect Flask-Login's ``user_logged_out`` signal once, when the app uses Flask-Login
        (it is imported; never imported here): a request that signs its user out is recorded
        with that user, not as anonymous."""
        if tracked.on_sign_out is not None:
            return
        user_logged_out = getattr(sys.modules.get("flask_login"), "user_logged_out", None)
        if user_logged_out is None:
            return
        tracked.on_sign_out = lambda sender, user=None, **extra: self._on_sign_out(tracked, user)
        user_logged_out.connect(tracked.on_sign_out, app)

    def _on_sign_out(self, tracked: _AppTracking, user: Any) -> None:
        try:
            current = request._get_current_object()  # type: ignore[attr-defined]
            state: RequestState | None = current.environ.get(ENVIRON_KEY)
            if state is not None and not state.skipped:
                note_signed_out(state, user)
        except Exception:
            self._count_error(tracked)

    def _on_exception(self, tracked: _AppTracking, exception: BaseException) -> None:
        """got_request_exception (and :meth:`_error_hook`): no response of the app's will be
        processed (in testing or debug mode, or after a SystemExit or KeyboardInterrupt)."""
        try:
            current = request._get_current_object()  # type: ignore[attr-defined]
            state: RequestState | None = current.environ.get(ENVIRON_KEY)
            if state is None:
                return
            if not _untrapped_http_error(exception):
                state.note_exception(exception)
            elif state.http_error is None:
                state.http_error = exception  # an exception unless answered (see finish)
            if state.skipped:
                return
            rule = current.url_rule
            if rule is not None and not tracked.verdicts.tracks(rule.endpoint):
                state.skipped = True
                return
            if self._skip_if and self._skipped_by_predicate(tracked, state, current):
                return
            self._snapshot(tracked, state, current)
        except Exception:
            self._count_error(tracked)

    def _skipped_by_predicate(
        self, tracked: _AppTracking, state: RequestState, current: Request
    ) -> bool:
        """Run the ``skip_if`` predicates once per request; True (and the state marked
        skipped) when one says so. A predicate that raises counts as a capture error and skips
        the request: an opt-out that cannot be checked is honoured."""
        if state.predicates_passed:  # after an exception, the signal ran them already
            return False
        for predicate in self._skip_if:
            try:
                skip = predicate(current)
            except Exception:
                self._count_error(tracked)
                skip = True
            if skip:
                state.skipped = True
                return True
        state.predicates_passed = True
        return False

    def _snapshot(self, tracked: _AppTracking, state: RequestState, current: Request) -> None:
        if state.snapshot_failed:  # counted once already (after an exception it runs twice)
            return
        try:
            login_user = session_user_id = None
            if "flask_login" in sys.modules:  # never load a user: read the one the app loaded
                login_user = g._get_current_object().get("_login_user")
                session_user_id = _session_user_id  # read only when needed
                if tracked.on_sign_out is None:  # Flask-Login imported after init_app
                    self._watch_sign_outs(tracked, current_app._get_current_object())  # type: ignore[attr-defined]
            snapshot_request(
                state, current, login_user, tracked.max_custom_data_bytes, session_user_id
            )
        except Exception:
            state.snapshot_failed = True
            raise

    def _flush_before_exit(self, tracked: _AppTracking) -> Callable[[], None]:
        """Write what is queued, for at most TRACKING_SHUTDOWN_TIMEOUT_SECONDS: the middleware
        calls it once the server closed the response of a request served in a child forked for
        it, which ends without running exit hooks. Records not written by then are lost with
        the child: logged (rate-limited) with their number. Never raises."""
        writer, timeout = tracked.writer, tracked.config.shutdown_timeout_seconds

        def flush() -> None:
            try:
                if not writer.flush(timeout):
                    self._log.warning(
                        "forked_child_flush",
                        "flask_tracking: %d records were not written within "
                        "TRACKING_SHUTDOWN_TIMEOUT_SECONDS (%s s) before the forked child "
                        "serving the request exits; they are lost",
                        writer.stats()["pending"],
                        timeout,
                    )
            except Exception:
                self._count_error(tracked)

        return flush

    def _finisher(self, tracked: _AppTracking) -> Callable[[RequestState], None]:
        """The middleware's ``finish``: keep the finished request or not, and queue it.

        It runs on the request thread and does little: it hands the rollups their sample,
        applies the outcome rules, filters the secrets of the headers, the query string and the
        custom data by their names (on the tracker's own copies) and queues the record.
        Everything else (bodies' redaction, credentials by their look, header names, user
        agent, encoding) happens on the writer thread, before any hook or the database sees
        the record.
        """
        policy, writer, request_id_key = tracked.policy, tracked.writer, tracked.request_id_key
        redactor = tracked.config.redactor
        rollups = tracked.rollups

        def finish(state: RequestState) -> None:
            try:
                if state.skipped:
                    return
                http_error = state.http_error
                if http_error is not None and status_code_of(state.status) != getattr(
                    http_error, "code", None
                ):
                    state.note_exception(http_error)  # not answered with its page
                if rollups is not None:  # every request past the rules, kept or not
                    rollups.add(_rollup_sample(state))
                request_body, response_body = state.request_body, state.response_body
                if (request_body is not None and request_body.failed) or (
                    response_body is not None and response_body.failed
                ):
                    self._count_error(tracked)  # a body copy failed; the record keeps the rest
                if policy.filters_outcomes:
                    sample_rate = policy.kept_sample_rate(
                        status_code_of(state.status),
                        state.execution_time or 0.0,
                        state.exception is not None,
                        state.resolve_request_id(state.environ or {}, request_id_key)
                        if policy.samples
                        else None,
                    )
                    if sample_rate is None:
                        if rollups is not None:
                            writer.ensure_started()
                        return
                    state.sample_rate = sample_rate
                if redactor is not None:
                    scrub_request_side(state, redactor)
                writer.submit(state, _estimated_size(state))
            except Exception:
                self._count_error(tracked)

        return finish


def _untrapped_http_error(error: BaseException) -> bool:
    """Whether ``error`` is an HTTP error that Flask answers with its own page (``abort()``,
    a 404, a 405) when its handling sees it: no exception of the app's if that page is the
    answer. Flask sends ``got_request_exception`` only for the errors it does not handle, HTTP
    ones among them when the app traps them (``TRAP_HTTP_EXCEPTIONS``) or when one escapes its
    handling (raised by an ``after_request`` function or an error handler: answered 500); an
    extension that answers errors itself (flask-restx) sends it for every error it answers."""
    return isinstance(error, HTTPException) and not current_app.trap_http_exception(error)


def _rollup_sample(state: RequestState) -> Sample:
    """What the rollups need of a finished request (see :data:`~flask_tracking.aggregate.
    Sample`): copied as one tuple, folded on the writer thread."""
    request_body, response_body = state.request_body, state.response_body
    return (
        state.timestamp,
        state.endpoint,
        (state.environ or _NO_ENVIRON).get("REQUEST_METHOD"),
        state.status,
        state.execution_time,
        state.exception is not None,
        0 if request_body is None else request_body.size,
        0 if response_body is None else response_body.size,
    )


_NO_ENVIRON: dict[str, Any] = {}


def _estimated_size(state: RequestState) -> int:
    """In-memory size of a queued record, for the queue's byte bound: every byte it holds
    (each string of the environ copy: all headers, the path and the query string, the keys
    counted once per layout by :func:`~flask_tracking.capture.snapshot_environ`; the response
    headers; the bodies; the custom data; the exception), each string with what Python adds to
    it, and a fixed allowance for the rest."""
    size = RECORD_OVERHEAD_BYTES + state.custom_data_size + len(state.exception or "")
    for capture in (state.request_body, state.response_body):
        if capture is not None:
            size += len(capture.buffer)
    environ = state.environ or _NO_ENVIRON
    headers = state.response_headers
    size += (len(environ) + len(headers)) * ITEM_OVERHEAD_BYTES + state.environ_key_bytes
    texts = [*environ.values(), *chain.from_iterable(headers)]
    try:  # one C-level join: every value and header is a string...
        size += len("".join(texts))
    except TypeError:  # ...but for what some servers or apps add
        size += sum([len(text) for text in texts if type(text) is str])
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


def _session_user_id() -> Any:
    """Flask-Login's user id in the session of the current request, or None.

    Read from the session's own dict, around its accessors: ``session.get`` would mark the
    session accessed, and Flask would then add ``Vary: Cookie`` to the response. Neither the
    user loader nor the remember-me cookie is touched. The session is taken from the context
    as it holds it: the request context's ``session`` up to Flask 3.1; from Flask 3.2 (one
    context, whose ``session`` property marks it accessed) its ``_session``, once loaded
    (Flask loads it to save it, before the response hook runs).
    """
    from flask import current_app
    from flask import globals as flask_globals

    if getattr(current_app, "login_manager", None) is None:
        return None
    context_var = getattr(flask_globals, "_cv_request", None) or flask_globals._cv_app
    held = vars(context_var.get())
    session = held.get("session", held.get("_session"))
    return dict.get(session, "_user_id") if isinstance(session, dict) else None


def _has_app() -> bool:
    from flask import has_app_context

    return has_app_context()


def _ignore_own_collection(alias: str) -> None:
    """Leave the tracker's collection out of the database activity when its database is known
    already (the writer adds it otherwise, before its first write)."""
    from mongoengine.connection import _connection_settings

    database = _connection_settings.get(alias, {}).get("name")
    if isinstance(database, str):
        ignore_collection(database, COLLECTION_NAME)


def _learn_rules_on_the_writer(redactor: Redactor, url_map: Map) -> None:
    """Have the redactor learn the app's URL rules (see :meth:`Redactor.learn_rules`) on the
    writer thread, before it filters its first record: read then, once the app handled a
    request, they are all there (Flask takes no new rule after its first request), and no
    request waits while a large app's rules are learnt."""
    redactor.learn_rules_later(lambda: [rule.rule for rule in url_map.iter_rules()])

"""The dashboard blueprint: overview, endpoint, request list and detail, live view.

Counts, error rates, percentiles, timelines and status classes come from the rollups
(:class:`~flask_tracking.rollups.RollupQuerySet`: ``summary``, ``stats``, ``timeline``,
``latency_histogram``): every request, also those whose record was not kept or was evicted.
Visitors, browsers, platforms and every list of requests come from the stored records
(:class:`~flask_tracking.documents.TrackingQuerySet`), and the request list uses the very
filters of ``flask tracking list`` (``cli.select_records``). Each page says which is which.
The pages are server-rendered Jinja with inline SVG charts; only the live view uses
JavaScript. Records are read through the connection alias the app's extension writes to.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Union
from urllib.parse import urlencode

from bson import ObjectId
from flask import Blueprint, Response, abort, jsonify, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from mongoengine.connection import ConnectionFailure as NotConnected
from pymongo.errors import OperationFailure, PyMongoError
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response as BaseResponse

from ..aggregate import bucket_upper_bound
from ..cli import app_records, app_rollups, select_records
from ..cli.resend import curl_for
from ..cli.selection import refusal
from ..config import MAX_LIVE_INTERVAL_SECONDS
from ..context import skip
from ..documents import Tracking, TrackingQuerySet
from .charts import format_ms, histogram_chart, shares, timeline_chart
from .present import (
    ROW_FIELDS,
    custom_data_text,
    db_view,
    headers,
    list_row,
    record_bodies,
    status_class,
    status_text,
    target,
    visible,
)
from .windows import BUCKETS, PRESET_LABELS, Window, check_preset, window_from_args

#: ``check() -> True | False | Response``, called in the request context of every dashboard
#: request: True lets it in, a Response is sent instead (a redirect to a login page), anything
#: else is answered 403 Forbidden.
AccessCheck = Callable[[], Union[bool, BaseResponse]]

#: The blueprint's default name, URL prefix, window and live-view polling interval.
DEFAULT_NAME = "tracking_dashboard"
DEFAULT_URL_PREFIX = "/tracking"
DEFAULT_WINDOW = "24h"
DEFAULT_LIVE_INTERVAL_SECONDS = 2.0
#: Records per page of the request list, rows of the "top" tables, records the live view
#: shows first and at most per poll.
PAGE_RECORDS = 50
TOP_ROWS = 10
LIVE_FIRST_RECORDS = 20
LIVE_MAX_RECORDS = 100
#: The request-list filters, as in ``flask tracking list`` (``errors`` and ``data`` aside).
TEXT_FILTERS = ("path", "endpoint", "status", "method", "user", "ip", "since", "until", "slow")
#: Headers every dashboard response carries unless the app set them already.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}


def make_blueprint(
    access: AccessCheck | None = None,
    *,
    public: bool = False,
    name: str = DEFAULT_NAME,
    url_prefix: str = DEFAULT_URL_PREFIX,
    default_window: str = DEFAULT_WINDOW,
    live_interval_seconds: float = DEFAULT_LIVE_INTERVAL_SECONDS,
) -> Blueprint:
    """The dashboard as a blueprint to register on the app: ``app.register_blueprint(bp)``.

    ``access`` is required unless ``public=True`` is passed explicitly: without it this raises
    :class:`RuntimeError`, so the tracked requests (headers, bodies, users) are never shown to
    anybody by mistake. ``access()`` runs before every dashboard request (see
    :data:`AccessCheck`); it can reuse the app's login::

        def staff_only():
            return current_user.is_authenticated and current_user.is_staff

        app.register_blueprint(make_blueprint(access=staff_only))

    ``default_window`` is "1h", "24h" or "7d"; ``live_interval_seconds`` is how often the live
    view asks for new requests (at most 2147483, 24.8 days, the longest a browser's timer
    waits). The dashboard's own requests are never tracked.
    """
    if type(public) is not bool:
        raise TypeError(f"public must be True or False, not {public!r}.")
    texts = (("name", name), ("url_prefix", url_prefix), ("default_window", default_window))
    for label, text in texts:
        if not isinstance(text, str) or not text:
            raise TypeError(f"{label} must be a non-empty string, not {text!r}.")
    if not url_prefix.startswith("/"):
        raise ValueError(f"url_prefix must start with '/', not {url_prefix!r}.")
    if access is None and not public:
        raise RuntimeError(
            "The tracking dashboard shows every recorded request (headers, bodies, users): "
            "give it an access check, make_blueprint(access=check) where check() returns "
            "True to let a request in, or pass public=True to open it to anybody on purpose."
        )
    if access is not None and not callable(access):
        raise TypeError(f"access must be a callable returning True or a Response, not {access!r}")
    check_preset(default_window)
    interval = live_interval_seconds
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not (0 < interval <= MAX_LIVE_INTERVAL_SECONDS)
    ):
        raise ValueError(
            f"live_interval_seconds must be a number above 0 and at most "
            f"{MAX_LIVE_INTERVAL_SECONDS}, not {interval!r}."
        )
    blueprint = Blueprint(
        name,
        __name__,
        url_prefix=url_prefix,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    pages = _Pages(default_window, float(interval))
    blueprint.before_request(_leave_untracked)
    blueprint.record(_leave_untracked_under_prefix)
    if access is not None:
        blueprint.before_request(_guard(access))
    blueprint.after_request(_secure)
    blueprint.context_processor(_template_helpers)
    blueprint.register_error_handler(PyMongoError, _database_unavailable)
    blueprint.register_error_handler(NotConnected, _database_unavailable)
    blueprint.register_error_handler(404, _not_found)
    blueprint.add_url_rule("/", "overview", pages.overview)
    blueprint.add_url_rule("/endpoints/<name>", "endpoint", pages.endpoint)
    blueprint.add_url_rule("/requests", "requests", pages.request_list)
    blueprint.add_url_rule("/requests/<record_id>", "request_detail", pages.request_detail)
    blueprint.add_url_rule("/live", "live", pages.live)
    blueprint.add_url_rule("/live.json", "live_json", pages.live_json)
    return blueprint


def _leave_untracked() -> None:
    """The dashboard's own requests are not recorded (``flask_tracking.skip()``)."""
    skip()


def _leave_untracked_under_prefix(state: BlueprintSetupState) -> None:
    """Also skip what routing answers under the prefix before any view of the blueprint runs
    (``/tracking``, redirected to ``/tracking/``; unknown pages): an app-level hook, first so
    that no other app hook can answer before it. A page of the app's own under the prefix
    stays recorded, and so does any request to another host than the dashboard's subdomain."""
    prefix = (state.url_prefix or "").rstrip("/")
    if not prefix:
        return  # mounted at the root: only the blueprint's own views are the dashboard
    host_start = f"{state.subdomain}." if state.subdomain else ""

    def leave_untracked_under_prefix() -> None:
        if request.url_rule is not None:  # a page: the app's, or the dashboard's (skipped)
            return
        path = request.path
        if (path == prefix or path.startswith(prefix + "/")) and request.host.startswith(
            host_start
        ):
            skip()

    state.app.before_request_funcs.setdefault(None, []).insert(0, leave_untracked_under_prefix)


def _guard(access: AccessCheck) -> Callable[[], BaseResponse | None]:
    def guard() -> BaseResponse | None:
        verdict = access()
        if verdict is True:
            return None
        if isinstance(verdict, BaseResponse):
            return verdict
        abort(403)

    return guard


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _template_helpers() -> dict[str, Any]:
    return {
        "ms": format_ms,
        "visible": visible,
        "status_text": status_text,
        "status_class": status_class,
        "target": target,
        "presets": PRESET_LABELS,
        "page_url": page_url,
    }


def _database_unavailable(error: Exception) -> tuple[str, int]:
    message = f"Cannot read the tracking records: {type(error).__name__}: {error}"
    return render_template(
        "flask_tracking/error.html", title="Database unavailable", message=message
    ), 503


def _not_found(error: NotFound) -> tuple[str, int]:
    """The dashboard's own page for an unknown record or endpoint, instead of Werkzeug's."""
    return render_template(
        "flask_tracking/error.html", title="Not found", message=error.description
    ), 404


@dataclass(frozen=True)
class _Pages:
    """The views, with the settings of one blueprint."""

    default_window: str
    live_interval_seconds: float

    def overview(self) -> tuple[str, int]:
        """Traffic, latency and errors of a window."""
        window, problem = self._window()
        if problem:
            return _page_error(window, problem)
        rollups = window.select(app_rollups())
        records = window.select(app_records())
        totals = rollups.summary()
        by_endpoint = rollups.stats(group_by="endpoint")
        context = {
            "window": window,
            "totals": {**totals, "requests": totals["count"]},
            "visitors": records.unique_visitors(),
            "timeline": timeline_chart(
                rollups.timeline(bucket=window.bucket),
                window.bucket_starts(),
                BUCKETS[window.bucket],
            ),
            "statuses": shares(rollups.stats(group_by="status_class"), "status_class"),
            "top_by_count": by_endpoint[:TOP_ROWS],
            "top_by_p95": _largest(by_endpoint, "p95"),
            "top_by_errors": _largest([row for row in by_endpoint if row["errors"]], "errors"),
            "browsers": shares(records.user_agents(by="browser"), "browser"),
            "platforms": shares(records.user_agents(by="platform"), "platform"),
        }
        return render_template("flask_tracking/overview.html", **context), 200

    def endpoint(self, name: str) -> tuple[str, int]:
        """One endpoint: summary, latency histogram, timeline, slowest requests, recent errors."""
        window, problem = self._window()
        if problem:
            return _page_error(window, problem)
        rollups = window.select(app_rollups()).for_endpoint(name)
        records = window.select(app_records()).for_endpoint(name)
        rows = records.only(*ROW_FIELDS)
        summary = rollups.summary()
        histogram = rollups.latency_histogram()
        context = {
            "window": window,
            "name": name,
            "summary": summary if summary["count"] else None,
            "db": records.db_summary(),
            "histogram": histogram_chart(
                (bucket_upper_bound(bucket), count) for bucket, count in histogram.items()
            ),
            "timeline": timeline_chart(
                rollups.timeline(bucket=window.bucket),
                window.bucket_starts(),
                BUCKETS[window.bucket],
            ),
            "slowest": [list_row(r) for r in rows.order_by("-execution_time").limit(TOP_ROWS)],
            "errors": [list_row(r) for r in rows.errors().order_by("-id").limit(TOP_ROWS)],
        }
        return render_template("flask_tracking/endpoint.html", **context), 200

    def request_list(self) -> tuple[str, int]:
        """Recorded requests, newest first, filtered like ``flask tracking list``, by pages of
        :data:`PAGE_RECORDS` (a cursor: ``before`` / ``after`` a record id)."""
        filters = _filter_args()
        context: dict[str, Any] = {"filters": filters, "rows": [], "older": None, "newer": None}
        try:
            with _refused_filters(filters):
                page = _selected(filters).only(*ROW_FIELDS)
                before, after = _cursor("before"), _cursor("after")
                if after is not None:
                    found = list(page.filter(id__gt=after).order_by("id").limit(PAGE_RECORDS + 1))
                    shown = found[:PAGE_RECORDS][::-1]
                    has_newer, has_older = len(found) > PAGE_RECORDS, True
                else:
                    if before is not None:
                        page = page.filter(id__lt=before)
                    found = list(page.order_by("-id").limit(PAGE_RECORDS + 1))
                    shown = found[:PAGE_RECORDS]
                    has_newer, has_older = before is not None, len(found) > PAGE_RECORDS
        except ValueError as error:
            return render_template(
                "flask_tracking/requests.html", problem=str(error), **context
            ), 400
        context["rows"] = [list_row(record) for record in shown]
        if shown and has_older:
            context["older"] = page_url(".requests", filters, before=str(shown[-1].pk))
        if shown and has_newer:
            context["newer"] = page_url(".requests", filters, after=str(shown[0].pk))
        context["paged"] = before is not None or after is not None
        return render_template("flask_tracking/requests.html", problem=None, **context), 200

    def request_detail(self, record_id: str) -> str:
        """Everything stored about one request, and a curl command that sends it again."""
        if not ObjectId.is_valid(record_id):
            abort(404, f"{record_id!r} is not a record id: ids are 24 hexadecimal characters.")
        record: Tracking | None = app_records().filter(id=ObjectId(record_id)).first()
        if record is None:
            abort(
                404,
                f"No record has the id {record_id} (a full capped collection drops its oldest "
                "records).",
            )
        command, notes = curl_for(record)
        return render_template(
            "flask_tracking/request.html",
            record=record,
            request_headers=headers(record.request_headers),
            response_headers=headers(record.response_headers),
            bodies=record_bodies(record),
            custom_data=custom_data_text(record.custom_data),
            db=db_view(record),
            user=visible(record.user_label() or ""),
            user_agent=str(record.user_agent) if record.user_agent else None,
            curl=command,
            curl_notes=notes,
        )

    def live(self) -> tuple[str, int]:
        """The newest requests; the page's script adds new ones as they are stored."""
        filters = _filter_args()
        try:
            with _refused_filters(filters):
                found, cursor = _selected(filters).only(*ROW_FIELDS).poll(limit=LIVE_FIRST_RECORDS)
        except ValueError as error:
            return render_template(
                "flask_tracking/live.html", problem=str(error), rows=[], filters=filters
            ), 400
        return render_template(
            "flask_tracking/live.html",
            problem=None,
            rows=[list_row(record) for record in reversed(found)],
            filters=filters,
            last=str(cursor),
            shown=" ".join(str(record.pk) for record in found),
            feed=page_url(".live_json", filters),
            interval_ms=int(self.live_interval_seconds * 1000),
        ), 200

    def live_json(self) -> tuple[Response, int]:
        """``{"records": [...], "last": cursor}``: one round of
        :meth:`~flask_tracking.documents.TrackingQuerySet.poll` after the cursor ``after``
        (oldest first, at most :data:`LIVE_MAX_RECORDS`), each record with the URL of its page.
        Records of the last seconds come again in the next rounds; the page drops the ids it
        shows already."""
        filters = _filter_args()
        try:
            with _refused_filters(filters):
                records = _selected(filters).only(*ROW_FIELDS)
                after = _cursor("after")
                if after is None:
                    found, cursor = records.poll(limit=LIVE_FIRST_RECORDS)
                else:
                    found, cursor = records.poll(after, limit=LIVE_MAX_RECORDS)
        except ValueError as error:
            return jsonify(error=str(error)), 400
        rows = [
            {**list_row(record), "url": url_for(".request_detail", record_id=str(record.pk))}
            for record in found
        ]
        return jsonify(
            records=rows, last=str(cursor), interval_ms=int(self.live_interval_seconds * 1000)
        ), 200

    def _window(self) -> tuple[Window, str | None]:
        """The window the request asks for, or the default one and what was wrong."""
        try:
            return window_from_args(request.args, self.default_window), None
        except ValueError as error:
            return window_from_args({}, self.default_window), str(error)


def page_url(endpoint: str, filters: dict[str, Any], **extra: Any) -> str:
    """The URL of a dashboard page with the request-list ``filters`` (and ``extra``) in its
    query string. Not ``url_for(**filters)``: a filter is called ``endpoint``."""
    params = {**filters, **{key: value for key, value in extra.items() if value is not None}}
    query = urlencode(params, doseq=True)
    return f"{url_for(endpoint)}?{query}" if query else url_for(endpoint)


def _largest(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The :data:`TOP_ROWS` rows with the largest ``key`` (rows without one last)."""
    ranked = sorted(rows, key=lambda row: (row[key] is not None, row[key] or 0), reverse=True)
    return ranked[:TOP_ROWS]


def _page_error(window: Window, problem: str) -> tuple[str, int]:
    """A 400 page saying what was wrong, with the window form to try again."""
    return render_template(
        "flask_tracking/error.html", title="Bad request", message=problem, window=window
    ), 400


def _filter_args() -> dict[str, Any]:
    """The request-list filters of the query string (empty ones left out), as given."""
    args = request.args
    filters: dict[str, Any] = {
        key: args[key].strip() for key in TEXT_FILTERS if args.get(key, "").strip()
    }
    if args.get("errors") in ("1", "on", "true", "yes"):
        filters["errors"] = "1"
    data = [item for item in args.getlist("data") if item.strip()]
    if data:
        filters["data"] = data
    return filters


def _selected(filters: dict[str, Any]) -> TrackingQuerySet:
    """The records the filters select, through the CLI's own filter code (same semantics as
    ``flask tracking list``). Raises :class:`ValueError` with the CLI's sentence."""
    slow_text = filters.get("slow")
    try:
        slow = float(slow_text) if slow_text is not None else None
    except ValueError:
        raise ValueError(f"slow takes a number of milliseconds, not {slow_text!r}.") from None
    if slow is not None and not math.isfinite(slow):
        raise ValueError(f"slow takes a number of milliseconds, not {slow_text!r}.")
    options = {key: filters.get(key) for key in TEXT_FILTERS if key != "slow"}
    try:
        return select_records(
            app_records(),
            **options,
            slow=slow,
            errors=bool(filters.get("errors")),
            data=tuple(filters.get("data", ())),
        )
    except ValueError as error:
        raise ValueError(str(error).replace("--", "")) from None


@contextlib.contextmanager
def _refused_filters(filters: dict[str, Any]) -> Iterator[None]:
    """Turn the server's refusal of a query (a regex its PCRE does not take, an operator it
    forbids) into :class:`ValueError` with its reason: with filters given, they are the
    problem (a 400), not the database (the 503 of :func:`_database_unavailable`)."""
    try:
        yield
    except OperationFailure as error:
        if not filters:
            raise
        raise ValueError(refusal(error)) from None


def _cursor(name: str) -> ObjectId | None:
    value = request.args.get(name, "").strip()
    if not value:
        return None
    if not ObjectId.is_valid(value):
        raise ValueError(f"{name} takes a record id (24 hexadecimal characters), not {value!r}.")
    return ObjectId(value)

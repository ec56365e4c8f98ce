"""The dashboard blueprint through Flask's test client: every page, every filter, the guard.

Records are seeded as raw dicts in the stored schema (``fields.FIELDS``) into mongomock, at
known times before now, so each window, filter and figure has a known answer.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from bson import ObjectId
from flask import Flask, abort, redirect
from flask_login import LoginManager, UserMixin, current_user, login_user

from flask_tracking import Tracking
from flask_tracking.dashboard import make_blueprint
from flask_tracking.dashboard.charts import (
    count_ceiling,
    format_ms,
    histogram_chart,
    nice_ceiling,
    timeline_chart,
)
from flask_tracking.dashboard.present import hexdump
from flask_tracking.dashboard.windows import PRESETS, Window, utc_now
from flask_tracking.documents import percentile
from flask_tracking.fields import FIELDS

from .conftest import FAST_WRITER, add_routes, store_rollups, stored

PACKAGE = Path(__file__).parent.parent / "flask_tracking" / "dashboard"
FIREFOX = ("Firefox", "125.0", "Linux", "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Firefox/125.0")
CHROME = ("Chrome", "124.0.0", "Windows", "Mozilla/5.0 (Windows NT 10.0) Chrome/124.0")
XSS = '"><script>alert(1)</script>'
SECRET = "s3cr3t-token-value"
PAGES = (
    "/tracking/",
    "/tracking/?window=1h",
    "/tracking/endpoints/api.items",
    "/tracking/requests",
    "/tracking/live",
    "/tracking/live.json",
)


# --- seeded records -----------------------------------------------------------------------


def make_record(when: datetime, **fields: Any) -> dict[str, Any]:
    """A stored record (every field of ``fields.FIELDS``) of a GET at ``when``."""
    browser, version, platform, agent = fields.pop("agent", FIREFOX)
    document: dict[str, Any] = dict.fromkeys(FIELDS)
    document.update(
        _id=ObjectId(),
        date_created=when,
        host="app.example.com",
        scheme="https",
        method="GET",
        path="/",
        query_params="",
        ip="203.0.113.9",
        user_agent={
            "browser": browser,
            "version": version,
            "platform": platform,
            "device": "Other",
            "language": "en-US",
            "string": agent,
        },
        request_headers=[["Host", "app.example.com"], ["User-Agent", agent]],
        response_headers=[["Content-Type", "text/plain"]],
        request_body_truncated=False,
        response_body_truncated=False,
        status_code=200,
        execution_time=10.0,
        hostname="web-1",
        sample_rate=1.0,
    )
    document.update(fields)
    return document


def seed_records(now: datetime) -> list[dict[str, Any]]:
    """The seeded traffic. Last hour: 20 ``api.items`` (10..200 ms, user 7), one JSON order
    with filtered secrets, one binary download, one hostile record. 2-3 h ago: 5 errors and 3
    404s. 3 days ago: 4 requests; 30 days ago: 1."""
    minutes = lambda value: now - timedelta(minutes=value)  # noqa: E731
    records = [
        make_record(
            minutes(50 - index),
            path=f"/api/items/{index}",
            endpoint="api.items",
            url_rule="/api/items/<int:id>",
            execution_time=10.0 * (index + 1),
            user_id="7",
            ip="203.0.113.5",
        )
        for index in range(20)
    ]
    order_body = json.dumps({"order": 42, "password": "[Filtered]"}).encode()
    records.append(
        make_record(
            minutes(10),
            method="POST",
            path="/api/orders",
            query_params="token=[Filtered]&page=2",
            endpoint="api.orders",
            url_rule="/api/orders",
            request_headers=[
                ["Host", "app.example.com"],
                ["Authorization", "[Filtered]"],
                ["Content-Type", "application/json"],
            ],
            request_body=order_body,
            request_body_size=len(order_body),
            response_headers=[["Content-Type", "application/json"], ["Set-Cookie", "[Filtered]"]],
            response_body=b'{"id":1,"items":[1,2]}',
            response_body_size=22,
            status_code=201,
            execution_time=50.0,
            custom_data={"order": 42, "cart": {"items": 3}},
            user_id="7",
            agent=CHROME,
        )
    )
    payload = bytes(range(256)) * 3
    records.append(
        make_record(
            minutes(20),
            path="/files/1",
            endpoint="files.download",
            response_headers=[["Content-Type", "application/octet-stream"]],
            response_body=payload,
            response_body_size=len(payload) * 4,
            response_body_truncated=True,
            execution_time=30.0,
        )
    )
    records.append(
        make_record(
            minutes(5),
            path=f"/{XSS}\x1b[31m",
            query_params="q=<i>",
            endpoint="evil.<b>",
            request_headers=[["X-Evil", XSS]],
            execution_time=5.0,
            user_id=XSS,
        )
    )
    records += [
        make_record(
            minutes(120 + index),
            path="/api/items/broken",
            endpoint="api.items",
            status_code=500,
            exception="ValueError: bad item",
            execution_time=500.0,
            ip="198.51.100.1",
        )
        for index in range(5)
    ]
    records += [
        make_record(minutes(180 + index), path="/missing", status_code=404, ip="198.51.100.2")
        for index in range(3)
    ]
    records += [
        make_record(now - timedelta(days=3, minutes=index), path="/old", endpoint="api.items")
        for index in range(4)
    ]
    records.append(make_record(now - timedelta(days=30), path="/ancient", endpoint="api.items"))
    return records


@pytest.fixture
def seeded(mongo: Any) -> list[dict[str, Any]]:
    records = seed_records(utc_now())
    mongo["tracking"].insert_many(records)
    store_rollups(mongo, records)
    return records


def by_path(records: list[dict[str, Any]], path: str) -> dict[str, Any]:
    return next(record for record in records if record["path"] == path)


@pytest.fixture
def dashboard_app(make_app: Callable[..., Flask], seeded: list[dict[str, Any]]) -> Flask:
    """The tracked test app with a public dashboard at /tracking."""
    app = make_app()
    app.register_blueprint(make_blueprint(public=True))
    return app


@pytest.fixture
def client(dashboard_app: Flask) -> Any:
    return dashboard_app.test_client()


def text_of(response: Any) -> str:
    """The page as text, entities decoded (what a person reads, roughly)."""
    return html.unescape(response.get_data(as_text=True))


def list_ids(response: Any) -> list[str]:
    """The record ids a request table links to, in order."""
    return re.findall(r'/tracking/requests/([0-9a-f]{24})"', response.get_data(as_text=True))


# --- the guard ----------------------------------------------------------------------------


def test_no_access_check_refuses_to_make_the_blueprint() -> None:
    with pytest.raises(RuntimeError, match="access check"):
        make_blueprint()


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="callable"):
        make_blueprint(access=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        make_blueprint(public=True, default_window="2h")
    for public in ("false", "", 1, None):
        with pytest.raises(TypeError, match="public must be True or False"):
            make_blueprint(public=public)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="url_prefix"):
        make_blueprint(public=True, url_prefix=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="url_prefix"):
        make_blueprint(public=True, url_prefix="tracking")
    with pytest.raises(TypeError, match="name"):
        make_blueprint(public=True, name=b"x")  # type: ignore[arg-type]
    for interval in (0, -1, math.inf, math.nan, "2", True, 2_147_484, 10**400):
        with pytest.raises(ValueError, match="live_interval_seconds"):
            make_blueprint(public=True, live_interval_seconds=interval)  # type: ignore[arg-type]


def guarded_app(make_app: Callable[..., Flask], access: Callable[[], Any]) -> Flask:
    app = make_app()
    app.register_blueprint(make_blueprint(access=access))
    return app


@pytest.mark.parametrize("verdict", [False, None, "yes", 1])
def test_anything_but_true_is_forbidden(
    make_app: Callable[..., Flask], seeded: Any, verdict: Any
) -> None:
    client = guarded_app(make_app, lambda: verdict).test_client()
    detail = f"/tracking/requests/{seeded[0]['_id']}"
    for url in (*PAGES, detail, "/tracking/static/flask_tracking/dashboard.css"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert SECRET not in response.get_data(as_text=True)


def test_the_checks_own_response_is_sent(make_app: Callable[..., Flask], seeded: Any) -> None:
    client = guarded_app(make_app, lambda: redirect("/login?next=/tracking/")).test_client()
    response = client.get("/tracking/requests")
    assert response.status_code in (302, 303)  # redirect(): 303 from Flask 3.2
    assert response.headers["Location"] == "/login?next=/tracking/"


def test_a_check_may_abort(make_app: Callable[..., Flask], seeded: Any) -> None:
    def check() -> bool:
        abort(401)

    assert guarded_app(make_app, check).test_client().get("/tracking/").status_code == 401


def test_true_lets_in(make_app: Callable[..., Flask], seeded: Any) -> None:
    calls: list[str] = []

    def check() -> bool:
        calls.append("checked")
        return True

    client = guarded_app(make_app, check).test_client()
    for url in PAGES:
        assert client.get(url).status_code == 200, url
    assert len(calls) == len(PAGES)


def test_the_public_flag_opens_it(client: Any) -> None:
    for url in PAGES:
        assert client.get(url).status_code == 200, url


def test_flask_login_guards_it(make_app: Callable[..., Flask], seeded: Any) -> None:
    class User(UserMixin):
        id = "1"

    app = make_app(SECRET_KEY="test")
    login = LoginManager(app)
    login.user_loader(lambda user_id: User() if user_id == "1" else None)

    @app.get("/login-as-1")
    def login_as_1() -> str:
        login_user(User())
        return "in"

    app.register_blueprint(make_blueprint(access=lambda: current_user.is_authenticated))
    client = app.test_client()
    assert client.get("/tracking/").status_code == 403
    client.get("/login-as-1")
    assert client.get("/tracking/").status_code == 200


# --- its own requests are not tracked -----------------------------------------------------


def test_the_dashboards_requests_are_not_recorded(dashboard_app: Flask, mongo: Any) -> None:
    client = dashboard_app.test_client()
    for url in (*PAGES, f"/tracking/requests/{ObjectId()}", "/tracking/?window=bad"):
        client.get(url).close()
    client.get("/tracking/static/flask_tracking/live.js").close()
    client.get("/hello").close()
    paths = [document["path"] for document in stored(dashboard_app, mongo)]
    assert "/hello" in paths
    assert not [path for path in paths if path.startswith("/tracking")]


def test_denied_requests_are_not_recorded_either(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = guarded_app(make_app, lambda: False)
    client = app.test_client()
    with client.get("/tracking/") as denied:  # closed: error pages are recorded on close
        assert denied.status_code == 403
    client.get("/hello")
    assert [document["path"] for document in stored(app, mongo)] == ["/hello"]


# --- overview -----------------------------------------------------------------------------


def test_overview_of_the_last_hour(client: Any, seeded: list[dict[str, Any]]) -> None:
    response = client.get("/tracking/?window=1h")
    assert response.status_code == 200
    page = text_of(response)
    times = sorted([10.0 * (index + 1) for index in range(20)] + [50.0, 30.0, 5.0])
    assert re.search(r"Requests</div>\s*<div class=\"value\">23<", page)
    assert re.search(r"Error rate</div>\s*<div class=\"value\">0.0 %<", page)
    for key, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        shown = re.search(rf"{key}</div>\s*<div class=\"value\">([0-9.]+) ms<", page)
        assert shown is not None, key
        exact = percentile(times, fraction)
        assert exact is not None
        assert abs(float(shown.group(1)) - exact) <= 0.05 * exact  # from the rollups
    assert "count every request (the rollups" in page
    assert "Unique visitors" in page and "3 signed-in users" not in page
    assert "2 signed-in users" in page  # "7" and the hostile id
    assert "ValueError" not in page
    assert "Last hour" in page


def test_overview_of_24_hours_has_errors_statuses_endpoints_agents(client: Any) -> None:
    page = text_of(client.get("/tracking/?window=24h"))
    assert re.search(r"Requests</div>\s*<div class=\"value\">31<", page)
    assert re.search(r"Error rate</div>\s*<div class=\"value\">16.1 %<", page)  # 5 of 31
    assert "5 server errors" in page
    for status in ("2xx", "4xx", "5xx"):
        assert f">{status}</a>" in page
    assert 'href="/tracking/endpoints/api.items?window=24h"' in html.escape(page, quote=False)
    assert "(no endpoint: 404, 405)" in page
    assert "Firefox" in page and "Chrome" in page and "Linux" in page and "Windows" in page
    errors_table = page.split("Endpoints with the most errors", 1)[1]
    assert "api.items" in errors_table and "api.orders" not in errors_table


def test_a_status_class_link_lists_the_requests_it_counts(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # The overview counts the last hour up to now; its status-class link passes since/until
    # as window.from_value / to_value, cut to the minute: the requests of the current minute
    # (the freshest errors) are counted on the overview and missing from the list it links to.
    import time

    while utc_now().second < 3 or utc_now().second > 55:  # keep "now - 1 s" in this minute
        time.sleep(0.5)
    record = make_record(
        utc_now() - timedelta(seconds=1), status_code=500, path="/fresh", endpoint="api.items"
    )
    mongo["tracking"].insert_one(record)
    store_rollups(mongo, [record])
    app = make_app()
    app.register_blueprint(make_blueprint(public=True))
    client = app.test_client()
    page = client.get("/tracking/?window=1h").get_data(as_text=True)
    assert re.search(r'Requests</div>\s*<div class="value">1<', page)
    link = html.unescape(re.search(r'href="(/tracking/requests\?status=5xx[^"]*)"', page).group(1))
    assert list_ids(client.get(link)) == [str(record["_id"])], link
    page = client.get("/tracking/endpoints/api.items?window=1h").get_data(as_text=True)
    link = html.unescape(re.search(r'href="([^"]*)">All requests to this endpoint', page).group(1))
    assert list_ids(client.get(link)) == [str(record["_id"])], link


def test_overview_draws_the_timeline_as_svg(client: Any) -> None:
    page = client.get("/tracking/?window=24h").get_data(as_text=True)
    chart = page.split('<figure class="chart', 1)[1].split("</figure>", 1)[0]
    assert chart.count('<rect class="bar"') >= 3  # the last hour, the errors, the 404s
    assert '<rect class="error"' in chart
    assert '<polyline class="p95"' in chart
    assert re.search(r"UTC: \d+ requests, [1-5] errors, p95 (4[89]\d|500)\.\d ms</title>", chart)
    assert "<script" not in chart


def test_windows_select_the_right_records(client: Any) -> None:
    def requests(url: str) -> int:
        page = client.get(url).get_data(as_text=True)
        return int(re.search(r'Requests</div>\s*<div class="value">(\d+)<', page).group(1))

    assert requests("/tracking/?window=1h") == 23
    assert requests("/tracking/?window=24h") == 31
    assert requests("/tracking/?window=7d") == 35
    now = utc_now()
    start = (now - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M")
    end = (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    assert requests(f"/tracking/?from={start}&to={end}") == 4
    assert requests(f"/tracking/?from={start}") == 35 - 0  # from 4 days ago until now


def test_the_default_window_is_the_blueprints(make_app: Callable[..., Flask], seeded: Any) -> None:
    app = make_app()
    app.register_blueprint(make_blueprint(public=True, default_window="1h"))
    page = app.test_client().get("/tracking/").get_data(as_text=True)
    assert "Last hour" in page
    assert re.search(r'Requests</div>\s*<div class="value">23<', page)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("window=2h", "must be one of 1h, 24h, 7d"),
        ("from=yesterday", "is not a date"),
        ("from=2024-05-02T00:00&to=2024-05-01T00:00", "must be before the end"),
    ],
)
def test_a_bad_window_is_a_400_that_says_why(client: Any, query: str, message: str) -> None:
    for page in ("/tracking/", "/tracking/endpoints/api.items"):
        response = client.get(f"{page}?{query}")
        assert response.status_code == 400
        assert message in text_of(response)


def test_an_empty_window(client: Any) -> None:
    response = client.get("/tracking/?from=2001-01-01T00:00&to=2001-01-02T00:00")
    assert response.status_code == 200
    page = text_of(response)
    assert "No requests in this window." in page
    assert re.search(r'Requests</div>\s*<div class="value">0<', page)


# --- endpoint page ------------------------------------------------------------------------


def test_endpoint_page(client: Any, seeded: list[dict[str, Any]]) -> None:
    response = client.get("/tracking/endpoints/api.items?window=24h")
    assert response.status_code == 200
    page = text_of(response)
    assert re.search(r'Requests</div>\s*<div class="value">25<', page)
    assert re.search(r'Slowest</div>\s*<div class="value">500.0 ms<', page)
    histogram = page.split("Latency distribution", 1)[1].split("</figure>", 1)[0]
    assert "10ms-20ms: 1 requests" in histogram
    assert "500ms-1s: 5 requests" in histogram
    slowest = page.split("Slowest requests", 1)[1].split("Recent errors", 1)[0]
    assert slowest.index("/api/items/broken") < slowest.index("/api/items/19")
    errors = page.split("Recent errors", 1)[1]
    assert errors.count("/api/items/broken") == 5 and "/api/items/19" not in errors
    assert "endpoint=api.items" in page


def test_endpoint_without_requests(client: Any) -> None:
    response = client.get("/tracking/endpoints/nothing.here")
    assert response.status_code == 200
    assert "No requests to this endpoint in this window." in text_of(response)


# --- request list -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("", 36),
        ("path=/api/items/", 25),
        ("path=/api/items/1$", 1),
        ("endpoint=api.orders", 1),
        ("status=500", 5),
        ("status=4xx", 3),
        ("status=2xx", 28),
        ("method=post", 1),
        ("user=7", 21),
        ("ip=198.51.100.2", 3),
        ("since=1h", 23),
        ("since=4d&until=2d", 4),
        ("until=10d", 1),
        ("slow=200", 6),
        ("errors=1", 5),
        ("data=order=42", 1),
        ("data=cart__items__gte=3", 1),
        ("status=5xx&errors=on&path=/api/", 5),
    ],
)
def test_request_list_filters(client: Any, query: str, count: int) -> None:
    response = client.get(f"/tracking/requests?{query}")
    assert response.status_code == 200, text_of(response)
    assert len(list_ids(response)) == count


def test_filters_are_the_clis(dashboard_app: Flask, seeded: Any) -> None:
    from flask_tracking.cli import tracking_cli

    dashboard_app.cli.add_command(tracking_cli)
    runner = dashboard_app.test_cli_runner()
    client = dashboard_app.test_client()
    for query, args in (
        ("status=4xx", ["--status", "4xx"]),
        ("path=/api/&slow=100", ["--path", "/api/", "--slow", "100"]),
        ("errors=1&ip=198.51.100.1", ["--errors", "--ip", "198.51.100.1"]),
    ):
        result = runner.invoke(args=["tracking", "list", "--limit", "0", *args])
        cli_ids = sorted(line.split()[0] for line in result.output.splitlines())
        assert sorted(list_ids(client.get(f"/tracking/requests?{query}"))) == cli_ids


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=abc", "status takes a code such as 404"),
        ("since=later", "since:"),
        ("slow=fast", "slow takes a number of milliseconds"),
        ("slow=nan", "slow takes a number of milliseconds"),
        ("path=(", "not a valid regular expression"),
        ("data=nokey", "data takes KEY=VALUE"),
        ("before=123", "before takes a record id"),
    ],
)
def test_a_bad_filter_is_a_400_that_says_why(client: Any, query: str, message: str) -> None:
    response = client.get(f"/tracking/requests?{query}")
    assert response.status_code == 400
    assert message in text_of(response)


@pytest.mark.parametrize(
    "url",
    [
        "/tracking/requests?since=1000000d",
        "/tracking/requests?until=0001-01-01T00:00%2B01:00",
        "/tracking/live?since=1000000d",
        "/tracking/live.json?since=1000000d",
        "/tracking/?from=0001-01-01T00:00%2B01:00",
        "/tracking/?from=9999-12-31T23:58&to=9999-12-31T23:59",
        "/tracking/endpoints/api.items?from=9999-12-31T23:58&to=9999-12-31T23:59",
    ],
)
def test_an_out_of_range_date_is_a_400_that_says_why(dashboard_app: Flask, url: str) -> None:
    # A bad date is a 400 page saying why (like "since=later"), not an OverflowError (500).
    dashboard_app.config["PROPAGATE_EXCEPTIONS"] = False
    response = dashboard_app.test_client().get(url)
    assert response.status_code == 400, response.status_code


def test_a_data_in_filter_with_a_scalar_is_not_a_500(dashboard_app: Flask) -> None:
    # data=order__in=42 (VALUE JSON, an int): TypeError in _custom_data_query -> 500.
    dashboard_app.config["PROPAGATE_EXCEPTIONS"] = False
    response = dashboard_app.test_client().get("/tracking/requests?data=order__in=42")
    assert response.status_code in (200, 400), response.status_code


@pytest.mark.parametrize(
    "query", ["status=99999999999999999999", "data=order__in=[1,-99999999999999999999]"]
)
def test_a_number_beyond_8_bytes_is_a_400_that_says_why(dashboard_app: Flask, query: str) -> None:
    # On a server, bson cannot encode the int: an OverflowError, a 500.
    dashboard_app.config["PROPAGATE_EXCEPTIONS"] = False
    response = dashboard_app.test_client().get(f"/tracking/requests?{query}")
    assert response.status_code == 400, response.status_code
    assert "out of range" in text_of(response)


@pytest.mark.parametrize("backend", [pytest.param("real", marks=pytest.mark.real)])
def test_a_filter_the_server_refuses_is_a_400_not_database_unavailable(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # A data=KEY=JSON value may carry operators the server refuses: the OperationFailure
    # reached the PyMongoError handler, a 503 "Database unavailable" page ("A database that
    # cannot be read gives a 503"), though the database is fine and the filter is the
    # problem. The CLI says "MongoDB refused the query" with exit code 1. "(?a)" compiles in
    # Python but MongoDB refuses it: for_path refuses the flag itself, with a sentence.
    app = make_app()
    app.register_blueprint(make_blueprint(public=True))
    client = app.test_client()
    for query, reason in (
        ("path=(%3Fa)/x", "has a flag MongoDB does not know"),
        ('data=x={"$where":"1"}', "MongoDB refused the query: "),
    ):
        for page in ("requests", "live", "live.json"):
            response = client.get(f"/tracking/{page}?{query}")
            text = text_of(response)
            assert response.status_code == 400, (page, query, response.status_code, text[-300:])
            assert reason in text, text[-300:]
            assert "full error" not in text and "errmsg" not in text, text[-300:]


def test_the_form_keeps_the_filters(client: Any) -> None:
    page = client.get("/tracking/requests?status=4xx&user=7&errors=1").get_data(as_text=True)
    assert 'name="status" value="4xx"' in page
    assert 'name="user" value="7"' in page
    assert 'name="errors" value="1" checked' in page


def test_pages_by_cursor(make_app: Callable[..., Flask], mongo: Any) -> None:
    now = utc_now()
    records = [
        make_record(now - timedelta(seconds=index), path=f"/n/{index}") for index in range(120)
    ]
    mongo["tracking"].insert_many(records)
    app = make_app()
    app.register_blueprint(make_blueprint(public=True))
    client = app.test_client()
    newest_first = [str(record["_id"]) for record in reversed(records)]

    first = client.get("/tracking/requests?path=/n/")
    assert list_ids(first) == newest_first[:50]
    older = re.search(r'href="([^"]+)" rel="next"', first.get_data(as_text=True)).group(1)
    older = html.unescape(older)
    assert f"before={newest_first[49]}" in older and "path=%2Fn%2F" in older
    assert 'rel="prev"' not in first.get_data(as_text=True)

    second = client.get(older)
    assert list_ids(second) == newest_first[50:100]
    third_url = html.unescape(
        re.search(r'href="([^"]+)" rel="next"', second.get_data(as_text=True)).group(1)
    )
    third = client.get(third_url)
    assert list_ids(third) == newest_first[100:]
    assert 'rel="next"' not in third.get_data(as_text=True)

    newer = html.unescape(
        re.search(r'href="([^"]+)" rel="prev"', second.get_data(as_text=True)).group(1)
    )
    assert list_ids(client.get(newer)) == newest_first[:50]
    assert "skip" not in older and "page=" not in older


# --- request detail -----------------------------------------------------------------------


def test_request_detail(client: Any, seeded: list[dict[str, Any]]) -> None:
    record = by_path(seeded, "/api/orders")
    response = client.get(f"/tracking/requests/{record['_id']}")
    assert response.status_code == 200
    page = text_of(response)
    assert 'POST</span> <span class="path">/api/orders?token=[Filtered]&page=2' in page
    assert "201 Created" in page
    assert '"order": 42,\n  "password": "[Filtered]"' in page  # pretty-printed JSON
    assert '"items": [\n    1,\n    2\n  ]' in page
    assert '"cart": {\n    "items": 3\n  }' in page  # custom data
    assert "50.0 ms in the app" in page
    assert "Chrome 124.0.0 on Windows" in page
    assert 'href="/tracking/requests?user=7"' in response.get_data(as_text=True)
    assert "api.orders" in page and "/api/orders</code>" in page


def test_filtered_values_stay_filtered(client: Any, seeded: list[dict[str, Any]]) -> None:
    record = by_path(seeded, "/api/orders")
    page = text_of(client.get(f"/tracking/requests/{record['_id']}"))
    assert page.count("[Filtered]") >= 4
    assert '<span class="filtered">[Filtered]</span>' in page
    curl = page.split('<pre id="curl" class="body">', 1)[1].split("</pre>", 1)[0]
    assert "Authorization" not in curl and "Set-Cookie" not in curl
    assert "Content-Type: application/json" in curl
    assert "--data-raw" in curl


def test_secrets_sent_to_the_app_never_show(dashboard_app: Flask, mongo: Any) -> None:
    app_client = dashboard_app.test_client()
    app_client.post(
        "/echo?api_key=" + SECRET,
        json={"password": SECRET, "name": "ada"},
        headers={"Authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}"},
    )
    [document] = [doc for doc in stored(dashboard_app, mongo) if doc["path"] == "/echo"]
    record_id = str(document["_id"])
    for url in (
        f"/tracking/requests/{record_id}",
        "/tracking/requests",
        "/tracking/live",
        "/tracking/live.json",
        "/tracking/?window=1h",
        "/tracking/endpoints/echo",
    ):
        body = app_client.get(url).get_data(as_text=True)
        assert SECRET not in body, url
    detail = text_of(app_client.get(f"/tracking/requests/{record_id}"))
    assert '"name": "ada"' in detail and "[Filtered]" in detail


def test_a_deeply_nested_json_body_does_not_break_the_request_page(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # Any client can send "[[[[..." (it looks like JSON even without a Content-Type); the
    # tracker stores it, then pretty_json's json.loads raises RecursionError (not the
    # ValueError it catches): the request's page is a 500, and so is every later visit.
    from flask import request as flask_request

    app = make_app()
    app.register_blueprint(make_blueprint(public=True))

    @app.post("/upload")
    def upload() -> str:
        flask_request.get_data()
        return "ok"

    client = app.test_client()
    sent = client.post("/upload", data="[" * 5000, content_type="application/json")
    assert sent.status_code == 200
    (record,) = [record for record in stored(app, mongo) if record["path"] == "/upload"]
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get(f"/tracking/requests/{record['_id']}")
    assert response.status_code == 200, response.status_code
    assert "[[[[" in text_of(response)


def test_binary_body_as_hex(client: Any, seeded: list[dict[str, Any]]) -> None:
    record = by_path(seeded, "/files/1")
    page = text_of(client.get(f"/tracking/requests/{record['_id']}"))
    assert "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  |................|" in page
    assert "00000040  40 41 42 43" in page and "|@ABCDEFGHIJKLMNO|" in page
    assert "truncated: the first 768 of 3072 bytes" in page
    assert "hex preview of the first 512 bytes" in page
    assert "00000200" not in page


def test_exception_and_no_body(client: Any, seeded: list[dict[str, Any]]) -> None:
    record = by_path(seeded, "/api/items/broken")
    page = text_of(client.get(f"/tracking/requests/{record['_id']}"))
    assert "ValueError: bad item" in page and "500 Internal Server Error" in page
    assert "no body" in page


def test_copy_as_curl_works_without_javascript(client: Any, seeded: list[dict[str, Any]]) -> None:
    record = by_path(seeded, "/api/items/3")
    page = client.get(f"/tracking/requests/{record['_id']}").get_data(as_text=True)
    assert '<pre id="curl" class="body">curl --globoff https://app.example.com/api/items/3' in page
    assert '<button type="button" class="copy" data-copy="curl" hidden>' in page
    assert "flask_tracking/copy.js" in page


@pytest.mark.parametrize(
    ("record_id", "message"),
    [
        ("nope", "&#39;nope&#39; is not a record id"),
        ("0" * 24, f"No record has the id {'0' * 24}"),
    ],
)
def test_unknown_record_is_the_dashboards_own_404(
    client: Any, record_id: str, message: str
) -> None:
    response = client.get(f"/tracking/requests/{record_id}")
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert "flask_tracking/dashboard.css" in page, "the dashboard's page, not Werkzeug's"
    assert "<h1>Not found</h1>" in page and message in page
    assert response.headers["X-Frame-Options"] == "DENY"


def test_one_signed_in_user_is_singular(make_app: Callable[..., Flask], mongo: Any) -> None:
    now = utc_now()
    mongo["tracking"].insert_many(
        [make_record(now - timedelta(minutes=5), user_id="7") for _ in range(2)]
    )
    app = make_app()
    app.register_blueprint(make_blueprint(public=True))
    page = app.test_client().get("/tracking/?window=1h").get_data(as_text=True)
    assert "1 signed-in user<" in page and "1 signed-in users" not in page


# --- escaping -----------------------------------------------------------------------------


def test_hostile_values_are_escaped_everywhere(client: Any, seeded: list[dict[str, Any]]) -> None:
    record = by_path(seeded, f"/{XSS}\x1b[31m")
    for url in (
        "/tracking/?window=1h",
        "/tracking/requests",
        "/tracking/live",
        f"/tracking/requests/{record['_id']}",
        "/tracking/endpoints/evil.<b>",
    ):
        body = client.get(url).get_data(as_text=True)
        assert "<script>alert" not in body, url
        assert "evil.<b>" not in body, url
        assert "\x1b" not in body, url
    detail = text_of(client.get(f"/tracking/requests/{record['_id']}"))
    assert f"/{XSS}\\x1b[31m?q=<i>" in detail  # shown, escaped, control character visible


def test_the_page_title_shows_control_characters_visibly(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # The <title> (a tab's name, a bookmark) took the method and the endpoint raw.
    record = make_record(utc_now(), method="GE\x1bT\u202e", endpoint="api\x1b\u202e")
    mongo["tracking"].insert_one(record)
    app = make_app()
    app.register_blueprint(make_blueprint(public=True))
    client = app.test_client()
    for url in (f"/tracking/requests/{record['_id']}", "/tracking/endpoints/api%1B%E2%80%AE"):
        page = client.get(url).get_data(as_text=True)
        title = re.search(r"<title>(.*?)</title>", page, re.S).group(1)
        assert "\x1b" not in title and "\u202e" not in title, (url, title)
        assert "\\x1b" in title, (url, title)


def test_live_json_is_text_only(client: Any) -> None:
    data = client.get("/tracking/live.json").get_json()
    hostile = next(row for row in data["records"] if row["endpoint"] == "evil.<b>")
    assert hostile["target"] == f"/{XSS}\\x1b[31m?q=<i>"  # JSON: the script sets textContent
    live_js = (PACKAGE / "static" / "flask_tracking" / "live.js").read_text(encoding="utf-8")
    assert "innerHTML" not in live_js and "textContent" in live_js


def test_templates_never_mark_data_safe() -> None:
    for template in (PACKAGE / "templates" / "flask_tracking").glob("*.html"):
        source = template.read_text(encoding="utf-8")
        assert not re.search(r"\|\s*safe|Markup|autoescape\s+false", source), template.name
        assert "<script>" not in source and "style=" not in source, template.name


def test_security_headers(client: Any) -> None:
    response = client.get("/tracking/")
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


# --- live view ----------------------------------------------------------------------------


def test_live_page(client: Any, seeded: list[dict[str, Any]]) -> None:
    page = client.get("/tracking/live?status=5xx").get_data(as_text=True)
    assert 'data-feed="/tracking/live.json?status=5xx"' in page
    assert 'data-interval="2000"' in page
    assert "flask_tracking/live.js" in page
    assert "reload it to see newer requests" in page  # what a page without scripts says
    assert page.count('<tr class="error">') == 5


class LiveView:
    """What the live page's script does: ask the feed after its cursor, drop the ids shown."""

    def __init__(self, client: Any, query: str = "") -> None:
        self.client, self.query = client, query
        first = self.feed()
        self.cursor = first["last"]
        self.shown = [row["id"] for row in first["records"]]
        self.first = first["records"]

    def feed(self, after: str = "") -> dict[str, Any]:
        query = "&".join(part for part in (self.query, f"after={after}" if after else "") if part)
        response = self.client.get(f"/tracking/live.json?{query}")
        assert response.status_code == 200
        return response.get_json()

    def poll(self) -> list[dict[str, Any]]:
        data = self.feed(self.cursor)
        assert data["last"] >= self.cursor  # the cursor never goes back
        self.cursor = data["last"]
        new = [row for row in data["records"] if row["id"] not in self.shown]
        self.shown += [row["id"] for row in new]
        return new


def test_live_feed_gives_the_records_after_the_last_one(
    client: Any, mongo: Any, seeded: list[dict[str, Any]]
) -> None:
    live = LiveView(client)
    assert len(live.first) == 20
    assert live.first[-1]["id"] == str(seeded[-1]["_id"])  # the newest stored, oldest first
    assert live.poll() == []
    fresh = [make_record(utc_now(), path=f"/fresh/{index}") for index in range(3)]
    mongo["tracking"].insert_many(fresh)
    update = live.poll()
    assert [row["target"] for row in update] == ["/fresh/0", "/fresh/1", "/fresh/2"]
    assert update[0]["url"] == f"/tracking/requests/{fresh[0]['_id']}"
    assert live.poll() == []
    filtered = LiveView(client, "path=/fresh/1")
    assert [row["target"] for row in filtered.first] == ["/fresh/1"]
    mongo["tracking"].insert_many(
        [make_record(utc_now(), path=path) for path in ("/x", "/fresh/1")]
    )
    assert [row["target"] for row in filtered.poll()] == ["/fresh/1"]


def object_id(seconds_ago: float) -> ObjectId:
    """A fresh id made ``seconds_ago`` (as a worker made it before its batch was stored)."""
    made = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return ObjectId(ObjectId.from_datetime(made).binary[:4] + ObjectId().binary[4:])


def test_live_feed_finds_a_record_stored_after_a_newer_one(client: Any, mongo: Any) -> None:
    """Two workers: B's record is stored and shown first; A's, made two seconds earlier, is
    stored after it (its batch waited in A's queue). Its id is below the newest shown: a
    cursor at the newest id would skip it for good."""
    mongo["tracking"].insert_many([make_record(utc_now(), path=f"/t/old/{n}") for n in range(3)])
    live = LiveView(client, "path=/t/")
    assert [row["target"] for row in live.first] == ["/t/old/0", "/t/old/1", "/t/old/2"]
    worker_b = make_record(utc_now(), path="/t/from/b", _id=object_id(0))
    mongo["tracking"].insert_one(worker_b)
    assert [row["target"] for row in live.poll()] == ["/t/from/b"]
    worker_a = make_record(utc_now(), path="/t/from/a", _id=object_id(2))
    mongo["tracking"].insert_one(worker_a)
    assert [row["target"] for row in live.poll()] == ["/t/from/a"]
    assert live.poll() == []
    assert len(live.shown) == len(set(live.shown)) == 5


def test_live_feed_pages_through_a_burst(client: Any, mongo: Any) -> None:
    """More records than one answer holds (LIVE_MAX_RECORDS = 100): each comes once, in id
    order. Settled ones (ids older than 10 s) page on; the cursor then stays 10 s back, so
    the records of the last 10 s beyond one answer wait until they settle."""
    live = LiveView(client, "path=/t/")
    live.cursor = str(object_id(120))  # as if the page had been loaded two minutes ago
    burst = [
        make_record(utc_now(), path=f"/t/burst/{n}", _id=object_id(60 - n * 0.1))
        for n in range(230)
    ]
    burst += [make_record(utc_now(), path=f"/t/now/{n}") for n in range(120)]
    mongo["tracking"].insert_many(burst)
    seen: list[str] = []
    for _ in range(8):
        seen += [row["target"] for row in live.poll()]
    assert seen == [record["path"] for record in burst[:330]]
    assert ObjectId(live.cursor).generation_time < datetime.now(timezone.utc) - timedelta(seconds=9)


def test_live_feed_rejects_a_bad_cursor(client: Any) -> None:
    response = client.get("/tracking/live.json?after=xyz")
    assert response.status_code == 400
    assert "after takes a record id" in response.get_json()["error"]


def test_live_interval(make_app: Callable[..., Flask], seeded: Any) -> None:
    app = make_app()
    app.register_blueprint(make_blueprint(public=True, live_interval_seconds=0.5))
    assert 'data-interval="500"' in app.test_client().get("/tracking/live").get_data(as_text=True)


# --- static files, other apps, database trouble -------------------------------------------


def test_static_files_are_served(client: Any) -> None:
    for name, kind in (
        ("dashboard.css", "text/css"),
        ("live.js", "javascript"),
        ("copy.js", "javascript"),
    ):
        response = client.get(f"/tracking/static/flask_tracking/{name}")
        assert response.status_code == 200 and kind in response.content_type
        response.close()


def test_no_cdn_anywhere() -> None:
    for path in PACKAGE.rglob("*"):
        if path.suffix in (".html", ".css", ".js"):
            assert not re.search(r"https?://", path.read_text(encoding="utf-8")), path


def test_another_prefix_and_name(make_app: Callable[..., Flask], seeded: Any) -> None:
    app = make_app()
    app.register_blueprint(make_blueprint(public=True, name="ops", url_prefix="/ops/traffic"))
    client = app.test_client()
    page = client.get("/ops/traffic/requests").get_data(as_text=True)
    assert "/ops/traffic/static/flask_tracking/dashboard.css" in page
    assert len(list_ids_under(page, "/ops/traffic")) == 36


def list_ids_under(page: str, prefix: str) -> list[str]:
    return re.findall(rf'{re.escape(prefix)}/requests/([0-9a-f]{{24}})"', page)


def test_without_the_extension_it_reads_the_default_alias(seeded: Any) -> None:
    app = Flask("bare")
    app.register_blueprint(make_blueprint(public=True))
    response = app.test_client().get("/tracking/requests")
    assert response.status_code == 200 and len(list_ids(response)) == 36


def test_database_not_connected_is_a_503() -> None:
    app = Flask("unconnected")
    app.register_blueprint(make_blueprint(public=True))
    response = app.test_client().get("/tracking/requests")
    assert response.status_code == 503
    assert "Cannot read the tracking records" in text_of(response)


# --- pure helpers -------------------------------------------------------------------------


def test_count_axes_have_whole_steps() -> None:
    assert [count_ceiling(value) for value in (0, 1, 2, 3, 5, 7, 10, 11, 45, 61, 999)] == [
        2,
        2,
        2,
        4,
        6,
        10,
        10,
        20,
        60,
        100,
        1000,
    ]
    start = datetime(2024, 5, 1, 10)
    chart = timeline_chart(
        [{"start": start, "count": 1, "errors": 0, "p95": 3.0}], [start], timedelta(hours=1)
    )
    axis = [label.text for label in chart.labels if label.anchor == "end"]
    assert axis == ["0", "1", "2"]
    histogram = histogram_chart([(4.0, 1)])
    assert [label.text for label in histogram.labels if label.anchor == "end"] == ["0", "1", "2"]


def test_a_lone_p95_point_gets_a_marker() -> None:
    hours = [datetime(2024, 5, 1, hour) for hour in range(10, 15)]
    rows = [
        {"start": hours[0], "count": 3, "errors": 0, "p95": 10.0},
        {"start": hours[1], "count": 2, "errors": 0, "p95": 20.0},
        {"start": hours[3], "count": 1, "errors": 1, "p95": 40.0},  # alone between gaps
    ]
    chart = timeline_chart(rows, hours, timedelta(hours=1))
    assert len(chart.lines) == 1 and len(chart.lines[0].split()) == 2
    assert len(chart.markers) == 1
    x, _ = chart.markers[0]
    assert chart.plot_left < x < chart.plot_right


def test_the_timeline_starts_at_the_first_data() -> None:
    hours = [datetime(2024, 5, 1, hour) for hour in range(24)]
    rows = [{"start": hours[hour], "count": 2, "errors": 0, "p95": 5.0} for hour in (13, 15)]
    chart = timeline_chart(rows, hours, timedelta(hours=1))
    times = [label.text for label in chart.labels if label.y == chart.height - 8]
    assert times[0] == "05-01 13:00"
    assert "11 buckets" in chart.description  # 13:00 to 23:00, the end of the window kept
    first_bar = min(bar.x for bar in chart.bars)
    assert first_bar < chart.plot_left + (chart.plot_right - chart.plot_left) / 11


def test_timeline_page_draws_a_marker_for_one_point(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    record = make_record(utc_now() - timedelta(minutes=5))
    mongo["tracking"].insert_one(record)
    store_rollups(mongo, [record])
    app = make_app()
    app.register_blueprint(make_blueprint(public=True))
    page = app.test_client().get("/tracking/?window=24h").get_data(as_text=True)
    assert '<circle class="p95"' in page


def test_nice_ceiling_and_formats() -> None:
    assert [nice_ceiling(value) for value in (0, 0.3, 1, 3, 7, 11, 999)] == [
        1.0,
        0.5,
        1,
        5,
        10,
        20,
        1000,
    ]
    assert [format_ms(value) for value in (None, 0.4, 12.34, 1500)] == [
        "-",
        "0.40 ms",
        "12.3 ms",
        "1.50 s",
    ]
    assert hexdump(b"AB\x00") == "00000000  41 42 00" + " " * 39 + "  |AB.|"


def test_window_buckets() -> None:
    start = datetime(2024, 5, 1, 10, 30)
    assert Window(start, start + timedelta(hours=1), None).bucket == "minute"
    assert len(Window(start, start + timedelta(hours=1), None).bucket_starts()) == 60
    assert Window(start, start + timedelta(days=7), None).bucket == "hour"
    assert Window(start, start + timedelta(days=30), None).bucket == "day"
    assert Window(start, start + timedelta(days=5000), None).bucket_starts() == []


# --- the config switch (TRACKING_DASHBOARD), once the wiring of extension.py is in ---------

wiring = pytest.mark.skipif(
    not hasattr(Tracking, "dashboard_access"),
    reason="the dashboard wiring (Tracking.dashboard_access, TRACKING_DASHBOARD) is not applied",
)


@pytest.fixture
def switched_app(mongo: Any) -> Iterator[Callable[..., Flask]]:
    """An app with the test views and a Tracking made by the test, with ``config``."""
    made: list[tuple[Tracking, Flask]] = []

    def factory(tracking: Tracking, **config: Any) -> Flask:
        app = Flask(f"switched_{len(made)}")
        app.config.update(TESTING=True, **FAST_WRITER, **config)
        add_routes(app)
        tracking.init_app(app)
        made.append((tracking, app))
        return app

    yield factory
    for tracking, app in made:
        tracking._apps[app].writer.shutdown(1.0)


@wiring
def test_without_an_access_check_the_dashboard_answers_403_saying_how_to_register_one(
    switched_app: Callable[..., Flask], seeded: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tracking = Tracking()
    app = switched_app(tracking, TRACKING_DASHBOARD=True)  # no check yet: no error either
    client = app.test_client()
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 403, url
        assert "@tracking.dashboard_access" in response.get_data(as_text=True)
    warnings = [r for r in caplog.records if "dashboard_access" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per request


@wiring
def test_an_access_check_registered_after_init_app_opens_the_dashboard(
    switched_app: Callable[..., Flask], seeded: Any
) -> None:
    tracking = Tracking()
    app = switched_app(tracking, TRACKING_DASHBOARD=True)  # the natural order: Tracking(app)...

    @tracking.dashboard_access  # ...then the check, as with Flask-Login's user_loader
    def check() -> bool:
        return True

    for url in PAGES:
        assert app.test_client().get(url).status_code == 200, url


@wiring
def test_the_switch_with_an_access_check(
    switched_app: Callable[..., Flask], mongo: Any, seeded: Any
) -> None:
    tracking = Tracking()
    allowed = [False]

    @tracking.dashboard_access
    def check() -> bool:
        return allowed[0]

    app = switched_app(
        tracking,
        TRACKING_DASHBOARD=True,
        TRACKING_DASHBOARD_URL_PREFIX="/ops/",
        TRACKING_DASHBOARD_DEFAULT_WINDOW="1h",
        TRACKING_DASHBOARD_LIVE_INTERVAL_SECONDS=5,
    )
    client = app.test_client()
    assert client.get("/ops/").status_code == 403
    assert client.get("/tracking/", buffered=True).status_code == 404
    allowed[0] = True
    page = client.get("/ops/").get_data(as_text=True)
    assert "Last hour" in page and re.search(r'Requests</div>\s*<div class="value">23<', page)
    assert 'data-interval="5000"' in client.get("/ops/live").get_data(as_text=True)
    client.get("/hello")
    paths = [document["path"] for document in stored(app, mongo)]
    assert "/hello" in paths and not [path for path in paths if path.startswith("/ops")]


@wiring
def test_the_switch_and_the_public_flag(switched_app: Callable[..., Flask], seeded: Any) -> None:
    app = switched_app(Tracking(), TRACKING_DASHBOARD=True, TRACKING_DASHBOARD_PUBLIC=True)
    for url in PAGES:
        assert app.test_client().get(url).status_code == 200, url


@wiring
def test_a_check_registered_later_still_guards_a_public_dashboard(
    switched_app: Callable[..., Flask], seeded: Any
) -> None:
    tracking = Tracking()
    app = switched_app(tracking, TRACKING_DASHBOARD=True, TRACKING_DASHBOARD_PUBLIC=True)
    tracking.dashboard_access(lambda: False)
    assert app.test_client().get("/tracking/").status_code == 403


@wiring
def test_the_switch_settings_agree_with_the_blueprint() -> None:
    from flask_tracking.config import DASHBOARD_WINDOWS, DEFAULTS

    assert tuple(PRESETS) == DASHBOARD_WINDOWS
    assert DEFAULTS["TRACKING_DASHBOARD_DEFAULT_WINDOW"] == "24h"
    assert DEFAULTS["TRACKING_DASHBOARD_URL_PREFIX"] == "/tracking"
    with pytest.raises(TypeError):
        Tracking().dashboard_access(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [30 * 86400, 1e300])
def test_a_long_live_interval_is_refused_or_within_what_set_timeout_takes(
    make_app: Callable[..., Flask], seconds: float
) -> None:
    # docs/reference/configuration.md: TRACKING_DASHBOARD_LIVE_INTERVAL_SECONDS is "how often the
    # dashboard's live view asks for new requests", validated at init_app. Any value is accepted
    # from 0.1 up, and live.js hands interval * 1000 to window.setTimeout, which browsers run at
    # once for delays above 2**31 - 1 ms (24.8 days): a long interval makes the page poll
    # continuously instead of rarely.
    try:
        app = make_app(
            TRACKING_DASHBOARD=True,
            TRACKING_DASHBOARD_PUBLIC=True,
            TRACKING_DASHBOARD_LIVE_INTERVAL_SECONDS=seconds,
        )
    except ValueError as error:
        assert str(error).startswith("TRACKING_DASHBOARD_LIVE_INTERVAL_SECONDS ")
        return
    page = app.test_client().get("/tracking/live").get_data(as_text=True)
    (interval,) = re.findall(r'data-interval="([^"]*)"', page)
    assert 0 < float(interval) <= 2**31 - 1


def test_requests_to_the_dashboards_urls_that_routing_answers_are_not_recorded_either(
    dashboard_app: Flask, mongo: Any
) -> None:
    # docs/dashboard.md: "The dashboard's own requests are never recorded". Routing answers
    # /tracking (308 to /tracking/) and /tracking/<no such page> (404) before the blueprint's
    # skip() runs, so those requests under the dashboard's prefix are recorded.
    client = dashboard_app.test_client()
    client.get("/tracking").close()
    client.get("/tracking/no-such-page").close()
    client.get("/hello").close()
    paths = [document["path"] for document in stored(dashboard_app, mongo)]
    assert "/hello" in paths
    assert not [path for path in paths if path.startswith("/tracking")], paths


@pytest.mark.parametrize("page", ["/tracking/requests", "/tracking/live.json"])
def test_a_deeply_nested_json_data_filter_is_a_400_too(client: Any, page: str) -> None:
    # docs/dashboard.md: the request list and live feed take "the filters of flask tracking list
    # (the same code)", and a bad filter is a 400 that says why. Deeply nested JSON in data=
    # (RecursionError) was a 500 instead.
    response = client.get(f"{page}?data=tags%3D" + "%5B" * 5000)
    assert response.status_code == 400


def test_a_dashboard_on_a_subdomain_leaves_the_apps_own_pages_under_its_prefix_recorded(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    # Review: the app-level hook that skips "every request under the dashboard's URL prefix"
    # compares request.path with the prefix only; a dashboard registered on a subdomain
    # (ops.example.test/tracking/) then also skips the app's own /tracking/... pages on every
    # other host, which are no part of the dashboard and should be recorded.
    app = make_app(SERVER_NAME="example.test")
    app.subdomain_matching = True  # Flask(subdomain_matching=True), which make_app cannot pass

    @app.route("/tracking/orders")
    def shop_tracking_orders() -> str:  # the shop's own parcel-tracking page
        return "your parcels"

    app.register_blueprint(make_blueprint(public=True), subdomain="ops")
    client = app.test_client()
    assert client.get("/tracking/", base_url="http://ops.example.test").status_code == 200
    response = client.get("/tracking/orders", base_url="http://example.test")
    assert response.get_data(as_text=True) == "your parcels"
    client.get("/hello", base_url="http://example.test").close()
    paths = [document["path"] for document in stored(app, mongo)]
    assert "/hello" in paths
    assert paths.count("/tracking/orders") == 1, paths

"""Which requests are tracked: view and blueprint rules (flask_tracking.scope), path rules
(TRACKING_INCLUDE against TRACKING_EXCLUDE), opt-outs (skip_if, skip(), Do-Not-Track) and how
they combine, end to end."""

from __future__ import annotations

import functools
import gc
import sys
import weakref
from typing import Any, Callable

import pytest
from flask import Blueprint, Flask, request
from flask.views import MethodView
from werkzeug.test import EnvironBuilder

from flask_tracking import Tracking, request_id, skip
from flask_tracking.policy import Policy
from flask_tracking.scope import EXCLUDE, INCLUDE, EndpointVerdicts, mark_view, view_mark

from .conftest import FAST_WRITER, stored
from .test_extension import ZeroStream


def tracking_of(app: Flask) -> Tracking:
    return app.extensions["tracking"]


def stored_paths(app: Flask, mongo: Any) -> list[str]:
    return [doc["path"] for doc in stored(app, mongo)]


def visit(app: Flask, *paths: str, **kwargs: Any) -> None:
    """GET each path; buffered, so error pages (recorded on close) are finished too."""
    client = app.test_client()
    for path in paths:
        client.get(path, buffered=True, **kwargs)


def passthrough(view: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that wraps the view the usual way (functools.wraps)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------- view marks


def test_exclude_works_above_and_below_route_and_through_wrappers(app: Flask, mongo: Any) -> None:
    tracking = tracking_of(app)

    @tracking.exclude
    @app.get("/above")
    def above() -> str:
        return "above"

    @app.get("/below")
    @tracking.exclude
    def below() -> str:
        return "below"

    @app.get("/wrapped")
    @passthrough
    @tracking.exclude
    def wrapped() -> str:
        return "wrapped"

    @tracking.exclude
    @app.get("/wrapped-outside")
    @passthrough
    def wrapped_outside() -> str:
        return "wrapped-outside"

    def added() -> str:
        return "added"

    app.add_url_rule("/added", view_func=tracking.exclude(added))
    visit(app, "/above", "/below", "/wrapped", "/wrapped-outside", "/added", "/hello")
    assert stored_paths(app, mongo) == ["/hello"]


def test_marks_are_found_through_wrappers_that_only_set_wrapped() -> None:
    def view() -> str:
        return "v"

    mark_view(view, EXCLUDE)

    def bare_wrapper() -> str:
        return view()

    bare_wrapper.__wrapped__ = view  # type: ignore[attr-defined]
    assert view_mark(bare_wrapper) == EXCLUDE
    assert view_mark(None) is None
    assert view_mark(lambda: None) is None


def test_a_wrapper_cycle_does_not_hang() -> None:
    def view() -> str:
        return "v"

    view.__wrapped__ = view  # type: ignore[attr-defined]
    assert view_mark(view) is None


def test_class_based_views_and_bound_methods_can_be_marked(app: Flask, mongo: Any) -> None:
    tracking = tracking_of(app)

    @tracking.exclude
    class Items(MethodView):
        def get(self) -> str:
            return "items"

    app.add_url_rule("/items", view_func=Items.as_view("items"))

    class Handlers:
        def ping(self) -> str:
            return "pong"

    handlers = Handlers()
    app.add_url_rule("/ping", view_func=tracking.exclude(handlers.ping))
    visit(app, "/items", "/ping", "/hello")
    assert stored_paths(app, mongo) == ["/hello"]


def test_default_exclude_tracks_only_included_views(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_DEFAULT="exclude")
    tracking = tracking_of(app)

    @app.get("/included")
    @tracking.include
    def included() -> str:
        return "in"

    visit(app, "/hello", "/included", "/custom")
    assert stored_paths(app, mongo) == ["/included"]


@pytest.mark.parametrize("testing", [True, False])
def test_an_excluded_view_that_raises_is_not_recorded(
    make_app: Callable[..., Flask], mongo: Any, testing: bool
) -> None:
    app = make_app(testing=testing)

    @app.get("/quiet-boom")
    @tracking_of(app).exclude
    def quiet_boom() -> str:
        raise ValueError("quiet")

    client = app.test_client()
    if testing:  # the exception propagates and after_request never runs
        with pytest.raises(ValueError, match="quiet"):
            client.get("/quiet-boom")
    else:
        assert client.get("/quiet-boom").status_code == 500
    client.get("/hello")
    assert stored_paths(app, mongo) == ["/hello"]


def test_requests_matching_no_view_follow_the_path_rules_only(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_DEFAULT="exclude", TRACKING_EXCLUDE=[r"/wp-"])
    client = app.test_client()
    assert client.get("/no-such-page", buffered=True).status_code == 404
    assert client.post("/hello", buffered=True).status_code == 405
    assert client.get("/wp-login.php", buffered=True).status_code == 404
    client.get("/hello")  # a view, not included
    docs = stored(app, mongo)
    assert [(doc["path"], doc["status_code"]) for doc in docs] == [
        ("/no-such-page", 404),
        ("/hello", 405),
    ]
    assert all(doc["endpoint"] is None for doc in docs)


# ---------------------------------------------------------------------------- blueprints


def blueprint_with_views(name: str, *views: str) -> Blueprint:
    blueprint = Blueprint(name, __name__)
    for view in views:
        blueprint.add_url_rule(f"/{view}", view, functools.partial(str, f"{name}.{view}"))
    return blueprint


def test_exclude_blueprint_by_object_or_by_name(app: Flask, mongo: Any) -> None:
    tracking = tracking_of(app)
    admin = blueprint_with_views("admin", "users")
    internal = blueprint_with_views("internal", "stats")
    public = blueprint_with_views("public", "page")
    tracking.exclude_blueprint(admin)
    tracking.exclude_blueprint("internal")
    app.register_blueprint(admin, url_prefix="/admin")
    app.register_blueprint(internal, url_prefix="/internal")
    app.register_blueprint(public, url_prefix="/public")
    visit(app, "/admin/users", "/internal/stats", "/public/page")
    assert stored_paths(app, mongo) == ["/public/page"]


def test_a_blueprint_object_matches_whatever_name_it_is_registered_under(
    app: Flask, mongo: Any
) -> None:
    tracking = tracking_of(app)
    shop = blueprint_with_views("shop", "cart")
    tracking.exclude_blueprint(shop)
    app.register_blueprint(shop, url_prefix="/eu", name="shop_eu")
    app.register_blueprint(shop, url_prefix="/us", name="shop_us")
    visit(app, "/eu/cart", "/us/cart", "/hello")
    assert stored_paths(app, mongo) == ["/hello"]


def test_include_blueprint_with_default_exclude(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_DEFAULT="exclude")
    api = blueprint_with_views("api", "orders", "health")
    tracking_of(app).include_blueprint(api)
    app.register_blueprint(api, url_prefix="/api")
    visit(app, "/api/orders", "/api/health", "/hello")
    assert stored_paths(app, mongo) == ["/api/orders", "/api/health"]


def test_the_view_mark_wins_over_its_blueprint_rule(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app()
    tracking = tracking_of(app)
    admin = Blueprint("admin", __name__)
    api = Blueprint("api", __name__)

    @admin.get("/login")
    @tracking.include  # audit logins even though the admin pages are not tracked
    def login() -> str:
        return "login"

    @admin.get("/users")
    def users() -> str:
        return "users"

    @tracking.exclude
    @api.get("/health")
    def health() -> str:
        return "ok"

    @api.get("/orders")
    def orders() -> str:
        return "orders"

    tracking.exclude_blueprint(admin)
    tracking.include_blueprint(api)
    app.register_blueprint(admin, url_prefix="/admin")
    app.register_blueprint(api, url_prefix="/api")
    visit(app, "/admin/login", "/admin/users", "/api/health", "/api/orders")
    assert stored_paths(app, mongo) == ["/admin/login", "/api/orders"]


def test_the_innermost_blueprint_rule_wins(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_DEFAULT="exclude")
    tracking = tracking_of(app)
    parent = blueprint_with_views("parent", "own")
    child = blueprint_with_views("child", "page")
    quiet = blueprint_with_views("quiet", "page")
    parent.register_blueprint(child, url_prefix="/child")
    parent.register_blueprint(quiet, url_prefix="/quiet")
    tracking.include_blueprint(parent)
    tracking.exclude_blueprint("parent.quiet")  # nested blueprints go by their dotted name
    app.register_blueprint(parent, url_prefix="/parent")
    visit(app, "/parent/own", "/parent/child/page", "/parent/quiet/page")
    assert stored_paths(app, mongo) == ["/parent/own", "/parent/child/page"]


def test_rules_added_after_the_first_request_apply_to_the_next(app: Flask, mongo: Any) -> None:
    reports = blueprint_with_views("reports", "daily")
    app.register_blueprint(reports, url_prefix="/reports")
    visit(app, "/reports/daily")
    tracking_of(app).exclude_blueprint(reports)
    visit(app, "/reports/daily")
    tracking_of(app).include_blueprint("reports")
    visit(app, "/reports/daily")
    assert stored_paths(app, mongo) == ["/reports/daily", "/reports/daily"]


def test_blueprint_rules_need_a_blueprint_or_a_name(app: Flask) -> None:
    for wrong in (None, "", 3):
        with pytest.raises(TypeError, match="Blueprint or a blueprint name"):
            tracking_of(app).exclude_blueprint(wrong)  # type: ignore[arg-type]


def test_verdicts_are_worked_out_once_per_endpoint(
    app: Flask, mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_resolve = EndpointVerdicts.resolve

    def counting_resolve(self: EndpointVerdicts, endpoint: str) -> bool:
        calls.append(endpoint)
        return real_resolve(self, endpoint)

    monkeypatch.setattr(EndpointVerdicts, "resolve", counting_resolve)
    visit(app, *["/hello"] * 5, *["/custom"] * 3, "/missing-page")
    assert sorted(calls) == ["custom", "hello"]
    assert len(stored(app, mongo)) == 9


def test_a_failing_verdict_keeps_the_record_and_is_counted_once(
    app: Flask, mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: EndpointVerdicts, endpoint: str) -> bool:
        raise RuntimeError("tracker bug")

    monkeypatch.setattr(EndpointVerdicts, "resolve", broken)
    visit(app, "/hello", "/hello")
    assert stored_paths(app, mongo) == ["/hello", "/hello"]
    assert tracking_of(app).stats(app)["capture_errors"] == 1


class BrokenViews(dict):  # type: ignore[type-arg]
    def get(self, *args: Any) -> Any:
        raise LookupError("broken view table")


def test_resolution_without_an_error_callback_raises() -> None:
    app = Flask("bare")
    app.view_functions = BrokenViews()
    verdicts = EndpointVerdicts(app, {}, track_by_default=True)
    with pytest.raises(LookupError):
        verdicts.tracks("anything")
    errors: list[BaseException | None] = []
    verdicts.on_error = lambda: errors.append(sys.exc_info()[1])
    assert verdicts.tracks("anything") is True
    assert [type(error) for error in errors] == [LookupError]


def test_the_app_is_not_kept_alive_by_its_verdicts(mongo: Any) -> None:
    tracking = Tracking()

    def build() -> weakref.ref[Flask]:
        app = Flask("short_lived")
        app.config.update(TESTING=True, **FAST_WRITER)
        tracking.init_app(app)

        @app.get("/name")
        def name() -> str:
            return app.name  # a view that refers to its app, as most do

        app.test_client().get("/name")
        assert tracking.flush(5)
        tracking._apps[app].writer.shutdown(1)
        return weakref.ref(app)

    app_ref = build()
    gc.collect()
    assert app_ref() is None
    assert len(tracking._apps) == 0


def test_verdicts_of_a_collected_app_fall_back_to_the_default() -> None:
    app = Flask("gone")
    verdicts = EndpointVerdicts(app, {}, track_by_default=False)
    del app
    gc.collect()
    assert verdicts.tracks("anything") is False


# ---------------------------------------------------------------------------- path rules


def test_path_exclude_always_wins(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_INCLUDE=[r"/api/"], TRACKING_EXCLUDE=[r"/api/internal"])
    tracking = tracking_of(app)

    @app.get("/api/internal/metrics")
    @tracking.include
    def metrics() -> str:
        return "metrics"

    @app.get("/api/orders")
    def orders() -> str:
        return "orders"

    @app.get("/api/secret")
    @tracking.exclude
    def secret() -> str:
        return "secret"

    visit(app, "/api/internal/metrics", "/api/orders", "/api/secret", "/hello", "/api/nothing")
    # TRACKING_INCLUDE keeps /api/ only; TRACKING_EXCLUDE beats @tracking.include; the view
    # rule still applies to included paths; a 404 under /api/ follows the path rules.
    assert stored_paths(app, mongo) == ["/api/orders", "/api/nothing"]


def test_include_paths_use_re_match_like_exclude() -> None:
    from flask_tracking.config import load_config

    policy = Policy(load_config({"TRACKING_INCLUDE": ["/api", "/v[0-9]+/"]}))
    assert policy.should_track({"PATH_INFO": "/api/x"}) is True
    assert policy.should_track({"PATH_INFO": "/v2/x"}) is True
    assert policy.should_track({"PATH_INFO": "/x/api"}) is False  # match anchors at the start
    assert policy.should_track({"PATH_INFO": "/"}) is False
    assert Policy(load_config({})).should_track({"PATH_INFO": "/x/api"}) is True


def test_excluded_paths_get_no_request_id(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_EXCLUDE=[r"/health"])
    seen: list[Any] = []

    @app.get("/health")
    def health() -> str:
        seen.append(request_id())
        return "ok"

    visit(app, "/health")
    assert seen == [None]
    assert stored(app, mongo) == []


# ---------------------------------------------------------------------------- opt-outs


@pytest.mark.parametrize(
    ("headers", "recorded"),
    [
        ({}, True),
        ({"DNT": "1"}, False),
        ({"Sec-GPC": "1"}, False),
        ({"DNT": " 1 "}, False),
        ({"DNT": "0"}, True),
        ({"Sec-GPC": "0", "DNT": "null"}, True),
    ],
)
def test_honor_dnt(
    make_app: Callable[..., Flask], mongo: Any, headers: dict[str, str], recorded: bool
) -> None:
    honoring = make_app(TRACKING_HONOR_DNT=True)
    ignoring = make_app()
    assert honoring.test_client().get("/hello", headers=headers).data == b"Hello"
    assert ignoring.test_client().get("/custom", headers=headers).data == b"ok"
    assert tracking_of(ignoring).flush(5)
    expected = ["/hello", "/custom"] if recorded else ["/custom"]
    assert sorted(stored_paths(honoring, mongo)) == sorted(expected)


def test_dnt_requests_that_fail_are_not_recorded_either(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(testing=False, TRACKING_HONOR_DNT=True)
    assert app.test_client().get("/boom", headers={"DNT": "1"}).status_code == 500
    assert stored(app, mongo) == []


def test_skip_if_predicate_with_an_opt_out_cookie(app: Flask, mongo: Any) -> None:
    tracking = tracking_of(app)
    seen: list[str] = []

    @tracking.skip_if
    def opted_out(current: Any) -> bool:
        seen.append(current.path)
        return current.cookies.get("no_tracking") == "1"

    client = app.test_client()
    client.get("/hello")
    client.set_cookie("no_tracking", "1")
    client.get("/custom")
    assert stored_paths(app, mongo) == ["/hello"]
    assert seen == ["/hello", "/custom"]


def test_skip_if_runs_once_and_only_for_tracked_views(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(testing=False, TRACKING_EXCLUDE=[r"/custom"])
    tracking = tracking_of(app)
    calls: list[str] = []

    @app.get("/excluded-view")
    @tracking.exclude
    def excluded_view() -> str:
        return "x"

    @tracking.skip_if
    def counting(current: Any) -> bool:
        calls.append(current.path)
        return False

    visit(app, "/boom", "/custom", "/excluded-view", "/hello")
    assert calls == ["/boom", "/hello"]  # once, though a failing view is snapshotted twice
    assert stored_paths(app, mongo) == ["/boom", "/hello"]


def test_skip_if_applies_to_a_view_that_raises_in_testing_mode(app: Flask, mongo: Any) -> None:
    @tracking_of(app).skip_if
    def no_errors_please(current: Any) -> bool:
        return current.args.get("private") == "1"

    client = app.test_client()
    for query in ("?private=1", ""):
        with pytest.raises(ValueError, match="kaboom"):
            client.get(f"/boom{query}")
    [doc] = stored(app, mongo)
    assert (doc["path"], doc["query_params"]) == ("/boom", "")


def test_a_raising_skip_if_skips_the_request_and_is_counted(app: Flask, mongo: Any) -> None:
    @tracking_of(app).skip_if
    def broken(current: Any) -> bool:
        raise KeyError("bug in the predicate")

    assert app.test_client().get("/hello").data == b"Hello"
    assert stored(app, mongo) == []
    assert tracking_of(app).stats(app)["capture_errors"] == 1


def test_skip_from_a_view_a_hook_and_a_failing_view(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app()

    @app.get("/private")
    def private() -> str:
        skip()
        return "private"

    @app.before_request
    def skip_bots() -> None:
        if request.headers.get("User-Agent") == "bot":
            skip()

    @app.get("/private-boom")
    def private_boom() -> str:
        skip()
        raise ValueError("private failure")

    client = app.test_client()
    assert client.get("/private").data == b"private"
    client.get("/custom", headers={"User-Agent": "bot"})
    with pytest.raises(ValueError, match="private failure"):
        client.get("/private-boom")
    client.get("/hello")
    assert stored_paths(app, mongo) == ["/hello"]


def test_skip_outside_a_request_raises_and_is_a_no_op_when_untracked(mongo: Any) -> None:
    with pytest.raises(RuntimeError, match=r"skip\(\) was called outside a request"):
        skip()
    plain = Flask("untracked")
    with plain.test_request_context("/"):
        skip()  # the tracker does not watch this request: nothing to do


def test_an_excluded_view_costs_no_copy_and_no_read_after_the_response(
    app: Flask, mongo: Any
) -> None:
    @app.post("/upload-ignored")
    @tracking_of(app).exclude
    def upload_ignored() -> str:
        return "ignored"

    stream = ZeroStream(10_000)
    environ = EnvironBuilder(path="/upload-ignored", method="POST").get_environ()
    environ.update({"wsgi.input": stream, "CONTENT_LENGTH": "10000"})
    result = app.wsgi_app(environ, lambda status, headers, *args: None)
    assert b"".join(result) == b"ignored"
    getattr(result, "close", lambda: None)()
    assert stream.remaining == 10_000, "the tracker read the body of an excluded view"
    assert stored(app, mongo) == []


def test_verdicts_class_resolves_marks_blueprints_and_default() -> None:
    app = Flask("unit")
    admin = Blueprint("admin", __name__)

    @admin.get("/a")
    def a() -> str:
        return "a"

    def b() -> str:
        return "b"

    admin.add_url_rule("/b", "b", mark_view(b, INCLUDE))
    app.register_blueprint(admin)
    rules: dict[object, str] = {admin: EXCLUDE}
    verdicts = EndpointVerdicts(app, rules, track_by_default=True)
    assert verdicts.tracks("admin.a") is False
    assert verdicts.tracks("admin.b") is True
    assert verdicts.tracks("unknown") is True
    assert EndpointVerdicts(app, {}, track_by_default=False).tracks("unknown") is False
    rules[admin] = INCLUDE
    assert verdicts.tracks("admin.a") is False  # cached until cleared
    verdicts.clear()
    assert verdicts.tracks("admin.a") is True

"""Unit tests of flask_tracking.policy: which requests, bodies and records are kept."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.wrappers import Request

from flask_tracking.config import load_config
from flask_tracking.policy import (
    SKIP,
    SKIP_ENVIRON_KEY,
    TRACK,
    TRACK_WITH_BODIES,
    Policy,
    wsgi_path,
)


def policy(**settings: Any) -> Policy:
    return Policy(load_config(dict(settings)))


def environ(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    """A WSGI environ; ``path`` is text, passed as a WSGI server does (UTF-8 bytes as latin-1)."""
    return {"PATH_INFO": path.encode().decode("latin-1"), "REQUEST_METHOD": method, **extra}


# --------------------------------------------------------------------------------------------
# should_track
# --------------------------------------------------------------------------------------------


def test_everything_is_tracked_by_default() -> None:
    default = policy()
    for method in ("GET", "POST", "OPTIONS", "HEAD"):
        assert default.should_track(environ("/any/path", method)) is True
    assert default.should_track({}) is True


@pytest.mark.parametrize(
    ("path", "tracked"),
    [
        ("/static", False),
        ("/static/app.js", False),  # re.match is not anchored at the end
        ("/staticky", False),
        ("/api/static", True),  # ...but it is anchored at the start
        ("/", True),
        ("/Static", True),  # case-sensitive
    ],
)
def test_exclude_uses_re_match(path: str, tracked: bool) -> None:
    assert policy(TRACKING_EXCLUDE=["/static"]).should_track(environ(path)) is tracked


def test_exclude_with_an_end_anchor_and_several_patterns() -> None:
    rules = policy(TRACKING_EXCLUDE=[r"/hello$", r"/health"])
    assert rules.should_track(environ("/hello")) is False
    assert rules.should_track(environ("/hello/world")) is True
    assert rules.should_track(environ("/healthz")) is False
    assert rules.should_track(environ("/x/health")) is True


def test_exclude_matches_the_root_when_path_info_is_missing_or_empty() -> None:
    rules = policy(TRACKING_EXCLUDE=["/$"])
    assert rules.should_track({}) is False
    assert rules.should_track({"PATH_INFO": ""}) is False
    assert rules.should_track(environ("/a")) is True


def test_exclude_sees_a_leading_slash_even_when_path_info_lacks_it() -> None:
    assert policy(TRACKING_EXCLUDE=["/admin"]).should_track({"PATH_INFO": "admin"}) is False


def test_exclude_non_ascii_paths_are_matched_decoded() -> None:
    rules = policy(TRACKING_EXCLUDE=["/café", "/日本/"])
    assert rules.should_track(environ("/café/menu")) is False
    assert rules.should_track(environ("/日本/x")) is False
    assert rules.should_track(environ("/cafe")) is True
    assert rules.should_track(environ("/日")) is True


def test_exclude_is_not_bypassed_by_a_doubled_slash() -> None:
    rules = policy(TRACKING_EXCLUDE=["/admin"], TRACKING_EXCLUDE_BODY=["/login"])
    assert rules.should_track(environ("//admin")) is False
    assert rules.should_keep_bodies(environ("//login")) is False


def test_excluded_methods() -> None:
    rules = policy(TRACKING_EXCLUDE_METHODS=["options", "Head"])
    assert rules.should_track(environ(method="OPTIONS")) is False
    assert rules.should_track(environ(method="HEAD")) is False
    assert rules.should_track(environ(method="GET")) is True
    assert rules.should_track(environ(method="POST")) is True


def test_a_missing_method_counts_as_get() -> None:
    assert policy(TRACKING_EXCLUDE_METHODS=["GET"]).should_track({"PATH_INFO": "/"}) is False
    assert policy(TRACKING_EXCLUDE_METHODS=["POST"]).should_track({"PATH_INFO": "/"}) is True


def test_excluded_methods_ignore_the_case_the_client_sent() -> None:
    assert (
        policy(TRACKING_EXCLUDE_METHODS=["OPTIONS"]).should_track(environ(method="options"))
        is False
    )


def test_methods_and_paths_combine() -> None:
    rules = policy(TRACKING_EXCLUDE=["/static"], TRACKING_EXCLUDE_METHODS=["DELETE"])
    assert rules.should_track(environ("/api", "DELETE")) is False
    assert rules.should_track(environ("/static/x", "GET")) is False
    assert rules.should_track(environ("/api", "GET")) is True


@pytest.mark.parametrize("value", [True, 1, "yes"])
def test_skip_environ_key_turns_tracking_off(value: Any) -> None:
    assert policy().should_track(environ("/x", **{SKIP_ENVIRON_KEY: value})) is False


@pytest.mark.parametrize("value", [False, None, 0, ""])
def test_a_falsy_skip_environ_key_does_not(value: Any) -> None:
    assert policy().should_track(environ("/x", **{SKIP_ENVIRON_KEY: value})) is True


# --------------------------------------------------------------------------------------------
# wsgi_path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/",
        b"",
        b"/a/b/",
        b"x",
        "/café".encode(),
        "/日本語".encode(),
        b"/%41%20",
        b"/a b",
        b"/bad\xff\xfe",
        b"/half\xc3",
    ],
)
def test_wsgi_path_equals_werkzeugs_request_path(raw_path: bytes) -> None:
    wsgi_environ = {
        "PATH_INFO": raw_path.decode("latin-1"),  # as a WSGI server passes the raw bytes
        "REQUEST_METHOD": "GET",
        "SERVER_NAME": "x",
    }
    assert wsgi_path(wsgi_environ) == Request(wsgi_environ).path


def test_wsgi_path_defaults_and_decoding() -> None:
    assert wsgi_path({}) == "/"
    assert wsgi_path({"PATH_INFO": None}) == "/"
    assert wsgi_path(environ("/café")) == "/café"
    assert wsgi_path({"PATH_INFO": b"/a\xff".decode("latin-1")}) == "/a\ufffd"


def test_wsgi_path_strips_a_doubled_leading_slash_as_werkzeug_does() -> None:
    wsgi_environ = {"PATH_INFO": "//admin", "REQUEST_METHOD": "GET", "SERVER_NAME": "x"}
    assert wsgi_path(wsgi_environ) == Request(wsgi_environ).path == "/admin"


# --------------------------------------------------------------------------------------------
# should_keep_bodies
# --------------------------------------------------------------------------------------------


def test_bodies_are_kept_by_default() -> None:
    assert policy().should_keep_bodies(environ("/login")) is True


def test_exclude_body_uses_re_match() -> None:
    rules = policy(TRACKING_EXCLUDE_BODY=["/login", "/users/[0-9]+/password$"])
    assert rules.should_keep_bodies(environ("/login")) is False
    assert rules.should_keep_bodies(environ("/login/sso")) is False
    assert rules.should_keep_bodies(environ("/api/login")) is True
    assert rules.should_keep_bodies(environ("/users/12/password")) is False
    assert rules.should_keep_bodies(environ("/users/12/password/x")) is True
    assert rules.should_track(environ("/login")) is True  # the request itself is still recorded


def test_exclude_body_non_ascii() -> None:
    rules = policy(TRACKING_EXCLUDE_BODY=["/über"])
    assert rules.should_keep_bodies(environ("/über/x")) is False
    assert rules.should_keep_bodies(environ("/uber/x")) is True


def test_max_body_length_zero_keeps_no_bodies() -> None:
    rules = policy(TRACKING_MAX_BODY_LENGTH=0)
    assert rules.should_keep_bodies(environ("/anything")) is False
    assert rules.should_keep_bodies({}) is False
    assert policy(TRACKING_MAX_BODY_LENGTH=1).should_keep_bodies(environ("/anything")) is True


# --------------------------------------------------------------------------------------------
# decide (the one call the middleware makes)
# --------------------------------------------------------------------------------------------

SETTINGS = [
    {},
    {"TRACKING_EXCLUDE": ["/static"]},
    {"TRACKING_EXCLUDE_BODY": ["/login"]},
    {"TRACKING_MAX_BODY_LENGTH": 0},
    {"TRACKING_EXCLUDE_METHODS": ["post"], "TRACKING_EXCLUDE_BODY": ["/api"]},
]
ENVIRONS = [
    environ("/"),
    environ("/static/x.js"),
    environ("/login", "POST"),
    environ("/api/items", "PUT"),
    environ("/api/items", "POST"),
    environ("/x", **{SKIP_ENVIRON_KEY: True}),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_decide_agrees_with_should_track_and_should_keep_bodies(settings: dict[str, Any]) -> None:
    rules = policy(**settings)
    for wsgi_environ in ENVIRONS:
        expected = (
            SKIP
            if not rules.should_track(wsgi_environ)
            else TRACK_WITH_BODIES
            if rules.should_keep_bodies(wsgi_environ)
            else TRACK
        )
        assert rules.decide(wsgi_environ) == expected, (settings, wsgi_environ)


def test_decide_examples() -> None:
    rules = policy(TRACKING_EXCLUDE=["/static"], TRACKING_EXCLUDE_BODY=["/login"])
    assert rules.decide(environ("/static/a.css")) == SKIP
    assert rules.decide(environ("/login")) == TRACK
    assert rules.decide(environ("/home")) == TRACK_WITH_BODIES
    assert policy(TRACKING_MAX_BODY_LENGTH=0).decide(environ("/home")) == TRACK
    assert policy().decide(environ("/", **{SKIP_ENVIRON_KEY: True})) == SKIP
    assert len({SKIP, TRACK, TRACK_WITH_BODIES}) == 3


def test_filters_outcomes_only_with_excluded_status_codes() -> None:
    assert policy().filters_outcomes is False
    assert policy(TRACKING_MIN_EXECUTION_TIME=5).filters_outcomes is False
    assert policy(TRACKING_EXCLUDE_STATUS_CODES=[404]).filters_outcomes is True


# --------------------------------------------------------------------------------------------
# should_keep_record
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 100, 200, 302, 404, 500, 599])
def test_every_record_is_kept_by_default(status: int) -> None:
    assert policy().should_keep_record(status, 0.0) is True


def test_excluded_status_is_dropped_when_there_is_no_minimum_time() -> None:
    rules = policy(TRACKING_EXCLUDE_STATUS_CODES=[404, 304])
    assert rules.should_keep_record(404, 0.0) is False
    assert rules.should_keep_record(304, 1e9) is False  # 0 means never, however slow
    assert rules.should_keep_record(200, 0.0) is True
    assert rules.should_keep_record(500, 0.0) is True


def test_excluded_status_is_kept_when_slow() -> None:
    rules = policy(TRACKING_EXCLUDE_STATUS_CODES=[200], TRACKING_MIN_EXECUTION_TIME=40)
    assert rules.should_keep_record(200, 0.0) is False
    assert rules.should_keep_record(200, 39.999) is False
    assert rules.should_keep_record(200, 40.0) is True
    assert rules.should_keep_record(200, 1000.0) is True
    assert rules.should_keep_record(201, 0.0) is True  # not excluded: always kept


def test_minimum_time_alone_drops_nothing() -> None:
    rules = policy(TRACKING_MIN_EXECUTION_TIME=100)
    assert rules.should_keep_record(200, 0.0) is True
    assert rules.should_keep_record(404, 1.0) is True


def test_fractional_minimum_time() -> None:
    rules = policy(TRACKING_EXCLUDE_STATUS_CODES=[404], TRACKING_MIN_EXECUTION_TIME=0.5)
    assert rules.should_keep_record(404, 0.49) is False
    assert rules.should_keep_record(404, 0.5) is True

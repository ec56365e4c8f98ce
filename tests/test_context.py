"""flask_tracking.add_data(): custom data from views, hooks, decorators and error handlers."""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest
from flask import Flask, abort, request

from flask_tracking import add_data
from flask_tracking.redact import FILTERED

from .conftest import stored


def test_add_data_merges_calls_and_request_tracking_data(app: Flask, mongo: Any) -> None:
    @app.get("/order")
    def order() -> str:
        request._tracking_data = {"order": 42, "step": "cart"}
        add_data(step="paid", items=3)
        add_data(total="9.99")
        return "ok"

    app.test_client().get("/order")
    [doc] = stored(app, mongo)
    assert doc["custom_data"] == {"order": 42, "step": "paid", "items": 3, "total": "9.99"}


def test_add_data_from_a_hook_and_a_decorator(app: Flask, mongo: Any) -> None:
    def tagged(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            add_data(decorated=True)
            return view(*args, **kwargs)

        return wrapper

    @app.before_request
    def tenant() -> None:
        add_data(tenant="acme")

    @app.get("/tagged")
    @tagged
    def tagged_view() -> str:
        add_data(view="tagged")
        return "ok"

    app.test_client().get("/tagged")
    [doc] = stored(app, mongo)
    assert doc["custom_data"] == {"tenant": "acme", "decorated": True, "view": "tagged"}


def test_add_data_from_error_handlers(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(testing=False)

    @app.errorhandler(500)
    def server_error(error: Exception) -> tuple[str, int]:
        add_data(handled_by="500 handler")
        return "sorry", 500

    @app.errorhandler(403)
    def forbidden(error: Exception) -> tuple[str, int]:
        add_data(handled_by="403 handler")
        return "no", 403

    @app.get("/forbidden")
    def refuse() -> str:
        add_data(before="abort")
        abort(403)

    client = app.test_client()
    assert client.get("/boom").data == b"sorry"
    assert client.get("/forbidden").data == b"no"
    boom_doc, forbidden_doc = stored(app, mongo)
    assert boom_doc["exception"] == "ValueError: kaboom"
    assert boom_doc["custom_data"] == {"handled_by": "500 handler"}
    assert forbidden_doc["custom_data"] == {"before": "abort", "handled_by": "403 handler"}


def test_add_data_is_copied_when_the_view_is_done(app: Flask, mongo: Any) -> None:
    shared = {"n": 1}

    @app.get("/later")
    def later() -> str:
        add_data(shared=shared)
        return "ok"

    @app.teardown_request
    def too_late(error: BaseException | None) -> None:
        shared["n"] = 2
        if request.path == "/later":
            add_data(teardown=True)

    app.test_client().get("/later")
    [doc] = stored(app, mongo)
    assert doc["custom_data"] == {"shared": {"n": 1}}


def test_add_data_values_are_redacted_like_custom_data(app: Flask, mongo: Any) -> None:
    @app.get("/login-data")
    def login_data() -> str:
        add_data(api_token="s3cr3t", user="ada")
        return "ok"

    app.test_client().get("/login-data")
    [doc] = stored(app, mongo)
    assert doc["custom_data"] == {"api_token": FILTERED, "user": "ada"}


def test_add_data_outside_a_request_raises() -> None:
    with pytest.raises(RuntimeError, match=r"add_data\(\) was called outside a request"):
        add_data(x=1)


def test_add_data_works_on_untracked_requests_too() -> None:
    plain = Flask("untracked")
    with plain.test_request_context("/"):
        add_data(a=1)
        add_data(b=2)
        assert request._tracking_data == {"a": 1, "b": 2}  # type: ignore[attr-defined]


def test_add_data_refuses_to_merge_into_something_else(app: Flask) -> None:
    with app.test_request_context("/"):
        request._tracking_data = ["not", "a", "dict"]
        with pytest.raises(TypeError, match="holds a list"):
            add_data(x=1)

"""Tests for flask_tracking.replay: a stored request sent again through the app's test client.

The records are stored as the writer stores them and read back through ``Tracking`` (whose
``replay()`` and ``resendable_headers()`` use this module), on both backends.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify, request

from flask_tracking.documents import Tracking
from flask_tracking.redact import FILTERED
from flask_tracking.replay import check_replayable, resendable_headers

from .test_documents import full_record

pytestmark = pytest.mark.usefixtures("mongo")  # a fresh database per test, on both backends


def load(**record: Any) -> Tracking:
    """Insert one raw record, as the writer does, and read it back through MongoEngine."""
    oid = Tracking._get_collection().insert_one(record).inserted_id
    return Tracking.objects.get(id=oid)


# --- the headers resent, and when a replay would not be faithful ----------------------


def test_resendable_headers_leave_out_filtered_and_transport_headers() -> None:
    stored = [
        ["Host", "localhost:5000"],
        ["Content-Length", "27"],
        ["Transfer-Encoding", "chunked"],
        ["Content-Encoding", "gzip"],
        ["Authorization", FILTERED],
        ["X-Custom", "first"],
        ["x-custom", "second"],
        ["Malformed"],
        ["Accept", "*/*"],
    ]
    assert resendable_headers(stored, None) == [
        ("X-Custom", "first"),
        ("x-custom", "second"),
        ("Accept", "*/*"),
    ]
    t = load(request_headers=stored)
    assert t.resendable_headers() == resendable_headers(stored, None)


def test_resendable_headers_overrides_replace_same_named_headers() -> None:
    stored = [["X-Custom", "first"], ["x-custom", "second"], ["Accept", "*/*"]]
    overridden = [("Accept", "*/*"), ("X-CUSTOM", "over"), ("Authorization", "Bearer new")]
    assert resendable_headers(stored, {"X-CUSTOM": "over", "Authorization": "Bearer new"}) == (
        overridden
    )
    assert resendable_headers(stored, [("X-CUSTOM", "over"), ("Authorization", "Bearer new")]) == (
        overridden
    )


def test_check_replayable() -> None:
    whole = load(request_body=b"{}", request_body_size=2)
    check_replayable(whole, allow_truncated=False)
    nothing = load(request_body=None, request_body_omitted="passthrough", request_body_size=0)
    check_replayable(nothing, allow_truncated=False)  # there was no body to record
    unknown = load(request_body=None, request_body_omitted="passthrough")
    with pytest.raises(ValueError, match=r"not recorded \(passthrough\)"):
        check_replayable(unknown, allow_truncated=False)
    check_replayable(unknown, allow_truncated=True)
    cut = load(request_body=b"{", request_body_truncated=True, request_body_size=2)
    with pytest.raises(ValueError, match="truncated"):
        check_replayable(cut, allow_truncated=False)
    check_replayable(cut, allow_truncated=True)


# --- replay() --------------------------------------------------------------------------


@pytest.fixture()
def app() -> Flask:
    app = Flask(__name__)

    @app.route("/users/<int:user_id>", methods=["GET", "POST", "PUT"])
    def echo(user_id: int) -> Any:
        return jsonify(
            user_id=user_id,
            method=request.method,
            args=request.args.to_dict(),
            body=request.get_data(as_text=True),
            json=request.get_json(silent=True),
            headers=dict(request.headers),
            skip=request.environ.get("flask_tracking.skip"),
        )

    return app


def test_replay_resends_request_without_filtered_headers(app: Flask) -> None:
    t = load(**full_record())
    with app.app_context():
        response = t.replay()
    assert response.status_code == 200
    data = response.get_json()
    assert data["user_id"] == 42
    assert data["method"] == "POST"
    assert data["args"] == {"x": "1", "y": "2"}
    assert data["json"] == {"name": "Ann", "tags": [1, 2]}
    assert data["body"] == '{"name":"Ann","tags":[1,2]}'
    assert "Authorization" not in data["headers"]
    assert data["headers"]["X-Custom"] == "first, second"
    assert data["headers"]["Content-Type"] == "application/json"
    assert data["headers"]["Host"] == "localhost"  # set by the client, not the stored one
    assert data["skip"] is True


def test_replay_kwargs_override_headers_and_arguments(app: Flask) -> None:
    t = load(**full_record())
    with app.app_context():
        response = t.replay(
            method="PUT",
            headers={"Authorization": "Bearer new", "x-custom": "over"},
            environ_overrides={"extra": 1},
        )
    data = response.get_json()
    assert data["method"] == "PUT"
    assert data["headers"]["Authorization"] == "Bearer new"
    assert data["headers"]["X-Custom"] == "over"
    assert data["skip"] is True


def test_replay_truncated_body_raises(app: Flask) -> None:
    record = full_record()
    record.update(request_body=b'{"name":', request_body_truncated=True, request_body_size=27)
    t = load(**record)
    with app.app_context(), pytest.raises(ValueError, match="truncated"):
        t.replay()
    with app.app_context():
        response = t.replay(allow_truncated=True)
    assert response.get_json()["body"] == '{"name":'


def test_replay_omitted_body_raises(app: Flask) -> None:
    record = full_record()
    record.update(request_body=None, request_body_omitted="excluded", request_body_size=None)
    t = load(**record)
    with app.app_context(), pytest.raises(ValueError, match="excluded"):
        t.replay()


def test_replay_get_without_body(app: Flask) -> None:
    t = load(method="GET", path="/users/7", query_params="", request_body_size=0)
    with app.app_context():
        data = t.replay().get_json()
    assert (data["method"], data["user_id"], data["body"], data["args"]) == ("GET", 7, "", {})

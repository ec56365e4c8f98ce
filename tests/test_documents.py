"""Tests for flask_tracking.documents: reading raw records written with pymongo."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any, ClassVar

import mongoengine
import mongomock
import pytest
from bson import DBRef, ObjectId
from mongoengine import Document, StringField

from flask_tracking.documents import Tracking, TrackingQuerySet, UserAgent
from flask_tracking.redact import FILTERED

DATE = dt.datetime(2024, 5, 1, 10, 42, 3, 123456)


class User(Document):
    """A minimal Flask-Login-like user stored in MongoDB."""

    name = StringField()

    meta: ClassVar[dict[str, Any]] = {"collection": "user"}


def _connect(alias: str, db_name: str = "test_db") -> None:
    mongoengine.connect(
        db_name,
        alias=alias,
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )


@pytest.fixture(autouse=True)
def db() -> Iterator[None]:
    _connect("default")
    Tracking._get_collection().drop()
    User._get_collection().drop()
    yield
    mongoengine.disconnect()


def insert(*records: dict[str, Any]) -> list[ObjectId]:
    """Insert raw dicts exactly as the pymongo writer does."""
    return list(Tracking._get_collection().insert_many(list(records)).inserted_ids)


def load(**record: Any) -> Tracking:
    """Insert one raw record and read it back through MongoEngine."""
    (oid,) = insert(record)
    return Tracking.objects.get(id=oid)


def full_record(user: User | None = None) -> dict[str, Any]:
    return {
        "date_created": DATE,
        "host": "localhost:5000",
        "scheme": "https",
        "method": "POST",
        "path": "/users/42",
        "query_params": "x=1&y=2",
        "ip": "127.0.0.1",
        "endpoint": "users.update",
        "url_rule": "/users/<int:id>",
        "referrer": "https://example.com/",
        "user": {"_cls": "User", "_ref": DBRef("user", user.pk)} if user else None,
        "user_id": "42",
        "user_agent": {
            "browser": "Firefox",
            "version": "120.0",
            "platform": "Linux",
            "language": "en-US",
            "device": "Other",
            "string": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        },
        "request_headers": [
            ["Host", "localhost:5000"],
            ["Content-Type", "application/json"],
            ["Authorization", FILTERED],
            ["X-Custom", "first"],
            ["x-custom", "second"],
        ],
        "request_body": b'{"name":"Ann","tags":[1,2]}',
        "request_body_size": 27,
        "request_body_truncated": False,
        "request_body_omitted": None,
        "response_headers": [["Content-Type", "text/plain; charset=utf-8"], ["X-Resp", "1"]],
        "response_body": b"hello\r\nworld",
        "response_body_size": 12,
        "response_body_truncated": False,
        "response_body_omitted": None,
        "status_code": 201,
        "execution_time": 3.25,
        "total_time": 4.5,
        "hostname": "worker-1",
        "custom_data": {"team": "blue", "n": 3},
        "exception": None,
        "extra_future_field": {"whatever": 1},
    }


# --- loading ---------------------------------------------------------------------------


def test_full_record_loads_field_for_field() -> None:
    user = User(name="Ann").save()
    record = full_record(user)
    t = load(**record)

    assert t.date_created == DATE.replace(microsecond=123000)  # BSON keeps milliseconds
    for name in (
        "host",
        "scheme",
        "method",
        "path",
        "query_params",
        "ip",
        "endpoint",
        "url_rule",
        "referrer",
        "user_id",
        "request_headers",
        "request_body",
        "request_body_size",
        "request_body_truncated",
        "request_body_omitted",
        "response_headers",
        "response_body",
        "response_body_size",
        "response_body_truncated",
        "response_body_omitted",
        "status_code",
        "execution_time",
        "total_time",
        "hostname",
        "custom_data",
        "exception",
    ):
        assert getattr(t, name) == record[name], name
    assert isinstance(t.request_body, bytes)
    assert isinstance(t.user_agent, UserAgent)
    assert t.user_agent.to_mongo().to_dict() == record["user_agent"]


def test_user_dereferences_to_document() -> None:
    user = User(name="Ann").save()
    t = load(**full_record(user))
    assert isinstance(t.user, User)
    assert t.user.pk == user.pk
    assert t.user.name == "Ann"


def test_partial_records_load_with_defaults() -> None:
    insert({"path": "/only-path"}, {})
    first, second = Tracking.objects.order_by("_id")
    assert first.path == "/only-path"
    assert first.status_code is None
    assert first.user is None
    assert first.request_headers == []
    assert first.request_body_truncated is False
    assert first.response_body_truncated is False
    # every helper copes with missing fields
    for t in (first, second):
        assert isinstance(str(t), str)
        assert isinstance(t.debug(), str)
        assert t.get_header("Host") == ""
        assert t.request_body_text() is None
        assert t.response_body_text() is None
    assert str(second) == "- - - / - -"


def test_unknown_extra_field_loads() -> None:
    t = load(path="/x", added_in_v2=[1, 2, 3], another={"a": 1})
    assert t.path == "/x"


def test_objects_uses_tracking_queryset_and_collection() -> None:
    assert isinstance(Tracking.objects, TrackingQuerySet)
    assert Tracking._get_collection().name == "tracking"
    insert({"path": "/a"}, {"path": "/b"})
    assert sorted(t.path for t in Tracking.objects) == ["/a", "/b"]


def test_read_through_other_alias() -> None:
    _connect("archive", "archive_db")
    try:
        with mongoengine.context_managers.switch_db(Tracking, "archive") as archived:
            archived._get_collection().insert_one({"path": "/archived"})
        assert [t.path for t in Tracking.objects.using("archive")] == ["/archived"]
        assert Tracking.objects.count() == 0
    finally:
        mongoengine.disconnect("archive")


# --- __str__ ---------------------------------------------------------------------------


def test_str_format() -> None:
    t = load(
        date_created=DATE,
        method="GET",
        user_id="42",
        path="/hello",
        query_params="x=1",
        status_code=200,
        execution_time=3.24,
    )
    assert str(t) == "2024-05-01T10:42:03 GET 42 /hello?x=1 200 3.2ms"


def test_str_format_with_a_tz_aware_connection() -> None:
    """``tz_aware=True`` gives aware UTC datetimes: the line keeps its UTC date, no offset."""
    mongoengine.connect(
        "tz_db",
        alias="tz",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
        tz_aware=True,
    )
    try:
        with mongoengine.context_managers.switch_db(Tracking, "tz") as aware:
            aware._get_collection().insert_one(
                {"date_created": DATE, "method": "GET", "path": "/", "status_code": 200}
            )
        [record] = Tracking.objects.using("tz")
        assert record.date_created.tzinfo is not None
        assert str(record) == "2024-05-01T10:42:03 GET - / 200 -"
    finally:
        mongoengine.disconnect("tz")


def test_str_without_query_or_user() -> None:
    t = load(date_created=DATE, method="GET", path="/", query_params="", status_code=404)
    assert str(t) == "2024-05-01T10:42:03 GET - / 404 -"


def test_str_escapes_control_characters() -> None:
    t = load(
        date_created=DATE,
        method="GET",
        user_id="1\n2",
        path="/a\r\nFAKE 2024-01-01T00:00:00 GET admin /",
        query_params="q=\x1b[31m\x00",
        status_code=200,
        execution_time=1.0,
    )
    line = str(t)
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "\x00" not in line
    assert "1\\n2" in line
    assert "/a\\r\\nFAKE" in line
    assert "q=\\x1b[31m\\x00" in line


# --- debug() ---------------------------------------------------------------------------


def test_debug_layout_and_pretty_json() -> None:
    user = User(name="Ann").save()
    t = load(**full_record(user))
    out = t.debug()
    lines = out.split("\n")

    assert lines[0] == "POST https://localhost:5000/users/42?x=1&y=2"
    assert lines[1:6] == [
        "Host: localhost:5000",
        "Content-Type: application/json",
        f"Authorization: {FILTERED}",
        "X-Custom: first",
        "x-custom: second",
    ]
    assert lines[6] == ""
    pretty = json.dumps({"name": "Ann", "tags": [1, 2]}, indent=2)
    assert out.split("\n", 7)[7].startswith(pretty + "\n\n201 Created\n")
    assert "Content-Type: text/plain; charset=utf-8\nX-Resp: 1\n\nhello\nworld\n" in out
    assert "Timing: 3.2 ms in the app, 4.5 ms in all" in out
    assert f"User: 42 (User {user.pk})" in out
    assert "Endpoint: users.update (/users/<int:id>)" in out
    assert 'Custom data: {\n  "team": "blue",\n  "n": 3\n}' in out
    assert "Exception" not in out


def test_debug_truncated_note() -> None:
    t = load(
        method="POST",
        request_body=b"a" * 10,
        request_body_size=5000,
        request_body_truncated=True,
        status_code=200,
    )
    assert "aaaaaaaaaa\n(truncated, 5000 bytes in all)" in t.debug()


def test_debug_omitted_reason() -> None:
    t = load(
        status_code=200,
        request_body=None,
        request_body_omitted="too large",
        response_body=None,
        response_body_omitted="passthrough",
    )
    out = t.debug()
    assert "(body not recorded: too large)" in out
    assert "(body not recorded: passthrough)" in out


def test_debug_escapes_values_but_keeps_layout() -> None:
    t = load(
        method="GET",
        path="/p\r\nHTTP/1.1 200 OK",
        request_headers=[["X-Evil", "a\r\nX-Injected: 1"], ["X-Bell\x07", "ok"]],
        exception="ValueError: bad\nline",
        status_code=500,
    )
    lines = t.debug().split("\n")
    assert lines[0] == "GET /p\\r\\nHTTP/1.1 200 OK"
    assert "X-Evil: a\\r\\nX-Injected: 1" in lines
    assert "X-Injected: 1" not in lines
    assert "X-Bell\\x07: ok" in lines
    assert "Exception: ValueError: bad\\nline" in lines
    assert "HTTP/1.1 200 OK" not in lines


# --- headers, text, user agent -----------------------------------------------------------


def test_get_header_case_insensitive_first_match_and_default() -> None:
    t = load(**full_record())
    assert t.get_header("x-CUSTOM") == "first"
    assert t.get_header("content-type") == "application/json"
    assert t.get_header("Missing") == ""
    assert t.get_header("Missing", "fallback") == "fallback"
    assert t.get_response_header("x-resp") == "1"
    assert t.get_response_header("X-Custom", None) is None


def test_body_text_helpers() -> None:
    t = load(request_body=b"ok \xff", response_body=None)
    assert t.request_body_text() == "ok \ufffd"
    assert t.response_body_text() is None


def test_user_agent_str() -> None:
    t = load(**full_record())
    assert str(t.user_agent) == "Firefox 120.0 on Linux"
    assert str(UserAgent(string="curl/8.0")) == "curl/8.0"
    assert str(UserAgent()) == "unknown"

"""Tests for flask_tracking.record: a captured RequestState becomes the stored document."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any

import bson
import pytest
from bson import DBRef, ObjectId

from flask_tracking import record
from flask_tracking.capture import BodyCapture, RequestState
from flask_tracking.fields import FIELDS, OPTIONAL_FIELDS
from flask_tracking.layouts import MAX_LAYOUT_KEY_BYTES
from flask_tracking.record import parse_user_agent, status_code_of, to_document
from flask_tracking.redact import DEFAULT_REDACT_FIELDS, Redactor, ScrubbedBody

from .conftest import fork_and_report

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def make_state(
    headers: list[tuple[str, str]] | None = None,
    server: tuple[str | None, str | None] | None = ("localhost", "5000"),
    query_string: str = "",
    **attributes: Any,
) -> RequestState:
    state = RequestState()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "wsgi.url_scheme": "http",
        "PATH_INFO": "/items/7",
        "QUERY_STRING": query_string,
        "REMOTE_ADDR": "10.0.0.1",
    }
    if server is not None:
        for key, value in zip(("SERVER_NAME", "SERVER_PORT"), server):
            if value is not None:
                environ[key] = value
    environ.update(headers or [])
    state.environ = environ
    state.endpoint = "items"
    state.url_rule = "/items/<int:item>"
    state.status = "200 OK"
    state.response_headers = [("Content-Type", "text/plain"), ("Content-Length", "5")]
    state.execution_time = 1.25
    state.total_time = 1.5
    for name, value in attributes.items():
        setattr(state, name, value)
    return state


def test_document_has_every_field_and_an_id() -> None:
    document = to_document(make_state())
    assert isinstance(document["_id"], ObjectId)
    assert set(document) == {"_id", *FIELDS} - set(OPTIONAL_FIELDS)
    assert len(FIELDS) == len(set(FIELDS))


def test_each_call_gets_a_new_id() -> None:
    state = make_state()
    assert to_document(state)["_id"] != to_document(state)["_id"]


def test_plain_fields_are_copied() -> None:
    state = make_state(
        custom_data={"order": 42},
        exception="ValueError: kaboom",
        user_id="u-1",
    )
    document = to_document(state)
    assert document["date_created"] == dt.datetime.fromtimestamp(state.timestamp, dt.timezone.utc)
    assert document["scheme"] == "http"
    assert document["method"] == "GET"
    assert document["path"] == "/items/7"
    assert document["ip"] == "10.0.0.1"
    assert document["endpoint"] == "items"
    assert document["url_rule"] == "/items/<int:item>"
    assert document["status_code"] == 200
    assert document["execution_time"] == 1.25
    assert document["total_time"] == 1.5
    assert document["custom_data"] == {"order": 42}
    assert document["exception"] == "ValueError: kaboom"
    assert document["user_id"] == "u-1"
    assert isinstance(document["hostname"], str)
    assert document["hostname"]
    assert document["response_headers"] == [["Content-Type", "text/plain"], ["Content-Length", "5"]]


def test_header_names_from_environ_keys_in_order() -> None:
    state = make_state(
        [
            ("HTTP_X_FORWARDED_FOR", "1.2.3.4"),
            ("CONTENT_TYPE", "application/json"),
            ("HTTP_ACCEPT", "*/*"),
            ("CONTENT_LENGTH", "12"),
            ("HTTP_USER_AGENT", "curl/8.4.0"),
            ("HTTP_HOST", "example.com"),
        ]
    )
    assert to_document(state)["request_headers"] == [
        ["X-Forwarded-For", "1.2.3.4"],
        ["Content-Type", "application/json"],
        ["Accept", "*/*"],
        ["Content-Length", "12"],
        ["User-Agent", "curl/8.4.0"],
        ["Host", "example.com"],
    ]


def test_empty_content_headers_are_left_out_other_empty_headers_kept() -> None:
    state = make_state(
        [("CONTENT_TYPE", ""), ("HTTP_X_EMPTY", ""), ("CONTENT_LENGTH", ""), ("HTTP_HOST", "h")]
    )
    assert to_document(state)["request_headers"] == [["X-Empty", ""], ["Host", "h"]]


def test_header_layouts_are_remembered_per_key_order_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("flask_tracking.layouts.MAX_REMEMBERED_LAYOUTS", 2)
    monkeypatch.setattr("flask_tracking.record._HEADER_PLANS", {})
    layouts = [
        [("HTTP_ACCEPT", "a"), ("HTTP_HOST", "h")],
        [("HTTP_HOST", "h"), ("HTTP_ACCEPT", "a")],
        [("HTTP_HOST", "h")],
        [("CONTENT_TYPE", "text/plain"), ("HTTP_HOST", "h"), ("HTTP_X_ONE", "1")],
    ]
    for _ in range(2):  # first learnt, then remembered (or learnt again once forgotten)
        for headers in layouts:
            expected = [[_name(key), value] for key, value in headers]
            assert to_document(make_state(headers))["request_headers"] == expected


def test_layouts_with_long_header_names_are_not_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client can name its headers as it likes (gunicorn takes 100 fields of 8 KB): were
    # every layout remembered, 1,024 of them could keep about a gigabyte of names alive.
    monkeypatch.setattr("flask_tracking.record._HEADER_PLANS", {})
    for index in range(20):
        headers = [(f"HTTP_X_{index}_{column}_" + "A" * 8000, "v") for column in range(5)]
        document = to_document(make_state([("HTTP_HOST", "h"), *headers]))
        assert len(document["request_headers"]) == 6
    kept = sum(len(key) for layout in record._HEADER_PLANS for key in layout)
    assert kept <= MAX_LAYOUT_KEY_BYTES
    small = [("HTTP_HOST", "h"), ("HTTP_ACCEPT", "a")]
    to_document(make_state(small))
    assert ("HTTP_HOST", "HTTP_ACCEPT") in {
        tuple(key for key in layout if key.startswith("HTTP_")) for layout in record._HEADER_PLANS
    }


def _name(environ_key: str) -> str:
    return (
        "Content-Type"
        if environ_key == "CONTENT_TYPE"
        else environ_key[5:].replace("_", "-").title()
    )


def test_referrer_and_user_agent_come_from_headers() -> None:
    state = make_state(
        [
            ("HTTP_REFERER", "https://example.com/from"),
            ("HTTP_USER_AGENT", "curl/8.4.0"),
            ("HTTP_ACCEPT_LANGUAGE", "de-CH,de;q=0.9"),
        ]
    )
    document = to_document(state)
    assert document["referrer"] == "https://example.com/from"
    assert document["user_agent"]["browser"] == "curl"
    assert document["user_agent"]["language"] == "de-CH"
    assert document["user_agent"]["string"] == "curl/8.4.0"


def test_no_headers_means_no_referrer_and_empty_user_agent() -> None:
    document = to_document(make_state())
    assert document["referrer"] is None
    assert document["request_headers"] == []
    assert document["user_agent"] == {
        "browser": None,
        "version": None,
        "platform": None,
        "device": None,
        "language": None,
        "string": "",
    }


def test_host_from_host_header() -> None:
    state = make_state([("HTTP_HOST", "shop.example.com:8443")], server=("internal", "5000"))
    assert to_document(state)["host"] == "shop.example.com:8443"


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (("internal", "5000"), "internal:5000"),
        (("internal", "80"), "internal"),
        (("internal", "443"), "internal"),
        (("internal", None), "internal"),
        (("internal", ""), "internal"),
        ((None, "80"), None),
        (("", "80"), None),
        (None, None),
    ],
)
def test_host_from_server_name_and_port(server: Any, expected: str | None) -> None:
    assert to_document(make_state(server=server))["host"] == expected


def test_empty_host_header_falls_back_to_server() -> None:
    state = make_state([("HTTP_HOST", "")], server=("internal", "8080"))
    assert to_document(state)["host"] == "internal:8080"


@pytest.mark.parametrize(
    ("wsgi", "expected"),
    [
        ("", ""),
        ("a=1&b=two", "a=1&b=two"),
        ("q=caf\u00c3\u00a9", "q=caf\u00e9"),  # "café" in UTF-8, as latin-1 WSGI text
        ("q=\u00e2\u0082\u00ac", "q=\u20ac"),  # the euro sign
        ("q=\u00ff", "q=\ufffd"),  # not UTF-8: replacement character, never an error
    ],
)
def test_query_string_latin1_wsgi_to_utf8(wsgi: str, expected: str) -> None:
    document = to_document(make_state(query_string=wsgi))
    assert document["query_params"] == expected
    bson.encode(document)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("200 OK", 200),
        ("404 NOT FOUND", 404),
        ("599 Custom Thing", 599),
        ("204", 204),
        ("  302   FOUND", 302),
        ("", 0),
        ("   ", 0),
        ("OK", 0),
        ("two hundred", 0),
        ("2x0 OK", 0),
    ],
)
def test_status_code_of(status: str, code: int) -> None:
    assert status_code_of(status) == code
    assert status_code_of(status) == code  # remembered


def test_status_codes_remembered_are_bounded() -> None:
    from flask_tracking import record

    lines = [f"{code} Reason {index}" for index, code in enumerate(range(100, 1100))]
    assert [status_code_of(line) for line in lines] == list(range(100, 1100))
    assert len(record._STATUS_CODES) <= record._MAX_STATUS_LINES
    assert status_code_of("201 CREATED") == 201


def test_status_code_in_document() -> None:
    assert to_document(make_state(status="418 I'M A TEAPOT"))["status_code"] == 418
    assert to_document(make_state(status="garbage"))["status_code"] == 0


def test_no_status_when_the_app_gave_no_response() -> None:
    """A SystemExit or KeyboardInterrupt ended the request before the app answered: no status
    code (None), and the exception named."""
    assert status_code_of(None) is None
    document = to_document(make_state(status=None, exception="SystemExit: 1"))
    assert (document["status_code"], document["exception"]) == (None, "SystemExit: 1")


def test_user_reference_layout() -> None:
    pk = ObjectId()
    document = to_document(make_state(user_ref=("User", "user", pk), user_id=str(pk)))
    user = document["user"]
    assert set(user) == {"_cls", "_ref"}
    assert user["_cls"] == "User"
    assert isinstance(user["_ref"], DBRef)
    assert user["_ref"].collection == "user"
    assert user["_ref"].id == pk
    assert document["user_id"] == str(pk)
    decoded = bson.decode(bson.encode(document))
    assert decoded["user"]["_ref"] == DBRef("user", pk)


def test_no_user() -> None:
    document = to_document(make_state())
    assert document["user"] is None
    assert document["user_id"] is None


def capture(data: bytes, limit: int) -> BodyCapture:
    body = BodyCapture(limit)
    body.add(data)
    return body


def test_bodies_are_bytes_with_size_and_truncation() -> None:
    state = make_state(
        request_body=capture(b'{"name": "value"}', 100),
        response_body=capture(b"x" * 25, 10),
    )
    document = to_document(state)
    assert document["request_body"] == b'{"name": "value"}'
    assert type(document["request_body"]) is bytes
    assert document["request_body_size"] == 17
    assert document["request_body_truncated"] is False
    assert document["request_body_omitted"] is None
    assert document["response_body"] == b"x" * 10
    assert type(document["response_body"]) is bytes
    assert document["response_body_size"] == 25
    assert document["response_body_truncated"] is True
    assert document["response_body_omitted"] is None


def test_body_is_a_copy_of_the_capture_buffer() -> None:
    body = capture(b"abc", 100)
    document = to_document(make_state(request_body=body))
    body.add(b"def")
    assert document["request_body"] == b"abc"


def test_omitted_bodies() -> None:
    state = make_state(
        request_body=None,
        request_body_omitted="excluded",
        response_body=None,
        response_body_omitted="passthrough",
    )
    document = to_document(state)
    for prefix, reason in (("request", "excluded"), ("response", "passthrough")):
        assert document[f"{prefix}_body"] is None
        assert document[f"{prefix}_body_size"] is None
        assert document[f"{prefix}_body_truncated"] is False
        assert document[f"{prefix}_body_omitted"] == reason


def test_missing_request_snapshot_still_converts() -> None:
    state = RequestState()
    document = to_document(state)
    assert document["path"] == "/"
    assert document["host"] is None
    assert document["status_code"] == 500  # RequestState's default status
    assert set(document) == {"_id", *FIELDS} - set(OPTIONAL_FIELDS)
    bson.encode(document)


def test_full_document_encodes_with_bson() -> None:
    state = make_state(
        [
            ("HTTP_HOST", "example.com"),
            ("HTTP_USER_AGENT", CHROME),
            ("HTTP_ACCEPT_LANGUAGE", "en-US,en;q=0.9"),
            ("HTTP_X_ODD", "latin-1 \u00e9\u00ff"),
        ],
        query_string="q=caf\u00c3\u00a9",
        request_body=capture(b"\x00\xff" * 10, 8),
        response_body=capture(b"ok", 100),
        user_ref=("User", "user", ObjectId()),
        user_id="1",
        custom_data={"k": [1, "two", 3.0]},
        exception="KeyError: 'x'",
        timestamp=dt.datetime(2024, 5, 1, 10, 42, 3, tzinfo=dt.timezone.utc).timestamp(),
    )
    document = to_document(state)
    decoded = bson.decode(bson.encode(document))
    assert list(decoded) == list(document)
    assert decoded["request_body"] == b"\x00\xff" * 4
    assert decoded["host"] == "example.com"
    assert decoded["user_agent"]["browser"] == "Chrome"


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (
            CHROME,
            {"browser": "Chrome", "version": "120.0.6099", "platform": "Windows", "device": None},
        ),
        (
            IPHONE,
            {
                "browser": "Mobile Safari",
                "version": "17.1",
                "platform": "iOS",
                "device": "iPhone",
            },
        ),
        ("curl/8.4.0", {"browser": "curl", "version": "8.4.0", "platform": None, "device": None}),
        (
            GOOGLEBOT,
            {"browser": "Googlebot", "version": "2.1", "platform": None, "device": "Spider"},
        ),
        ("", {"browser": None, "version": None, "platform": None, "device": None}),
        ("garbage!! \x00 ;;(", {"browser": None, "version": None, "platform": None}),
    ],
    ids=["chrome", "iphone_safari", "curl", "googlebot", "empty", "garbage"],
)
def test_parse_user_agent(user_agent: str, expected: dict[str, Any]) -> None:
    parsed = parse_user_agent(user_agent)
    assert set(parsed) == {"browser", "version", "platform", "device", "language", "string"}
    for key, value in expected.items():
        assert parsed[key] == value, key
    assert parsed["string"] == user_agent
    assert parsed["language"] is None
    bson.encode(parsed)


@pytest.mark.parametrize(
    ("accept_language", "language"),
    [
        ("en-US,en;q=0.9", "en-US"),
        ("fr;q=0.8", "fr"),
        (" de ", "de"),
        ("", None),
        (",en", None),
    ],
)
def test_language_from_accept_language(accept_language: str, language: str | None) -> None:
    assert parse_user_agent(CHROME, accept_language)["language"] == language


def test_very_long_user_agent_is_parsed_and_kept() -> None:
    user_agent = CHROME + " x" * 5000
    parsed = parse_user_agent(user_agent)
    assert parsed["string"] == user_agent
    bson.encode(parsed)


class FakeRedactor(Redactor):
    """A Redactor with empty deny-lists that records the bodies it filters."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        super().__init__(headers=(), fields=())
        self.fail_on = fail_on
        self.seen: list[tuple[bytes, str]] = []

    def _scrub_body(self, body: Any, content_type: str, *args: Any) -> ScrubbedBody:
        self.seen.append((body, content_type))
        if body == self.fail_on:
            raise ValueError("cannot scrub")
        return ScrubbedBody(b"[scrubbed]", None)


def test_redactor_scrubs_bodies_by_their_content_type() -> None:
    redactor = FakeRedactor()
    state = make_state(
        [("CONTENT_TYPE", "application/json")],
        request_body=capture(b'{"password": "x"}', 100),
        response_body=capture(b"token=abc", 100),
        response_headers=[("content-type", "application/x-www-form-urlencoded")],
    )
    document = to_document(state, redactor)  # type: ignore[arg-type]
    assert redactor.seen == [
        (b'{"password": "x"}', "application/json"),
        (b"token=abc", "application/x-www-form-urlencoded"),
    ]
    assert document["request_body"] == b"[scrubbed]"
    assert document["response_body"] == b"[scrubbed]"
    assert document["request_body_size"] == 17  # sizes describe what went by


def test_redactor_failure_keeps_no_body() -> None:
    redactor = FakeRedactor(fail_on=b"secret=1")
    state = make_state(
        request_body=capture(b"secret=1", 100),
        response_body=capture(b"fine", 100),
    )
    document = to_document(state, redactor)  # type: ignore[arg-type]
    assert document["request_body"] is None
    assert document["request_body_omitted"] == "redaction failed"
    assert document["response_body"] == b"[scrubbed]"
    assert document["response_body_omitted"] is None


def test_the_bytes_filtered_are_the_bytes_stored() -> None:
    """The bodies filtered for a batch are the copies stored: a capture's buffer is not read
    again when the document is made (an empty body included)."""
    redactor = Redactor((), DEFAULT_REDACT_FIELDS)
    state = make_state(request_body=capture(b"", 100), response_body=capture(b"a=1", 100))
    bodies = record.scrub_bodies([state], redactor)[0]
    assert state.request_body is not None and state.response_body is not None
    state.request_body.buffer += b"password=hunter2"
    state.response_body.buffer += b"&password=hunter2"
    document = to_document(state, redactor, bodies=bodies)
    assert (document["request_body"], document["response_body"]) == (b"", b"a=1")


def test_a_redactor_that_loses_count_keeps_no_body() -> None:
    class Miscounting(Redactor):
        def scrub_bodies(self, bodies: Any) -> list[ScrubbedBody]:
            return [ScrubbedBody(b"[kept]", None)] * (len(bodies) - 1)

    redactor = Miscounting((), ())
    state = make_state(request_body=capture(b"a=1", 100), response_body=capture(b"b=2", 100))
    document = to_document(state, redactor)
    assert document["request_body"] is None and document["response_body"] is None
    assert (
        document["request_body_omitted"]
        == document["response_body_omitted"]
        == ("redaction failed")
    )


def test_bodies_are_filtered_after_the_headers_of_their_request() -> None:
    redactor = Redactor((), DEFAULT_REDACT_FIELDS)
    state = make_state(request_body=capture(b"a=1", 100))
    assert not state.scrubbed
    record.scrub_bodies([state], redactor)
    assert state.scrubbed


def test_redactor_is_not_called_without_bodies() -> None:
    redactor = FakeRedactor()
    document = to_document(make_state(request_body=capture(b"", 100)), redactor)  # type: ignore[arg-type]
    assert redactor.seen == []
    assert document["request_body"] == b""


def test_parse_user_agent_returns_independent_dicts() -> None:
    first = parse_user_agent(CHROME, "en")
    first["browser"] = "Changed"
    first["extra"] = "x"
    second = parse_user_agent(CHROME, "fr")
    assert second["browser"] == "Chrome"
    assert "extra" not in second
    assert second["language"] == "fr"
    assert first["language"] == "en"


def test_parse_user_agent_many_distinct_agents(monkeypatch: pytest.MonkeyPatch) -> None:
    # a small cache (if there is one) so that it fills and starts over several times
    monkeypatch.setattr(record, "_MAX_PARSED_AGENTS", 8, raising=False)
    for _ in range(2):
        for i in range(50):
            assert parse_user_agent(f"curl/{i}.0")["version"] == f"{i}.0"
    assert parse_user_agent(IPHONE)["device"] == "iPhone"


@pytest.mark.parametrize("resolver", ["rust", "pure_python"])
def test_user_agents_parse_alike_with_either_resolver(
    resolver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if resolver == "rust":
        pytest.importorskip("ua_parser_rs")
    else:  # as where no ua-parser-rs wheel exists
        monkeypatch.setitem(sys.modules, "ua_parser.regex", None)
    monkeypatch.setattr(record, "_resolve_agent", record._pick_resolver)
    monkeypatch.setattr(record, "_rebuild_after_fork", False)
    monkeypatch.setattr(record, "_PARSED_AGENTS", {})
    assert parse_user_agent(CHROME)["version"] == "120.0.6099"
    assert record._rebuild_after_fork == (resolver == "pure_python")
    assert parse_user_agent(IPHONE) == {
        "browser": "Mobile Safari",
        "version": "17.1",
        "platform": "iOS",
        "device": "iPhone",
        "string": IPHONE,
        "language": None,
    }
    assert parse_user_agent(GOOGLEBOT)["device"] == "Spider"
    assert parse_user_agent("curl/8.4.0")["browser"] == "curl"


@pytest.mark.parametrize("resolver", ["re2", "basic"])
def test_the_pure_python_resolver_parses_as_ua_parser_parse(
    resolver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no ua-parser-rs wheel exists, ua-parser's best resolver is google-re2's, or its
    basic one: each parses as ua_parser.parse does (here, where the Rust resolver may be
    installed, ua-parser's choice is made again without it)."""
    import ua_parser

    chosen = ua_parser.Re2Resolver if resolver == "re2" else ua_parser.BasicResolver
    if chosen is None:
        pytest.skip("google-re2 is not installed")
    monkeypatch.setitem(sys.modules, "ua_parser.regex", None)
    monkeypatch.setattr(ua_parser, "BestAvailableResolver", chosen)
    monkeypatch.setattr(record, "_resolve_agent", record._pick_resolver)
    monkeypatch.setattr(record, "_rebuild_after_fork", False)
    agents = [CHROME, IPHONE, GOOGLEBOT, "curl/8.4.0", "python-requests/2.31.0", "x", "\xe9\x00"]
    for agent in agents:
        assert record._resolve_agent(agent) == ua_parser.parse(agent)
    assert record._rebuild_after_fork is True
    assert isinstance(record._resolve_agent.__self__.resolver.parser, chosen)  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("resolver", ["rust", "pure_python"])
def test_a_forked_child_builds_its_own_pure_python_resolver(
    resolver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ua-parser's pure-Python resolvers take locks (its cache's, google-re2's) that a thread
    of the parent may hold when another forks: a child builds its own. The Rust resolver keeps
    the GIL while it runs, and building it again would stall the child's threads: it is kept."""
    if resolver == "rust":
        pytest.importorskip("ua_parser_rs")
    else:
        monkeypatch.setitem(sys.modules, "ua_parser.regex", None)
    monkeypatch.setattr(record, "_resolve_agent", record._pick_resolver)
    monkeypatch.setattr(record, "_rebuild_after_fork", False)
    monkeypatch.setattr(record, "_PARSED_AGENTS", {})
    assert parse_user_agent(CHROME)["version"] == "120.0.6099"
    parents = record._resolve_agent

    def child() -> Any:
        rebuilt = record._resolve_agent is record._pick_resolver
        return [rebuilt, record._parse_agent(IPHONE)["device"]]

    assert fork_and_report(child) == [resolver == "pure_python", "iPhone"]
    assert record._resolve_agent is parents


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_a_thread_holds_the_resolver_cache_lock_parses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    import ua_parser

    monkeypatch.setitem(sys.modules, "ua_parser.regex", None)
    monkeypatch.setattr(
        ua_parser, "BestAvailableResolver", ua_parser.Re2Resolver or ua_parser.BasicResolver
    )
    monkeypatch.setattr(record, "_resolve_agent", record._pick_resolver)
    monkeypatch.setattr(record, "_rebuild_after_fork", False)
    monkeypatch.setattr(record, "_PARSED_AGENTS", {})
    assert parse_user_agent(CHROME)["version"] == "120.0.6099"
    lock = record._resolve_agent.__self__.resolver.cache.lock  # type: ignore[attr-defined]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(20)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        assert fork_and_report(lambda: parse_user_agent(IPHONE)["device"], timeout=10) == "iPhone"
    finally:
        release.set()
        holder.join()


def test_init_app_prepares_the_user_agent_parser(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record, "_resolve_agent", record._pick_resolver)
    make_app()
    assert record._resolve_agent is not record._pick_resolver  # built before any request


def test_values_by_look_are_filtered_value_by_value_after_one_look_at_all() -> None:
    redactor = Redactor(headers=(), fields=DEFAULT_REDACT_FIELDS)
    clean = [["Accept", "text/html"], ["X-Id", "4111 1111"], ["X-Next", "1111 1111"]]
    document: dict[str, Any] = {
        "request_headers": clean,
        "response_headers": [["X-Card", "card 4111 1111 1111 1111"]],
        "path": "/a",
        "query_params": "q=1",
        "referrer": None,
        "custom_data": None,
        "exception": None,
    }
    record.scrub_values_by_look(document, redactor)
    # a card split over two values is no card: those values stay as they are
    assert document["request_headers"] is clean
    assert document["response_headers"] == [["X-Card", "card [Filtered]"]]
    untouched = [["X-Card-Less", "4111 1111 1111"]]
    document["response_headers"] = untouched
    record.scrub_values_by_look(document, redactor)
    assert document["response_headers"] is untouched and document["path"] == "/a"


def test_only_the_first_256_characters_of_a_user_agent_are_parsed() -> None:
    # TikTok's in-app browser (from ua-parser's test suite): its name is past character 256.
    tiktok = (
        "Mozilla/5.0 (Linux; Android 10; moto g(7) Build/QP6_S30.52-23-13-4; wv) AppleWebKit/"
        "537.36 (KHTML, like Gecko) Version/4.0 Chrome/108.0.5359.128 Mobile Safari/537.36 "
        "musical_ly_2022704050 JsSdk/1.0 NetType/WIFI Channel/googleplay AppName/musical_ly "
        "app_version/27.4.5 ByteLocale/en ByteFullLocale/en Region/US Spark/1.2.4-alpha.5 "
        "AppVersion/27.4.5 PIA/1.5.10 BytedanceWebview/d8a21c6"
    )
    parsed = parse_user_agent(tiktok)
    assert parsed["string"] == tiktok  # stored whole
    assert parsed["browser"] == "Chrome Mobile WebView"  # what the first 256 characters say
    assert parse_user_agent(tiktok.replace("Channel/googleplay ", ""))["browser"] == "TikTok"

"""Tests for flask_tracking.display: stored values as text (no database needed)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask_tracking import display
from flask_tracking.display import (
    command_label,
    context_lines,
    db_activity_label,
    decode_body,
    escape,
    find_header,
    header_pairs,
    is_binary,
    log_line,
    message_lines,
    pretty_json,
    request_line,
    status_line,
    target,
    timing_label,
    user_agent_label,
)


def body_text(body: bytes | None, headers: Any = None, **options: Any) -> str:
    """What message_lines shows of ``body`` (after the first line, the headers and the blank)."""
    options = {"truncated": False, "omitted": None, "size": None, **options}
    lines = message_lines("GET /", headers or [], body, **options)
    return "\n".join(lines[lines.index("") + 1 :])


# --- escaping ------------------------------------------------------------------------------


def test_escape_names_cr_lf_tab_and_hex_escapes_other_controls() -> None:
    assert escape("a\r\nb\tc") == "a\\r\\nb\\tc"
    assert escape("\x00\x1b[31m\x7f\x85") == "\\x00\\x1b[31m\\x7f\\x85"


def test_escape_bidirectional_controls_and_line_separators() -> None:
    assert escape("abc\u202edcba\u2066\u2028\u061c") == "abc\\u202edcba\\u2066\\u2028\\u061c"


def test_escape_keeps_what_it_is_told_and_none_is_empty() -> None:
    assert escape("a\nb\tc\r", keep="\n\t") == "a\nb\tc\\r"
    assert escape(None) == ""
    assert escape(404) == "404"
    assert escape("café ✓") == "café ✓"


def test_control_re_finds_every_escaped_character() -> None:
    assert display.CONTROL_RE.search("plain text") is None
    assert display.CONTROL_RE.search("x\u200fy") is not None


# --- headers and bodies --------------------------------------------------------------------


def test_header_pairs_skip_malformed_entries() -> None:
    stored = [["A", "1"], ["B"], "C: 3", ("D", None), ["E", 5], None, ["F", "6", "7"]]
    assert list(header_pairs(stored)) == [("A", "1"), ("D", ""), ("E", "5")]
    assert list(header_pairs(None)) == []


def test_find_header_case_insensitive_first_match_and_default() -> None:
    stored = [["X-Custom", "first"], ["x-custom", "second"]]
    assert find_header(stored, "x-CUSTOM", "") == "first"
    assert find_header(stored, "Missing", "fallback") == "fallback"
    assert find_header(None, "X-Custom", "") == ""


def test_decode_body() -> None:
    assert decode_body(b"ok \xff") == "ok \ufffd"
    assert decode_body(None) is None


def test_is_binary() -> None:
    assert is_binary(b"abc\x00def")
    assert is_binary(b"\x89PNG\r\n")
    assert not is_binary("café".encode())
    assert not is_binary("café".encode()[:-1])  # cut in the middle of the last character
    assert is_binary(b"\xff" + b"a" * 10)


def test_pretty_json_when_declared_or_looking_like_json() -> None:
    assert pretty_json('{"a":1}', "application/json") == '{\n  "a": 1\n}'
    assert pretty_json('[{"a":1}]', "") == '[\n  {\n    "a": 1\n  }\n]'
    assert pretty_json("1e5", "text/plain") is None
    assert pretty_json("1e5", "application/json") == "100000.0"
    assert pretty_json("{not json", "application/json") is None
    assert pretty_json('"é"', "application/json") == '"é"'


def test_status_line() -> None:
    assert status_line(404) == "404 Not Found"
    assert status_line(799) == "799"
    assert status_line(None) == "-"


# --- the body of a message (moved from the debug() tests of test_documents.py) -------------


def test_debug_detects_json_without_content_type() -> None:
    assert '[\n  {\n    "a": 1\n  }\n]' in body_text(b'[{"a":1}]')


def test_debug_plain_text_not_reformatted() -> None:
    out = body_text(b"1e5", [["Content-Type", "text/plain"]])
    assert out == "1e5"
    assert "100000.0" not in out


def test_debug_binary_hex_preview_with_size() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    out = body_text(png, size=len(png))
    assert "(binary, 108 bytes) 89 50 4e 47 0d 0a 1a 0a 00" in out
    assert out.endswith(" ...")  # more than the 32 bytes shown
    assert "PNG" not in out


def test_debug_utf8_with_nul_bytes_is_binary() -> None:
    assert body_text(b"abc\x00def") == "(binary, 7 bytes) 61 62 63 00 64 65 66"


def test_debug_truncated_utf8_is_text_not_binary() -> None:
    out = body_text("café".encode()[:-1], truncated=True, size=5)
    assert "caf\ufffd" in out
    assert "binary" not in out


def test_debug_escapes_control_characters_in_text_bodies() -> None:
    assert "line1\nline2\\x1b[2J" in body_text(b"line1\nline2\x1b[2J")


def test_body_notes_truncated_omitted_empty_and_missing() -> None:
    assert body_text(b"a" * 10, truncated=True, size=5000) == (
        "aaaaaaaaaa\n(truncated, 5000 bytes in all)"
    )
    assert body_text(b"abc", truncated=True) == "abc\n(truncated)"
    assert body_text(None, omitted="too large\r\n") == "(body not recorded: too large\\r\\n)"
    assert body_text(None) == "(no body)"
    assert body_text(b"") == "(empty body)"


def test_message_lines_escape_the_first_line_and_the_headers() -> None:
    headers = [["X-Evil", "a\r\nX-Injected: 1"], ["X-Bell\x07", "ok"], ["Bad"]]
    lines = message_lines(
        "GET /p\r\nHTTP/1.1 200 OK", headers, b"", truncated=False, omitted=None, size=None
    )
    assert lines == [
        "GET /p\\r\\nHTTP/1.1 200 OK",
        "X-Evil: a\\r\\nX-Injected: 1",
        "X-Bell\\x07: ok",
        "",
        "(empty body)",
    ]


def test_message_lines_pretty_print_json_declared_by_content_type() -> None:
    out = body_text(b' "x" ', [["content-type", "application/json"]])
    assert out == '"x"'


# --- one line, the request line and the context ---------------------------------------------


def test_log_line() -> None:
    date = dt.datetime(2024, 5, 1, 10, 42, 3, 123456)
    line = log_line(date, "GET", "42", "/hello?x=1", 200, 3.24)
    assert line == "2024-05-01T10:42:03 GET 42 /hello?x=1 200 3.2ms"
    assert log_line(None, None, None, "/", None, None) == "- - - / - -"


def test_log_line_escapes_every_part() -> None:
    line = log_line(None, "GET\n", "1\n2", "/a\r\nFAKE", 200, 1.0)
    assert line == "- GET\\n 1\\n2 /a\\r\\nFAKE 200 1.0ms"


def test_target_and_request_line() -> None:
    assert target(None, None) == "/"
    assert target("/a", "") == "/a"
    assert target("/a", "x=1") == "/a?x=1"
    assert request_line("POST", "https", "h:5000", "/a?x=1") == "POST https://h:5000/a?x=1"
    assert request_line(None, None, "h", "/") == "- http://h/"
    assert request_line("GET", "https", None, "/") == "GET /"


def test_context_lines() -> None:
    fields = [("Date", "2024-05-01"), ("Worker", None), ("Exception", "ValueError: bad\nline")]
    lines = context_lines(
        fields, ["Database: 1 commands"], {"team": "blue", "when": dt.date(2024, 5, 1)}
    )
    assert lines == [
        "Date: 2024-05-01",
        "Exception: ValueError: bad\\nline",
        "Database: 1 commands",
        'Custom data: {\n  "team": "blue",\n  "when": "2024-05-01"\n}',
    ]
    assert context_lines([], [], None) == []
    assert context_lines([], [], "a\x1b\nb") == ['Custom data: "a\\u001b\\nb"']


def test_timing_label() -> None:
    assert timing_label(3.24, 4.5) == "3.2 ms in the app, 4.5 ms in all"
    assert timing_label(None, 4.5) == "4.5 ms in all"
    assert timing_label(None, None) is None


def test_user_agent_label() -> None:
    assert user_agent_label("Firefox", "120.0", "Linux", "Mozilla/5.0") == "Firefox 120.0 on Linux"
    assert user_agent_label(None, None, "Linux", None) == "Linux"
    assert user_agent_label(None, None, None, "curl/8.0\r\n") == "curl/8.0\\r\\n"
    assert user_agent_label(None, None, None, None) == "unknown"


def test_db_activity_label_and_command_label() -> None:
    assert db_activity_label(12, 3.44, {"find": 12}) == "12 commands, 3.4 ms (find 12)"
    assert db_activity_label(None, None, None) == "0 commands, -"
    assert db_activity_label(1, 1.0, {"fi\nnd": 1}) == "1 commands, 1.0 ms (fi\\nnd 1)"
    entry = {"command": "find", "collection": "items", "shape": '{"sku":"?"}'}
    assert command_label(entry) == 'find items {"sku":"?"}'
    assert command_label({"command": "find", "collection": None}) == "find"
    assert command_label({"command": "find\x1b"}) == "find\\x1b"

"""Tests for flask_tracking.cli.resend: ``flask tracking curl`` and ``replay``."""

from __future__ import annotations

import shlex
import stat
import subprocess
from typing import Any

import pytest
from flask.testing import FlaskCliRunner

from flask_tracking.redact import FILTERED

from .cli_support import HOSTILE, assert_clear_error, cli_app, hostile_record, run
from .test_queries import insert, stored_record


@pytest.fixture
def runner(mongo: Any) -> FlaskCliRunner:
    return cli_app().test_cli_runner()


def test_curl_leaves_filtered_headers_out_and_quotes_everything(runner: FlaskCliRunner) -> None:
    body = '{"note": "it\'s $HOME; `rm -rf /`"}'
    (record_id,) = insert(
        stored_record(
            method="POST",
            scheme="https",
            host="shop.example",
            path="/a b/100%",
            query_params="q=a%20b&token=[Filtered]",
            request_headers=[
                ["Host", "shop.example"],
                ["Content-Type", "application/json"],
                ["Content-Length", "33"],
                ["Authorization", FILTERED],
                ["Cookie", FILTERED],
                ["X-Quote", "it's"],
                ["X-Empty", ""],
            ],
            request_body=body.encode(),
            request_body_size=len(body),
        )
    )
    result = run(runner, "curl", str(record_id))
    assert result.exit_code == 0
    assert result.stderr == (
        "# Target: the recorded host https://shop.example; choose another with --base-url.\n"
        "# Left out filtered headers: Authorization, Cookie.\n"
        "# The stored request has filtered values (in its query string): they are sent as the "
        "text [Filtered], not as the client sent them.\n"
    )
    assert result.stdout.startswith("curl ")
    assert shell_words(result.stdout) == [
        "curl",
        "--globoff",
        "-X",
        "POST",
        "https://shop.example/a%20b/100%25?q=a%20b&token=[Filtered]",
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Quote: it's",
        "-H",
        "X-Empty;",
        "--data-raw",
        body,
    ]


def shell_words(command: str) -> list[str]:
    """The arguments ``sh`` passes to curl for ``command`` (a printed curl command)."""
    assert command.startswith("curl ")
    script = "printf '%s\\0' " + command[len("curl ") :]
    printed = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    return ["curl", *printed.decode().split("\0")[:-1]]


def test_curl_pipes_a_binary_body_through_printf(runner: FlaskCliRunner) -> None:
    body = bytes(range(256)) + b"%s%%\\n'\""
    (record_id,) = insert(
        stored_record(
            method="PUT",
            path="/upload",
            request_headers=[["Content-Type", "application/octet-stream"]],
            request_body=body,
            request_body_size=len(body),
        )
    )
    command = run(runner, "curl", str(record_id)).stdout
    printf, _, curl_part = command.partition(" | ")
    assert shlex.split(curl_part)[-2:] == ["--data-binary", "@-"]
    printed = subprocess.run(["sh", "-c", printf], capture_output=True, check=True).stdout
    assert printed == body


def test_curl_leaves_out_a_truncated_binary_body_and_offers_a_data_file(
    runner: FlaskCliRunner, tmp_path: Any
) -> None:
    kept = bytes(range(256)) * 40
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/upload",
            request_headers=[["Content-Type", "application/octet-stream"]],
            request_body=kept,
            request_body_size=1_000_000,
            request_body_truncated=True,
        )
    )
    result = run(runner, "curl", str(record_id))
    assert result.exit_code == 0
    assert "printf" not in result.stdout and "--data" not in result.stdout
    assert len(result.stdout) < 500
    assert f"binary and truncated ({len(kept)} of 1000000 bytes kept)" in result.stderr
    assert f"flask tracking curl {record_id} --data-file FILE" in result.stderr

    target = tmp_path / "body.bin"
    result = run(runner, "curl", str(record_id), "--data-file", str(target))
    assert result.exit_code == 0
    assert target.read_bytes() == kept
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a new file: owner only, as export
    assert shlex.split(result.stdout)[-2:] == ["--data-binary", f"@{target}"]
    assert "truncated" in result.stderr and "--data-file FILE" not in result.stderr


def test_curl_notes_truncated_and_missing_bodies(runner: FlaskCliRunner) -> None:
    truncated, omitted, head = insert(
        stored_record(
            method="POST",
            request_body=b"x" * 10,
            request_body_size=5000,
            request_body_truncated=True,
        ),
        stored_record(method="POST", request_body_omitted="excluded", request_body_size=None),
        stored_record(method="HEAD"),
    )
    result = run(runner, "curl", str(truncated))
    assert "truncated (10 of 5000 bytes kept)" in result.stderr
    assert shlex.split(result.stdout)[-1] == "x" * 10
    result = run(runner, "curl", str(omitted))
    assert "not recorded (excluded)" in result.stderr
    assert "--data" not in result.stdout
    assert shlex.split(run(runner, "curl", str(head)).stdout)[:3] == ["curl", "--globoff", "--head"]


def test_curl_words_with_control_characters_still_say_what_was_sent(
    runner: FlaskCliRunner,
) -> None:
    (record_id,) = insert(hostile_record())
    command = run(runner, "curl", str(record_id)).stdout
    printf, _, curl_part = command.partition(" | ")
    words = shell_words(curl_part)
    assert f"X-Evil: v{HOSTILE}" in words
    assert words[4].endswith("?q=" + HOSTILE)
    printed = subprocess.run(["sh", "-c", printf], capture_output=True, check=True).stdout
    assert printed == f"body{HOSTILE}".encode()


def test_curl_base_url_chooses_the_target(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(stored_record(host="evil.example", path="/x", query_params="a=1"))
    default = run(runner, "curl", str(record_id))
    assert "# Target: the recorded host http://evil.example; choose another" in default.stderr
    assert shell_words(default.stdout)[2] == "http://evil.example/x?a=1"
    chosen = run(runner, "curl", str(record_id), "--base-url", "http://localhost:5000/")
    assert "Target" not in chosen.stderr
    assert shell_words(chosen.stdout)[2] == "http://localhost:5000/x?a=1"
    refused = run(runner, "curl", str(record_id), "--base-url", "file:///etc/passwd")
    assert refused.exit_code != 0 and "--base-url" in refused.output


def test_curl_does_not_resend_the_content_encoding_of_a_decoded_body(
    runner: FlaskCliRunner,
) -> None:
    (record_id,) = insert(
        stored_record(
            method="POST",
            request_headers=[["Content-Encoding", "gzip"], ["Content-Type", "application/json"]],
            request_body=b'{"a": 1}',
            request_body_size=28,
        )
    )
    words = shell_words(run(runner, "curl", str(record_id)).stdout)
    assert "Content-Type: application/json" in words
    assert not any(word.lower().startswith("content-encoding") for word in words)


def recorded_user(**overrides: Any) -> dict[str, Any]:
    record = stored_record(
        path="/users/3",
        endpoint="user",
        response_headers=[["Content-Type", "application/json"]],
        response_body=b'{"id":3,"name":"user 3"}',
        response_body_size=24,
    )
    record.update(overrides)
    return record


def test_replay_identical_response(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(recorded_user())
    result = run(runner, "replay", str(record_id))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "GET /users/3 -> 200 OK (recorded: 200 OK)",
        "Response body identical to the recorded one.",
    ]


def test_replay_prints_a_unified_diff(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(
        recorded_user(status_code=500, response_body=b'{"id":3,"name":"old name"}')
    )
    result = run(runner, "replay", str(record_id))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "GET /users/3 -> 200 OK (recorded: 500 Internal Server Error)"
    assert lines[1:3] == ["--- recorded", "+++ replayed"]
    assert '-  "name": "old name"' in lines
    assert '+  "name": "user 3"' in lines


def test_replay_binary_and_missing_recorded_bodies(runner: FlaskCliRunner) -> None:
    same, other, missing = insert(
        stored_record(path="/bytes", response_body=b"\x00\x01\x02", response_body_size=3),
        stored_record(path="/bytes", response_body=b"\x00\x09", response_body_size=2),
        stored_record(path="/bytes", response_body=None, response_body_omitted="passthrough"),
    )
    assert "Binary response body identical" in run(runner, "replay", str(same)).stdout
    assert "Binary response bodies differ: 2 bytes recorded, 3 now" in (
        run(runner, "replay", str(other)).stdout
    )
    assert "not available (passthrough)" in run(runner, "replay", str(missing)).stdout


def test_replay_compares_only_the_kept_part_of_a_truncated_response(
    runner: FlaskCliRunner,
) -> None:
    (record_id,) = insert(recorded_user(response_body=b'{"id":3,"na', response_body_truncated=True))
    result = run(runner, "replay", str(record_id))
    assert "comparing the first 11 bytes" in result.stdout
    assert "Response body identical" in result.stdout


def test_replay_refuses_methods_that_change_data_without_force(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/orders",
            request_headers=[["Content-Type", "application/json"]],
            request_body=b'{"item": 1}',
            request_body_size=11,
            response_body=b'{"created": {"item": 1}}',
        )
    )
    assert_clear_error(
        run(runner, "replay", str(record_id)), "Not replaying a POST request", "--force"
    )
    for method in ("PUT", "PATCH", "DELETE"):
        (other,) = insert(stored_record(method=method, path="/orders"))
        assert_clear_error(run(runner, "replay", str(other)), f"Not replaying a {method}")
    forced = run(runner, "replay", "--force", str(record_id))
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.startswith("POST /orders -> 200 OK")


def test_replay_refuses_a_truncated_request_body(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/orders",
            request_body=b'{"item"',
            request_body_size=11,
            request_body_truncated=True,
        )
    )
    assert_clear_error(
        run(runner, "replay", "--force", str(record_id)),
        "The stored request body was truncated",
        "pass --allow-truncated",
    )
    result = run(runner, "replay", "--force", "--allow-truncated", str(record_id))
    assert result.exit_code == 0
    assert result.stdout.startswith("POST /orders -> 200 OK")


def resent_noting_filtered_values(
    runner: FlaskCliRunner, record_id: Any, places: str
) -> tuple[Any, Any]:
    """``curl`` and ``replay --force`` of ``record_id``, each checked to succeed and to note
    that the stored request has filtered values in ``places``."""
    note = (
        f"The stored request has filtered values (in its {places}): they are sent as the text "
        "[Filtered], not as the client sent them."
    )
    curl = run(runner, "curl", str(record_id))
    assert curl.exit_code == 0, curl.output
    assert f"# {note}" in curl.stderr.splitlines()
    replay = run(runner, "replay", "--force", str(record_id))
    assert replay.exit_code == 0, replay.output
    assert note in replay.stderr.splitlines()
    return curl, replay


def test_curl_and_replay_say_that_filtered_values_are_sent_as_the_text_filtered(
    runner: FlaskCliRunner,
) -> None:
    """A sign-in replayed sends the password ``[Filtered]``: a failed sign-in (and a diff that
    looks like a regression) unless the command says so."""
    (record_id,) = insert(
        stored_record(
            method="POST",
            path="/orders",
            query_params="sig=[Filtered]",
            request_headers=[["Content-Type", "application/x-www-form-urlencoded"]],
            request_body=b"username=ada&password=[Filtered]",
            request_body_size=31,
        )
    )
    _, replay = resent_noting_filtered_values(runner, record_id, "query string and body")
    assert replay.stdout.startswith("POST /orders?sig=[Filtered] -> 200 OK")
    (clean,) = insert(stored_record(path="/orders", request_body=b"a=1", request_body_size=3))
    assert "filtered values" not in run(runner, "replay", str(clean)).stderr


def test_curl_and_replay_say_that_a_header_they_send_has_filtered_values(
    runner: FlaskCliRunner,
) -> None:
    """A header kept with a value filtered in it (a URL's password, a token in the referrer)
    is sent with the text ``[Filtered]`` too; a header filtered whole is left out instead."""
    (record_id,) = insert(
        stored_record(
            path="/hooks",
            request_headers=[
                ["Authorization", FILTERED],
                ["X-Callback", "https://ada:[Filtered]@hooks.example/"],
            ],
        )
    )
    curl, _ = resent_noting_filtered_values(runner, record_id, "headers")
    assert "https://ada:[Filtered]@hooks.example/" in shell_words(curl.stdout)[-1]
    (left_out,) = insert(stored_record(path="/hooks", request_headers=[["Cookie", FILTERED]]))
    assert "filtered values" not in run(runner, "curl", str(left_out)).stderr


def test_replay_reports_an_exception_of_the_app(runner: FlaskCliRunner) -> None:
    (record_id,) = insert(stored_record(path="/boom"))
    assert_clear_error(
        run(runner, "replay", str(record_id)),
        "The app raised ValueError while handling the replayed request: kaboom",
    )


def test_replay_does_not_print_a_secret_of_the_new_response(mongo: Any) -> None:
    # The recorded body had its api_key filtered; the replayed response is the app's own,
    # unfiltered: the diff must not show its secret either.
    app = cli_app()
    secret = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"

    @app.get("/settings")
    def settings() -> Any:
        return {"api_key": secret, "name": "shop"}

    (record_id,) = insert(
        stored_record(
            path="/settings",
            endpoint="settings",
            url_rule="/settings",
            response_headers=[["Content-Type", "application/json"]],
            response_body=b'{"api_key": "[Filtered]", "name": "old shop"}',
            response_body_size=42,
        )
    )
    result = run(app.test_cli_runner(), "replay", str(record_id))
    assert result.exit_code == 0, result.output
    assert '+  "name": "shop"' in result.stdout
    assert secret not in result.output


def test_curl_sends_a_query_with_brackets_or_filtered_values_as_recorded(
    runner: FlaskCliRunner,
) -> None:
    # A secret query value is stored as "token=[Filtered]" (the default filtering), and
    # "filter[status]=open" is the usual Rails/PHP form: without --globoff (-g) curl reads
    # [...] and {...} in the URL as globbing patterns and refuses the command ("bad range in
    # URL", exit 3), or sends several requests for "{a,b}".
    import http.server
    import shutil
    import threading

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        query = "filter[status]=open&token=[Filtered]"
        (record_id,) = insert(stored_record(path="/search", query_params=query))
        base = f"http://127.0.0.1:{server.server_address[1]}"
        command = run(runner, "curl", str(record_id), "--base-url", base).stdout
        sent = subprocess.run(["sh", "-c", command], capture_output=True, timeout=30)
        assert sent.returncode == 0, sent.stderr.decode()
        assert seen == [f"/search?{query}"]
    finally:
        server.shutdown()
        server.server_close()


def test_replay_escapes_control_characters_in_the_apps_exception(mongo: Any) -> None:
    # An exception message that quotes the request (here the path) is printed raw in the
    # "The app raised ..." error: a crafted path writes the terminal's clipboard (OSC 52) or
    # clears the screen when somebody replays it. The recorded exception is escaped by show.
    app = cli_app()

    @app.get("/items/<name>")
    def item(name: str) -> str:
        raise LookupError(f"no item called {name}")

    (record_id,) = insert(stored_record(path="/items/x\x1b]52;c;cm0gLXJmIH4=\x07", endpoint="item"))
    result = run(app.test_cli_runner(), "replay", str(record_id))
    assert_clear_error(result, "The app raised LookupError")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr, repr(result.stderr)


def test_replay_escapes_control_characters_in_the_recorded_method(runner: FlaskCliRunner) -> None:
    # The method is the client's (the Werkzeug server takes any word of the request line):
    # the refusal "Not replaying a <METHOD> request" and, with --force, the first line of
    # the output print it raw, where show and list escape it.
    (record_id,) = insert(stored_record(method="X\x1b]52;c;cm0gLXJmIH4=\x07", path="/users/1"))
    refused = run(runner, "replay", str(record_id))
    assert_clear_error(refused, "Not replaying a")
    forced = run(runner, "replay", str(record_id), "--force")
    for output in (refused.stderr, forced.stdout):
        assert "\x1b" not in output and "\x07" not in output, repr(output)


def test_replay_sends_a_path_starting_with_two_slashes_to_that_path(runner: FlaskCliRunner) -> None:
    # A client may send "GET //other.example/users/5" (recorded as such, 404 here). The test
    # client reads "//other.example/users/5" as a network-path reference: the replay goes to
    # /users/5 with Host other.example, another view than the recorded request reached.
    (record_id,) = insert(
        stored_record(path="//other.example/users/5", endpoint=None, url_rule=None, status_code=404)
    )
    result = run(runner, "replay", str(record_id))
    assert result.exit_code == 0, result.output
    assert "-> 404 Not Found (recorded: 404 Not Found)" in result.stdout, result.stdout


def test_curl_targets_no_other_host_than_the_recorded_one(runner: FlaskCliRunner) -> None:
    # The Host header is stored raw (HTTP_HOST) and pasted into the URL: "shop.example@evil.
    # example" reads as shop.example in the "Target:" note, but is userinfo "shop.example" at
    # evil.example, so curl sends the request (and the header the reader adds back, as the
    # "Left out filtered headers: Authorization" note invites) to evil.example. The dashboard
    # shows the same command under "Copy as curl", without even the "Target:" note.
    from urllib.parse import urlsplit

    host = "shop.example@evil.example"
    (record_id,) = insert(
        stored_record(
            host=host,
            path="/account",
            request_headers=[["Host", host], ["Authorization", FILTERED]],
        )
    )
    result = run(runner, "curl", str(record_id))
    assert result.exit_code == 0, result.output
    url = shell_words(result.stdout)[2]
    assert urlsplit(url).hostname != "evil.example", url


def test_curl_data_file_in_a_missing_directory_is_one_sentence(
    runner: FlaskCliRunner, tmp_path: Any
) -> None:
    (record_id,) = insert(stored_record(method="POST", request_body=b"x", request_body_size=1))
    result = run(runner, "curl", str(record_id), "--data-file", str(tmp_path / "no" / "body.bin"))
    assert not isinstance(result.exception, OSError), repr(result.exception)
    assert result.exit_code in (1, 2), result.output

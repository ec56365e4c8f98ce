"""``flask tracking curl`` and ``replay``: send a recorded request again.

``curl`` prints a shell command (POSIX quoting, binary bodies through ``printf``) that sends it
from anywhere; ``replay`` sends it through the app's test client and compares the responses.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Iterator
from urllib.parse import quote

import click

from ..display import (
    CONTROL_RE,
    escape,
    header_pairs,
    is_binary,
    pretty_json,
    status_line,
    target,
)
from ..documents import Tracking
from ..redact import FILTERED
from ..replay import check_replayable
from .selection import app_config, app_records, command, record_by_id, writing_to

#: Methods ``replay`` sends without ``--force``: the safe ones (RFC 9110). PUT and DELETE are
#: idempotent but change data, which may have changed since; they need ``--force`` too.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@command("curl")
@click.argument("record_id")
@click.option(
    "--data-file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the stored request body to this file and send it with --data-binary @FILE "
    "(for binary bodies, which are otherwise inlined with printf or, when truncated, left out).",
)
@click.option(
    "--base-url",
    help="Where to send it, e.g. http://localhost:5000 (default: the recorded scheme and Host, "
    "which the client chose).",
)
def curl_command(record_id: str, data_file: str | None, base_url: str | None) -> None:
    """A curl command that sends the recorded request again (filtered headers left out)."""
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise click.BadParameter("must start with http:// or https://", param_hint="--base-url")
    record = record_by_id(app_records(), record_id)
    if data_file is not None:
        with writing_to(data_file), open(data_file, "wb", opener=_owner_only) as stream:
            stream.write(bytes(record.request_body or b""))
    command, notes = curl_for(record, data_file, base_url)
    for note in notes:
        click.echo(f"# {note}", err=True)
    click.echo(command)


def _owner_only(path: str, flags: int) -> int:
    """Open ``path`` as :func:`open` would, creating it readable by its owner only (a request
    body may hold personal data); an existing file keeps its mode, as ``export`` does."""
    return os.open(path, flags, 0o600)


def curl_for(
    record: Tracking, data_file: str | None = None, base_url: str | None = None
) -> tuple[str, list[str]]:
    """A shell command (POSIX quoting) re-sending ``record`` with curl, and notes about it.

    The target is ``base_url`` (``http://localhost:5000``) or else the recorded scheme and host;
    ``--globoff`` makes curl send the URL's brackets and braces as they are (a query's
    ``token=[Filtered]``, ``filter[status]=open``). Headers stored as ``[Filtered]`` are left
    out, as are Host (in the URL), Content-Length and Transfer-Encoding (curl sets them). With
    ``data_file`` (where the caller wrote the stored body) the body is sent with ``--data-binary
    @data_file``. Otherwise a text body goes in ``--data-raw``; a binary one (or one holding
    control or bidirectional characters) is piped in by ``printf`` with octal escapes, unless it
    was truncated: then it is left out and a note says so (a partial binary body is rarely worth
    sending, and its printf would be tens of kilobytes of escapes). A word holding a control or
    bidirectional character is given as ``"$(printf ...)"`` with octal escapes, so the printed
    command shows none of them raw (nothing a terminal would act on).
    """
    method = (record.method or "GET").upper()
    body = bytes(record.request_body) if record.request_body is not None else b""
    notes: list[str] = []
    if base_url is None:
        url, notes = _recorded_target(record)
    else:
        url = base_url.rstrip("/")
    url += quote(record.path or "/", safe="/:@!$&'()*+,;=")
    if record.query_params:
        url += f"?{record.query_params}"
    words = ["curl", "--globoff"]  # a query's [ ] and { } are not curl's URL patterns
    if method == "HEAD":
        words.append("--head")
    elif method != "GET" or body:
        words += ["-X", method]
    words.append(url)
    lines = [" ".join(_shell_word(word) for word in words)]
    lines += [
        f"-H {_shell_word(f'{name}: {value}' if value else f'{name};')}"
        for name, value in record.resendable_headers()
    ]
    prefix = ""
    binary = bool(body) and (
        is_binary(body) or CONTROL_RE.search(body.decode("utf-8", "replace")) is not None
    )
    if data_file is not None:
        lines.append(f"--data-binary {_shell_word('@' + data_file)}")
    elif binary and record.request_body_truncated:
        pass  # left out; _curl_notes says why and how to get it
    elif binary:
        prefix = f"printf {shlex.quote(_printf_format(body))} | "
        lines.append("--data-binary @-")
    elif body:
        lines.append(f"--data-raw {shlex.quote(body.decode('utf-8', 'replace'))}")
    return prefix + " \\\n  ".join(lines), notes + _curl_notes(record, binary, data_file)


#: A Host header that names a host and nothing else: a name or an IPv4 address, or an IPv6
#: address in brackets, then an optional port. No userinfo (``@``), path, query or spaces.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9._~%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _recorded_target(record: Tracking) -> tuple[str, list[str]]:
    """The recorded scheme and Host as the curl command's target, and the note that says so.

    The Host header is the client's: one that is more than a host and a port
    (``shop.example@evil.example`` is userinfo, then the host ``evil.example``) is not
    pasted into the URL; the command targets ``localhost`` then, and the note says why.
    """
    scheme = record.scheme if record.scheme in ("http", "https") else "http"
    host = record.host or "localhost"
    if _HOST_RE.fullmatch(host):
        url = f"{scheme}://{host}"
        return url, [f"Target: the recorded host {url}; choose another with --base-url."]
    url = f"{scheme}://localhost"
    return url, [
        f"Target: {url}, as the recorded Host {escape(repr(host))} is not a host name and "
        "port; choose another with --base-url."
    ]


def _shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell; with control or bidirectional characters, as a
    printf command substitution that prints them from octal escapes."""
    if CONTROL_RE.search(word) is None:
        return shlex.quote(word)
    return f'"$(printf {shlex.quote(_printf_format(word.encode("utf-8", "surrogateescape")))})"'


def _printf_format(body: bytes) -> str:
    """A printf format that prints exactly ``body`` (octal escapes; POSIX printf)."""
    out = []
    for byte in body:
        char = chr(byte)
        if char == "%":
            out.append("%%")
        elif char == "\\":
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def _filtered_values_note(record: Tracking) -> str | None:
    """A sentence saying where the stored request has filtered values, which a resent request
    carries as the text ``[Filtered]`` (a password, a signature); None when it has none. A
    header filtered whole is left out, not sent: only those with a value filtered in them
    (``https://ada:[Filtered]@host``) count."""
    kept_headers = [v for _, v in header_pairs(record.request_headers) if v != FILTERED]
    places = [
        place
        for place, value in (
            ("path", record.path or ""),
            ("query string", record.query_params or ""),
            ("headers", "\n".join(kept_headers)),
            ("body", (record.request_body or b"").decode("utf-8", "replace")),
        )
        if FILTERED in value
    ]
    if not places:
        return None
    return (
        f"The stored request has filtered values (in its {' and '.join(places)}): they are "
        f"sent as the text {FILTERED}, not as the client sent them."
    )


def _curl_notes(record: Tracking, binary: bool, data_file: str | None) -> list[str]:
    notes = []
    filtered = record.filtered_header_names()
    if filtered:
        notes.append(f"Left out filtered headers: {escape(', '.join(filtered))}.")
    filtered_values = _filtered_values_note(record)
    if filtered_values is not None:
        notes.append(filtered_values)
    kept = len(record.request_body or b"")
    if record.request_body_truncated and binary and data_file is None:
        notes.append(
            f"The stored request body is binary and truncated ({kept} of "
            f"{record.request_body_size} bytes kept): it is left out. 'flask tracking curl "
            f"{record.pk} --data-file FILE' writes the kept bytes to FILE and sends them with "
            "--data-binary @FILE."
        )
    elif record.request_body_truncated:
        notes.append(
            f"The stored request body was truncated ({kept} of {record.request_body_size} "
            "bytes kept): this command sends only the kept part."
        )
    elif record.request_body is None and record.request_body_omitted:
        notes.append(
            f"The request body was not recorded ({escape(record.request_body_omitted)}): this "
            "command sends none."
        )
    return notes


@command("replay")
@click.argument("record_id")
@click.option("--force", is_flag=True, help="Also replay methods that change data (POST...).")
@click.option(
    "--allow-truncated",
    is_flag=True,
    help="Replay even when the request body was not recorded in full.",
)
def replay_command(record_id: str, force: bool, allow_truncated: bool) -> None:
    """Send a recorded request again through the app's test client, and compare responses.

    Prints the new status and a unified diff of the new response body against the recorded
    one. Only GET, HEAD, OPTIONS and TRACE without --force. The replay is not tracked.
    """
    record = record_by_id(app_records(), record_id)
    method = (record.method or "GET").upper()
    if method not in SAFE_METHODS and not force:
        raise click.ClickException(
            f"Not replaying a {escape(method)} request: it may change data again. "
            "Pass --force to replay it anyway."
        )
    try:
        check_replayable(record, allow_truncated)
    except ValueError as error:
        message = str(error).replace("pass allow_truncated=True", "pass --allow-truncated")
        raise click.ClickException(message) from None
    filtered_values = _filtered_values_note(record)
    if filtered_values is not None:
        click.echo(filtered_values, err=True)
    redactor = app_config().redactor
    try:
        response = record.replay(allow_truncated=True)  # checked just above
    except Exception as error:
        message = f"{error}" if redactor is None else redactor.message(f"{error}")
        raise click.ClickException(
            f"The app raised {type(error).__name__} while handling the replayed request: "
            f"{escape(message)}"  # filtered as a record's exception is; no raw control codes
        ) from None
    with response:
        new_body = response.get_data()
        new_status, new_type = response.status_code, response.content_type or ""
    if redactor is not None:  # the new response is shown as a record of it would store it
        new_body = redactor.body(new_body, new_type) or b""
    recorded = status_line(record.status_code)
    same = new_status == record.status_code
    click.echo(
        f"{escape(method)} {escape(target(record.path, record.query_params))} -> "
        f"{click.style(status_line(new_status), fg=None if same else 'yellow')} "
        f"(recorded: {recorded})"
    )
    for line in _body_diff(record, new_body, new_type):
        click.echo(line)


def _body_diff(record: Tracking, new_body: bytes, new_type: str) -> Iterator[str]:
    """Lines comparing the recorded response body with ``new_body``."""
    if record.response_body is None:
        reason = record.response_body_omitted or "none was recorded"
        yield f"The recorded response body is not available ({reason}); nothing to compare."
        return
    old = bytes(record.response_body)
    if record.response_body_truncated:
        yield f"The recorded body was truncated: comparing the first {len(old)} bytes."
        new_body = new_body[: len(old)]
    if is_binary(old) or is_binary(new_body):
        if old == new_body:
            yield f"Binary response body identical to the recorded one ({len(old)} bytes)."
        else:
            yield f"Binary response bodies differ: {len(old)} bytes recorded, {len(new_body)} now."
        return
    old_text = _comparable(old, record.get_response_header("content-type"))
    new_text = _comparable(new_body, new_type)
    diff = list(
        difflib.unified_diff(
            old_text.splitlines(), new_text.splitlines(), "recorded", "replayed", lineterm=""
        )
    )
    if not diff:
        yield "Response body identical to the recorded one."
        return
    colours = {"+": "green", "-": "red", "@": "cyan"}
    for line in diff:
        colour = None if line[:3] in ("---", "+++") else colours.get(line[:1])
        yield click.style(escape(line, keep="\t"), fg=colour)


def _comparable(body: bytes, content_type: str) -> str:
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    return pretty_json(text, content_type) or text

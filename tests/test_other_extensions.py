"""End to end with the popular Flask extensions: a tracked app answers as its untracked twin,
and every request is recorded as it was answered.

Each extension is set up the same way on a tracked app (``make_app``: Tracking first, as
production.md advises) and on an untracked twin; the same requests go to both, through Flask's
test client and, for Flask-Compress and Flask-Caching, through Werkzeug's server over a real
socket. The answers (status, headers, body) must be equal byte for byte, but for what each
test names as legitimately different (a ``Date``, a random token) and says why. Then the
records: status, response headers and body as sent, endpoint, one per request, no
``capture_errors``. Each extension's tests are skipped when it is not installed.
"""

from __future__ import annotations

import gzip
import re
import socket
import threading
import zlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from flask import Flask, Response, request, session, stream_with_context
from werkzeug.serving import make_server

from .conftest import add_routes, stored

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

Answer = tuple[int, list[tuple[str, str]], bytes]


def make_twins(
    make_app: Callable[..., Flask], setup: Callable[[Flask], None], **config: Any
) -> tuple[Flask, Flask]:
    """A tracked app and its untracked twin, with the same config, views and extension."""
    tracked = make_app(**config)
    untracked = Flask("untracked")
    untracked.config.update(TESTING=tracked.config["TESTING"], **config)
    add_routes(untracked)
    for app in (tracked, untracked):
        setup(app)
    return tracked, untracked


def answer(response: Any, differing: tuple[str, ...] = ()) -> Answer:
    """Status, sorted headers and body; the headers named in ``differing`` keep their name
    only (their value legitimately differs from one request to the next)."""
    headers = sorted(
        (name, "<differs>" if name in differing else value)
        for name, value in response.headers.items()
    )
    return response.status_code, headers, response.get_data()


def both(
    tracked: Flask,
    untracked: Flask,
    requests: list[tuple[str, str, dict[str, Any]]],
    differing: tuple[str, ...] = (),
) -> list[Answer]:
    """Send ``requests`` (method, path, test client keywords) to both apps, each through a
    client of its own (cookies kept); assert the answers equal, and return the tracked ones.
    Each response is read to its end before the next request: a stream_with_context response
    holds its request context until then."""
    answers = []
    for app in (tracked, untracked):
        client = app.test_client()
        answers.append(
            [
                answer(client.open(path, method=method, **kw), differing)
                for method, path, kw in requests
            ]
        )
    assert answers[0] == answers[1]
    return answers[0]


def no_capture_errors(app: Flask) -> None:
    assert app.extensions["tracking"].stats(app)["capture_errors"] == 0


def header(document: dict[str, Any], name: str) -> str | None:
    values = [value for key, value in document["response_headers"] if key.lower() == name.lower()]
    return values[0] if values else None


class Server:
    """Werkzeug's development server for ``app`` on a free port, in a thread."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)  # HTTP/1.1
        self.port = self.server.server_port
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def exchange(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """The raw answer to one request (HTTP/1.1, ``Connection: close``), read to the end."""
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        return raw

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[[Flask], Server]]:
    started: list[Server] = []

    def start(app: Flask) -> Server:
        started.append(Server(app))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def on_the_wire(
    tracked: Flask,
    untracked: Flask,
    serve: Callable[[Flask], Server],
    requests: list[tuple[str, str, dict[str, str]]],
) -> list[bytes]:
    """Send ``requests`` to both apps through Werkzeug's server; assert the raw answers equal
    but for the ``Date`` header the server adds (the second each was sent in), and return the
    tracked app's, without it."""
    answers = []
    for app in (tracked, untracked):
        server = serve(app)
        answers.append(
            [
                re.sub(rb"\r\nDate: [^\r]*", b"", server.exchange(method, path, headers))
                for method, path, headers in requests
            ]
        )
    assert answers[0] == answers[1]
    return answers[0]


def split_answer(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def dechunk(body: bytes) -> bytes:
    """The content of a body sent with ``Transfer-Encoding: chunked``."""
    content = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        content, body = content + body[:size], body[size + 2 :]
    return content


# --------------------------------------------------------------------------------------------
# Flask-Compress
# --------------------------------------------------------------------------------------------

PAGE = "Hello, compressed world! " * 80  # 2,000 bytes
SECRET_JSON = {"password": "hunter2", "items": list(range(300))}
STREAM_CHUNKS = ['{"token": "s3cr3t-value", "text": "'] + [f"chunk {i} " * 20 for i in range(40)]


def add_compress(app: Flask) -> None:
    flask_compress = pytest.importorskip("flask_compress")
    flask_compress.Compress(app)

    @app.get("/page")
    def page() -> str:
        return PAGE

    @app.get("/secret-json")
    def secret_json() -> Any:
        return SECRET_JSON

    @app.get("/streamed")
    def streamed() -> Response:
        def generate() -> Iterator[str]:
            yield from STREAM_CHUNKS
            yield '"}'

        return Response(stream_with_context(generate()), mimetype="application/json")


def streamed_content() -> bytes:
    return ("".join(STREAM_CHUNKS) + '"}').encode()


def decompress(body: bytes, coding: str) -> bytes:
    if coding in ("gzip", "deflate"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)
    if coding == "br":
        brotli = pytest.importorskip("brotli")
        return bytes(brotli.decompress(body))
    assert coding == "", coding
    return body


@pytest.fixture
def fixed_gzip_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """gzip writes the time of compression into its header (``gzip.compress`` with no
    ``mtime``, as Flask-Compress calls it): the same body compressed a second later differs
    in four bytes, tracked or not. Both twins compress at one fixed time."""
    monkeypatch.setattr(gzip, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))


#: Flask-Compress answers a compressed response with make_conditional(), which adds a Date
#: header (the second it was made): it differs between two requests, tracked or not.
COMPRESS_DIFFERING = ("Date",)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", ""])
@pytest.mark.parametrize("path", ["/page", "/secret-json"])
def test_compress_answers_as_untracked_and_stores_the_body_decoded(
    make_app: Callable[..., Flask], mongo: Any, fixed_gzip_time: None, coding: str, path: str
) -> None:
    tracked, untracked = make_twins(make_app, add_compress)
    headers = {"Accept-Encoding": coding} if coding else {}
    (sent,) = both(tracked, untracked, [("GET", path, {"headers": headers})], COMPRESS_DIFFERING)
    status, sent_headers, body = sent
    assert status == 200
    assert (("Content-Encoding", coding) in sent_headers) == bool(coding)
    (document,) = stored(tracked, mongo)
    assert (document["status_code"], document["endpoint"]) == (200, path[1:].replace("-", "_"))
    # docs/production.md: headers as sent, Content-Encoding included; the body stored decoded;
    # response_body_size counts the bytes sent.
    assert header(document, "Content-Encoding") == (coding or None)
    assert header(document, "Vary") == "Accept-Encoding"
    assert document["response_body_size"] == len(body)
    assert document["response_body_omitted"] is None
    content = decompress(body, coding)
    if path == "/page":
        assert document["response_body"] == content == PAGE.encode()
    else:  # the decoded JSON is scrubbed like any JSON body
        assert b'"password": "[Filtered]"' in document["response_body"]
        assert b"hunter2" not in document["response_body"]
    no_capture_errors(tracked)


@pytest.mark.parametrize("path", ["/page", "/secret-json"])
def test_compress_zstd_that_browsers_get_is_stored_decoded(
    make_app: Callable[..., Flask], mongo: Any, path: str
) -> None:
    """Flask-Compress (1.18 and later) tries zstd first, and browsers accept it (``gzip,
    deflate, br, zstd``): it is what a tracked app's visitors get. docs/production.md: the
    body that is sent is stored decoded; Flask-Compress brings its own decoder
    (``backports.zstd`` before Python 3.14, ``compression.zstd`` from it)."""
    tracked, untracked = make_twins(make_app, add_compress)
    browser = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    (sent,) = both(tracked, untracked, [("GET", path, {"headers": browser})], COMPRESS_DIFFERING)
    if ("Content-Encoding", "zstd") not in sent[1]:
        pytest.skip("this Flask-Compress sends no zstd")
    (document,) = stored(tracked, mongo)
    assert document["response_body_omitted"] is None
    assert document["response_body_size"] == len(sent[2])
    if path == "/page":
        assert document["response_body"] == PAGE.encode()
    else:
        assert b'"password": "[Filtered]"' in document["response_body"]
    no_capture_errors(tracked)


@pytest.mark.parametrize("coding", ["br", "deflate"])
def test_compress_streamed_answers_as_untracked_and_is_recorded_once_read(
    make_app: Callable[..., Flask], mongo: Any, coding: str
) -> None:
    tracked, untracked = make_twins(make_app, add_compress, COMPRESS_STREAMS=True)
    requests = [("GET", "/streamed", {"headers": {"Accept-Encoding": coding}})] * 2
    sent = both(tracked, untracked, requests)
    assert ("Content-Encoding", coding) in sent[0][1]
    assert decompress(sent[0][2], coding) == streamed_content()
    documents = stored(tracked, mongo)
    assert len(documents) == 2
    for document in documents:
        assert (document["status_code"], document["endpoint"]) == (200, "streamed")
        assert header(document, "Content-Encoding") == coding
        assert header(document, "Content-Length") is None
        assert document["response_body_size"] == len(sent[0][2])
        assert document["response_body"].startswith(b'{"token": "[Filtered]", "text": "chunk 0 ')
        assert document["response_body"].endswith(b'"}')
    no_capture_errors(tracked)


def test_compress_a_body_that_decodes_past_the_limit_is_marked_truncated(
    make_app: Callable[..., Flask], mongo: Any, fixed_gzip_time: None
) -> None:
    """docs/stored.md: ``response_body`` is "the first TRACKING_MAX_BODY_LENGTH bytes" and
    ``response_body_truncated`` "more bytes went by than were kept". A gzip body of a few
    dozen bytes (all of it captured) that decodes to 2,000 is stored decoded, cut at the
    limit: it must say that it was cut."""
    tracked, untracked = make_twins(make_app, add_compress, TRACKING_MAX_BODY_LENGTH=100)
    (sent,) = both(
        tracked,
        untracked,
        [("GET", "/page", {"headers": {"Accept-Encoding": "gzip"}})],
        COMPRESS_DIFFERING,
    )
    assert len(sent[2]) < 100  # the whole compressed body fits in the capture
    (document,) = stored(tracked, mongo)
    assert document["response_body"] == PAGE.encode()[:100]
    assert document["response_body_truncated"] is True
    no_capture_errors(tracked)


def test_compress_an_answer_that_fits_whole_is_not_marked_truncated(
    make_app: Callable[..., Flask], mongo: Any, fixed_gzip_time: None
) -> None:
    tracked, untracked = make_twins(make_app, add_compress, TRACKING_MAX_BODY_LENGTH=len(PAGE))
    both(
        tracked,
        untracked,
        [("GET", "/page", {"headers": {"Accept-Encoding": "gzip"}})],
        COMPRESS_DIFFERING,
    )
    (document,) = stored(tracked, mongo)
    assert document["response_body"] == PAGE.encode()
    assert document["response_body_truncated"] is False


def test_compress_conditional_get_and_head_answer_as_untracked(
    make_app: Callable[..., Flask], mongo: Any, fixed_gzip_time: None
) -> None:
    """Flask-Compress rewrites a strong ETag (``"...:gzip"``) and answers If-None-Match with a
    304 itself, in after_request: recorded as the 304 it sent, with no body."""

    def setup(app: Flask) -> None:
        add_compress(app)

        @app.get("/tagged")
        def tagged() -> Response:
            response = Response(PAGE)
            response.add_etag()
            return response

    tracked, untracked = make_twins(make_app, setup)
    gzip_only = {"Accept-Encoding": "gzip"}
    first = untracked.test_client().get("/tagged", headers=gzip_only)
    etag = first.headers["ETag"]
    assert etag.endswith(':gzip"')
    requests = [
        ("GET", "/tagged", {"headers": gzip_only}),
        ("GET", "/tagged", {"headers": {**gzip_only, "If-None-Match": etag}}),
        ("HEAD", "/tagged", {"headers": gzip_only}),
    ]
    sent = both(tracked, untracked, requests, COMPRESS_DIFFERING)
    assert [status for status, _, _ in sent] == [200, 304, 200]
    documents = stored(tracked, mongo)
    assert [(d["method"], d["status_code"]) for d in documents] == [
        ("GET", 200),
        ("GET", 304),
        ("HEAD", 200),
    ]
    assert documents[0]["response_body"] == PAGE.encode()
    assert [(d["response_body"], d["response_body_size"]) for d in documents[1:]] == [(b"", 0)] * 2
    no_capture_errors(tracked)


def test_compress_without_redaction_stores_the_body_as_sent(
    make_app: Callable[..., Flask], mongo: Any, fixed_gzip_time: None
) -> None:
    """docs/privacy.md: TRACKING_REDACT = False stores every body verbatim: a compressed one
    as it was sent, its Content-Encoding in the stored headers says how to read it."""
    tracked, untracked = make_twins(make_app, add_compress, TRACKING_REDACT=False)
    (sent,) = both(
        tracked,
        untracked,
        [("GET", "/page", {"headers": {"Accept-Encoding": "gzip"}})],
        COMPRESS_DIFFERING,
    )
    (document,) = stored(tracked, mongo)
    assert document["response_body"] == sent[2]
    assert gzip.decompress(document["response_body"]) == PAGE.encode()
    assert header(document, "Content-Encoding") == "gzip"
    no_capture_errors(tracked)


def test_compress_set_up_before_tracking_answers_and_records_the_same(
    mongo: Any, fixed_gzip_time: None
) -> None:
    """docs/production.md: compression in any order."""
    pytest.importorskip("flask_compress")
    from flask_tracking import Tracking

    from .conftest import FAST_WRITER

    tracked = Flask("compress_first")
    tracked.config.update(TESTING=True, **FAST_WRITER)
    add_compress(tracked)
    Tracking(tracked)
    untracked = Flask("untracked")
    untracked.config.update(TESTING=True)
    add_compress(untracked)
    try:
        requests = [
            ("GET", "/page", {"headers": {"Accept-Encoding": "gzip"}}),
            ("GET", "/secret-json", {"headers": {"Accept-Encoding": "br"}}),
        ]
        both(tracked, untracked, requests, COMPRESS_DIFFERING)
        documents = stored(tracked, mongo)
        assert [d["response_body"][:20] for d in documents] == [
            PAGE.encode()[:20],
            b'{"items": [0, 1, 2, ',
        ]
        no_capture_errors(tracked)
    finally:
        tracked.extensions["tracking"].close(1.0)


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_compress_through_a_real_server_sends_the_same_bytes(
    make_app: Callable[..., Flask],
    mongo: Any,
    serve: Callable[[Flask], Server],
    fixed_gzip_time: None,
    coding: str,
) -> None:
    tracked, untracked = make_twins(make_app, add_compress, testing=False, COMPRESS_STREAMS=True)
    accept = {"Accept-Encoding": coding}
    raws = on_the_wire(
        tracked,
        untracked,
        serve,
        [("GET", "/page", accept), ("GET", "/streamed", accept), ("GET", "/page", {})],
    )
    bodies = []
    for raw in raws:
        head, body = split_answer(raw)
        assert head.startswith(b"HTTP/1.1 200"), head
        bodies.append(dechunk(body) if b"Transfer-Encoding: chunked" in head else body)
    documents = stored(tracked, mongo)
    assert [d["path"] for d in documents] == ["/page", "/streamed", "/page"]
    # Flask-Compress streams with its COMPRESS_STREAMING_ALGORITHM (zstd, br, deflate): gzip
    # is not among them, so a stream asked for with gzip only goes out uncompressed.
    streamed_coding = None if coding == "gzip" else coding
    assert [header(d, "Content-Encoding") for d in documents] == [coding, streamed_coding, None]
    assert [d["response_body_size"] for d in documents] == [len(b) for b in bodies]
    assert documents[0]["response_body"] == PAGE.encode() == documents[2]["response_body"]
    assert documents[1]["response_body"].startswith(b'{"token": "[Filtered]"')
    no_capture_errors(tracked)


# --------------------------------------------------------------------------------------------
# Flask-Cors
# --------------------------------------------------------------------------------------------


def add_cors(app: Flask) -> None:
    flask_cors = pytest.importorskip("flask_cors")
    flask_cors.CORS(app, supports_credentials=True, expose_headers=["X-Total"])

    @app.route("/api/items", methods=["GET", "PUT"])
    def items() -> Any:
        return {"ok": True, "method": request.method}


ORIGIN = {"Origin": "https://shop.example"}


def test_cors_preflight_and_simple_requests_answer_as_untracked(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, untracked = make_twins(make_app, add_cors)
    preflight = {
        **ORIGIN,
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "Content-Type, X-Trace",
    }
    requests = [
        ("OPTIONS", "/api/items", {"headers": preflight}),
        ("PUT", "/api/items", {"headers": ORIGIN, "json": {"name": "a"}}),
        ("GET", "/api/items", {"headers": ORIGIN}),
        ("OPTIONS", "/nowhere", {"headers": preflight}),
        ("GET", "/api/items", {}),  # no Origin: no CORS headers
    ]
    sent = both(tracked, untracked, requests)
    assert [status for status, _, _ in sent] == [200, 200, 200, 404, 200]
    assert ("Access-Control-Allow-Origin", "https://shop.example") in sent[0][1]
    documents = stored(tracked, mongo)
    assert [(d["method"], d["endpoint"], d["status_code"]) for d in documents] == [
        ("OPTIONS", "items", 200),
        ("PUT", "items", 200),
        ("GET", "items", 200),
        ("OPTIONS", None, 404),
        ("GET", "items", 200),
    ]
    for document, (_, headers, body) in zip(documents, sent):
        assert sorted(map(tuple, document["response_headers"])) == headers
        assert document["response_body"] == body
    assert documents[1]["request_body"] == b'{"name": "a"}'
    no_capture_errors(tracked)


def test_cors_allow_credentials_is_stored_as_sent(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """``Access-Control-Allow-Credentials`` says whether the browser may send cookies: its only
    value is ``true``, no secret. Its name holds the word "credentials", which made it
    ``[Filtered]``, hiding from the record how the CORS answer was made."""
    tracked, untracked = make_twins(make_app, add_cors)
    (sent,) = both(tracked, untracked, [("GET", "/api/items", {"headers": ORIGIN})])
    assert ("Access-Control-Allow-Credentials", "true") in sent[1]
    (document,) = stored(tracked, mongo)
    assert header(document, "Access-Control-Allow-Credentials") == "true"


# --------------------------------------------------------------------------------------------
# Flask-WTF
# --------------------------------------------------------------------------------------------


def add_wtf(app: Flask) -> None:
    flask_wtf = pytest.importorskip("flask_wtf")
    from flask_wtf.csrf import generate_csrf
    from wtforms import PasswordField, StringField

    class SignUp(flask_wtf.FlaskForm):  # type: ignore[misc]
        name = StringField("name")
        password = PasswordField("password")

    flask_wtf.CSRFProtect(app)

    @app.route("/signup", methods=["GET", "POST"])
    def signup() -> str:
        form = SignUp()
        if form.validate_on_submit():
            return f"welcome {form.name.data}"
        return f'<form method="post">{form.csrf_token()}{form.name()}{form.password()}</form>'

    @app.get("/csrf")
    def csrf() -> Any:
        return {"csrf_token": generate_csrf()}

    @app.post("/api/note")
    def note() -> str:
        return "noted"


def test_wtf_csrf_forms_answer_as_untracked_and_the_token_is_never_stored(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """Flask-WTF's token is random (a new one per session) and signed with the time: each
    twin gets its own, so the answers are compared with each twin's token, and its session
    cookie, written as placeholders. docs/privacy.md: the hidden ``csrf_token`` field of a
    page, the form field sent back, the JSON key, ``X-CSRFToken`` and the cookies are
    filtered."""
    tracked, untracked = make_twins(make_app, add_wtf, testing=False, SECRET_KEY="s3cret")
    answers, tokens = [], []
    for app in (tracked, untracked):
        client = app.test_client()
        page = client.get("/signup")
        token = re.search(rb'name="csrf_token" type="hidden" value="([^"]+)"', page.data)
        assert token is not None
        tokens.append(token.group(1))
        responses = [
            page,
            client.post(
                "/signup", data={"csrf_token": token.group(1), "name": "ada", "password": "pw"}
            ),
            client.post("/signup", data={"name": "ada"}),  # no token: 400
            client.post("/api/note", headers={"X-CSRFToken": token.group(1).decode()}),
            client.post("/api/note"),
            client.get("/csrf"),
        ]
        cookie = re.compile(rb"session=[^;]+")
        answers.append(
            [
                (
                    r.status_code,
                    sorted(
                        (k, cookie.sub(b"session=<cookie>", v.encode()).decode())
                        for k, v in r.headers.items()
                    ),
                    r.get_data().replace(token.group(1), b"<token>"),
                )
                for r in responses
            ]
        )
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [200, 200, 400, 200, 400, 200]
    documents = stored(tracked, mongo)
    assert [(d["method"], d["path"], d["status_code"]) for d in documents] == [
        ("GET", "/signup", 200),
        ("POST", "/signup", 200),
        ("POST", "/signup", 400),
        ("POST", "/api/note", 200),
        ("POST", "/api/note", 400),
        ("GET", "/csrf", 200),
    ]
    token = tokens[0]
    for document in documents:
        for key in ("request_body", "response_body"):
            assert token not in (document[key] or b"")
        for pair in document["request_headers"] + document["response_headers"]:
            assert token.decode() not in pair[1]
    assert b'name="csrf_token" type="hidden" value="[Filtered]"' in documents[0]["response_body"]
    assert header(documents[0], "Set-Cookie") == "[Filtered]"
    assert documents[1]["request_body"] == b"csrf_token=[Filtered]&name=ada&password=[Filtered]"
    assert ["X-Csrftoken", "[Filtered]"] in documents[3]["request_headers"]
    assert documents[5]["response_body"] == b'{"csrf_token": "[Filtered]"}'
    no_capture_errors(tracked)


# --------------------------------------------------------------------------------------------
# Flask-Caching
# --------------------------------------------------------------------------------------------


def add_caching(app: Flask, cache_type: str = "SimpleCache") -> list[int]:
    """Cached views; returns the list the views append to each time they really run."""
    flask_caching = pytest.importorskip("flask_caching")
    cache = flask_caching.Cache(app, config={"CACHE_TYPE": cache_type})
    runs: list[int] = []

    @app.get("/cached")
    @cache.cached(timeout=60)
    def cached() -> str:
        runs.append(1)
        return f"computed once ({len(runs)})"

    @app.get("/cached-response")
    @cache.cached(timeout=60)
    def cached_response() -> Response:
        runs.append(1)
        response = Response(
            f'{{"n": {len(runs)}, "api_key": "k-123"}}', mimetype="application/json"
        )
        response.headers["X-Computed"] = str(len(runs))
        return response

    @app.get("/cached-stream")
    @cache.cached(timeout=60)
    def cached_stream() -> Any:
        runs.append(1)
        return (f"part{i};" for i in range(3))  # Flask-Caching joins a generator to cache it

    @app.get("/cached-query")
    @cache.cached(timeout=60, query_string=True)
    def cached_query() -> str:
        runs.append(1)
        return f"q={request.args.get('q')}"

    return runs


def object_cache(app: Any, config: Any, args: Any, kwargs: Any) -> Any:
    """A Flask-Caching backend that keeps the objects themselves (no pickling), as an
    in-process dict would: a cached Response object is served again, the very same object."""
    from cachelib import BaseCache

    class Backend(BaseCache):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.values: dict[str, Any] = {}

        def get(self, key: str) -> Any:
            return self.values.get(key)

        def set(self, key: str, value: Any, timeout: Any = None) -> bool:
            self.values[key] = value
            return True

        def add(self, key: str, value: Any, timeout: Any = None) -> bool:
            return self.values.setdefault(key, value) is value

        def delete(self, key: str) -> bool:
            return self.values.pop(key, None) is not None

        def has(self, key: str) -> bool:
            return key in self.values

        def clear(self) -> bool:
            self.values.clear()
            return True

    return Backend()


@pytest.mark.parametrize("cache_type", ["SimpleCache", f"{__name__}.object_cache"])
def test_caching_views_served_from_the_cache_answer_as_untracked(
    make_app: Callable[..., Flask], mongo: Any, cache_type: str
) -> None:
    runs: dict[str, list[int]] = {}

    def setup(app: Flask) -> None:
        runs[app.name] = add_caching(app, cache_type)

    tracked, untracked = make_twins(make_app, setup)
    requests = [
        ("GET", path, {})
        for path in (
            "/cached",
            "/cached",
            "/cached-response",
            "/cached-response",
            "/cached-stream",
            "/cached-stream",
            "/cached-query?q=1",
            "/cached-query?q=1",
            "/cached-query?q=2",
        )
    ]
    requests.insert(4, ("HEAD", "/cached-response", {}))
    sent = both(tracked, untracked, requests)
    assert len(runs[tracked.name]) == len(runs[untracked.name]) == 5  # the rest from the cache
    documents = stored(tracked, mongo)
    assert len(documents) == len(requests)
    for document, (method, path, _), (status, headers, body) in zip(documents, requests, sent):
        assert (document["method"], document["path"]) == (method, path.split("?")[0])
        assert document["status_code"] == status == 200
        assert document["endpoint"] == path[1:].split("?")[0].replace("-", "_")
        assert sorted(map(tuple, document["response_headers"])) == headers
        assert document["response_body_size"] == len(body)
        if path.startswith("/cached-response"):
            assert document["response_body"] == (
                b"" if method == "HEAD" else b'{"n": 2, "api_key": "[Filtered]"}'
            )
        else:
            assert document["response_body"] == body
    assert sent[5][2] == sent[6][2] == b"part0;part1;part2;"
    no_capture_errors(tracked)


def test_caching_through_a_real_server_sends_the_same_bytes(
    make_app: Callable[..., Flask], mongo: Any, serve: Callable[[Flask], Server]
) -> None:
    tracked, untracked = make_twins(
        make_app, lambda app: add_caching(app, f"{__name__}.object_cache"), testing=False
    )
    paths = ["/cached-response", "/cached-response", "/cached-stream", "/cached-stream"]
    raws = on_the_wire(tracked, untracked, serve, [("GET", path, {}) for path in paths])
    bodies = [split_answer(raw)[1] for raw in raws]
    assert bodies[0] == bodies[1] == b'{"n": 1, "api_key": "k-123"}'
    documents = stored(tracked, mongo)
    assert [(d["path"], d["status_code"]) for d in documents] == [(p, 200) for p in paths]
    assert [d["response_body"] for d in documents] == [
        b'{"n": 1, "api_key": "[Filtered]"}',
        b'{"n": 1, "api_key": "[Filtered]"}',
        b"part0;part1;part2;",
        b"part0;part1;part2;",
    ]
    no_capture_errors(tracked)


# --------------------------------------------------------------------------------------------
# Flask-Limiter
# --------------------------------------------------------------------------------------------


def add_limiter(app: Flask) -> None:
    flask_limiter = pytest.importorskip("flask_limiter")
    from flask_limiter.util import get_remote_address

    limiter = flask_limiter.Limiter(
        get_remote_address,
        app=app,
        default_limits=["2 per minute"],
        headers_enabled=True,
        storage_uri="memory://",
    )

    @app.get("/limited")
    @limiter.limit("1 per minute")
    def limited() -> str:
        return "once"

    @app.get("/exempt")
    @limiter.exempt
    def exempt() -> str:
        return "free"


#: Flask-Limiter's X-RateLimit-Reset is the epoch second the window ends and Retry-After the
#: seconds until then: both move with the clock, tracked or not.
LIMITER_DIFFERING = ("X-RateLimit-Reset", "Retry-After")


def test_limiter_429_answers_and_headers_answer_as_untracked(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, untracked = make_twins(make_app, add_limiter)
    requests = [("GET", path, {}) for path in ("/hello",) * 3 + ("/limited",) * 2 + ("/exempt",)]
    sent = both(tracked, untracked, requests, LIMITER_DIFFERING)
    assert [status for status, _, _ in sent] == [200, 200, 429, 200, 429, 200]
    documents = stored(tracked, mongo)
    assert [(d["endpoint"], d["status_code"], d["exception"]) for d in documents] == [
        ("hello", 200, None),
        ("hello", 200, None),
        ("hello", 429, None),
        ("limited", 200, None),
        ("limited", 429, None),
        ("exempt", 200, None),
    ]
    for document, (_, headers, body) in zip(documents, sent):
        stored_headers = sorted(
            (name, "<differs>" if name in LIMITER_DIFFERING else value)
            for name, value in document["response_headers"]
        )
        assert stored_headers == headers
        assert document["response_body"] == body
    assert header(documents[2], "X-RateLimit-Remaining") == "0"
    assert b"2 per 1 minute" in documents[2]["response_body"]
    no_capture_errors(tracked)


# --------------------------------------------------------------------------------------------
# Flask-Session
# --------------------------------------------------------------------------------------------


def add_server_side_session(app: Flask) -> None:
    flask_session = pytest.importorskip("flask_session")
    cachelib = pytest.importorskip("cachelib")
    app.config.update(SESSION_TYPE="cachelib", SESSION_CACHELIB=cachelib.SimpleCache())
    flask_session.Session(app)

    @app.post("/remember")
    def remember() -> str:
        session["colour"] = "blue"
        session["api_token"] = "t-123"
        return "remembered"

    @app.get("/colour")
    def colour() -> str:
        return str(session.get("colour", "none"))

    @app.get("/about")
    def about() -> str:
        return "about"  # never touches the session


def without_session_id(response: Any) -> Answer:
    """The answer with the session id in ``Set-Cookie`` as a placeholder: Flask-Session makes
    a random id for each new session, so each twin gets its own."""
    status, headers, body = answer(response)
    sid = re.compile(r"^session=[^;]+")
    return status, [(k, sid.sub("session=<sid>", v)) for k, v in headers], body


def test_session_server_side_answers_as_untracked(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, untracked = make_twins(make_app, add_server_side_session, SECRET_KEY="s3cret")
    answers = []
    for app in (tracked, untracked):
        client = app.test_client()
        answers.append(
            [
                without_session_id(client.open(path, method=method))
                for method, path in (
                    ("GET", "/about"),
                    ("POST", "/remember"),
                    ("GET", "/colour"),
                    ("GET", "/about"),
                )
            ]
        )
    assert answers[0] == answers[1]
    assert [body for _, _, body in answers[0]] == [b"about", b"remembered", b"blue", b"about"]
    documents = stored(tracked, mongo)
    assert [(d["path"], d["status_code"]) for d in documents] == [
        ("/about", 200),
        ("/remember", 200),
        ("/colour", 200),
        ("/about", 200),
    ]
    for document, (_, headers, _) in zip(documents, answers[0]):
        assert [name for name, _ in sorted(document["response_headers"])] == [
            name for name, _ in headers
        ]
        if header(document, "Set-Cookie") is not None:
            assert header(document, "Set-Cookie") == "[Filtered]"
    assert ["Cookie", "[Filtered]"] in documents[2]["request_headers"]
    no_capture_errors(tracked)


def test_session_server_side_with_flask_login_records_the_user_without_touching_the_session(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """capture.md: the id Flask-Login keeps in the session is read without loading the user
    nor marking the session accessed; with Flask-Session's server-side session too."""
    flask_login = pytest.importorskip("flask_login")
    loads: dict[str, list[str]] = {}

    class User(flask_login.UserMixin):  # type: ignore[misc]
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    def setup(app: Flask) -> None:
        add_server_side_session(app)
        loads[app.name] = []
        manager = flask_login.LoginManager(app)

        @manager.user_loader
        def load(user_id: str) -> Any:
            loads[app.name].append(user_id)
            return User(user_id)

        @app.post("/login")
        def login() -> str:
            flask_login.login_user(User("ada"))
            return "in"

    tracked, untracked = make_twins(make_app, setup, SECRET_KEY="s3cret")
    answers = []
    for app in (tracked, untracked):
        client = app.test_client()
        client.post("/login")
        answers.append([without_session_id(client.get(path)) for path in ("/about", "/colour")])
    assert answers[0] == answers[1]
    assert loads[tracked.name] == loads[untracked.name] == []
    assert [d["user_id"] for d in stored(tracked, mongo)] == ["ada"] * 3
    no_capture_errors(tracked)


# --------------------------------------------------------------------------------------------
# Flask-Talisman
# --------------------------------------------------------------------------------------------


def add_talisman(app: Flask) -> None:
    flask_talisman = pytest.importorskip("flask_talisman")
    flask_talisman.Talisman(
        app,
        content_security_policy={"default-src": "'self'", "script-src": "'self'"},
        content_security_policy_nonce_in=["script-src"],
    )

    @app.route("/page", methods=["GET", "POST"])
    def page() -> str:
        return "<p>secure</p>"


#: Talisman makes a random CSP nonce for every request: its value differs, tracked or not.
def without_nonce(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, re.sub(r"'nonce-[^']+'", "'nonce-<random>'", v)) for k, v in headers]


def test_talisman_https_redirects_and_security_headers_answer_as_untracked(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, untracked = make_twins(make_app, add_talisman, testing=False)
    requests = [
        ("GET", "/page", {}),  # plain HTTP: redirected to HTTPS
        ("POST", "/page", {"data": {"note": "x"}}),
        ("GET", "/page", {"base_url": "https://localhost"}),
        ("GET", "/nowhere", {"base_url": "https://localhost"}),
        # Talisman takes X-Forwarded-Proto for the scheme (its force_https); the record keeps
        # the scheme the server saw, as it does for any header the client sends.
        ("GET", "/page", {"headers": {"X-Forwarded-Proto": "https"}}),
    ]
    answers = []
    for app in (tracked, untracked):
        client = app.test_client()
        answers.append(
            [
                (status, without_nonce(headers), body)
                for status, headers, body in (
                    answer(client.open(path, method=method, **kw)) for method, path, kw in requests
                )
            ]
        )
    assert answers[0] == answers[1]
    sent = answers[0]
    assert [status for status, _, _ in sent] == [302, 302, 200, 404, 200]
    assert ("Location", "https://localhost/page") in sent[0][1]
    documents = stored(tracked, mongo)
    assert [(d["scheme"], d["method"], d["endpoint"], d["status_code"]) for d in documents] == [
        ("http", "GET", "page", 302),
        ("http", "POST", "page", 302),
        ("https", "GET", "page", 200),
        ("https", "GET", None, 404),
        ("http", "GET", "page", 200),
    ]
    for document, (_, headers, body) in zip(documents, sent):
        assert (
            sorted(without_nonce([tuple(pair) for pair in document["response_headers"]])) == headers
        )
        assert document["response_body"] == body
    assert documents[1]["request_body"] == b"note=x"
    assert header(documents[2], "Strict-Transport-Security") is not None
    no_capture_errors(tracked)


# --------------------------------------------------------------------------------------------
# flask-restx and flask-smorest
# --------------------------------------------------------------------------------------------


def add_restx(app: Flask) -> None:
    flask_restx = pytest.importorskip("flask_restx")
    api = flask_restx.Api(app, doc=False)
    model = api.model(
        "Item",
        {"name": flask_restx.fields.String(required=True), "password": flask_restx.fields.String},
    )

    @api.route("/items/<int:item_id>")
    class Item(flask_restx.Resource):  # type: ignore[misc]
        def get(self, item_id: int) -> Any:
            if item_id == 0:
                flask_restx.abort(404, "no such item")
            if item_id == 1:
                raise ValueError("the store is down")
            return {"id": item_id, "api_key": "k-123"}

        @api.expect(model, validate=True)
        def put(self, item_id: int) -> Any:
            return api.payload, 201


def add_smorest(app: Flask) -> None:
    flask_smorest = pytest.importorskip("flask_smorest")
    import marshmallow

    class ItemSchema(marshmallow.Schema):
        name = marshmallow.fields.String(required=True)
        password = marshmallow.fields.String()

    app.config.update(API_TITLE="items", API_VERSION="1", OPENAPI_VERSION="3.0.2")
    api = flask_smorest.Api(app)
    blueprint = flask_smorest.Blueprint("items", "items")

    @blueprint.route("/items/<int:item_id>", methods=["GET"])
    def get(item_id: int) -> Any:
        if item_id == 0:
            flask_smorest.abort(404, message="no such item")
        if item_id == 1:
            raise ValueError("the store is down")
        return {"id": item_id, "api_key": "k-123"}

    @blueprint.route("/items/<int:item_id>", methods=["PUT"])
    @blueprint.arguments(ItemSchema)
    @blueprint.response(201, ItemSchema)
    def put(data: Any, item_id: int) -> Any:
        return data

    api.register_blueprint(blueprint)


API_REQUESTS = [
    ("GET", "/items/5", {}),
    ("GET", "/items/0", {}),  # abort(404)
    ("GET", "/items/1", {}),  # the view raised: 500
    ("PUT", "/items/5", {"json": {"name": "a", "password": "pw"}}),
    ("PUT", "/items/5", {"json": {"password": "pw"}}),  # invalid: 400 (restx), 422 (smorest)
    ("DELETE", "/items/5", {}),  # 405
    ("GET", "/nowhere", {}),
]


@pytest.mark.parametrize(
    "add_api",
    [
        pytest.param(add_restx, id="restx"),
        pytest.param(add_smorest, id="smorest"),
    ],
)
def test_api_json_errors_answer_as_untracked_and_only_the_raised_one_is_an_exception(
    make_app: Callable[..., Flask], mongo: Any, add_api: Callable[[Flask], None]
) -> None:
    """A JSON API answers abort(), validation errors and 405 with JSON bodies of its own. As
    for a plain Flask abort() (test_extension.py), an HTTP error the API answered is no
    exception (docs/querying.md: ``errors()`` are server errors, or the view raised): only the
    view that raised is recorded with one. flask-restx sends ``got_request_exception`` for
    every error it answers, HTTP errors too (Flask sends it for unhandled ones only)."""
    tracked, untracked = make_twins(make_app, add_api, testing=False)
    sent = both(tracked, untracked, API_REQUESTS)
    invalid = 400 if add_api is add_restx else 422
    assert [status for status, _, _ in sent] == [200, 404, 500, 201, invalid, 405, 404]
    documents = stored(tracked, mongo)
    assert [(d["method"], d["status_code"], d["exception"]) for d in documents] == [
        ("GET", 200, None),
        ("GET", 404, None),
        ("GET", 500, "ValueError: the store is down"),
        ("PUT", 201, None),
        ("PUT", invalid, None),
        ("DELETE", 405, None),
        ("GET", 404, None),
    ]
    assert [d["endpoint"] is not None for d in documents] == [True] * 5 + [False] * 2
    for document, (_, headers, body) in zip(documents, sent):
        assert sorted(map(tuple, document["response_headers"])) == headers
        if b"api_key" not in body and b"password" not in body:
            assert document["response_body"] == body
    assert b'"api_key": "[Filtered]"' in documents[0]["response_body"]
    assert documents[3]["request_body"] == b'{"name": "a", "password": "[Filtered]"}'
    no_capture_errors(tracked)


def test_restx_an_http_error_trapped_by_the_app_is_still_an_exception(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """With TRAP_HTTP_EXCEPTIONS, Flask itself treats an HTTP error as unhandled (a 500, the
    signal sent): that one keeps its exception."""
    tracked, untracked = make_twins(make_app, add_restx, testing=False, TRAP_HTTP_EXCEPTIONS=True)
    sent = both(tracked, untracked, [("GET", "/items/0", {})])
    (document,) = stored(tracked, mongo)
    assert document["status_code"] == sent[0][0]
    assert document["exception"] is not None and document["exception"].startswith("NotFound")
    no_capture_errors(tracked)

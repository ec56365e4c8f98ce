"""End-to-end: a Flask app with Tracking, driven by the test client, read back from mongomock."""

from __future__ import annotations

import csv
import inspect
import io
import json
import threading
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import mongoengine
import pytest
from flask import Flask, Response, abort, request, stream_with_context
from werkzeug.exceptions import HTTPException
from werkzeug.test import EnvironBuilder

from flask_tracking import Tracking, add_data
from flask_tracking.documents import Tracking as TrackingDocument

from .conftest import FAST_WRITER, add_routes, stored

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)


def untracked_app(**config: Any) -> Flask:
    app = Flask("untracked")
    app.config.update(TESTING=True, **config)
    add_routes(app)
    return app


def test_get_is_recorded_with_request_and_response(app: Flask, client: Any, mongo: Any) -> None:
    before = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)
    response = client.get(
        "/hello?x=1&y=%C3%A9",
        headers={"User-Agent": CHROME, "Accept-Language": "fr-FR,fr;q=0.9", "Referer": "http://r/"},
    )
    assert response.data == b"Hello"
    [doc] = stored(app, mongo)
    assert doc["method"] == "GET"
    assert doc["path"] == "/hello"
    assert doc["query_params"] == "x=1&y=%C3%A9"
    assert doc["host"] == "localhost"
    assert doc["scheme"] == "http"
    assert doc["ip"] == "127.0.0.1"
    assert doc["endpoint"] == "hello"
    assert doc["url_rule"] == "/hello"
    assert doc["referrer"] == "http://r/"
    assert doc["status_code"] == 200
    assert doc["response_body"] == b"Hello"
    assert doc["response_body_size"] == 5
    assert doc["request_body"] is None
    assert ["User-Agent", CHROME] in doc["request_headers"]
    assert ["Content-Length", "5"] in doc["response_headers"]
    assert isinstance(doc["execution_time"], float) and doc["execution_time"] > 0
    assert doc["total_time"] >= doc["execution_time"]
    assert doc["exception"] is None
    assert before <= doc["date_created"] <= datetime.now(timezone.utc).replace(tzinfo=None)
    assert doc["user_agent"]["browser"] == "Chrome"
    assert doc["user_agent"]["version"] == "120.0.0"
    assert doc["user_agent"]["platform"] == "Windows"
    assert doc["user_agent"]["language"] == "fr-FR"
    assert doc["hostname"]


def test_stored_record_reads_back_through_the_document(app: Flask, client: Any, mongo: Any) -> None:
    client.post("/echo?a=b", json={"k": "v"}, headers={"User-Agent": CHROME})
    [raw] = stored(app, mongo)
    [doc] = TrackingDocument.objects.all()
    for field in TrackingDocument._fields:
        if field in ("id", "user_agent", "user"):
            continue
        assert getattr(doc, field) == raw.get(field), field
    assert doc.id == raw["_id"]
    assert doc.user_agent.browser == "Chrome"
    assert doc.get_header("content-type") == "application/json"
    assert json.loads(doc.request_body) == {"k": "v"}


def test_json_post_bodies_are_kept(app: Flask, client: Any, mongo: Any) -> None:
    payload = {"items": ["x" * 40] * 100}
    response = client.post("/echo", json=payload)
    [doc] = stored(app, mongo)
    assert json.loads(doc["request_body"]) == payload
    assert doc["response_body"] == response.data
    assert doc["request_body_size"] == len(doc["request_body"])
    assert doc["request_body_truncated"] is False


def test_bodies_are_cut_at_max_body_length(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_MAX_BODY_LENGTH=10)
    response = app.test_client().post("/echo", json={"msg": "a long value"})
    [doc] = stored(app, mongo)
    assert doc["request_body"] == b'{"msg": "a'
    assert doc["request_body_truncated"] is True
    assert doc["request_body_size"] == len(b'{"msg": "a long value"}')
    assert doc["response_body"] == response.data[:10]
    assert doc["response_body_truncated"] is True


def test_body_the_view_never_read_is_copied_up_to_the_limit_from_the_test_client(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_MAX_BODY_LENGTH=100)
    body = b"z" * 1000
    # The test client's body is in memory: copied, then rewound; the response is not closed.
    response = app.test_client().post("/ignore", data=body)
    assert response.data == b"ignored"
    [doc] = stored(app, mongo)
    assert doc["request_body"] == b"z" * 100
    assert doc["request_body_truncated"] is True  # 1,000 bytes declared, 100 kept


class ZeroStream:
    """A request body of ``size`` zero bytes that is produced while it is read."""

    def __init__(self, size: int) -> None:
        self.remaining = size

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        self.remaining -= size
        return bytes(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def test_50_mb_upload_is_never_buffered_by_the_tracker(app: Flask, mongo: Any) -> None:
    size = 50 * 1024 * 1024
    environ = EnvironBuilder(path="/count", method="POST").get_environ()
    environ.update({"wsgi.input": ZeroStream(size), "CONTENT_LENGTH": str(size)})
    statuses: list[str] = []
    tracemalloc.start()
    try:
        body = b"".join(app.wsgi_app(environ, lambda status, headers, *a: statuses.append(status)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body == str(size).encode()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes while reading a 50 MB upload"
    [doc] = stored(app, mongo)
    assert doc["request_body_size"] == size
    assert len(doc["request_body"]) == 65536
    assert doc["request_body_truncated"] is True


def test_chunked_upload_without_content_length(app: Flask, mongo: Any) -> None:
    body = b"0123456789" * 10_000
    response = app.test_client().post(
        "/count",
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.data == str(len(body)).encode()
    [doc] = stored(app, mongo)
    assert doc["request_body"] == body[:65536]
    assert doc["request_body_size"] == len(body)


def test_form_and_multipart_bodies(app: Flask, client: Any, mongo: Any) -> None:
    assert client.post("/form", data={"a": "1", "b": "2"}).data == b"a=1,b=2"
    multipart = {"name": "n", "upload": (io.BytesIO(b"file bytes"), "f.txt")}
    response = client.post("/form", data=multipart, content_type="multipart/form-data")
    assert response.data == b"name=n"
    form_doc, multipart_doc = stored(app, mongo)
    assert form_doc["request_body"] == b"a=1&b=2"
    assert b"file bytes" in multipart_doc["request_body"]
    assert b'name="upload"; filename="f.txt"' in multipart_doc["request_body"]


@pytest.mark.parametrize("content_length", ["abc", "-5", ""])
def test_malformed_content_length_behaves_as_untracked(
    app: Flask, mongo: Any, content_length: str
) -> None:
    def run(target: Flask) -> tuple[int, bytes]:
        response = target.test_client().post(
            "/count", data=b"payload", environ_overrides={"CONTENT_LENGTH": content_length}
        )
        return response.status_code, response.data

    assert run(app) == run(untracked_app())
    [doc] = stored(app, mongo)
    assert doc["path"] == "/count"


def test_body_over_max_content_length_behaves_as_untracked(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(MAX_CONTENT_LENGTH=100)
    reference = untracked_app(MAX_CONTENT_LENGTH=100)
    answered = []
    for path in ("/count", "/ignore", "/echo"):
        tracked = app.test_client().post(path, data=b"x" * 1000, buffered=True)
        untracked = reference.test_client().post(path, data=b"x" * 1000, buffered=True)
        assert (tracked.status_code, tracked.data) == (untracked.status_code, untracked.data)
        answered.append(untracked.status_code)
    docs = stored(app, mongo)
    # Flask 3 answers 413, 200, 415; Flask 2.2, which applies the limit to form data only,
    # 200, 200, 400: each is recorded as the app answered.
    assert [doc["status_code"] for doc in docs] == answered
    assert answered in ([413, 200, 415], [200, 200, 400])


def test_a_body_the_view_rewinds_and_reads_again_is_recorded_once(app: Flask, mongo: Any) -> None:
    """A webhook check reads the raw body, seeks back and lets Flask parse it: the record keeps
    the body that was sent, not each read of it."""

    @app.post("/verify")
    def verify() -> str:
        raw = request.input_stream.read()
        request.input_stream.seek(0)
        return f"{len(raw)}:" + ",".join(sorted(request.form))

    assert app.test_client().post("/verify", data={"a": "1", "b": "2"}).data == b"7:a,b"
    [doc] = stored(app, mongo)
    assert doc["request_body"] == b"a=1&b=2"
    assert doc["request_body_size"] == 7


def test_a_body_the_view_sniffs_and_rewinds_but_never_reads_is_recorded_once(
    app: Flask, mongo: Any
) -> None:
    """The view reads a file's magic bytes, seeks back and refuses it: the unread rest the
    tracker copies when the view returned follows the bytes copied, not the rewound start."""

    @app.post("/upload")
    def upload() -> Any:
        magic = request.input_stream.read(4)
        request.input_stream.seek(0)
        return f"refused {magic!r}", 415

    app.test_client().post("/upload", data=b"0123456789", content_type="application/x-bin")
    [doc] = stored(app, mongo)
    assert doc["request_body_size"] == 10
    assert doc["request_body"] == b"0123456789"


def test_a_body_a_streamed_response_reads_is_recorded_once(app: Flask, mongo: Any) -> None:
    """The view returns before the body is read (its stream reads it): the copy made when the
    view returned, from the test client's seekable input, must not be added to again."""

    @app.post("/upper")
    def upper() -> Any:
        def generate() -> Any:
            while chunk := request.stream.read(4):
                yield chunk.upper()

        return app.response_class(stream_with_context(generate()))

    assert app.test_client().post("/upper", data=b"abcdefghij").data == b"ABCDEFGHIJ"
    [doc] = stored(app, mongo)
    assert doc["response_body"] == b"ABCDEFGHIJ"
    assert doc["request_body"] == b"abcdefghij"
    assert doc["request_body_size"] == 10


def test_a_body_read_through_a_text_wrapper_is_recorded(app: Flask, mongo: Any) -> None:
    """csv over io.TextIOWrapper(request.stream): where the server terminates the input
    (waitress, gunicorn) request.stream is the server's stream, and TextIOWrapper reads a
    BytesIO (or a spooled file) with read1()."""

    @app.post("/csv")
    def upload() -> str:
        rows = list(csv.reader(io.TextIOWrapper(request.stream, encoding="utf-8")))
        return str(len(rows))

    response = app.test_client().post(
        "/csv",
        data=b"a,b\nc,d\n",
        content_type="text/csv",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.data == b"2"
    [doc] = stored(app, mongo)
    assert doc["request_body_omitted"] is None
    assert doc["request_body"] == b"a,b\nc,d\n"


def test_streamed_response_passes_through_and_is_recorded_on_close(app: Flask, mongo: Any) -> None:
    produced: list[int] = []

    @app.get("/lazy")
    def lazy() -> Any:
        def generate() -> Any:
            for i in range(3):
                produced.append(i)
                yield f"part{i}".encode()

        return app.response_class(generate())

    response = app.test_client().get("/lazy", buffered=False)
    iterator = iter(response.response)
    assert next(iterator) == b"part0"
    assert produced == [0], "the tracker consumed the stream early"
    assert app.extensions["tracking"].flush(2)
    assert list(mongo["tracking"].find()) == [], "recorded before the stream closed"
    assert b"".join(iterator) == b"part1part2"
    response.close()
    [doc] = stored(app, mongo)
    assert doc["response_body"] == b"part0part1part2"
    assert doc["total_time"] >= doc["execution_time"]


def test_stream_with_context_response(app: Flask, client: Any, mongo: Any) -> None:
    assert client.get("/stream", buffered=True).data == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
    [doc] = stored(app, mongo)
    assert doc["response_body"] == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


def test_send_file_is_not_read_by_the_tracker(app: Flask, client: Any, mongo: Any) -> None:
    response = client.get("/file")
    assert response.data == b"file-content" * 100
    [doc] = stored(app, mongo)
    assert doc["status_code"] == 200
    assert doc["response_body"] is None
    assert doc["response_body_omitted"] == "passthrough"


def test_view_exception_in_testing_mode(app: Flask, client: Any, mongo: Any) -> None:
    with pytest.raises(ValueError, match="kaboom"):
        client.get("/boom")
    [doc] = stored(app, mongo)
    assert doc["status_code"] == 500
    assert doc["exception"] == "ValueError: kaboom"
    assert doc["endpoint"] == "boom"


def test_view_exception_in_production_mode(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(testing=False)
    response = app.test_client().get("/boom", buffered=True)
    assert response.status_code == 500
    [doc] = stored(app, mongo)
    assert doc["status_code"] == 500
    assert doc["exception"] == "ValueError: kaboom"
    assert b"Internal Server Error" in doc["response_body"]


def base_exception_views(app: Flask, error: BaseException) -> None:
    """``/exit`` raises ``error`` in the view; ``/cut`` sends a first chunk, then raises it."""

    @app.get("/exit")
    def exit_view() -> str:
        raise error

    @app.get("/cut")
    def cut() -> Any:
        def chunks() -> Any:
            yield "first;"
            raise error

        return app.response_class(chunks())


@pytest.mark.parametrize("testing", [True, False], ids=["testing", "production"])
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_a_base_exception_propagates_as_untracked_and_is_recorded_without_a_status(
    make_app: Callable[..., Flask],
    mongo: Any,
    kind: str,
    testing: bool,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A view's sys.exit(3) (gunicorn's worker timeout raises SystemExit(1) the same way) or a
    KeyboardInterrupt reaches the server as without the tracker: the same object, nothing
    printed or logged. The app answered nothing: the record has no status code, no response
    headers or body, and names the exception; a stream it cut keeps the status it sent."""
    errors = {"SystemExit": SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt()}
    untracked = Flask("untracked")
    untracked.config["TESTING"] = testing
    base_exception_views(untracked, errors[kind])
    app = make_app(testing=testing)
    base_exception_views(app, errors[kind])
    caplog.set_level("DEBUG", logger="flask_tracking")
    caplog.clear()
    for path in ("/exit", "/cut"):
        for served in (untracked, app):
            with pytest.raises(BaseException) as excinfo:
                served.test_client().get(path, buffered=True)
            assert excinfo.value is errors[kind]
    request_thread = threading.current_thread().name  # the writer's own logs are not the app's
    assert [r for r in caplog.records if r.threadName == request_thread] == []
    assert capsys.readouterr() == ("", "")
    exited, cut = stored(app, mongo)
    described = "SystemExit: 3" if kind == "SystemExit" else kind
    assert (exited["status_code"], exited["exception"]) == (None, described)
    assert (exited["response_headers"], exited["response_body"]) == ([], None)
    assert exited["response_body_size"] is None
    assert (cut["status_code"], cut["exception"]) == (200, described)
    assert (cut["response_body"], cut["response_body_size"]) == (b"first;", 6)
    assert app.extensions["tracking"].stats(app)["capture_errors"] == 0


def test_a_base_exception_keeps_the_view_rules_and_the_request_context(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """Flask sends got_request_exception for an Exception only. A request that a SystemExit
    (gunicorn's worker timeout) ends must still honour @tracking.exclude and skip_if, and keep
    what the request context knows: endpoint, rule, user and custom data."""
    flask_login = pytest.importorskip("flask_login")
    app = make_app(testing=False)
    tracking = app.extensions["tracking"]
    app.secret_key = "test"
    manager = flask_login.LoginManager(app)

    class User(flask_login.UserMixin):  # type: ignore[misc]
        id = "ada"

    manager.user_loader(lambda user_id: User() if user_id == "ada" else None)
    tracking.skip_if(lambda current: current.headers.get("X-Opt-Out") == "1")

    @app.get("/login")
    def login() -> str:
        flask_login.login_user(User())
        return "in"

    @app.get("/secret")
    @tracking.exclude
    def secret() -> str:
        raise SystemExit(1)

    @app.get("/items/<int:item>")
    def item(item: int) -> str:
        add_data(item=item)
        assert flask_login.current_user.is_authenticated
        raise SystemExit(1)

    client = app.test_client()
    client.get("/login")
    for path, headers in (("/secret", {}), ("/items/7", {"X-Opt-Out": "1"}), ("/items/7", {})):
        with pytest.raises(SystemExit):
            client.get(path, headers=headers)
    _, record = stored(app, mongo)
    assert (record["path"], record["status_code"], record["exception"]) == (
        "/items/7",
        None,
        "SystemExit: 1",
    )
    assert (record["endpoint"], record["url_rule"]) == ("item", "/items/<int:item>")
    assert (record["user_id"], record["custom_data"]) == ("ada", {"item": 7})
    assert tracking.stats(app)["capture_errors"] == 0


def flask_32_app(name: str) -> Flask:
    """An app that dispatches requests as Flask 3.2 does: Flask itself from 3.2 on (its
    ``process_response`` takes the context), before that a subclass doing what Flask 3.2 does
    where the tracker meets it (checked against Flask's main branch): ``process_response(ctx,
    response)``, and ``should_ignore_error`` None (deprecated), asked about an error only when
    an app sets it."""
    if "ctx" in inspect.signature(Flask.process_response).parameters:
        return Flask(name)

    class DispatchOfFlask32(Flask):
        should_ignore_error = None  # type: ignore[assignment]

        def process_response(self, ctx: Any, response: Any = None) -> Any:  # type: ignore[override]
            assert response is not None, "called without the context"
            return super().process_response(response)

        def finalize_request(self, rv: Any, from_error_handler: bool = False) -> Any:
            from flask.globals import _cv_request

            response = self.make_response(rv)
            return self.process_response(_cv_request.get(), response)

        def wsgi_app(self, environ: Any, start_response: Any) -> Any:
            ctx = self.request_context(environ)
            error: BaseException | None = None
            try:
                try:
                    ctx.push()
                    response = self.full_dispatch_request()
                except Exception as e:
                    error = e
                    response = self.handle_exception(e)
                except BaseException as e:
                    error = e
                    raise
                return response(environ, start_response)
            finally:
                ignored = self.should_ignore_error is not None and self.should_ignore_error(error)
                ctx.pop(None if error is None or ignored else error)

    return DispatchOfFlask32(name)


def test_flask_32_dispatch_is_tracked(mongo: Any) -> None:
    """The response hook passes on the context Flask 3.2 gives it; a SystemExit is seen by a
    teardown function there, and should_ignore_error stays None (set, Flask 3.2 would warn
    that the app uses a deprecated method)."""
    app = flask_32_app("flask_32")
    app.config.update(TESTING=True, **FAST_WRITER)
    add_routes(app)

    @app.get("/exit")
    def leave() -> str:
        raise SystemExit(3)

    Tracking(app)
    try:
        assert app.should_ignore_error is None
        client = app.test_client()
        assert (client.get("/hello").status_code, client.get("/hello").data) == (200, b"Hello")
        with pytest.raises(SystemExit):
            client.get("/exit")
        hello, _, leaving = stored(app, mongo)
        assert (hello["endpoint"], hello["status_code"], hello["response_body"]) == (
            "hello",
            200,
            b"Hello",
        )
        assert (leaving["endpoint"], leaving["status_code"]) == ("leave", None)
        assert leaving["exception"] == "SystemExit: 3"
        assert app.extensions["tracking"].stats(app)["capture_errors"] == 0
    finally:
        app.extensions["tracking"]._apps[app].writer.shutdown(1.0)


def test_abort_is_a_handled_response(app: Flask, client: Any, mongo: Any) -> None:
    # Flask hands HTTP error pages over as iterators: recorded when the server closes them.
    with client.get("/missing") as response:
        assert response.status_code == 404
    assert client.get("/no-such-route", buffered=True).status_code == 404
    docs = stored(app, mongo)
    assert [(d["status_code"], d["exception"]) for d in docs] == [(404, None), (404, None)]
    assert b"Not Found" in docs[0]["response_body"]
    assert docs[1]["endpoint"] is None


@pytest.mark.parametrize("testing", [False, True])
def test_an_http_error_flask_turns_into_a_server_error_is_an_exception(
    make_app: Callable[..., Flask], mongo: Any, testing: bool
) -> None:
    """An HTTP error that escapes Flask's handling (raised by an after_request function, or by
    the error handler of another HTTP error) is no answer of the app's: Flask logs it as an
    exception and answers 500 (or lets it propagate, in testing mode). The record says so, in
    production mode as in testing mode."""
    app = make_app(testing=testing)

    @app.after_request
    def refuse(response: Response) -> Response:
        if request.path == "/hello":
            abort(401)
        return response

    @app.errorhandler(404)
    def not_found(error: Exception) -> Any:
        abort(503)

    client = app.test_client()
    for path in ("/hello", "/no-such-route"):
        if testing:
            with pytest.raises(HTTPException):
                client.get(path)
        else:
            assert client.get(path, buffered=True).status_code == 500
    docs = stored(app, mongo)
    assert [d["exception"].split(":")[0] for d in docs] == ["Unauthorized", "ServiceUnavailable"]


def test_short_circuiting_before_request_still_has_real_timing(mongo: Any) -> None:
    app = Flask("short")
    app.config.update(TESTING=True, **FAST_WRITER)

    @app.before_request
    def stop_early() -> Any:
        time.sleep(0.03)
        return "blocked", 403

    add_routes(app)
    Tracking(app)
    assert app.test_client().get("/hello").status_code == 403
    [doc] = stored(app, mongo)
    assert doc["status_code"] == 403
    assert doc["execution_time"] >= 30
    assert doc["response_body"] == b"blocked"


def test_custom_data_is_stored(app: Flask, client: Any, mongo: Any) -> None:
    client.get("/custom")
    [doc] = stored(app, mongo)
    assert doc["custom_data"] == {"order": 42, "tags": ["a", "b"]}
    assert TrackingDocument.objects.get(id=doc["_id"]).custom_data["order"] == 42


def test_custom_data_odd_values_are_stored_safely(app: Flask, mongo: Any) -> None:
    @app.get("/odd")
    def odd() -> str:
        data: dict[Any, Any] = {"set": {1}, "big": 2**70, 3: "int key", "a.b": 1, "$x": 2}
        data["self"] = data
        request._tracking_data = data
        return "ok"

    app.test_client().get("/odd")
    app.test_client().get("/hello")
    odd_doc, hello_doc = stored(app, mongo)
    assert odd_doc["custom_data"]["set"] == [1]
    assert odd_doc["custom_data"]["big"] == str(2**70)
    assert odd_doc["custom_data"]["3"] == "int key"
    assert odd_doc["custom_data"]["self"] == "[circular reference]"
    assert hello_doc["path"] == "/hello"


def test_exclude_paths_methods_and_bodies(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(
        TRACKING_EXCLUDE=[r"/hello$"],
        TRACKING_EXCLUDE_BODY=[r"/echo"],
        TRACKING_EXCLUDE_METHODS=["put"],
    )
    client = app.test_client()
    client.get("/hello")
    client.put("/hello")
    client.post("/echo", json={"secret": 1})
    [doc] = stored(app, mongo)
    assert doc["path"] == "/echo"
    assert doc["request_body"] is None and doc["response_body"] is None
    assert doc["request_body_omitted"] == doc["response_body_omitted"] == "excluded"


def test_excluded_status_codes_are_kept_when_slow(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_EXCLUDE_STATUS_CODES=[200], TRACKING_MIN_EXECUTION_TIME=40)
    client = app.test_client()
    client.get("/hello")
    client.get("/sleep/0.05")
    client.get("/missing", buffered=True)
    docs = stored(app, mongo)
    assert [doc["path"] for doc in docs] == ["/sleep/0.05", "/missing"]


def test_second_init_on_the_same_app_raises(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already registered"):
        Tracking(app)
    with pytest.raises(RuntimeError, match="already registered"):
        app.extensions["tracking"].init_app(app)


def test_bad_config_raises_at_init_app(mongo: Any) -> None:
    app = Flask("bad")
    app.config["TRACKING_EXCLUDE"] = ["("]
    with pytest.raises(ValueError, match="TRACKING_EXCLUDE"):
        Tracking(app)
    assert "tracking" not in app.extensions


def test_one_extension_two_apps_keep_their_own_config(mongo: Any) -> None:
    tracking = Tracking()
    apps = []
    for limit in (3, 7):
        app = Flask(f"app{limit}")
        app.config.update(TESTING=True, TRACKING_MAX_BODY_LENGTH=limit, **FAST_WRITER)
        add_routes(app)
        tracking.init_app(app)
        apps.append(app)
    for app in apps:
        app.test_client().get("/hello")
    assert tracking.flush(5)
    bodies = sorted(doc["response_body"] for doc in mongo["tracking"].find())
    assert bodies == [b"Hel", b"Hello"]
    with apps[0].app_context():
        assert tracking.stats()["written"] == 1
    assert tracking.stats()["written"] == 2
    for app in apps:
        tracking._apps[app].writer.shutdown(1)


def test_concurrent_requests_lose_nothing(app: Flask, mongo: Any) -> None:
    def worker(n: int) -> None:
        client = app.test_client()
        for i in range(50):
            assert client.get(f"/hello?w={n}&i={i}").status_code == 200

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    docs = stored(app, mongo)
    assert len(docs) == 400
    assert len({doc["query_params"] for doc in docs}) == 400
    stats = app.extensions["tracking"].stats(app)
    assert stats["enqueued"] == stats["written"] == 400


def test_database_on_a_closed_port_never_slows_requests(mongo: Any) -> None:
    mongoengine.connect(
        "unreachable",
        alias="down",
        host="mongodb://127.0.0.1:9/",
        serverSelectionTimeoutMS=30_000,
        uuidRepresentation="standard",
    )
    try:
        app = Flask("down")
        app.config.update(TESTING=True, TRACKING_DB_ALIAS="down", **FAST_WRITER)
        add_routes(app)
        tracking = Tracking(app)
        client = app.test_client()
        started = time.perf_counter()
        for _ in range(50):
            assert client.get("/hello").data == b"Hello"
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0, f"50 requests took {elapsed:.2f}s with the database down"
        assert tracking.flush(timeout=0.2) is False
        stats = tracking.stats(app)
        assert stats["enqueued"] == 50 and stats["written"] == 0
        tracking._apps[app].writer.shutdown(0.5)
        stats = tracking.stats(app)
        assert stats["dropped_shutdown"] == 50
    finally:
        mongoengine.disconnect("down")


def test_flask_login_user_is_recorded(app: Flask, mongo: Any) -> None:
    flask_login = pytest.importorskip("flask_login")

    class User(mongoengine.Document, flask_login.UserMixin):
        name = mongoengine.StringField()

    user = User(name="ada").save()
    app.secret_key = "test"
    manager = flask_login.LoginManager(app)
    manager.user_loader(lambda user_id: User.objects(id=user_id).first())

    @app.get("/login")
    def login() -> str:
        flask_login.login_user(user)
        return "in"

    @app.get("/me")
    @flask_login.login_required
    def me() -> str:
        return flask_login.current_user.name

    client = app.test_client()
    client.get("/me", buffered=True)  # 401 page: recorded when closed
    client.get("/login")
    assert client.get("/me").data == b"ada"
    anonymous_doc, login_doc, me_doc = stored(app, mongo)
    assert anonymous_doc["user_id"] is None and anonymous_doc["user"] is None
    assert login_doc["user_id"] == str(user.id)
    assert me_doc["user_id"] == str(user.id)
    assert me_doc["user"]["_ref"].id == user.id
    assert TrackingDocument.objects.get(id=me_doc["_id"]).user == user


def test_queued_size_counts_every_string_of_the_environ_copy() -> None:
    from flask_tracking.capture import RequestState, snapshot_environ
    from flask_tracking.extension import ITEM_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES, _estimated_size

    def sized(environ: dict[str, Any], headers: list[tuple[str, Any]]) -> int:
        state = RequestState()
        snapshot_environ(state, environ)
        state.response_headers = headers
        return _estimated_size(state)

    environ: dict[str, Any] = {"PATH_INFO": "/p", "HTTP_X_BIG": "x" * 10_000}
    headers: list[tuple[str, Any]] = [("Content-Type", "text/plain")]
    expected = (
        RECORD_OVERHEAD_BYTES
        + 2 * ITEM_OVERHEAD_BYTES
        + len("PATH_INFO")
        + len("HTTP_X_BIG")
        + 2
        + 10_000
        + ITEM_OVERHEAD_BYTES
        + len("Content-Type")
        + len("text/plain")
    )
    for _ in range(2):  # the keys' layout learnt, then remembered
        assert sized(environ, headers) == expected
    # A value that is not text (from a server whose objects the copy does not know) is
    # counted apart; objects the copy leaves out are not counted.
    environ["someserver.node"] = b"host"
    environ["wsgi.input"] = io.BytesIO(b"x" * 1000)
    assert sized(environ, headers) == expected + ITEM_OVERHEAD_BYTES + len("someserver.node")
    headers.append(("X-Count", 3))
    assert sized(environ, headers) == (
        expected + 2 * ITEM_OVERHEAD_BYTES + len("someserver.node") + len("X-Count")
    )
    # Keys too long to remember their layout are counted all the same.
    environ["HTTP_X_" + "N" * 5000] = "v"
    assert sized(environ, headers) == (
        expected
        + 3 * ITEM_OVERHEAD_BYTES
        + len("someserver.node")
        + len("X-Count")
        + len("HTTP_X_")
        + 5000
        + 1
    )


def test_the_response_is_copied_after_every_after_request_hook_whatever_their_order(
    mongo: Any,
) -> None:
    import gzip

    import flask_tracking

    app = Flask("hooks_before_and_after")
    app.config.update(FAST_WRITER)

    @app.after_request
    def compress(response: Any) -> Any:  # registered before Tracking: runs after its hooks
        flask_tracking.add_data(compressed=True)
        response.set_data(gzip.compress(response.get_data()))
        response.headers["Content-Encoding"] = "gzip"
        return response

    Tracking(app)

    @app.after_request
    def stamp(response: Any) -> Any:  # registered after Tracking: runs first
        response.set_data(response.get_data() + b"!")
        return response

    app.add_url_rule("/hello", "hello", lambda: "Hello")
    response = app.test_client().get("/hello")
    assert gzip.decompress(response.data) == b"Hello!"
    [doc] = stored(app, mongo)
    assert doc["response_body"] == b"Hello!"  # what was sent, stored decoded
    assert doc["response_body_size"] == len(response.data)
    assert ["Content-Encoding", "gzip"] in doc["response_headers"]
    assert doc["custom_data"] == {"compressed": True}


def test_config_of_gives_the_settings_an_app_is_tracked_with(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(TRACKING_DB_ALIAS="records", TRACKING_MAX_BODY_LENGTH=1234)
    tracking = app.extensions["tracking"]
    config = tracking.config_of(app)
    assert config is not None
    assert (config.db_alias, config.max_body_length) == ("records", 1234)
    assert tracking.config_of(Flask("untracked")) is None


def test_total_time_runs_until_the_response_was_closed_so_it_is_not_below_execution_time(
    app: Flask, client: Any, mongo: Any
) -> None:
    # docs/stored.md: total_time is measured until the response was closed, after its last byte
    # (for any response, streamed or not): it is never below execution_time, and larger when
    # sending took time.
    from pathlib import Path

    client.get("/hello")
    (doc,) = stored(app, mongo)
    assert doc["total_time"] >= doc["execution_time"] > 0
    stored_md = (Path(__file__).parent.parent / "docs" / "stored.md").read_text(encoding="utf-8")
    (row,) = [line for line in stored_md.splitlines() if line.startswith("| `total_time`")]
    assert "closed" in row and "equals" not in row


def test_with_the_test_client_a_streamed_response_is_recorded_once_read_or_closed(
    app: Flask, client: Any, mongo: Any
) -> None:
    # docs/capture.md and docs/testing.md: with the test client a request is in the database
    # once flush() returns, read or not, except a streamed response, recorded once it has been
    # read to the end or closed.
    from pathlib import Path

    response = client.get("/stream")
    try:
        assert response.status_code == 200
        assert stored(app, mongo) == []
    finally:
        response.close()
    assert [document["path"] for document in stored(app, mongo)] == ["/stream"]
    capture_md = (Path(__file__).parent.parent / "docs" / "capture.md").read_text(encoding="utf-8")
    assert "except a streamed response" in capture_md

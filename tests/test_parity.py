"""End to end: a tracked app behaves exactly like the untracked one, and misses no request.

The same requests go to a tracked app and to an untracked twin; the answers (status, headers,
body) and what the app saw must be equal. Servers: Flask's test client, Werkzeug's development
server (``make_server`` in a thread) and ``wsgiref`` (which never drains unread input), with a
client that declares a body and stalls.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from flask import Flask, Response, abort, request
from werkzeug.routing import RequestRedirect
from werkzeug.serving import make_server as werkzeug_make_server

from .conftest import add_routes, stored

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def add_parity_routes(app: Flask) -> None:
    @app.route("/user/", methods=["GET", "POST"])
    def user() -> str:
        return request.form["status"]

    @app.post("/refuse")
    def refuse() -> Any:
        return "no", 403

    @app.get("/forbidden")
    def forbidden() -> str:
        abort(403)

    @app.post("/only-post")
    def only_post() -> str:
        return "posted"


def make_pair(make_app: Callable[..., Flask], **config: Any) -> tuple[Flask, Flask]:
    """A tracked app and its untracked twin, with the same views and config."""
    tracked = make_app(**config)
    add_parity_routes(tracked)
    untracked = Flask("untracked")
    untracked.config.update(TESTING=tracked.config["TESTING"], **config)
    add_routes(untracked)
    add_parity_routes(untracked)
    return tracked, untracked


def answer(response: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, sorted(response.headers.items()), response.get_data()


# --------------------------------------------------------------------------------------------
# 1. A body the view did not read
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [307, 308])
def test_a_redirect_that_keeps_the_body_gets_it_whole(
    make_app: Callable[..., Flask], mongo: Any, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(RequestRedirect, "code", code)
    tracked, untracked = make_pair(make_app, DEBUG=True)
    for app in (untracked, tracked):
        response = app.test_client().post(
            "/user", data={"status": "success"}, follow_redirects=True
        )
        assert response.get_data() == b"success"
    documents = stored(tracked, mongo)
    assert [d["status_code"] for d in documents] == [code, 200]
    assert documents[0]["request_body"] == b"status=success"  # read, then rewound
    assert documents[1]["request_body"] == b"status=success"


def test_an_unread_body_from_the_test_client_is_recorded_and_left_where_it_was(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, _ = make_pair(make_app)
    response = tracked.test_client().post("/refuse", data=b"note=1&b=2")
    assert response.status_code == 403
    (document,) = stored(tracked, mongo)
    assert document["request_body"] == b"note=1&b=2"
    assert document["request_body_omitted"] is None


class ServerThread:
    """A WSGI server serving ``app`` on a free port in a daemon thread."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port = server.server_port
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Flask, str], ServerThread]]:
    started: list[ServerThread] = []

    def start(app: Flask, kind: str) -> ServerThread:
        if kind == "werkzeug":
            server = werkzeug_make_server("127.0.0.1", 0, app, threaded=False)
        else:
            server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
        started.append(ServerThread(server))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def raw_post(port: int, path: str, declared: int, sent: bytes) -> socket.socket:
    """Open a connection, send a POST that declares ``declared`` bytes but only ``sent``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {declared}\r\n"
        "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def read_status(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("kind", ["werkzeug", "wsgiref"])
def test_an_unread_body_under_a_server_is_omitted_and_keeps_its_content_length(
    make_app: Callable[..., Flask], mongo: Any, serve: Any, kind: str
) -> None:
    tracked, untracked = make_pair(make_app)
    answers = []
    for app in (tracked, untracked):
        server = serve(app, kind)
        body = b"twenty-two bytes body!"
        post = urllib.request.Request(f"http://127.0.0.1:{server.port}/refuse", data=body)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=10)
        with refused.value as reply:
            headers = sorted((k, v) for k, v in reply.headers.items() if k != "Date")
            answers.append((reply.code, headers, reply.read()))
    assert answers[0] == answers[1] and answers[0][0] == 403
    (document,) = stored(tracked, mongo)
    assert document["request_body"] is None
    assert document["request_body_omitted"] == "unread"
    assert dict(document["request_headers"])["Content-Length"] == "22"


def test_a_stalled_upload_under_wsgiref_does_not_hold_the_server(
    make_app: Callable[..., Flask], mongo: Any, serve: Any
) -> None:
    tracked, untracked = make_pair(make_app)
    for app in (untracked, tracked):
        server = serve(app, "wsgiref")
        stalled = raw_post(server.port, "/refuse", declared=60_000, sent=b"0123456789")
        try:
            assert read_status(stalled).endswith(b"403 FORBIDDEN")
            started = time.monotonic()
            url = f"http://127.0.0.1:{server.port}/hello"
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert reply.read() == b"Hello"
            assert time.monotonic() - started < 1.0  # nobody waited for the stalled client
        finally:
            stalled.close()
    first, second = stored(tracked, mongo)
    assert first["request_body"] is None and first["request_body_omitted"] == "unread"
    assert dict(first["request_headers"])["Content-Length"] == "60000"
    assert second["path"] == "/hello"


# --------------------------------------------------------------------------------------------
# 2. The test client sees what production sees
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/forbidden", 403),  # abort()
        ("GET", "/nowhere", 404),
        ("GET", "/only-post", 405),
        ("GET", "/boom", 500),  # TESTING=False: Flask's own error page
        ("POST", "/refuse", 403),  # a body the view did not read
    ],
)
def test_the_test_client_records_without_reading_or_closing_the_response(
    make_app: Callable[..., Flask], mongo: Any, method: str, path: str, status: int
) -> None:
    tracked, untracked = make_pair(make_app, testing=False)
    responses = [
        app.test_client().open(path, method=method, data=b"x=1" if method == "POST" else None)
        for app in (tracked, untracked)
    ]
    assert responses[0].status_code == status
    (document,) = stored(tracked, mongo)  # no response was read or closed
    assert document["status_code"] == status
    assert answer(responses[0]) == answer(responses[1])
    assert document["response_body"] == responses[0].get_data()


def test_a_streamed_response_is_recorded_once_read_to_the_end(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, _ = make_pair(make_app)
    response = tracked.test_client().get("/stream")
    assert stored(tracked, mongo) == []  # not read yet: still streaming
    assert (
        response.get_data() == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
    )  # read to the end, never closed
    (document,) = stored(tracked, mongo)
    assert document["response_body"] == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


def test_a_streamed_response_is_recorded_once_closed(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, _ = make_pair(make_app)
    tracked.test_client().get("/stream").close()
    (document,) = stored(tracked, mongo)
    # What went by before the close: the test client takes the first chunk to get the status.
    assert document["response_body"] == b"chunk0;"


def test_a_streamed_response_without_a_body_is_recorded_once_read_to_the_end(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """HEAD (and 204, 304) answers have no body: Werkzeug never iterates the stream, so the
    response the test client hands back is read to its end at once."""
    tracked, _ = make_pair(make_app)

    @tracked.get("/stream-204")
    def stream_204() -> Response:
        return Response(iter([b"never sent"]), status=204)

    responses = [tracked.test_client().head("/stream"), tracked.test_client().get("/stream-204")]
    assert [r.get_data() for r in responses] == [b"", b""]  # read to the end, never closed
    documents = stored(tracked, mongo)
    assert [(d["method"], d["status_code"]) for d in documents] == [("HEAD", 200), ("GET", 204)]


def test_a_stream_that_raised_under_the_test_client_is_recorded(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, _ = make_pair(make_app)

    @tracked.get("/broken-stream")
    def broken_stream() -> Response:
        def generate() -> Iterator[bytes]:
            yield b"first;"
            raise ValueError("the stream broke")

        return Response(generate())

    response = tracked.test_client().get("/broken-stream")
    with pytest.raises(ValueError, match="the stream broke"):
        response.get_data()  # the stream is over: nothing more can be read or sent
    (document,) = stored(tracked, mongo)
    assert document["exception"] == "ValueError: the stream broke"


def one_after_the_other(client: Any) -> list[bytes]:
    return [client.get("/prepared").get_data() for _ in range(2)]


def overlapping(client: Any) -> list[bytes]:
    first = client.get("/prepared", buffered=False)
    second = client.get("/prepared", buffered=False)
    first_body = first.get_data()
    first.close()  # its ClosingIterator calls the shared Response's close()
    bodies = [first_body, second.get_data()]
    second.close()
    return bodies


@pytest.mark.parametrize("serve", [one_after_the_other, overlapping])
def test_a_response_object_served_twice_keeps_its_body(
    make_app: Callable[..., Flask], mongo: Any, serve: Callable[[Any], list[bytes]]
) -> None:
    """A view may answer with one prepared Response (a module constant, a cache) whose body is
    an iterable that can be iterated again: Werkzeug never consumes it, the tracker must not,
    whether the requests come one after the other or at the same time."""
    tracked, untracked = make_pair(make_app)
    bodies = []
    for app in (tracked, untracked):
        prepared = Response(deque([b"prepared ", b"body"]), mimetype="text/plain")
        app.add_url_rule("/prepared", "prepared", lambda prepared=prepared: prepared)
        bodies.append(serve(app.test_client()))
    assert bodies[1] == [b"prepared body"] * 2
    assert bodies[0] == bodies[1]
    assert [d["response_body"] for d in stored(tracked, mongo)] == [b"prepared body"] * 2


# --------------------------------------------------------------------------------------------
# 3. The logged-in user on every request
# --------------------------------------------------------------------------------------------


def add_login(app: Flask, loads: list[str]) -> Any:
    flask_login = pytest.importorskip("flask_login")

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager = flask_login.LoginManager(app)

    @manager.user_loader
    def load(user_id: str) -> Any:
        loads.append(user_id)
        return User(user_id)

    @app.post("/login")
    def login() -> str:
        flask_login.login_user(User("alice"), remember=True)
        return "in"

    @app.get("/about")
    def about() -> str:
        return "about"  # never touches current_user nor the session

    return flask_login


def test_the_logged_in_user_is_recorded_on_a_view_that_never_loads_it(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, untracked = make_pair(make_app, SECRET_KEY="s3cret")
    loads: dict[str, list[str]] = {"tracked": [], "untracked": []}
    add_login(tracked, loads["tracked"])
    add_login(untracked, loads["untracked"])
    answers = {}
    for name, app in (("tracked", tracked), ("untracked", untracked)):
        client = app.test_client()
        client.post("/login")
        answers[name] = [answer(client.get(path)) for path in ("/about", "/hello", "/nowhere")]
    assert answers["tracked"] == answers["untracked"]  # no Vary: Cookie added, no new cookie
    assert loads["tracked"] == loads["untracked"] == []  # the user loader never ran
    documents = stored(tracked, mongo)
    assert [d["user_id"] for d in documents] == ["alice"] * 4


def test_a_remember_me_cookie_alone_records_no_user(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, _ = make_pair(make_app, SECRET_KEY="s3cret")
    loads: list[str] = []
    add_login(tracked, loads)
    set_cookies = tracked.test_client().post("/login").headers.getlist("Set-Cookie")
    (remember,) = [c.split(";")[0] for c in set_cookies if c.startswith("remember_token=")]
    # A new browser session: only the remember-me cookie is sent.
    tracked.test_client(use_cookies=False).get("/about", headers={"Cookie": remember})
    assert loads == []
    assert [d["user_id"] for d in stored(tracked, mongo)] == ["alice", None]


def test_the_loaded_mongoengine_user_keeps_its_reference(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    import mongoengine

    flask_login = pytest.importorskip("flask_login")

    class Member(mongoengine.Document, flask_login.UserMixin):
        name = mongoengine.StringField()

    tracked = make_app(SECRET_KEY="s3cret")
    member = Member(name="bob").save()
    flask_login.LoginManager(tracked).user_loader(
        lambda user_id: Member.objects(id=user_id).first()
    )

    @tracked.post("/login")
    def login() -> str:
        flask_login.login_user(member)
        return "in"

    @tracked.get("/me")
    def me() -> str:
        return flask_login.current_user.name

    @tracked.get("/about")
    def about() -> str:
        return "about"

    client = tracked.test_client()
    client.post("/login")
    client.get("/me")
    client.get("/about")
    documents = stored(tracked, mongo)
    assert [d["user_id"] for d in documents] == [str(member.id)] * 3
    assert [d["user"] is not None for d in documents] == [True, True, False]
    assert documents[1]["user"]["_ref"].id == member.id


def add_logout(app: Flask, flask_login: Any) -> None:
    @app.post("/logout")
    def logout() -> str:
        flask_login.logout_user()
        return "out"

    @app.post("/switch")
    def switch() -> str:  # signed out, then in as someone else: the last one did it
        user_class = type(flask_login.current_user._get_current_object())
        flask_login.logout_user()
        flask_login.login_user(user_class("bob"))
        return "bob"


def test_a_request_that_logs_its_user_out_is_recorded_with_that_user(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """Signing out, or deleting one's account and being signed out, is done by the user who
    was signed in when the request came: who did it must not read as an anonymous visitor."""
    tracked, untracked = make_pair(make_app, SECRET_KEY="s3cret")
    for app in (tracked, untracked):
        add_logout(app, add_login(app, []))
    answers = []
    for app in (tracked, untracked):
        client = app.test_client()
        client.post("/login")
        first = answer(client.post("/logout"))
        client.post("/logout")  # nobody signed in any more
        client.post("/login")
        answers.append([first, answer(client.post("/switch"))])
    assert answers[0] == answers[1]
    documents = stored(tracked, mongo)
    assert [(d["path"], d["user_id"]) for d in documents] == [
        ("/login", "alice"),
        ("/logout", "alice"),
        ("/logout", None),
        ("/login", "alice"),
        ("/switch", "bob"),
    ]


def test_tracking_never_changes_the_response_of_a_login_app(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    tracked, untracked = make_pair(make_app, SECRET_KEY="s3cret")
    add_login(tracked, [])
    add_login(untracked, [])
    answers = [
        [answer(app.test_client().get(path)) for path in ("/about", "/stream", "/forbidden")]
        for app in (tracked, untracked)
    ]
    assert answers[0] == answers[1]
    assert len(stored(tracked, mongo)) == 3


def add_sqlalchemy_login(app: Flask) -> list[str]:
    """A Flask-SQLAlchemy user model behind Flask-Login; returns the list of SQL statements
    the app's engine runs from now on."""
    flask_login = pytest.importorskip("flask_login")
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    from sqlalchemy import event

    app.config.update(SECRET_KEY="s3cret", SQLALCHEMY_DATABASE_URI="sqlite://")
    db = flask_sqlalchemy.SQLAlchemy(app)

    class Member(db.Model, flask_login.UserMixin):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        visits = db.Column(db.Integer, default=0)

    flask_login.LoginManager(app).user_loader(lambda user_id: db.session.get(Member, int(user_id)))
    statements: list[str] = []
    with app.app_context():
        db.create_all()
        db.session.add(Member(id=1))
        db.session.commit()
        event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    @app.post("/login")
    def login() -> str:
        flask_login.login_user(db.session.get(Member, 1))
        return "in"

    @app.post("/visit")
    def visit() -> str:
        flask_login.current_user.visits += 1
        db.session.commit()  # expires the loaded user, as SQLAlchemy does by default
        return "counted"

    return statements


def test_the_tracker_runs_no_query_of_the_app_to_read_the_loaded_user(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """Reading the id of the user the view loaded (get_id()) must not reload it: once the view
    committed, SQLAlchemy has expired it and get_id() would run a SELECT of the app's."""
    tracked, untracked = make_pair(make_app)
    statements = {}
    for name, app in (("tracked", tracked), ("untracked", untracked)):
        executed = add_sqlalchemy_login(app)
        client = app.test_client()
        client.post("/login")
        executed.clear()
        assert client.post("/visit").get_data() == b"counted"
        statements[name] = list(executed)
    assert len(statements["untracked"]) == 2  # the user loader's SELECT, the UPDATE
    assert statements["tracked"] == statements["untracked"]
    assert [d["user_id"] for d in stored(tracked, mongo)] == ["1", "1"]


# --------------------------------------------------------------------------------------------
# 4. The WSGI calls the tracker sits in
# --------------------------------------------------------------------------------------------


def test_a_middleware_whose_start_response_takes_no_exc_info_keeps_working(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """Werkzeug calls ``start_response(status, headers)``: a middleware wrapped around the app
    after Tracking (or a hand-written test harness) may define its own with two parameters."""
    tracked, untracked = make_pair(make_app)
    answers = []
    for app in (tracked, untracked):
        inner = app.wsgi_app

        def wrapped(environ: dict[str, Any], start_response: Any, inner: Any = inner) -> Any:
            def two_arguments(status: str, headers: list[tuple[str, str]]) -> Any:
                headers.append(("X-Wrapped", "1"))
                return start_response(status, headers)

            return inner(environ, two_arguments)

        app.wsgi_app = wrapped  # type: ignore[method-assign]
        answers.append(answer(app.test_client().get("/hello")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200 and ("X-Wrapped", "1") in answers[0][1]
    assert [d["path"] for d in stored(tracked, mongo)] == ["/hello"]


def gunicorn_input(body: bytes) -> Any:
    """The ``wsgi.input`` gunicorn gives an app (it also sets ``wsgi.input_terminated``, so
    ``request.stream`` is this very object)."""
    gunicorn_body = pytest.importorskip("gunicorn.http.body")
    from gunicorn.http.unreader import IterUnreader

    return gunicorn_body.Body(gunicorn_body.LengthReader(IterUnreader([body]), len(body)))


def read_with(stream: Any) -> bytes:
    with stream as opened:  # a BytesIO (the test client's input) is a context manager
        return bytes(opened.read())


@pytest.mark.parametrize(
    ("server", "read"),
    [
        ("gunicorn", lambda: next(request.stream)),  # its Body is an iterator
        ("gunicorn", lambda: request.stream.read(size=4)),  # sizes by keyword
        ("gunicorn", lambda: request.stream.readline(size=3)),
        ("test client", lambda: next(request.input_stream)),
        ("test client", lambda: read_with(request.input_stream)),
    ],
    ids=[
        "gunicorn-next",
        "gunicorn-read-size",
        "gunicorn-readline-size",
        "bytesio-next",
        "bytesio-with",
    ],
)
def test_the_input_stream_keeps_the_protocol_of_the_servers_own(
    make_app: Callable[..., Flask], mongo: Any, server: str, read: Callable[[], bytes]
) -> None:
    tracked, untracked = make_pair(make_app)
    answers = []
    for app in (tracked, untracked):
        app.add_url_rule("/read", "read", read, methods=["POST"])
        body = b"line1\nline2\n"
        overrides = {}
        if server == "gunicorn":
            overrides = {"wsgi.input": gunicorn_input(body), "wsgi.input_terminated": True}
        response = app.test_client().post(
            "/read", data=body, content_type="text/plain", environ_overrides=overrides
        )
        answers.append(answer(response))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200
    assert len(stored(tracked, mongo)) == 1

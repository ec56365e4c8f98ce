"""A small Flask app that shows what flask_tracking records.

Run it with ``python -m example_app.app`` (port from ``$PORT``, default 5000) or
``flask --app example_app.app run``, then open http://127.0.0.1:5000/ and log in as demo/demo.

Storage: when ``$TRACKING_MONGODB_URI`` is set (for instance
``mongodb://localhost:27017/flask_tracking_example``) the extension connects to that server
itself. Otherwise ``python -m example_app.app`` starts a local SecantusDB server with its data in
the instance folder (``instance/`` beside this package, or ``$EXAMPLE_INSTANCE_PATH``), kept
between runs, and stops it when the app exits; ``flask --app example_app.app tracking list`` (or
``flask --app example_app.app run``) in another shell finds that server through
``instance/mongodb.json``. See :mod:`example_app.local_db`.

Every view below exists to show one feature: Flask-Login users, custom data, slow requests,
excluded paths, request bodies (a JSON API and an upload form), streamed responses, errors,
and reading the records back with :class:`flask_tracking.documents.Tracking`. The tracking
dashboard is at /tracking/, for logged-in users only.

This is a demo: the user store is a dict, and the forms carry no CSRF token.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
import mongoengine
from bson import ObjectId
from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from mongoengine.connection import ConnectionFailure
from pymongo.errors import PyMongoError
from werkzeug.security import check_password_hash, generate_password_hash

from flask_tracking import Tracking
from flask_tracking.dashboard import make_blueprint
from flask_tracking.documents import Tracking as TrackingRecord

from . import local_db

logger = logging.getLogger(__name__)

#: The demo account shown on the home page.
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo"
#: How many records /requests lists.
LATEST_COUNT = 50
#: Bytes read at a time from an uploaded file.
UPLOAD_CHUNK_BYTES = 64 * 1024


class User(UserMixin):
    """A user of the in-memory store. Flask-Login asks it for ``get_id()``."""

    def __init__(self, user_id: str, username: str, password_hash: str) -> None:
        self.id = user_id
        self.username = username
        self.password_hash = password_hash

    def check_password(self, password: str) -> bool:
        """Whether ``password`` is this user's password."""
        return check_password_hash(self.password_hash, password)


class UserStore:
    """A tiny in-memory user store holding the demo user (a real app would use a database)."""

    def __init__(self) -> None:
        demo = User("1", DEMO_USERNAME, generate_password_hash(DEMO_PASSWORD))
        self._by_id = {demo.id: demo}

    def get(self, user_id: str) -> User | None:
        """The user with id ``user_id``, or None."""
        return self._by_id.get(user_id)

    def authenticate(self, username: str, password: str) -> User | None:
        """The user with these credentials, or None."""
        for user in self._by_id.values():
            if secrets.compare_digest(user.username, username) and user.check_password(password):
                return user
        return None


def default_config() -> dict[str, Any]:
    """The app's settings before ``$TRACKING_MONGODB_URI`` and the ``config`` argument."""
    return {
        # Sessions (Flask-Login) need a secret key; a random one logs everybody out on restart.
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_hex(32),
        "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
        # Not recorded at all: static files and the health check (regexes matched at the
        # start of the path).
        "TRACKING_EXCLUDE": [r"/static/", r"/health$"],
        # Recorded without bodies: the login form posts a password.
        "TRACKING_EXCLUDE_BODY": [r"/login$"],
        # Keep the first 16 KiB of each body, so a bigger upload shows a truncated body.
        "TRACKING_MAX_BODY_LENGTH": 16 * 1024,
    }


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the example app.

    ``config`` overrides the defaults and ``$TRACKING_MONGODB_URI``. Without a
    ``TRACKING_MONGODB_URI``, and unless the ``TRACKING_DB_ALIAS`` connection (``"default"``) is
    connected already (for instance by a test), the app uses the server that
    ``python -m example_app.app`` started. When there is none it says so: under the ``flask``
    command in one sentence on stderr, exiting 1; elsewhere by raising
    ``flask.cli.NoAppException``.
    """
    app = Flask(__name__, instance_path=instance_path())
    app.config.update(default_config())
    uri = os.environ.get("TRACKING_MONGODB_URI")
    if uri:
        app.config["TRACKING_MONGODB_URI"] = uri
    app.config.update(config or {})
    app.config["EXAMPLE_STORAGE"] = _prepare_storage(app)

    # Install tracking right after the app and its configuration, before anything else.
    Tracking(app)

    users = UserStore()
    login_manager = LoginManager(app)
    login_manager.login_view = "login"
    login_manager.user_loader(users.get)
    app.extensions["example_users"] = users

    # The dashboard at /tracking/, guarded by the app's own login: see _dashboard_access.
    app.register_blueprint(make_blueprint(access=_dashboard_access))

    _add_routes(app)
    return app


def _dashboard_access() -> bool | Response:
    """The dashboard's access check: logged-in users get in; anybody else is sent to the login
    page (Flask-Login's ``unauthorized()``), and comes back to the dashboard after logging in.
    A real app would also check a role here."""
    if current_user.is_authenticated:
        return True
    return current_app.login_manager.unauthorized()  # type: ignore[attr-defined,no-any-return]


def instance_path() -> str:
    """The app's instance folder: ``$EXAMPLE_INSTANCE_PATH``, else ``instance/`` beside the
    ``example_app`` package (where Flask puts it for a package run from a checkout)."""
    configured = os.environ.get("EXAMPLE_INSTANCE_PATH")
    if configured:
        return os.path.abspath(configured)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "instance")


def _prepare_storage(app: Flask) -> str:
    """Point the extension at the example's local server when no MongoDB URI is configured
    and the alias is not connected yet.

    Returns a sentence describing the storage, shown on the home page and logged.
    """
    alias = app.config.get("TRACKING_DB_ALIAS", "default")
    if app.config.get("TRACKING_MONGODB_URI"):
        description = "MongoDB at TRACKING_MONGODB_URI (connected by flask_tracking)"
        logger.info("example_app: tracking into %s", description)
        return description
    try:
        mongoengine.get_connection(alias)
    except ConnectionFailure:
        try:
            app.config["TRACKING_MONGODB_URI"] = local_db.find(app.instance_path)
        except local_db.NoLocalServer as error:
            _no_database(str(error))
        description = (
            f"the local SecantusDB server at {app.config['TRACKING_MONGODB_URI']} "
            f"(data in {os.path.join(app.instance_path, local_db.DATA_DIR)})"
        )
        logger.info("example_app: tracking into %s", description)
        return description
    description = f"the MongoEngine connection {alias!r} that was already connected"
    logger.info("example_app: tracking into %s", description)
    return description


def _no_database(message: str) -> NoReturn:
    """Refuse to build the app without its database, saying ``message``.

    Under the ``flask`` command: print it and exit 1. Flask's CLI finds the app's own commands
    (``flask tracking ...``) by loading the app, and takes an app that fails to load with
    ``NoAppException`` for one without the command: it would print the message, then "No such
    command 'tracking'." and exit 2 (any other exception prints a traceback under ``--help``).
    Elsewhere (a WSGI server, a test): raise ``NoAppException``.
    """
    from flask.cli import NoAppException

    if click.get_current_context(silent=True) is None:
        raise NoAppException(message)
    click.secho(f"Error: {message}", err=True, fg="red")
    raise SystemExit(1)


def _tracking() -> Tracking:
    """The app's Tracking extension."""
    return current_app.extensions["tracking"]


def _safe_next(target: str | None) -> str:
    """``target`` when it is a path on this site, else the home page (no open redirect)."""
    if target:
        parts = urlsplit(target)
        local = not parts.scheme and not parts.netloc
        if local and target.startswith("/") and not target.startswith("//") and "\\" not in target:
            return target
    return url_for("home")


def _add_routes(app: Flask) -> None:
    """Register the views; each one shows a feature of the tracker."""

    @app.get("/")
    def home() -> str:
        return render_template(
            "home.html",
            storage=current_app.config["EXAMPLE_STORAGE"],
            demo_username=DEMO_USERNAME,
            demo_password=DEMO_PASSWORD,
            stats=_tracking().stats(),
            exclude=current_app.config["TRACKING_EXCLUDE"],
            exclude_body=current_app.config["TRACKING_EXCLUDE_BODY"],
        )

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        error = None
        if request.method == "POST":
            users: UserStore = current_app.extensions["example_users"]
            user = users.authenticate(
                request.form.get("username", ""), request.form.get("password", "")
            )
            if user is not None:
                login_user(user)
                flash(f"Logged in as {user.username}; your next requests carry user_id {user.id}.")
                return redirect(_safe_next(request.args.get("next")))
            error = "Wrong username or password."
        status = 401 if error else 200
        return render_template("login.html", error=error), status

    @app.post("/logout")
    def logout() -> Response:
        logout_user()
        flash("Logged out.")
        return redirect(url_for("home"))

    @app.get("/account")
    @login_required
    def account() -> str:
        message = (
            f"You are {current_user.username} (id {current_user.id}). "
            "Records of your requests carry this user_id."
        )
        return render_template("message.html", title="Account", message=message)

    @app.get("/custom")
    def custom() -> str:
        # Anything BSON can hold (or that flask_tracking can convert) goes into custom_data.
        request._tracking_data = {
            "feature": "custom data",
            "cart": {"items": 3, "total": 42.5, "currency": "EUR"},
            "query": request.args.to_dict(flat=False),
        }
        message = "This request set request._tracking_data; its record's custom_data holds it."
        return render_template("message.html", title="Custom data", message=message)

    @app.get("/slow")
    def slow() -> str:
        time.sleep(0.3)
        message = "This view slept 0.3 s: see execution_time in its record."
        return render_template("message.html", title="Slow", message=message)

    @app.get("/health")
    def health() -> Response:
        # Matches TRACKING_EXCLUDE: never recorded.
        return jsonify(status="ok")

    @app.route("/upload", methods=["GET", "POST"])
    def upload() -> Any:
        if request.method == "GET":
            return render_template("upload.html", result=None)
        uploaded = request.files.get("file")
        if uploaded is None or not uploaded.filename:
            return render_template("upload.html", result=None, error="Choose a file."), 400
        size = 0
        while chunk := uploaded.stream.read(UPLOAD_CHUNK_BYTES):
            size += len(chunk)
        return render_template("upload.html", result={"name": uploaded.filename, "size": size})

    @app.get("/stream")
    def stream() -> Response:
        def generate() -> Iterator[str]:
            for number in range(1, 11):
                yield f"line {number} of 10\n"
                time.sleep(0.05)

        # The record is finished when the last line went out: total_time > execution_time.
        return Response(generate(), mimetype="text/plain")

    @app.post("/api/echo")
    def api_echo() -> Any:
        payload = request.get_json(silent=True)
        if payload is None:
            return jsonify(error="send a JSON body (Content-Type: application/json)"), 400
        # flask_tracking records the user only when the app loaded it during the request (it
        # never runs the user_loader itself): touching current_user here is what does it.
        user_id = current_user.get_id() if current_user.is_authenticated else None
        return jsonify(echo=payload, received_bytes=request.content_length, user_id=user_id)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom: this view always fails (the record keeps the exception)")

    @app.get("/requests")
    @login_required  # every recorded request is shown here: only to logged-in users
    def requests_list() -> str:
        # Records are written by a background thread; flush so the latest ones show up.
        _tracking().flush(timeout=1)
        records = _records().order_by("-date_created")[:LATEST_COUNT]
        return render_template("requests.html", records=list(records), count=LATEST_COUNT)

    @app.get("/requests/<record_id>")
    @login_required
    def request_detail(record_id: str) -> str:
        if not ObjectId.is_valid(record_id):
            abort(404)
        record = _records().filter(id=ObjectId(record_id)).first()
        if record is None:
            abort(404)
        return render_template("request_detail.html", record=record)

    @app.errorhandler(PyMongoError)
    def database_unavailable(error: PyMongoError) -> tuple[str, int]:
        # Reading records needs the database; tracking itself never fails a request.
        logger.warning("example_app: cannot read the tracking records: %s", error)
        message = f"Cannot read the tracking records: {type(error).__name__}: {error}"
        return render_template("message.html", title="Database unavailable", message=message), 503


def _records() -> Any:
    """The QuerySet of tracking records, read through the alias the extension writes to."""
    return TrackingRecord.objects.using(current_app.config["TRACKING_DB_ALIAS"])


def main() -> None:
    """Run the development server on 127.0.0.1 (port ``$PORT``, default 5000); without
    ``$TRACKING_MONGODB_URI``, start the local server first (see :mod:`example_app.local_db`).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    port = int(os.environ.get("PORT", "5000"))
    # The reloader's child (WERKZEUG_RUN_MAIN) finds the server its parent started and owns.
    if not os.environ.get("TRACKING_MONGODB_URI") and not os.environ.get("WERKZEUG_RUN_MAIN"):
        # Started before the app, so that at exit the tracking writer flushes its records
        # before the server stops (atexit runs the hooks last-in first-out).
        local_db.start(instance_path())
    create_app().run(host="127.0.0.1", port=port, threaded=True)


if __name__ == "__main__":
    main()

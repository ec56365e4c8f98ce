"""The database work of each request: MongoDB commands (and SQLAlchemy statements) it ran.

A request's commands are found by a pymongo :class:`~pymongo.monitoring.CommandListener`
(:data:`LISTENER`) and, when the app uses SQLAlchemy, by its ``before_cursor_execute`` and
``after_cursor_execute`` engine events. Each event is attributed to the request being served
through a :class:`contextvars.ContextVar` that the tracking middleware sets when a tracked
request starts and resets when it ends: threads, gevent/eventlet greenlets and asyncio tasks
each see their own request (and commands run outside any request are ignored).

On the request thread the listener does little: it reads the context variable, works out the
command's *shape* (its filter with keys and operators kept and every value replaced by
``"?"``: never the values) and adds to a few counters. The stored sub-document is built on the
writer thread (:meth:`DbActivity.to_document`).

The tracker's own reads and writes are never counted: the writer runs its database work inside
:func:`uncounted`, and commands on the tracker's collections (:func:`ignore_collection`) are
left out whoever runs them.

pymongo notifies listeners registered with :func:`pymongo.monitoring.register` only for clients
created *after* the registration: :func:`register` (run by ``init_app``) cannot reach a client
created before it. Pass ``event_listeners=[flask_tracking.dbactivity.LISTENER]`` to such a client,
or create it after ``init_app``.
"""

from __future__ import annotations

import heapq
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import datetime
from typing import Any

from bson import SON, ObjectId
from pymongo import AsyncMongoClient, MongoClient, monitoring

__all__ = [
    "LISTENER",
    "DbActivity",
    "TrackingCommandListener",
    "attach",
    "detach",
    "ignore_collection",
    "register",
    "shape_of",
    "sql_shape",
    "uncounted",
    "watch_sqlalchemy",
]

#: Slowest commands kept per request (``db.slowest``).
SLOWEST_KEPT = 5
#: Most repeated shapes stored per request (``db.repeated``), the most frequent first.
MAX_REPEATED = 20
#: Distinct (command, collection, shape) counted per request; further ones count only in the
#: totals.
MAX_SHAPES = 500
#: Characters kept of a shape; a longer one is cut and ends with "...".
MAX_SHAPE_CHARS = 512
#: Levels of nesting a shape shows; deeper documents become ``"?"``.
MAX_SHAPE_DEPTH = 8
#: Commands started and not finished yet that one request remembers (bounds a leak if a
#: driver never reports the end of a command).
MAX_PENDING = 1000

_log = logging.getLogger("flask_tracking")

#: What is running now: None (no tracked request), :data:`_UNCOUNTED` (the tracker's own
#: database work) or the request state of the request being served (it has ``db``,
#: ``finished`` and ``skipped`` attributes).
_CURRENT: ContextVar[Any] = ContextVar("flask_tracking_db_activity", default=None)
_UNCOUNTED = object()

#: Made once per request that runs a command, by whichever thread runs the first one.
_CREATE_LOCK = threading.Lock()

#: Collections whose commands are never counted: collection name -> database names.
_IGNORED: dict[str, set[str]] = {}

#: Which field of a command holds its filter (``aggregate``: the pipeline).
_FILTER_FIELDS = {
    "find": "filter",
    "count": "query",
    "distinct": "query",
    "findAndModify": "query",
    "findandmodify": "query",
    "aggregate": "pipeline",
}
#: Write commands whose statements each carry a filter ``q`` (the first one gives the shape).
_STATEMENT_FIELDS = {"update": "updates", "delete": "deletes"}
_SCALARS = frozenset((str, int, float, bool, type(None), bytes, ObjectId, datetime))


class DbActivity:
    """The database work of one request, as counted on the request thread.

    ``count`` commands took ``time_ms`` milliseconds in all; ``commands`` counts them by name;
    ``shapes`` counts them by (command, collection, shape); ``slowest`` is a heap of the
    :data:`SLOWEST_KEPT` slowest. The request's context adds to it, from one thread or from
    several at once (``asyncio.to_thread`` carries the context along), under a lock; the writer
    thread reads it once the request is finished (:meth:`to_document`).
    """

    __slots__ = ("commands", "count", "lock", "pending", "shapes", "slowest", "time_ms")

    def __init__(self) -> None:
        self.count = 0
        self.time_ms = 0.0
        self.commands: dict[str, int] = {}
        self.shapes: dict[tuple[str, str | None, str | None], int] = {}
        self.slowest: list[tuple[float, int, str, str | None, str | None]] = []
        self.pending: dict[Any, tuple[str, str | None, str | None]] = {}
        self.lock = threading.Lock()

    def add(self, name: str, collection: str | None, shape: str | None, ms: float) -> None:
        """Count one finished command."""
        key = (name, collection, shape)
        with self.lock:
            self.count += 1
            self.time_ms += ms
            commands = self.commands
            commands[name] = commands.get(name, 0) + 1
            shapes = self.shapes
            seen = shapes.get(key)
            if seen is not None:
                shapes[key] = seen + 1
            elif len(shapes) < MAX_SHAPES:
                shapes[key] = 1
            slowest = self.slowest
            if len(slowest) < SLOWEST_KEPT:
                heapq.heappush(slowest, (ms, self.count, name, collection, shape))
            elif ms > slowest[0][0]:
                heapq.heapreplace(slowest, (ms, self.count, name, collection, shape))

    def to_document(self, repeat_threshold: int) -> dict[str, Any] | None:
        """The stored ``db`` sub-document, or None when no command finished.

        ``repeated`` lists the shapes run ``repeat_threshold`` times or more. Reads copies of
        the counters, taken under the lock, so a command still being counted by another thread
        cannot break the conversion.
        """
        with self.lock:
            count, time_ms = self.count, self.time_ms
            commands = dict(self.commands)
            shapes = dict(self.shapes)
            slowest = sorted(self.slowest, reverse=True)
        if not count:
            return None
        repeated = sorted(
            (item for item in shapes.items() if item[1] >= repeat_threshold),
            key=lambda item: item[1],
            reverse=True,
        )[:MAX_REPEATED]
        return {
            "count": count,
            "time_ms": round(time_ms, 3),
            "commands": commands,
            "slowest": [
                {"command": name, "collection": collection, "ms": round(ms, 3), "shape": shape}
                for ms, _, name, collection, shape in slowest
            ],
            "repeated": [
                {"command": name, "collection": collection, "shape": shape, "count": times}
                for (name, collection, shape), times in repeated
            ],
        }


def _activity() -> DbActivity | None:
    """The activity of the request being served here, None when nothing is to be counted."""
    state = _CURRENT.get()
    if state is None or state is _UNCOUNTED or state.finished or state.skipped:
        return None
    activity: DbActivity | None = state.db
    if activity is None:
        with _CREATE_LOCK:  # threads sharing the request's context may start together
            activity = state.db
            if activity is None:
                activity = state.db = DbActivity()
    return activity


#: ``attach(state)``: attribute the database work of this context to ``state`` (a request state
#: with ``db``, ``finished`` and ``skipped`` attributes) until :func:`detach` of the token it
#: returns. The context variable's own ``set``: no Python call on the request path.
attach: Callable[[Any], Token[Any]] = _CURRENT.set


def detach(token: Token[Any]) -> None:
    """Undo :func:`attach`. From another context (a streamed response closed elsewhere) it
    does nothing: the finished request counts nothing more anyway."""
    try:  # noqa: SIM105 (on every request: a try costs nothing, suppress() an object)
        _CURRENT.reset(token)
    except (ValueError, RuntimeError):
        pass


@contextmanager
def uncounted() -> Iterator[None]:
    """Database work inside this block is counted for no request (the tracker's own I/O)."""
    token = _CURRENT.set(_UNCOUNTED)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def ignore_collection(database: str, collection: str) -> None:
    """Never count commands on ``database.collection`` (the tracker's own collections), from
    any thread."""
    with _REGISTER_LOCK:
        _IGNORED.setdefault(collection, set()).add(database)


def _is_ignored(database: str, collection: str | None) -> bool:
    if collection is None:
        return False
    databases = _IGNORED.get(collection)
    return databases is not None and database in databases


# --- shapes -------------------------------------------------------------------------------


def shape_of(value: Any) -> str:
    """The shape of a filter (or pipeline): keys and operators kept, every value ``"?"``, as
    compact JSON cut at :data:`MAX_SHAPE_CHARS` characters.

    A list of plain values (``$in``) is one ``"?"`` whatever its length; a list of documents
    (``$or``, a pipeline) keeps the shape of each document.
    """
    text = _shape_text(value, 0)
    return text if len(text) <= MAX_SHAPE_CHARS else text[: MAX_SHAPE_CHARS - 3] + "..."


_MARK = '"?"'


def _shape_text(value: Any, depth: int) -> str:
    """:func:`shape_of` without the cut: JSON built in one pass (this runs on the request
    thread for every command, so no intermediate document and no encoder)."""
    kind = type(value)
    if kind in _SCALARS:
        return _MARK
    if kind is dict or kind is SON or isinstance(value, Mapping):
        if depth >= MAX_SHAPE_DEPTH:
            return _MARK
        parts = []
        for key, item in value.items():
            quoted = _QUOTED_KEYS.get(key)
            if quoted is None:
                quoted = _quote_key(key)
            parts.append(
                quoted + (_MARK if type(item) in _SCALARS else _shape_text(item, depth + 1))
            )
        return "{" + ",".join(parts) + "}"
    if kind is list or kind is tuple:
        if depth >= MAX_SHAPE_DEPTH:
            return _MARK
        nested = [
            _shape_text(item, depth + 1)
            for item in value
            if type(item) not in _SCALARS and isinstance(item, (Mapping, list, tuple))
        ]
        return "[" + ",".join(nested) + "]" if nested else _MARK
    return _MARK


#: Keys as they appear in shapes (JSON-quoted, with the colon): keys repeat, quoting costs.
_QUOTED_KEYS: dict[Any, str] = {}
_MAX_QUOTED_KEYS = 4096


def _quote_key(key: Any) -> str:
    quoted = json.dumps(str(key), ensure_ascii=False) + ":"
    if len(_QUOTED_KEYS) >= _MAX_QUOTED_KEYS:
        _QUOTED_KEYS.clear()
    _QUOTED_KEYS[key] = quoted
    return quoted


def _command_target(name: str, command: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The collection a command works on and its shape (None for commands without a
    filter, such as ``insert`` or ``getMore``)."""
    collection = command.get(name)
    if not isinstance(collection, str):
        collection = command.get("collection") if name == "getMore" else None
        if not isinstance(collection, str):
            collection = None
    field = _FILTER_FIELDS.get(name)
    if field is not None:
        found = command.get(field)
        return collection, shape_of({} if found is None else found)
    statements_field = _STATEMENT_FIELDS.get(name)
    if statements_field is not None:
        statements = command.get(statements_field)
        if statements and isinstance(statements[0], Mapping):
            return collection, shape_of(statements[0].get("q") or {})
    return collection, None


# --- pymongo ------------------------------------------------------------------------------


class TrackingCommandListener(monitoring.CommandListener):
    """Counts each MongoDB command for the request being served (see the module docstring).

    Never raises: pymongo would log a listener's exception, but a broken tracker must not
    fill the app's logs either, so errors are logged here once per minute at most.
    """

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        activity = _activity()
        if activity is None:
            return
        try:
            pending = activity.pending
            key = event.request_id
            if key in pending or len(pending) >= MAX_PENDING:
                return  # the same listener registered twice (globally and on the client)
            name = event.command_name
            collection, shape = _command_target(name, event.command)
            if _is_ignored(event.database_name, collection):
                return
            pending[key] = (name, collection, shape)
        except Exception:
            _log_error()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event.request_id, event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event.request_id, event.duration_micros)

    def _finish(self, key: int, duration_micros: int) -> None:
        activity = _activity()
        if activity is None:
            return
        started = activity.pending.pop(key, None)
        if started is not None:
            try:
                activity.add(*started, duration_micros / 1000.0)
            except Exception:
                _log_error()


#: The one listener of the process (pass it to a client: ``event_listeners=[LISTENER]``).
LISTENER = TrackingCommandListener()

_REGISTER_LOCK = threading.Lock()
_registered = False


def register() -> None:
    """Register :data:`LISTENER` with pymongo for every client created from now on (once per
    process), and warn about MongoEngine connections made earlier, which it cannot reach."""
    global _registered
    with _REGISTER_LOCK:
        if not _registered:
            monitoring.register(LISTENER)
            _registered = True
    _warn_unobserved_clients()


_warned_aliases: set[str] = set()


def _warn_unobserved_clients() -> None:
    """Name, in one warning, the MongoEngine connections whose client cannot see the listener
    (each connection once per process)."""
    connections = getattr(sys.modules.get("mongoengine.connection"), "_connections", None)
    if not isinstance(connections, dict):
        return
    aliases = [
        alias
        for alias, client in list(connections.items())
        if alias not in _warned_aliases and _is_unobserved(client)
    ]
    if not aliases:
        return
    _warned_aliases.update(aliases)
    _log.warning(
        "flask_tracking: the MongoDB client of connection %s was created before "
        "Tracking.init_app, so its commands are not counted in the requests' database "
        "activity. Create it after init_app, or pass "
        "event_listeners=[flask_tracking.dbactivity.LISTENER] to it.",
        ", ".join(repr(alias) for alias in aliases),
    )


def _is_unobserved(client: Any) -> bool:
    """Whether ``client`` is a pymongo client that does not report to :data:`LISTENER`
    (False for anything else, such as a mongomock client, which runs no commands)."""
    if not isinstance(client, (MongoClient, AsyncMongoClient)):
        return False
    try:
        listeners: list[Any] = list(client.options.event_listeners)
        return LISTENER not in listeners
    except Exception:
        return False


_last_error_log = 0.0


def _log_error() -> None:
    global _last_error_log
    now = time.monotonic()
    if now - _last_error_log >= 60.0:
        _last_error_log = now
        _log.warning("flask_tracking: could not count a database command", exc_info=True)


# --- SQLAlchemy ---------------------------------------------------------------------------

_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
_NUMBER_LITERAL = re.compile(r"(?<![\w.$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_PLACEHOLDER = re.compile(r"%\(\w+\)s|:\w+|\$\d+|%s|\?")
_PLACEHOLDER_LIST = re.compile(r"\?(?:\s*,\s*\?)+")
_WHITESPACE = re.compile(r"\s+")
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+[\"`\[]?([\w.]+)", re.IGNORECASE)
_VERB = re.compile(r"\s*\(*\s*([A-Za-z]+)")
#: Statements whose (command, table, shape) are remembered, keyed by the hash of their text
#: (a string caches its hash): a statement of many rows (an INSERT of a batch of them, an
#: expanded IN list) is kept alive by nothing here. Python's string hash is keyed at random
#: per process (unless PYTHONHASHSEED is set): two statements share a key with a chance of
#: about 2**-64.
_SQL_SHAPES: dict[int, tuple[str, str | None, str]] = {}
_MAX_SQL_SHAPES = 1024
_SQL_STARTED = "_flask_tracking_started"


def sql_shape(statement: str) -> tuple[str, str | None, str]:
    """``(command, table, shape)`` of an SQL statement: the first keyword in lower case, the
    first table named after FROM/INTO/UPDATE/JOIN, and the statement with every literal and
    parameter placeholder made ``?`` (lists of them one ``?``), cut at
    :data:`MAX_SHAPE_CHARS`. Parameters are never part of it."""
    key = hash(statement)
    found = _SQL_SHAPES.get(key)
    if found is not None:
        return found
    verb = _VERB.match(statement)
    name = verb.group(1).lower() if verb else "sql"
    table = _TABLE.search(statement)
    text = _STRING_LITERAL.sub("?", _without_quoted_runs(statement))
    text = _PLACEHOLDER.sub("?", _NUMBER_LITERAL.sub("?", text))
    text = _PLACEHOLDER_LIST.sub("?", _WHITESPACE.sub(" ", text).strip())
    if len(text) > MAX_SHAPE_CHARS:
        text = text[: MAX_SHAPE_CHARS - 3] + "..."
    found = (name, table.group(1) if table else None, text)
    if len(_SQL_SHAPES) >= _MAX_SQL_SHAPES:
        _SQL_SHAPES.clear()
    _SQL_SHAPES[key] = found
    return found


def _without_quoted_runs(statement: str) -> str:
    """``statement`` with the literals the standard quote pattern cannot read made ``?``: a
    dollar-quoted string (``$$...$$``, ``$tag$...$tag$``: PostgreSQL), to its closing tag or
    the end; and, when a backslash is written between quotes (MySQL's ``'O\\'Brien'``,
    PostgreSQL's ``E'...'``, or a plain ``'C:\\'``: which it is depends on the server), all
    from the first quote to the last. Linear in the statement."""
    if "$" in statement:
        pieces, position = [], 0
        for opener in _DOLLAR_QUOTE.finditer(statement):
            if opener.start() < position:
                continue
            closing = statement.find(opener.group(), opener.end())
            pieces += [statement[position : opener.start()], "?"]
            position = len(statement) if closing < 0 else closing + len(opener.group())
        statement = "".join(pieces) + statement[position:] if pieces else statement
    first = statement.find("'")
    if first >= 0 and "\\" in statement[first:]:
        last = statement.rfind("'")
        statement = statement[:first] + "?" + statement[last + 1 :]
    return statement


_DOLLAR_QUOTE = re.compile(r"(?<![\w$])\$(?:[A-Za-z_]\w*)?\$")  # none inside an identifier (a$b$c)


def _before_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    if context is not None and _activity() is not None:
        setattr(context, _SQL_STARTED, time.perf_counter())


def _after_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    started = getattr(context, _SQL_STARTED, None)
    if started is None:
        return
    activity = _activity()
    if activity is None:
        return
    try:
        activity.add(*sql_shape(statement), (time.perf_counter() - started) * 1000.0)
    except Exception:
        _log_error()


_watching_sqlalchemy = False


def watch_sqlalchemy() -> bool:
    """Count the SQL statements of every SQLAlchemy engine when the app has imported
    SQLAlchemy (it is never imported here otherwise); True when watching."""
    global _watching_sqlalchemy
    if "sqlalchemy" not in sys.modules:
        return False
    with _REGISTER_LOCK:
        if not _watching_sqlalchemy:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
            event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
            _watching_sqlalchemy = True
    return True

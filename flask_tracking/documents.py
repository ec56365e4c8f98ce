"""MongoEngine documents used to *read* the tracking records.

The background writer inserts plain dicts with pymongo; this module only maps
them onto :class:`Tracking` so they can be queried, printed, inspected and
replayed.  Flask is imported lazily (only :meth:`Tracking.replay` needs it).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Generator, Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from bson import ObjectId
from mongoengine import (
    BinaryField,
    BooleanField,
    DateTimeField,
    DictField,
    DynamicField,
    EmbeddedDocumentField,
    FloatField,
    GenericReferenceField,
    IntField,
    ListField,
    Q,
    StringField,
)
from pymongo import CursorType
from pymongo.errors import ConnectionFailure

from flask_tracking._mongoengine import Document, EmbeddedDocument, QuerySet
from flask_tracking.redact import FILTERED

if TYPE_CHECKING:
    from typing_extensions import TypeGuard
    from werkzeug.test import TestResponse


__all__ = [
    "DatabaseActivity",
    "Tracking",
    "TrackingQuerySet",
    "UserAgent",
    "parse_datetime",
    "percentile",
    "percentile_index",
]

#: Control characters (C0, DEL, C1) and Unicode line/paragraph separators.
# Control characters, line and paragraph separators, and the bidirectional controls that
# can reorder what a terminal shows (Trojan Source).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
#: Headers never resent by :meth:`Tracking.replay` (the test client sets them).
# Stored bodies are decoded: a Content-Encoding would no longer describe them.
_REPLAY_SKIPPED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "content-encoding"}
)
_HEX_PREVIEW_BYTES = 32


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escape(value: object, keep: str = "") -> str:
    """Render ``value`` as text with control characters escaped.

    CR becomes the two characters ``\\r``, LF ``\\n``, TAB ``\\t`` and any other
    control character ``\\xNN``, so that untrusted values cannot forge log lines.
    Characters listed in ``keep`` are left untouched.
    """
    text = "" if value is None else str(value)
    return _CONTROL_RE.sub(lambda m: m.group() if m.group() in keep else _escape_char(m), text)


def _header_pairs(headers: Any) -> Iterator[tuple[str, str]]:
    """Yield ``(name, value)`` from a stored header list, skipping malformed entries."""
    for pair in headers or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            yield str(pair[0]), "" if pair[1] is None else str(pair[1])


def _find_header(headers: Any, name: str, default: str) -> str:
    wanted = name.lower()
    return next((v for k, v in _header_pairs(headers) if k.lower() == wanted), default)


def _decode(body: bytes | None) -> str | None:
    return None if body is None else bytes(body).decode("utf-8", errors="replace")


def _is_binary(body: bytes) -> bool:
    """True when ``body`` has NUL bytes or is not UTF-8 (a cut at the very end is fine)."""
    if b"\x00" in body:
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut_at_end = exc.reason == "unexpected end of data" and exc.start >= len(body) - 3
        return not cut_at_end
    return False


def _pretty_json(text: str, content_type: str) -> str | None:
    """Pretty-print ``text`` when it is JSON (declared, or looking like an object/array)."""
    looks_like_json = text.lstrip()[:1] in ("{", "[")
    if "json" not in content_type.lower() and not looks_like_json:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return None


def _body_lines(
    body: bytes | None,
    *,
    content_type: str,
    truncated: bool,
    omitted: str | None,
    size: int | None,
) -> list[str]:
    """Human-readable rendering of a stored request or response body."""
    if body is None:
        return [f"(body not recorded: {_escape(omitted)})" if omitted else "(no body)"]
    body = bytes(body)
    if not body:
        lines = ["(empty body)"]
    elif _is_binary(body):
        more = " ..." if len(body) > _HEX_PREVIEW_BYTES else ""
        preview = body[:_HEX_PREVIEW_BYTES].hex(" ")
        lines = [f"(binary, {len(body)} bytes) {preview}{more}"]
    else:
        text = (_decode(body) or "").replace("\r\n", "\n")
        lines = [_escape(_pretty_json(text, content_type) or text, keep="\n\t")]
    if truncated:
        lines.append(f"(truncated, {size} bytes in all)" if size is not None else "(truncated)")
    return lines


def _status_line(status: int | None) -> str:
    if status is None:
        return "-"
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status}"


def _replay_headers(stored: Any, overrides: Any) -> list[tuple[str, str]]:
    """Stored headers fit to resend, with ``overrides`` replacing same-named ones."""
    extra = list(overrides.items() if hasattr(overrides, "items") else overrides or ())
    replaced = {str(name).lower() for name, _ in extra} | _REPLAY_SKIPPED_HEADERS
    kept = [(k, v) for k, v in _header_pairs(stored) if k.lower() not in replaced]
    return [(k, v) for k, v in kept if v != FILTERED] + extra


class UserAgent(EmbeddedDocument):
    """The parsed ``User-Agent`` of a request.

    Fields (all strings or ``None``): ``browser``, ``version``, ``platform``,
    ``language``, ``device`` and ``string`` (the raw header).
    """

    browser = StringField()
    version = StringField()
    platform = StringField()
    language = StringField()
    device = StringField()
    string = StringField()

    meta: ClassVar[dict[str, Any]] = {"strict": False}

    def __str__(self) -> str:
        """Short form such as ``"Firefox 120.0 on Linux"``; the raw string as a fallback."""
        name = " ".join(part for part in (self.browser, self.version) if part)
        if self.platform:
            name = f"{name} on {self.platform}" if name else self.platform
        return _escape(name or self.string or "unknown")


class DatabaseActivity(EmbeddedDocument):
    """The database work of a request (the ``db`` field; absent when it ran no command).

    Fields: ``count`` (commands, and SQL statements when the app uses SQLAlchemy),
    ``time_ms`` (their total duration in ms), ``commands`` (command name -> count, such as
    ``{"find": 12}``), ``slowest`` (the few slowest, slowest first: ``command``,
    ``collection``, ``ms``, ``shape``) and ``repeated`` (``{"command", "collection", "shape",
    "count"}`` for every shape run TRACKING_DB_REPEAT_THRESHOLD times or more, most first).
    A shape is the filter with its keys and operators and every value replaced by ``"?"``.
    """

    count = IntField()
    time_ms = FloatField()
    commands = DictField()
    slowest = ListField(DictField())
    repeated = ListField(DictField())

    meta: ClassVar[dict[str, Any]] = {"strict": False}

    def __str__(self) -> str:
        """``"12 commands, 3.4 ms (find 12)"``."""
        names = ", ".join(f"{name} {count}" for name, count in (self.commands or {}).items())
        took = f"{self.time_ms:.1f} ms" if self.time_ms is not None else "-"
        text = f"{self.count or 0} commands, {took}"
        return _escape(f"{text} ({names})" if names else text)

    def lines(self) -> list[str]:
        """The slowest and the repeated commands, one line each (for :meth:`Tracking.debug`)."""
        lines = []
        for entry in self.slowest or []:
            if not isinstance(entry, dict):
                continue
            ms = entry.get("ms")
            took = f"{ms:.1f} ms" if _is_number(ms) else "-"
            lines.append(f"  slow: {took} {_command_label(entry)}")
        for entry in self.repeated or []:
            if isinstance(entry, dict):
                lines.append(f"  repeated {entry.get('count')}x: {_command_label(entry)}")
        return lines


def _command_label(entry: dict[str, Any]) -> str:
    """``find items {"sku":"?"}`` for a ``slowest`` or ``repeated`` entry."""
    parts = (entry.get("command"), entry.get("collection"), entry.get("shape"))
    return _escape(" ".join(str(part) for part in parts if part is not None))


#: Fields :meth:`TrackingQuerySet.stats` can group by.
STATS_GROUPS = ("endpoint", "path", "status_code", "user_id")
#: Buckets of :meth:`TrackingQuerySet.timeline`, as ``$dateToString`` (and ``strptime``) formats.
TIMELINE_BUCKETS = {"minute": "%Y-%m-%dT%H:%M", "hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d"}
#: User-agent fields :meth:`TrackingQuerySet.user_agents` can break the records down by.
USER_AGENT_FIELDS = ("browser", "platform", "device", "language")
#: The percentiles every report gives, by key, as fractions.
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
#: How far back :meth:`TrackingQuerySet.follow` looks again when polling, in seconds: records
#: from several workers do not arrive in ``_id`` order, and a batch may wait in a writer's queue.
POLL_OVERLAP_SECONDS = 10.0

# Aggregation expressions shared by the reports (operators of MongoDB 4.4 that mongomock also
# evaluates: $isNumber, $cond, $divide, $multiply, $floor, $arrayElemAt, $filter, $let, $size).
_VALID_SAMPLE_RATE = {
    "$and": [
        {"$isNumber": "$sample_rate"},
        {"$gt": ["$sample_rate", 0]},
        {"$lte": ["$sample_rate", 1]},
    ]
}
#: How many requests a stored record stands for: 1 / sample_rate when sampled, else 1.
_WEIGHT = {"$cond": [_VALID_SAMPLE_RATE, {"$divide": [1, "$sample_rate"]}, 1]}
#: A server error: status >= 500 or an exception (a string sorts above null; missing does not).
_IS_ERROR = {"$or": [{"$gte": ["$status_code", 500]}, {"$gt": ["$exception", None]}]}


def _number_or_zero(field: str) -> dict[str, Any]:
    return {"$cond": [{"$isNumber": f"${field}"}, f"${field}", 0]}


#: One row per record: its execution time, weight, error flag and body sizes.
_MEASURES = {
    "t": "$execution_time",
    "w": _WEIGHT,
    "e": {"$cond": [_IS_ERROR, 1, 0]},
    "bi": _number_or_zero("request_body_size"),
    "bo": _number_or_zero("response_body_size"),
}
#: Per group; ``times`` keeps the order of the preceding ``$sort`` on ``t``.
_ACCUMULATORS = {
    "count": {"$sum": "$w"},
    "errors": {"$sum": {"$multiply": ["$e", "$w"]}},
    "times": {"$push": "$t"},
    "weighted_time": {"$sum": {"$cond": [{"$isNumber": "$t"}, {"$multiply": ["$t", "$w"]}, 0]}},
    "timed_weight": {"$sum": {"$cond": [{"$isNumber": "$t"}, "$w", 0]}},
    "max": {"$max": "$t"},
    "bytes_in": {"$sum": {"$multiply": ["$bi", "$w"]}},
    "bytes_out": {"$sum": {"$multiply": ["$bo", "$w"]}},
}
_SUMMARY_FIELDS = ("count", "errors", "error_rate", "mean", "max", "bytes_in", "bytes_out")


def _percentile_expression(fraction: float) -> dict[str, Any]:
    """``times[floor(fraction * (size - 1))]``, or null for no times: :func:`percentile_index`."""
    position = {"$floor": {"$multiply": [fraction, {"$subtract": ["$$n", 1]}]}}
    return {
        "$let": {
            "vars": {"n": {"$size": "$times"}},
            "in": {"$cond": [{"$eq": ["$$n", 0]}, None, {"$arrayElemAt": ["$times", position]}]},
        }
    }


def _summary_stages(key: Any) -> list[dict[str, Any]]:
    """Pipeline stages grouping the matched records by ``key`` into one summary each."""
    return [
        {"$project": {"_id": 0, "key": key, **_MEASURES}},
        {"$sort": {"t": 1}},
        {"$group": {"_id": "$key", **_ACCUMULATORS}},
        {
            "$project": {
                "count": 1,
                "errors": 1,
                "max": 1,
                "bytes_in": 1,
                "bytes_out": 1,
                "error_rate": {
                    "$cond": [{"$gt": ["$count", 0]}, {"$divide": ["$errors", "$count"]}, 0]
                },
                "mean": {
                    "$cond": [
                        {"$gt": ["$timed_weight", 0]},
                        {"$divide": ["$weighted_time", "$timed_weight"]},
                        None,
                    ]
                },
                "times": {"$filter": {"input": "$times", "as": "v", "cond": {"$isNumber": "$$v"}}},
            }
        },
        {
            "$project": {
                **dict.fromkeys(_SUMMARY_FIELDS, 1),
                **{key: _percentile_expression(p) for key, p in PERCENTILES.items()},
            }
        },
    ]


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A pipeline summary row as returned to callers: estimated counts rounded to integers."""
    summary: dict[str, Any] = {
        "count": round(row["count"]),
        "errors": round(row["errors"]),
        "error_rate": row["error_rate"],
        "mean": row.get("mean"),
    }
    summary.update((key, row.get(key)) for key in PERCENTILES)
    summary["max"] = row.get("max")
    summary["bytes_in"] = round(row["bytes_in"])
    summary["bytes_out"] = round(row["bytes_out"])
    return summary


def percentile_index(fraction: float, count: int) -> int:
    """Position of the ``fraction`` percentile (0 to 1) among ``count`` sorted values.

    ``floor(fraction * (count - 1))``: the lower of the two values linear interpolation would
    blend (NumPy's ``method="lower"``), so a percentile is always a recorded value. The reports
    compute the same position in MongoDB with ``$floor``, ``$multiply`` and ``$arrayElemAt``.
    """
    return math.floor(fraction * (count - 1))


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ascending ``sorted_values`` (see :func:`percentile_index`);
    None when there are no values."""
    if not sorted_values:
        return None
    return sorted_values[percentile_index(fraction, len(sorted_values))]


def parse_datetime(value: datetime | date | str) -> datetime:
    """A naive UTC datetime (the way records store dates) from a datetime, a date or a string.

    Strings are ISO 8601 with a space or ``T``: ``"2024-05-01"``, ``"2024-05-01 10:00"``,
    ``"2024-05-01T10:00:00.250Z"``, ``"2024-05-01T12:00+02:00"``. Naive values are taken as UTC,
    aware ones are converted. Raises :class:`ValueError` with a sentence for anything else.
    """
    result: datetime
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, date):
        result = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            result = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a date. Give a date and time such as '2024-05-01 10:00' or "
                "ISO 8601 such as '2024-05-01T10:00:00Z' (UTC unless an offset is given)."
            ) from None
    else:
        raise ValueError(f"{value!r} is not a date: pass a datetime, a date or a string.")
    if result.tzinfo is not None:
        result = result.astimezone(timezone.utc).replace(tzinfo=None)
    return result


def _path_regex(pattern: str | re.Pattern[str]) -> str:
    """The MongoDB regex for :meth:`TrackingQuerySet.for_path`: ``pattern`` anchored at the start.

    Without a ``|`` the anchor is a bare ``^``, so a plain path stays a "simple prefix" regex
    that MongoDB answers from the ``path`` index.
    """
    source = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    try:
        re.compile(source)
    except re.error as error:
        raise ValueError(f"{source!r} is not a valid regular expression: {error}.") from None
    return f"^{source}" if "|" not in source else f"^(?:{source})"


_DATA_OPERATORS = frozenset({"ne", "lt", "lte", "gt", "gte", "in", "nin", "exists"})


def _custom_data_query(key: str, value: Any) -> dict[str, Any]:
    """``cart__items__gte=3`` -> ``{"custom_data.cart.items": {"$gte": 3}}``."""
    parts = key.split("__")
    if len(parts) > 1 and parts[-1] in _DATA_OPERATORS:
        operator = parts.pop()
        value = {f"${operator}": list(value) if operator in ("in", "nin") else value}
    return {".".join(["custom_data", *parts]): value}


def _user_id_of(user_or_id: Any) -> str | None:
    """The ``user_id`` stored for a user object (``get_id()``, else ``pk``) or an id."""
    if user_or_id is None:
        return None
    if callable(getattr(user_or_id, "get_id", None)):
        user_or_id = user_or_id.get_id()
    elif hasattr(user_or_id, "pk"):
        user_or_id = user_or_id.pk
    return None if user_or_id is None else str(user_or_id)


def _is_capped(collection: Any) -> bool:
    """Whether ``collection`` is capped, i.e. can be followed with a tailable cursor.

    False when the server cannot say (mongomock has no ``options()``; a user without the
    ``listCollections`` privilege); network errors propagate.
    """
    try:
        options = collection.options()
    except ConnectionFailure:
        raise
    except Exception:
        return False
    return isinstance(options, dict) and bool(options.get("capped"))


def _and(query: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {"$and": [query, extra]} if query else extra


def _wait(seconds: float, deadline: float | None) -> None:
    """Sleep ``seconds``, or until ``deadline`` (``time.monotonic()``) if that comes first."""
    if deadline is not None:
        seconds = min(seconds, deadline - time.monotonic())
    if seconds > 0:
        time.sleep(seconds)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _tail(
    collection: Any, query: dict[str, Any], interval: float, deadline: float | None
) -> Iterator[dict[str, Any]]:
    """Raw records stored after the call, through a tailable (awaiting) cursor."""
    # The newest id, as the filter below compares ids (not the storage order, which not every
    # server reports newest first).
    newest = list(collection.find({}, {"_id": 1}).sort("_id", -1).limit(1))
    last = newest[0]["_id"] if newest else None
    while not _expired(deadline):
        criteria = query if last is None else _and(query, {"_id": {"$gt": last}})
        cursor = collection.find(criteria, cursor_type=CursorType.TAILABLE_AWAIT)
        cursor.max_await_time_ms(max(1, int(interval * 1000)))
        try:
            while cursor.alive and not _expired(deadline):
                for document in cursor:  # ends after max_await_time_ms without a new record
                    last = document["_id"]
                    yield document
                    if _expired(deadline):
                        return
        finally:
            cursor.close()
        # A dead cursor: the collection was empty, or the cursor fell behind the eviction.
        _wait(interval, deadline)


def _poll(
    collection: Any, query: dict[str, Any], interval: float, deadline: float | None
) -> Iterator[dict[str, Any]]:
    """Raw records stored after the call, by polling (for collections that are not capped).

    Each poll reads the ids of the last :data:`POLL_OVERLAP_SECONDS` (by ``_id`` time) and
    fetches the ones not seen yet, so records that reach the database out of ``_id`` order
    (several workers, batches waiting in a queue) are not missed.
    """
    overlap = timedelta(seconds=POLL_OVERLAP_SECONDS)
    newest = list(collection.find(query, {"_id": 1}).sort("_id", -1).limit(1))
    floor = newest[0]["_id"].generation_time if newest else None
    seen: dict[ObjectId, None] = {}

    def window_ids() -> list[ObjectId]:
        criteria = query
        if floor is not None:
            criteria = _and(query, {"_id": {"$gte": ObjectId.from_datetime(floor - overlap)}})
        return [row["_id"] for row in collection.find(criteria, {"_id": 1}).sort("_id", 1)]

    if floor is not None:
        seen.update(dict.fromkeys(window_ids()))
    while True:
        fresh = [oid for oid in window_ids() if oid not in seen]
        if fresh:
            for document in collection.find({"_id": {"$in": fresh}}).sort("_id", 1):
                seen[document["_id"]] = None
                yield document
                if _expired(deadline):
                    return
            floor = max(fresh[-1].generation_time, floor or fresh[-1].generation_time)
            cutoff = floor - overlap
            seen = {oid: None for oid in seen if oid.generation_time >= cutoff}
        if _expired(deadline):
            return
        _wait(interval, deadline)


class TrackingQuerySet(QuerySet):
    """QuerySet of :class:`Tracking` records, with helpers for the usual questions.

    Every filter helper returns a new QuerySet, so helpers chain with each other and with
    ``filter()``: ``Tracking.objects.last(hours=1).for_path("/api/").errors()``. Results come
    newest first (``-date_created``, the document's default ordering) unless you call
    ``order_by``; ``order_by()`` without fields gives storage order (oldest first in a capped
    collection).

    The reports (:meth:`stats`, :meth:`timeline`, :meth:`unique_visitors`,
    :meth:`user_agents`) run one aggregation pipeline over the records the QuerySet selects.
    Records carrying a ``sample_rate`` (in ``(0, 1]``) count for ``1 / sample_rate`` requests
    in counts, errors, byte totals and means; percentiles and maxima are over the records kept.
    These are statistics of the records still stored: sampling, the outcome rules and the
    capped collection's eviction leave requests out. The count of every request is in the
    rollups (:class:`flask_tracking.rollups.Rollup`).
    """

    # --- filters -------------------------------------------------------------------------

    def slow(self, min_ms: float) -> TrackingQuerySet:
        """Requests that took at least ``min_ms`` milliseconds in the app."""
        return self.filter(execution_time__gte=min_ms)

    def errors(self) -> TrackingQuerySet:
        """Server errors: status 500 or above, or the view raised (``exception`` is set)."""
        return self.filter(Q(status_code__gte=500) | Q(exception__ne=None))

    def client_errors(self) -> TrackingQuerySet:
        """Client errors: status 400 to 499."""
        return self.filter(status_code__gte=400, status_code__lt=500)

    def between(
        self, start: datetime | date | str | None = None, end: datetime | date | str | None = None
    ) -> TrackingQuerySet:
        """Requests from ``start`` (included) until ``end`` (excluded); either may be None.

        Datetimes, dates or strings such as ``"2024-05-01 10:00"`` (see :func:`parse_datetime`;
        naive means UTC). Raises :class:`ValueError` for a string that is not a date, or when
        ``start`` is after ``end``.
        """
        first = None if start is None else parse_datetime(start)
        stop = None if end is None else parse_datetime(end)
        if first is not None and stop is not None and first > stop:
            raise ValueError(f"The start ({start}) is after the end ({end}).")
        criteria = {"date_created__gte": first, "date_created__lt": stop}
        return self.filter(**{key: value for key, value in criteria.items() if value is not None})

    def last(self, *, minutes: float = 0, hours: float = 0, days: float = 0) -> TrackingQuerySet:
        """Requests of the last ``minutes`` + ``hours`` + ``days`` (by this machine's clock)."""
        window = timedelta(minutes=minutes, hours=hours, days=days)
        if window <= timedelta(0):
            raise ValueError("last() needs a positive duration, such as last(minutes=15).")
        since = datetime.now(timezone.utc).replace(tzinfo=None) - window
        return self.filter(date_created__gte=since)

    def for_path(self, pattern: str | re.Pattern[str], *, exact: bool = False) -> TrackingQuerySet:
        """Requests whose path matches the regular expression ``pattern`` **at its start**.

        Like Python's ``re.match``: ``for_path("/api/")`` is every path under ``/api/``,
        ``for_path(r"/users/\\d+$")`` a user page exactly, ``for_path("/a|/b")`` both prefixes.
        A plain path is therefore a prefix; pass ``exact=True`` to compare literally (or
        ``re.escape`` special characters). Raises :class:`ValueError` for an invalid regex.
        """
        if exact:
            return self.filter(path=pattern)
        return self.filter(__raw__={"path": {"$regex": _path_regex(pattern)}})

    def for_endpoint(self, name: str) -> TrackingQuerySet:
        """Requests served by the Flask endpoint ``name`` (such as ``"users.show"``)."""
        return self.filter(endpoint=name)

    def for_user(self, user_or_id: Any) -> TrackingQuerySet:
        """Requests of one user: a user object (its ``get_id()``, else its ``pk``) or an id.

        Matches the stored ``user_id`` (a string); ``None`` selects anonymous requests.
        """
        return self.filter(user_id=_user_id_of(user_or_id))

    def for_ip(self, ip: str) -> TrackingQuerySet:
        """Requests from the client address ``ip`` (exactly as stored)."""
        return self.filter(ip=ip)

    def with_data(self, **custom_data_filters: Any) -> TrackingQuerySet:
        """Requests whose custom data matches every filter, MongoEngine style.

        ``with_data(order=42)`` selects ``custom_data.order == 42``; ``__`` goes one level down
        (``cart__items=3``) and a last part naming an operator compares
        (``total__gte=100``; operators: ne, lt, lte, gt, gte, in, nin, exists).
        """
        return (
            self.filter(
                __raw__={
                    "$and": [
                        _custom_data_query(key, value) for key, value in custom_data_filters.items()
                    ]
                }
            )
            if custom_data_filters
            else self.clone()
        )

    def db_heavy(self, min_commands: int = 10, min_ms: float | None = None) -> TrackingQuerySet:
        """Requests that ran at least ``min_commands`` database commands or, when ``min_ms``
        is given, spent at least ``min_ms`` milliseconds in the database."""
        heavy = Q(db__count__gte=min_commands)
        if min_ms is not None:
            heavy |= Q(db__time_ms__gte=min_ms)
        return self.filter(heavy)

    def repeated_queries(self) -> TrackingQuerySet:
        """Requests that ran one query shape TRACKING_DB_REPEAT_THRESHOLD times or more (the
        N+1 pattern): their ``db.repeated`` is not empty."""
        return self.filter(__raw__={"db.repeated.0": {"$exists": True}})

    # --- reports -------------------------------------------------------------------------

    def stats(self, group_by: str = "endpoint") -> list[dict[str, Any]]:
        """Per ``group_by`` value (endpoint, path, status_code or user_id), most requests first.

        Each row: the group value under the ``group_by`` key, ``count``, ``errors`` (see
        :meth:`errors`), ``error_rate`` (0 to 1), ``mean``, ``p50``, ``p95``, ``p99`` and
        ``max`` execution time in ms (None when no record of the group has one), and
        ``bytes_in`` / ``bytes_out`` (sums of the request and response body sizes).
        Percentiles follow :func:`percentile`. Computed by one aggregation pipeline
        ($project, $sort, $group with $push, $arrayElemAt) that MongoDB 4.4 accepts.
        """
        _check_choice("group_by", group_by, STATS_GROUPS)
        pipeline = [*_summary_stages(f"${group_by}"), {"$sort": {"count": -1, "_id": 1}}]
        return [{group_by: row["_id"], **_summary(row)} for row in self._aggregate(pipeline)]

    def timeline(self, bucket: str = "hour") -> list[dict[str, Any]]:
        """One row per ``bucket`` ("minute", "hour" or "day", UTC) that has records, oldest first.

        Each row: ``start`` (naive UTC datetime of the bucket) and the fields of :meth:`stats`
        (count, errors, error_rate, mean, p50, p95, p99, max, bytes_in, bytes_out). Buckets
        come from ``$dateToString``; records without a date are left out.
        """
        _check_choice("bucket", bucket, TIMELINE_BUCKETS)
        layout = TIMELINE_BUCKETS[bucket]
        key = {"$dateToString": {"format": layout, "date": "$date_created"}}
        pipeline = [
            {"$match": {"date_created": {"$type": "date"}}},
            *_summary_stages(key),
            {"$sort": {"_id": 1}},
        ]
        return [
            {"start": datetime.strptime(row["_id"], layout), **_summary(row)}
            for row in self._aggregate(pipeline)
        ]

    def unique_visitors(self) -> dict[str, int]:
        """Distinct client addresses and distinct users among the selected records:
        ``{"ips": n, "users": n}`` (records without an ip or a user_id are not counted)."""

        def distinct(field: str) -> list[dict[str, Any]]:
            return [
                {"$match": {field: {"$ne": None}}},
                {"$group": {"_id": f"${field}"}},
                {"$count": "n"},
            ]

        facets = {"ips": distinct("ip"), "users": distinct("user_id")}
        rows = list(self._aggregate([{"$facet": facets}]))
        counts = rows[0] if rows else {}
        return {key: counts[key][0]["n"] if counts.get(key) else 0 for key in facets}

    def user_agents(self, by: str = "browser") -> list[dict[str, Any]]:
        """How many requests came from each browser (or platform, device, language), most first.

        Rows: ``{by: name or None, "count": n, "share": fraction of all selected requests}``.
        """
        _check_choice("by", by, USER_AGENT_FIELDS)
        pipeline: list[dict[str, Any]] = [
            {"$group": {"_id": f"$user_agent.{by}", "count": {"$sum": _WEIGHT}}},
            {"$sort": {"count": -1, "_id": 1}},
        ]
        return _user_agent_rows(list(self._aggregate(pipeline)), by)

    def execution_times(self) -> list[float]:
        """The execution times (ms) of the selected records, ascending, as floats: those that
        are finite numbers (for :func:`percentile` over a whole selection, or a histogram)."""
        return _finite_sorted(self._report_order().no_cache().scalar("execution_time"))

    def db_summary(self) -> dict[str, Any]:
        """The database work of the selected requests, in one dict.

        ``requests``; ``with_db`` (requests that ran a command); ``commands`` and ``time_ms``
        (their totals); ``app_time_ms`` (total execution time); ``share``: the part of the
        execution time spent in the database (0 to 1, None without execution time);
        ``mean_commands`` and ``mean_time_ms`` per request (None without requests). Sampled
        records count for ``1 / sample_rate`` requests, as in :meth:`stats`. One aggregation
        pipeline ($project, $group) that MongoDB 4.4 and mongomock accept.
        """
        pipeline: list[dict[str, Any]] = [
            {"$project": {"_id": 0, **_DB_MEASURES}},
            {"$group": _DB_TOTALS},
        ]
        rows = list(self._aggregate(pipeline))
        return _db_summary(rows[0] if rows else {})

    def _report_order(self) -> TrackingQuerySet:
        """This QuerySet without ordering when it is not sliced (a whole selection needs no
        sort), else with its ordering or the default one: the records a report covers."""
        if self._limit is None and self._skip is None:
            return self.order_by()
        if self._ordering is None:
            return self.order_by(*self._document._meta["ordering"])
        return self

    def _aggregate(self, pipeline: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Run ``pipeline`` after this QuerySet's ``$match`` (and its skip/limit, if any).

        ``allowDiskUse`` lets the $sort and $group of a large window spill past 100 MB.
        """
        rows: Iterator[dict[str, Any]] = self._report_order().aggregate(pipeline, allowDiskUse=True)
        return rows

    # --- live ----------------------------------------------------------------------------

    def poll(
        self,
        after: ObjectId | None = None,
        *,
        limit: int = 100,
        settle: float = POLL_OVERLAP_SECONDS,
    ) -> tuple[list[Tracking], ObjectId]:
        """One round of a view that asks for new records again and again (the dashboard's
        live view): ``(records, cursor)``, the records oldest first (by ``_id``).

        Without ``after``: the newest ``limit`` records. With ``after``, the cursor the previous
        call returned: the records with an ``_id`` above it, at most ``limit``. Records reach
        the database out of ``_id`` order (several workers, batches waiting in a writer's
        queue), so the cursor never passes the last ``settle`` seconds (by ``_id`` time and
        this machine's clock): the records of those seconds come again in the next rounds
        (drop the ids already shown), and one stored late is still found. Only a record stored
        more than ``settle`` seconds after its ``_id`` was made can be missed. The first
        round's cursor starts at its oldest record when there were more than ``limit``.
        """
        settled = ObjectId.from_datetime(datetime.now(timezone.utc) - timedelta(seconds=settle))
        if after is None:
            found = list(self.order_by("-id").limit(limit))[::-1]
            full = len(found) == limit and limit > 0
            start = found[0].pk if full else None
            return found, max(settled, start) if start is not None else settled
        found = list(self.filter(id__gt=after).order_by("id").limit(limit))
        if found and len(found) == limit and found[-1].pk <= settled:
            return found, found[-1].pk  # more records before the settled point: go on there
        return found, max(after, settled)

    def follow(
        self, *, interval: float = 1.0, timeout: float | None = None
    ) -> Generator[Tracking, None, None]:
        """Yield the selected records stored from now on, in storage order (like ``tail -f``).

        On a capped collection a tailable cursor waits up to ``interval`` seconds for each new
        batch; elsewhere (the ``ttl`` and ``timeseries`` storage modes, mongomock) the
        collection is polled every ``interval`` seconds. Stops after ``timeout`` seconds if
        given; otherwise runs until the caller stops iterating.
        """
        if self._none or self._empty:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        collection = self._collection
        follow = _tail if _is_capped(collection) else _poll
        for document in follow(collection, self._query, interval, deadline):
            yield self._document._from_son(document)


#: Per record: weight, database commands and time, execution time (0 when not a number).
_DB_MEASURES = {
    "w": _WEIGHT,
    "n": _number_or_zero("db.count"),
    "d": _number_or_zero("db.time_ms"),
    "t": _number_or_zero("execution_time"),
}
_DB_TOTALS = {
    "_id": None,
    "requests": {"$sum": "$w"},
    "with_db": {"$sum": {"$cond": [{"$gt": ["$n", 0]}, "$w", 0]}},
    "commands": {"$sum": {"$multiply": ["$n", "$w"]}},
    "time_ms": {"$sum": {"$multiply": ["$d", "$w"]}},
    "app_time_ms": {"$sum": {"$multiply": ["$t", "$w"]}},
}


def _db_summary(totals: dict[str, Any]) -> dict[str, Any]:
    """The :meth:`TrackingQuerySet.db_summary` of the ``_DB_TOTALS`` row (``{}``: none)."""
    requests = round(totals.get("requests", 0))
    commands = round(totals.get("commands", 0))
    time_ms = float(totals.get("time_ms", 0))
    app_time_ms = float(totals.get("app_time_ms", 0))
    return {
        "requests": requests,
        "with_db": round(totals.get("with_db", 0)),
        "commands": commands,
        "time_ms": time_ms,
        "app_time_ms": app_time_ms,
        "share": time_ms / app_time_ms if app_time_ms > 0 else None,
        "mean_commands": commands / requests if requests else None,
        "mean_time_ms": time_ms / requests if requests else None,
    }


def _check_choice(name: str, value: str, choices: Sequence[str] | dict[str, str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}.")


def _user_agent_rows(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """``{"_id": value, "count": weight}`` rows (most first) as ``user_agents`` returns them."""
    total = sum(row["count"] for row in rows)
    return [
        {by: row["_id"], "count": round(row["count"]), "share": row["count"] / total}
        for row in rows
    ]


def _is_number(value: Any) -> TypeGuard[int | float]:
    """``$isNumber``: an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_sorted(values: Iterator[Any] | list[Any]) -> list[float]:
    return sorted(value for value in values if _is_number(value) and math.isfinite(value))


class Tracking(Document):
    """One recorded HTTP request/response, as stored in the ``tracking`` collection.

    This document is for *reading* only: records are inserted as plain dicts by
    the background writer with pymongo (into the collection it creates), so
    nothing here validates or saves them.  Records may be partial, so every
    field may be missing/``None`` and every helper copes with that.

    Fields:

    - ``date_created``: when the request started (UTC).
    - ``host``, ``scheme``, ``method``, ``path``: the request target;
      ``query_params`` is the decoded query string without ``?`` (``""`` if none).
    - ``ip``: ``REMOTE_ADDR``; ``endpoint`` and ``url_rule``: the matched Flask
      endpoint and rule; ``referrer``: the ``Referer`` header.
    - ``user``: generic reference to the Flask-Login user when it is a
      MongoEngine document; ``user_id``: ``current_user.get_id()``.
    - ``user_agent``: the parsed user agent (:class:`UserAgent`).
    - ``request_headers`` / ``response_headers``: ``[name, value]`` pairs in
      order (secrets stored as ``FILTERED``).
    - ``request_body`` / ``response_body``: the first bytes of each body;
      ``*_body_size`` the total size in bytes; ``*_body_truncated`` whether only
      a prefix was kept; ``*_body_omitted`` why no body was kept.
    - ``status_code``; ``execution_time``: ms until the app returned its
      response; ``total_time``: ms until the body was fully sent.
    - ``hostname``: the worker host; ``custom_data``: any BSON value set by the
      app; ``exception``: ``"Type: message"`` when the view raised.
    - ``request_id``: the request's id; ``sample_rate``: the probability with which the
      record was kept (in ``(0, 1]``; 1.0 when every request is kept, missing in older
      records), by which the reports of :class:`TrackingQuerySet` scale their counts.
    - ``db``: the database work of the request (:class:`DatabaseActivity`), absent when it
      ran no command.

    Meta: ``collection`` is ``"tracking"``; ``auto_create_index`` is off (the
    writer owns the collection); ``queryset_class`` is :class:`TrackingQuerySet`;
    ``strict`` is off so records carrying fields added later still load.  There
    is deliberately no ``max_size``/``max_documents``: the writer creates the
    collection itself, as TRACKING_STORAGE says (``flask_tracking.storage``).

    To read through a connection other than ``"default"`` use
    ``Tracking.objects.using(alias)`` or
    ``with mongoengine.context_managers.switch_db(Tracking, alias) as T: ...``.
    """

    date_created = DateTimeField()
    host = StringField()
    scheme = StringField()
    method = StringField()
    path = StringField()
    query_params = StringField()
    ip = StringField()
    endpoint = StringField()
    url_rule = StringField()
    referrer = StringField()
    user = GenericReferenceField()
    user_id = StringField()
    user_agent = EmbeddedDocumentField(UserAgent)
    request_headers = ListField(ListField(StringField()))
    request_body = BinaryField()
    request_body_size = IntField()
    request_body_truncated = BooleanField(default=False)
    request_body_omitted = StringField()
    response_headers = ListField(ListField(StringField()))
    response_body = BinaryField()
    response_body_size = IntField()
    response_body_truncated = BooleanField(default=False)
    response_body_omitted = StringField()
    status_code = IntField()
    execution_time = FloatField()
    total_time = FloatField()
    hostname = StringField()
    custom_data = DynamicField()
    exception = StringField()
    request_id = StringField()
    sample_rate = FloatField()
    db = EmbeddedDocumentField(DatabaseActivity)

    if TYPE_CHECKING:
        #: Set by MongoEngine's metaclass: a :class:`TrackingQuerySet` over the collection.
        objects: ClassVar[TrackingQuerySet]

    meta: ClassVar[dict[str, Any]] = {
        "collection": "tracking",
        "auto_create_index": False,
        "queryset_class": TrackingQuerySet,
        "ordering": ["-date_created"],
        "strict": False,
    }

    def __str__(self) -> str:
        """One log line: ``"<date> <METHOD> <user id or -> <path>[?query] <status> <ms>ms"``."""
        date = self.date_created.isoformat(timespec="seconds") if self.date_created else "-"
        took = f"{self.execution_time:.1f}ms" if self.execution_time is not None else "-"
        status = self.status_code if self.status_code is not None else "-"
        parts = (date, self.method or "-", self.user_id or "-", self._target(), status, took)
        return " ".join(_escape(part) for part in parts)

    def _target(self) -> str:
        """``path[?query]`` (unescaped)."""
        path = self.path or "/"
        return f"{path}?{self.query_params}" if self.query_params else path

    def get_header(self, name: str, default: str = "") -> str:
        """Value of the first request header called ``name`` (case-insensitive)."""
        return _find_header(self.request_headers, name, default)

    def get_response_header(self, name: str, default: str = "") -> str:
        """Value of the first response header called ``name`` (case-insensitive)."""
        return _find_header(self.response_headers, name, default)

    def resendable_headers(self) -> list[tuple[str, str]]:
        """The request headers :meth:`replay` resends: all but the ``FILTERED`` ones and
        ``Host``, ``Content-Length``, ``Transfer-Encoding`` and ``Content-Encoding`` (a stored
        body is decoded)."""
        return _replay_headers(self.request_headers, None)

    def filtered_header_names(self) -> list[str]:
        """Names of the request headers stored as ``FILTERED`` (in order, once each)."""
        names = (name for name, value in _header_pairs(self.request_headers) if value == FILTERED)
        return list(dict.fromkeys(names))

    def request_body_text(self) -> str | None:
        """The stored request body decoded as UTF-8 (with replacement), or ``None``."""
        return _decode(self.request_body)

    def response_body_text(self) -> str | None:
        """The stored response body decoded as UTF-8 (with replacement), or ``None``."""
        return _decode(self.response_body)

    def debug(self) -> str:
        """Multi-line dump of the request, the response and the context, for humans.

        Values coming from the request (path, query, headers, bodies...) have
        their control characters escaped; only the layout's own newlines (and
        newlines inside bodies) are real ones.
        """
        origin = f"{self.scheme or 'http'}://{self.host}" if self.host else ""
        request_line = f"{self.method or '-'} {origin}{self._target()}"
        return "\n".join(
            [
                *self._message_lines("request", request_line),
                "",
                *self._message_lines("response", _status_line(self.status_code)),
                "",
                *self._context_lines(),
            ]
        )

    def _message_lines(self, prefix: str, first_line: str) -> list[str]:
        """First line, headers, blank line and body of the request or the response."""
        headers = getattr(self, f"{prefix}_headers")
        body = _body_lines(
            getattr(self, f"{prefix}_body"),
            content_type=_find_header(headers, "content-type", ""),
            truncated=bool(getattr(self, f"{prefix}_body_truncated")),
            omitted=getattr(self, f"{prefix}_body_omitted"),
            size=getattr(self, f"{prefix}_body_size"),
        )
        header_lines = [f"{_escape(k)}: {_escape(v)}" for k, v in _header_pairs(headers)]
        return [_escape(first_line), *header_lines, "", *body]

    def _context_lines(self) -> list[str]:
        """Date, request id, client, endpoint, user, timing, exception and custom data."""
        fields = [
            ("Date", self.date_created.isoformat() if self.date_created else None),
            ("Request id", self.request_id),
            ("Client IP", self.ip),
            ("Endpoint", f"{self.endpoint} ({self.url_rule})" if self.endpoint else None),
            ("Worker", self.hostname),
            ("User", self._user_label()),
            ("Timing", self._timing_label()),
            ("Exception", self.exception),
        ]
        lines = [f"{label}: {_escape(value)}" for label, value in fields if value]
        if self.db is not None:
            lines += [f"Database: {self.db}", *self.db.lines()]
        if self.custom_data is not None:
            dumped = json.dumps(self.custom_data, indent=2, default=str, ensure_ascii=False)
            lines.append("Custom data: " + _escape(dumped, keep="\n"))
        return lines

    def _user_label(self) -> str | None:
        """User id plus the stored reference, read raw so printing never dereferences."""
        ref = self._data.get("user")
        if isinstance(ref, dict) and "_ref" in ref:
            ref = f"{ref.get('_cls')} {getattr(ref['_ref'], 'id', ref['_ref'])}"
        elif isinstance(ref, Document):
            ref = f"{ref._class_name} {ref.pk}"
        parts = [part for part in (self.user_id, f"({ref})" if ref else None) if part]
        return " ".join(parts) or None

    def _timing_label(self) -> str | None:
        timings = ((self.execution_time, "in the app"), (self.total_time, "in all"))
        parts = [f"{ms:.1f} ms {label}" for ms, label in timings if ms is not None]
        return ", ".join(parts) or None

    def replay(self, *, allow_truncated: bool = False, **kwargs: Any) -> TestResponse:
        """Re-issue this request through ``flask.current_app.test_client()``.

        Headers stored as ``FILTERED`` are never resent, nor ``Host``,
        ``Content-Length`` and ``Transfer-Encoding``.  The environ gets
        ``flask_tracking.skip = True`` so the replay itself is not tracked.
        ``kwargs`` override or extend the arguments of ``client.open``;
        ``headers`` and ``environ_overrides`` are merged into the stored ones.

        Raises ``ValueError`` when the stored body is truncated, or was not
        recorded although the request had one, unless ``allow_truncated``.
        Must run inside an application context.
        """
        self._check_replayable(allow_truncated)
        from flask import current_app

        environ = {"flask_tracking.skip": True, **(kwargs.pop("environ_overrides", None) or {})}
        options: dict[str, Any] = {
            "method": self.method or "GET",
            "query_string": self.query_params or "",
            "headers": _replay_headers(self.request_headers, kwargs.pop("headers", None)),
            "environ_overrides": environ,
        }
        if "json" not in kwargs:
            options["data"] = bytes(self.request_body or b"")
        options.update(kwargs)
        path = options.pop("path", quote(self.path or "/", safe="/:@!$&'()*+,;="))
        return current_app.test_client().open(path, **options)

    def _check_replayable(self, allow_truncated: bool) -> None:
        if allow_truncated:
            return
        if self.request_body_truncated:
            raise ValueError(
                "The stored request body was truncated; the replay would not be faithful "
                "(pass allow_truncated=True to replay it anyway)."
            )
        if self.request_body is None and self.request_body_omitted and self.request_body_size != 0:
            raise ValueError(
                f"The request body was not recorded ({self.request_body_omitted}); the replay "
                "would not be faithful (pass allow_truncated=True to replay it anyway)."
            )

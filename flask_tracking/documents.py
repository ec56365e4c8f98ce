"""MongoEngine documents used to *read* the tracking records.

The background writer inserts plain dicts with pymongo; this module only maps
them onto :class:`Tracking` so they can be queried, printed, inspected and
replayed, and gives :class:`TrackingQuerySet` its filters, reports and live views.
How a record is shown is :mod:`flask_tracking.display`, how a report is computed
:mod:`flask_tracking.reports` and how a request is sent again :mod:`flask_tracking.replay`
(Flask is imported only then). :func:`percentile` and :func:`percentile_index` live in
:mod:`flask_tracking.reports` and are importable from here too, as documented.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

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

from flask_tracking import display, reports
from flask_tracking._mongoengine import Document, EmbeddedDocument, QuerySet
from flask_tracking.credentials import FILTERED
from flask_tracking.replay import replay_request, resendable_headers
from flask_tracking.reports import (
    STATS_GROUPS,
    TIMELINE_BUCKETS,
    USER_AGENT_FIELDS,
    check_choice,
    percentile,
    percentile_index,
)

if TYPE_CHECKING:
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
        return display.user_agent_label(self.browser, self.version, self.platform, self.string)


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
        return display.db_activity_label(self.count, self.time_ms, self.commands)

    def lines(self) -> list[str]:
        """The slowest and the repeated commands, one line each (for :meth:`Tracking.debug`)."""
        lines = []
        for entry in self.slowest or []:
            if not isinstance(entry, dict):
                continue
            ms = entry.get("ms")
            took = f"{ms:.1f} ms" if reports.is_number(ms) else "-"
            lines.append(f"  slow: {took} {display.command_label(entry)}")
        for entry in self.repeated or []:
            if isinstance(entry, dict):
                lines.append(f"  repeated {entry.get('count')}x: {display.command_label(entry)}")
        return lines


#: How far back :meth:`TrackingQuerySet.follow` looks again when polling, in seconds: records
#: from several workers do not arrive in ``_id`` order, and a batch may wait in a writer's queue.
POLL_OVERLAP_SECONDS = 10.0


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
        try:
            result = result.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(
                f"{value!r} is out of range: in UTC it falls before year 1 or after year 9999."
            ) from None
    return result


def time_ago(now: datetime | None = None, /, **duration: float) -> datetime:
    """``now`` (default: this machine's clock) minus ``duration``, given as the keyword
    arguments of :class:`~datetime.timedelta` (``days=7``), as a naive UTC datetime like the
    stored dates. Raises :class:`ValueError` with a sentence, not :class:`OverflowError`, when
    that falls outside the years 1 to 9999."""
    start = datetime.now(timezone.utc).replace(tzinfo=None) if now is None else now
    try:
        return start - timedelta(**duration)
    except OverflowError:
        amounts = ", ".join(f"{unit}={amount:g}" for unit, amount in duration.items() if amount)
        raise ValueError(
            f"A duration of {amounts} is out of range: dates run from year 1 to 9999."
        ) from None


def window_start(*, minutes: float = 0, hours: float = 0, days: float = 0) -> datetime:
    """Where ``last(minutes=..., hours=..., days=...)`` starts: now minus their sum, naive
    UTC. Raises :class:`ValueError` for a duration that is not positive or reaches back
    before year 1."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    since = time_ago(now, minutes=minutes, hours=hours, days=days)
    if since >= now:
        raise ValueError("last() needs a positive duration, such as last(minutes=15).")
    return since


#: The ``re`` flags MongoDB knows, with their ``$options`` letters.
_REGEX_OPTIONS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.VERBOSE, "x"))
#: Leading inline flag groups such as ``(?i)``: their flags travel as ``$options`` instead, as
#: the anchor put before the pattern would leave them where no regex engine accepts them.
_INLINE_FLAGS = re.compile(r"\A(?:\(\?[aiLmsux]+\))+")


def _path_regex(pattern: str | re.Pattern[str]) -> dict[str, str]:
    """The MongoDB ``$regex`` for :meth:`TrackingQuerySet.for_path`: ``pattern`` anchored at the
    start, with its flags (a compiled pattern's or leading inline ones) as ``$options``.

    Without a ``|`` the anchor is a bare ``^``, so a plain path stays a "simple prefix" regex
    that MongoDB answers from the ``path`` index. With ``re.MULTILINE`` it is ``\\A``, since
    ``^`` would then also match after each newline.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {error}.") from None
    flags = compiled.flags & ~re.UNICODE  # the default of a str pattern
    unknown = flags & ~(re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE)
    if unknown:
        raise ValueError(
            f"{pattern!r} has a flag MongoDB does not know ({re.RegexFlag(unknown)!r}); use "
            "re.IGNORECASE, re.MULTILINE, re.DOTALL and re.VERBOSE only."
        )
    options = "".join(letter for flag, letter in _REGEX_OPTIONS if flags & flag)
    source = _INLINE_FLAGS.sub("", compiled.pattern, count=1)
    anchor = "\\A" if flags & re.MULTILINE else "^"
    if "|" in source:  # a verbose pattern's comment runs to the end of its line: end it
        source = f"(?:{source}\n)" if flags & re.VERBOSE else f"(?:{source})"
    query = {"$regex": anchor + source}
    if options:
        query["$options"] = options
    return query


_DATA_OPERATORS = frozenset({"ne", "lt", "lte", "gt", "gte", "in", "nin", "exists"})


def _custom_data_query(key: str, value: Any) -> dict[str, Any]:
    """``cart__items__gte=3`` -> ``{"custom_data.cart.items": {"$gte": 3}}``; ``in`` and
    ``nin`` take a list (any iterable) of values; one value alone (a number, a text) is a
    list of one."""
    parts = key.split("__")
    if len(parts) > 1 and parts[-1] in _DATA_OPERATORS:
        operator = parts.pop()
        if operator in ("in", "nin"):
            several = isinstance(value, Iterable) and not isinstance(value, (str, bytes, dict))
            value = list(value) if several else [value]
        value = {f"${operator}": value}
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


def _since(query: dict[str, Any], moment: datetime | None) -> dict[str, Any]:
    """``query`` narrowed to the ids made from :data:`POLL_OVERLAP_SECONDS` before ``moment``
    on (by ``_id`` time); ``query`` itself when there is no ``moment``."""
    if moment is None:
        return query
    start = ObjectId.from_datetime(moment - timedelta(seconds=POLL_OVERLAP_SECONDS))
    return _and(query, {"_id": {"$gte": start}})


#: The records whose ``_id`` is an ObjectId (the writer's): the others have no time of their own.
_OBJECT_IDS: dict[str, Any] = {"_id": {"$type": "objectId"}}


def _id_at_or_after(oid: Any, moment: datetime) -> bool:
    """Whether ``oid`` is an ObjectId made at ``moment`` or later. Another ``_id`` is not: once
    the floor is an ObjectId's time, the ``_id`` bound of :func:`_since` no longer matches it."""
    return isinstance(oid, ObjectId) and oid.generation_time >= moment


#: The longest ``interval`` of :meth:`TrackingQuerySet.follow`, in seconds (a day).
MAX_FOLLOW_INTERVAL_SECONDS = 86_400.0


def _tail(
    collection: Any, query: dict[str, Any], interval: float, deadline: float | None
) -> Iterator[dict[str, Any]]:
    """Raw records stored after the call, through a tailable (awaiting) cursor.

    Like :func:`_poll`, it reads the records from :data:`POLL_OVERLAP_SECONDS` before the newest
    ``_id`` on and skips the ids it has seen, those stored before the call among them, so a
    record stored after the call with an older ``_id`` (another worker's, a batch that waited
    in a queue) is not missed.
    """
    overlap = timedelta(seconds=POLL_OVERLAP_SECONDS)
    # The newest id by id, not by storage order (not every server reports that newest first).
    newest = list(collection.find(_OBJECT_IDS, {"_id": 1}).sort("_id", -1).limit(1))
    floor = newest[0]["_id"].generation_time if newest else None
    # Ids in the order they were seen, so the oldest are dropped first as the floor rises.
    seen: OrderedDict[ObjectId, None] = OrderedDict()
    if floor is not None:
        before = collection.find(_since(query, floor), {"_id": 1}).sort("_id", 1)
        seen.update(dict.fromkeys(row["_id"] for row in before))
    while not _expired(deadline):
        cursor = collection.find(_since(query, floor), cursor_type=CursorType.TAILABLE_AWAIT)
        cursor.max_await_time_ms(max(1, int(interval * 1000)))
        try:
            while cursor.alive and not _expired(deadline):
                for document in cursor:  # ends after max_await_time_ms without a new record
                    oid = document["_id"]
                    if oid in seen:
                        continue
                    seen[oid] = None
                    if isinstance(oid, ObjectId):  # another _id (put there by hand) has no time
                        floor = max(oid.generation_time, floor or oid.generation_time)
                        while seen and not _id_at_or_after(next(iter(seen)), floor - overlap):
                            seen.popitem(last=False)
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
    newest = list(collection.find(_and(query, _OBJECT_IDS), {"_id": 1}).sort("_id", -1).limit(1))
    floor = newest[0]["_id"].generation_time if newest else None
    seen: dict[Any, None] = {}

    def window_ids() -> list[ObjectId]:
        criteria = _since(query, floor)
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
            times = [oid.generation_time for oid in fresh if isinstance(oid, ObjectId)]
            if times:  # an _id put there by hand, of another type, has no time
                floor = max(max(times), floor or max(times))
                cutoff = floor - overlap
                seen = {oid: None for oid in seen if _id_at_or_after(oid, cutoff)}
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
        """Requests of the last ``minutes`` + ``hours`` + ``days`` (by this machine's clock).
        Raises :class:`ValueError` for a duration that is not positive or reaches back before
        year 1."""
        return self.filter(date_created__gte=window_start(minutes=minutes, hours=hours, days=days))

    def for_path(self, pattern: str | re.Pattern[str], *, exact: bool = False) -> TrackingQuerySet:
        """Requests whose path matches the regular expression ``pattern`` **at its start**.

        Like Python's ``re.match``: ``for_path("/api/")`` is every path under ``/api/``,
        ``for_path(r"/users/\\d+$")`` a user page exactly, ``for_path("/a|/b")`` both prefixes.
        A plain path is therefore a prefix; pass ``exact=True`` to compare literally (or
        ``re.escape`` special characters). The flags of a compiled ``pattern`` or leading inline
        ones (``"(?i)/api/"``) apply. Raises :class:`ValueError` for an invalid regex or a flag
        MongoDB has no option for (anything but IGNORECASE, MULTILINE, DOTALL and VERBOSE).
        """
        if exact:
            return self.filter(path=pattern)
        return self.filter(__raw__={"path": _path_regex(pattern)})

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
        check_choice("group_by", group_by, STATS_GROUPS)
        return reports.stats_rows(self._aggregate(reports.stats_pipeline(group_by)), group_by)

    def timeline(self, bucket: str = "hour") -> list[dict[str, Any]]:
        """One row per ``bucket`` ("minute", "hour" or "day", UTC) that has records, oldest first.

        Each row: ``start`` (naive UTC datetime of the bucket) and the fields of :meth:`stats`
        (count, errors, error_rate, mean, p50, p95, p99, max, bytes_in, bytes_out). Buckets
        come from ``$dateToString``; records without a date are left out.
        """
        check_choice("bucket", bucket, TIMELINE_BUCKETS)
        return reports.timeline_rows(self._aggregate(reports.timeline_pipeline(bucket)), bucket)

    def unique_visitors(self) -> dict[str, int]:
        """Distinct client addresses and distinct users among the selected records:
        ``{"ips": n, "users": n}`` (records without an ip or a user_id are not counted)."""
        return reports.unique_visitors(self._aggregate(reports.unique_visitors_pipeline()))

    def user_agents(self, by: str = "browser") -> list[dict[str, Any]]:
        """How many requests came from each browser (or platform, device, language), most first.

        Rows: ``{by: name or None, "count": n, "share": fraction of all selected requests}``.
        """
        check_choice("by", by, USER_AGENT_FIELDS)
        return reports.user_agent_rows(list(self._aggregate(reports.user_agents_pipeline(by))), by)

    def execution_times(self) -> list[float]:
        """The execution times (ms) of the selected records, ascending, as floats: those that
        are finite numbers (for :func:`percentile` over a whole selection, or a histogram)."""
        return reports.finite_sorted(self._report_order().no_cache().scalar("execution_time"))

    def db_summary(self) -> dict[str, Any]:
        """The database work of the selected requests, in one dict.

        ``requests``; ``with_db`` (requests that ran a command); ``commands`` and ``time_ms``
        (their totals); ``app_time_ms`` (total execution time); ``share``: the part of the
        execution time spent in the database (0 to 1, None without execution time);
        ``mean_commands`` and ``mean_time_ms`` per request (None without requests). Sampled
        records count for ``1 / sample_rate`` requests, as in :meth:`stats`. One aggregation
        pipeline ($project, $group) that MongoDB 4.4 and mongomock accept.
        """
        return reports.db_summary(self._aggregate(reports.db_summary_pipeline()))

    def _report_order(self) -> TrackingQuerySet:
        """This QuerySet without ordering when it is not sliced (a whole selection needs no
        sort), else with its ordering or the default one: the records a report covers."""
        selection = self.clone()
        if selection._limit == 0:
            # Iterated, a zero limit is no limit (``[:0]`` is empty by MongoEngine's ``_empty``
            # instead); as a ``$limit`` stage the server refuses it.
            selection._limit = None
        if selection._limit is None and selection._skip is None:
            return selection.order_by()
        if selection._ordering is None:
            return selection.order_by(*self._document._meta["ordering"])
        return selection

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
        given; otherwise runs until the caller stops iterating. An ``interval`` that is not above
        0 (a busy loop) or is above :data:`MAX_FOLLOW_INTERVAL_SECONDS` raises
        :class:`ValueError` at once.
        """
        if not (math.isfinite(interval) and 0 < interval <= MAX_FOLLOW_INTERVAL_SECONDS):
            raise ValueError(
                f"The interval must be above 0 and at most {MAX_FOLLOW_INTERVAL_SECONDS:g} "
                f"seconds, not {interval!r}."
            )
        return self._followed(interval, timeout)

    def _followed(self, interval: float, timeout: float | None) -> Generator[Tracking, None, None]:
        if self._none or self._empty:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        collection = self._collection
        follow = _tail if _is_capped(collection) else _poll
        for document in follow(collection, self._query, interval, deadline):
            yield self._document._from_son(document)


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
    - ``status_code``: as sent, None when the app sent no response (a SystemExit
      or KeyboardInterrupt ended the request first); ``execution_time``: ms until
      the app returned its response; ``total_time``: ms until the body was fully sent.
    - ``hostname``: the worker host; ``custom_data``: any BSON value set by the
      app; ``exception``: ``"Type: message"`` when the view or a streamed body raised.
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
        return display.log_line(
            self.date_created,
            self.method,
            self.user_id,
            self._target(),
            self.status_code,
            self.execution_time,
        )

    def _target(self) -> str:
        """``path[?query]`` (unescaped)."""
        return display.target(self.path, self.query_params)

    def get_header(self, name: str, default: str = "") -> str:
        """Value of the first request header called ``name`` (case-insensitive)."""
        return display.find_header(self.request_headers, name, default)

    def get_response_header(self, name: str, default: str = "") -> str:
        """Value of the first response header called ``name`` (case-insensitive)."""
        return display.find_header(self.response_headers, name, default)

    def resendable_headers(self) -> list[tuple[str, str]]:
        """The request headers :meth:`replay` resends: all but the ``FILTERED`` ones and
        ``Host``, ``Content-Length``, ``Transfer-Encoding`` and ``Content-Encoding`` (a stored
        body is decoded)."""
        return resendable_headers(self.request_headers, None)

    def filtered_header_names(self) -> list[str]:
        """Names of the request headers stored as ``FILTERED`` (in order, once each)."""
        names = (
            name for name, value in display.header_pairs(self.request_headers) if value == FILTERED
        )
        return list(dict.fromkeys(names))

    def request_body_text(self) -> str | None:
        """The stored request body decoded as UTF-8 (with replacement), or ``None``."""
        return display.decode_body(self.request_body)

    def response_body_text(self) -> str | None:
        """The stored response body decoded as UTF-8 (with replacement), or ``None``."""
        return display.decode_body(self.response_body)

    def debug(self) -> str:
        """Multi-line dump of the request, the response and the context, for humans.

        Values coming from the request (path, query, headers, bodies...) have
        their control characters escaped; only the layout's own newlines (and
        newlines inside bodies) are real ones.
        """
        request_line = display.request_line(self.method, self.scheme, self.host, self._target())
        return "\n".join(
            [
                *self._message_lines("request", request_line),
                "",
                *self._message_lines("response", display.status_line(self.status_code)),
                "",
                *self._context_lines(),
            ]
        )

    def _message_lines(self, prefix: str, first_line: str) -> list[str]:
        """First line, headers, blank line and body of the request or the response."""
        return display.message_lines(
            first_line,
            getattr(self, f"{prefix}_headers"),
            getattr(self, f"{prefix}_body"),
            truncated=bool(getattr(self, f"{prefix}_body_truncated")),
            omitted=getattr(self, f"{prefix}_body_omitted"),
            size=getattr(self, f"{prefix}_body_size"),
        )

    def _context_lines(self) -> list[str]:
        """Date, request id, client, endpoint, user, timing, exception and custom data."""
        fields = [
            ("Date", self.date_created.isoformat() if self.date_created else None),
            ("Request id", self.request_id),
            ("Client IP", self.ip),
            ("Endpoint", f"{self.endpoint} ({self.url_rule})" if self.endpoint else None),
            ("Worker", self.hostname),
            ("User", self.user_label()),
            ("Timing", display.timing_label(self.execution_time, self.total_time)),
            ("Exception", self.exception),
        ]
        database = [f"Database: {self.db}", *self.db.lines()] if self.db is not None else []
        return display.context_lines(fields, database, self.custom_data)

    def user_label(self) -> str | None:
        """Who made the request, as printed by ``debug()`` and the dashboard: the user id and
        the stored user reference (``"42 (User 42)"``), read raw so that printing never loads
        the user; None when neither was recorded."""
        ref = self._data.get("user")
        if isinstance(ref, dict) and "_ref" in ref:
            ref = f"{ref.get('_cls')} {getattr(ref['_ref'], 'id', ref['_ref'])}"
        elif isinstance(ref, Document):
            ref = f"{ref._class_name} {ref.pk}"
        parts = [part for part in (self.user_id, f"({ref})" if ref else None) if part]
        return " ".join(parts) or None

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
        return replay_request(self, allow_truncated=allow_truncated, **kwargs)
